"""LaVIT's dynamic visual tokenizer (paper §3.1): encoder -> selector -> merger -> quantizer, plus the decoder.

    X        = ViT(image)[:, 1:]                       (B, N, D)   frozen encoder, last block, CLS dropped
    pi       = token_predictor(X)                      (B, N, 2)   log-probabilities, index 0 = keep
    M        = GumbelSoftmax(pi)[..., 0] or argmax     (B, N)      decision mask (Eq. 1)
    X_hat    = causal_encoder(X, M)                    (B, N, D)   merged features for all positions (Eq. 2)
    X_hat_r  = X_hat[M]                                [(K_i, D)]  visual part features, raster order
    v        = argmin_j ||l2(E(X_hat_r)) - l2(c_j)||   [(K_i,)]    codes (Eq. 3), E = encode_task_layer
    llm      = vit_proj(X_hat_r)                       [(K_i, H)]  continuous LLM inputs for [image; text]
    X_rec    = decoder(c_v)                            (B, N, D)   reconstruction target X (Eq. 4)

Each stage is its own method so the tokenizer can be run (and compared against the released code) component by
component; ``tokenize`` composes them and ``compute_loss`` implements Eq. 4 for training. Parameter names equal the
released checkpoint files; ``official_tokenizer.py`` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from harness.config import from_dict, to_dict
from model.lavit.clip_encoder import ClipPatchEncoder
from model.lavit.decoder import VQDecoder
from model.lavit.eva_vit import EvaAttention, EvaVisionTransformer
from model.lavit.quantizer import CodebookEmbedding, VectorQuantizer, codebook_usage, l2norm
from model.lavit.token_merger import TokenMerger
from model.lavit.token_selector import SELECTIONS, Selection, TokenSelector, select_tokens
from model.lavit.tokenizer_config import VisualTokenizerConfig

# CLIP's normalisation constants (used by EVA-CLIP and by the released LaVIT preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DynamicVisualTokenizerConfig(PreTrainedConfig):
    """HF config that wraps a ``VisualTokenizerConfig`` (stored as a plain dict so it serialises to config.json)."""

    model_type = "lavit_visual_tokenizer"
    tokenizer: dict | None = None

    @classmethod
    def from_visual(cls, cfg: VisualTokenizerConfig) -> "DynamicVisualTokenizerConfig":
        return cls(tokenizer=to_dict(cfg))

    @property
    def visual(self) -> VisualTokenizerConfig:
        return from_dict(VisualTokenizerConfig, self.tokenizer or {})


@dataclass
class TokenizerOutput:
    encoder_features: torch.Tensor  # (B, N, D) raw encoder features (last block, before final norm, CLS dropped)
    selector_log_probs: torch.Tensor  # (B, N, 2) log-probabilities; index 0 = keep
    keep_mask: torch.Tensor  # (B, N) bool decision mask M
    merged: torch.Tensor  # (B, N, D) merger outputs for all positions (after the final norm)
    kept_features: list[torch.Tensor]  # B x (K_i, D) visual part features, raster order
    codes: list[torch.Tensor] | None  # B x (K_i,) long codes in [0, K); None when quantize=False
    llm_embeds: list[torch.Tensor]  # B x (K_i, llm_hidden) = vit_proj(kept_features)
    keep_weights: torch.Tensor  # (B, N) float mask actually used (straight-through gradients when sampled)


@dataclass
class TokenizerLoss:
    loss: torch.Tensor  # total: recon + lambda * ratio + beta * commitment
    recon_loss: torch.Tensor  # mean over patches of 1 - cos(x, x_rec)  (Eq. 4, first term)
    ratio_loss: torch.Tensor  # mean over images of (rho - mean_i M_i)^2 (Eq. 4, second term, before lambda)
    commitment_loss: torch.Tensor  # ||l2(z) - sg(q)||^2 (0 without quantization)
    keep_ratio: float  # mean of M over the batch
    num_tokens: float  # mean number of kept tokens per image
    codebook_perplexity: float  # exp(entropy) of the code histogram of this batch (0 without quantization)
    codebook_fraction_used: float  # distinct codes in this batch / K (0 without quantization)


class DynamicVisualTokenizer(PreTrainedModel):
    config_class = DynamicVisualTokenizerConfig
    base_model_prefix = "visual_tokenizer"
    main_input_name = "pixel_values"
    _no_split_modules = ["EvaBlock", "MergerBlock", "DecoderBlock"]
    # The released code always runs the selector in float32. transformers honours this only inside from_pretrained;
    # our loaders and `model.lavit.precision.place` keep it float32 themselves.
    _keep_in_fp32_modules = ["token_predictor"]

    def __init__(self, config: DynamicVisualTokenizerConfig | VisualTokenizerConfig):
        if isinstance(config, VisualTokenizerConfig):
            config = DynamicVisualTokenizerConfig.from_visual(config)
        super().__init__(config)
        cfg = config.visual
        self.cfg = cfg
        width = cfg.encoder_width
        if cfg.encoder == "eva_vit_g":
            self.encoder: nn.Module = EvaVisionTransformer(cfg)
        elif cfg.encoder == "clip_vit_l":
            self.encoder = ClipPatchEncoder(cfg)
        else:
            raise ValueError(f"unknown encoder {cfg.encoder!r}; expected 'eva_vit_g' or 'clip_vit_l'")
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        # Fixed-length ablation (Table 3b): no selector at all.
        self.token_predictor = None if cfg.fixed_length else TokenSelector(width, cfg.selector_ln_eps)
        self.causal_encoder = TokenMerger(
            width,
            cfg.merger_heads,
            cfg.merger_depth if cfg.use_merger else 0,
            cfg.merger_mlp,
            ln_eps=cfg.merger_ln_eps,
            attention_eps=cfg.attention_eps,
            attention=cfg.merger_attention,
        )
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.codebook_ema_decay, cfg.codebook_use_ema)
        self.encode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, cfg.code_dim))
        self.vit_proj = nn.Linear(width, cfg.llm_hidden_size)
        self.decoder = VQDecoder(
            num_patches=cfg.num_patches,
            code_dim=cfg.code_dim,
            dim=cfg.decoder_width,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_heads,
            mlp_hidden=cfg.decoder_mlp,
            out_dim=width,
            unet_context_dim=cfg.unet_context_dim,
            ln_eps=cfg.decoder_ln_eps,
        )
        self.post_init()

    # -- initialisation of freshly built weights (loaded weights are left alone by the guarded init functions) ----
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        from transformers import initialization as init

        std = self.cfg.init_std
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EvaVisionTransformer):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)
        elif isinstance(module, EvaAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, VQDecoder):
            # Released code creates these as zeros; identical zero queries could never differentiate patches,
            # so a fresh decoder starts from small random values instead.
            init.trunc_normal_(module.pos_embed, std=std)
            init.trunc_normal_(module.query_embed, std=std)
        elif isinstance(module, CodebookEmbedding):
            init.copy_(module.weight, l2norm(torch.randn_like(module.weight)))

    # -- stage 0: preprocessing ----------------------------------------------------------------------------------
    def preprocess(self, images: list[Any]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S): RGB, bicubic resize to image_size (no crop), CLIP mean/std."""
        from PIL import Image

        size = self.cfg.image_size
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        batch = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"preprocess expects PIL images, got {type(image).__name__}")
            image = image.convert("RGB").resize((size, size), Image.BICUBIC)
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
            batch.append((pixels.permute(2, 0, 1).float() / 255.0 - mean) / std)
        return torch.stack(batch).to(self.device)

    # -- stage 1: encoder ----------------------------------------------------------------------------------------
    def encode_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed -> raw patch features X (B, N, D): last block output, before norm, no CLS."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_encoder):
            hidden = self.encoder(pixel_values)  # (B, 1+N, D)
        return hidden[:, 1:]

    # -- stage 2: selector ---------------------------------------------------------------------------------------
    def selector_log_probs(self, features: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, N, D) -> log-probabilities (B, N, 2) (index 0 = keep), in the selector's dtype (float32 as released).

        ``fixed_length``: no selector; every patch has log-probability 0 of being kept (and -inf of being dropped).
        """
        b, n, _ = features.shape
        if self.token_predictor is None:
            out = torch.zeros(b, n, 2, device=features.device)
            out[..., 1] = float("-inf")
            return out
        dtype = self.token_predictor.out_conv[0].weight.dtype
        return self.token_predictor(features.to(dtype), policy)

    def select(
        self,
        log_probs: torch.Tensor,
        selection: Selection = "deterministic",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Decision mask M (B, N) as float 0/1 ("sampled" = hard Gumbel-softmax, straight-through gradients)."""
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; expected one of {SELECTIONS}")
        if self.token_predictor is None:
            return torch.ones(log_probs.shape[:2], device=log_probs.device)
        return select_tokens(log_probs, selection, tau=self.cfg.gumbel_tau, generator=generator)

    def _forced_mask(self, keep_mask: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
        if tuple(keep_mask.shape) != tuple(shape):
            raise ValueError(f"keep_mask must have shape {tuple(shape)} (B, N), got {tuple(keep_mask.shape)}")
        keep = keep_mask.to(device=device, dtype=torch.float32)
        if self.token_predictor is None and not bool((keep == 1).all()):
            raise ValueError("fixed_length tokenizer keeps every patch; a keep_mask with zeros contradicts it")
        return keep

    # -- stage 3: merger -----------------------------------------------------------------------------------------
    def merge(self, features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """X (B, N, D), M (B, N) -> merged features for all N positions (B, N, D), after the final norm."""
        return self.causal_encoder(features, keep)

    @staticmethod
    def gather_kept_flat(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(B, N, C) and M (B, N) -> the kept rows of all images concatenated (sum K_i, C), image by image in raster
        order, and the K_i.

        One host read per batch (the K_i, which per-image outputs need); the gather is one index_select with
        `nonzero_static` of the known total, so it adds no device synchronisation. Each kept row is multiplied by
        its mask value (exactly 1 in the forward pass), so a straight-through mask passes gradients to the selector
        through the kept tokens too.
        """
        mask = keep > 0.5
        lengths = mask.sum(dim=1).tolist()
        index = torch.nonzero_static(mask.reshape(-1), size=sum(lengths)).squeeze(1)  # ascending = raster order
        rows = values.reshape(-1, values.shape[-1]).index_select(0, index)
        weights = keep.reshape(-1).index_select(0, index)
        return rows * weights[:, None].to(rows.dtype), lengths

    @staticmethod
    def gather_kept(values: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
        """(B, N, C) and M (B, N) -> B tensors (K_i, C) of the kept positions in raster order (`gather_kept_flat`)."""
        flat, lengths = DynamicVisualTokenizer.gather_kept_flat(values, keep)
        return list(flat.split(lengths))

    # The tail (quantizer, vit_proj) runs once on all kept tokens of the batch concatenated, then splits per image:
    # one kernel per layer instead of one per image.
    @staticmethod
    def _concat(kept_features: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        return torch.cat(list(kept_features)), [int(f.shape[0]) for f in kept_features]

    # -- stage 4: quantizer --------------------------------------------------------------------------------------
    def encode_for_quantizer_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, D) part features -> encode_task_layer outputs (M, code_dim) (before L2 normalisation)."""
        layer = self.encode_task_layer
        return layer(flat.to(layer[0].weight.dtype))

    def encode_for_quantizer(self, kept_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Visual part features -> encode_task_layer outputs (K_i, code_dim) (before L2 normalisation)."""
        if not kept_features:
            return []
        flat, lengths = self._concat(kept_features)
        return list(self.encode_for_quantizer_flat(flat).split(lengths))

    def quantize_features(self, kept_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Visual part features -> codes (Eq. 3), one LongTensor (K_i,) per image."""
        if not kept_features:
            return []
        flat, lengths = self._concat(kept_features)
        return list(self.quantize.nearest_codes(self.encode_for_quantizer_flat(flat)).split(lengths))

    # -- stage 5: LLM projection ---------------------------------------------------------------------------------
    def project_to_llm(self, kept_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Visual part features -> vit_proj outputs (K_i, llm_hidden): LaVIT's continuous image inputs."""
        if not kept_features:
            return []
        flat, lengths = self._concat(kept_features)
        return list(self.vit_proj(flat.to(self.vit_proj.weight.dtype)).split(lengths))

    # -- stage 6: decoder ----------------------------------------------------------------------------------------
    def code_embeddings(self, codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Codes -> quantized vectors (codebook entries) (K_i, code_dim)."""
        return [self.quantize.lookup(c.to(self.quantize.embedding.weight.device).long()) for c in codes]

    def decode(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Codes (list of (K_i,)) -> reconstructed features x_rec (B, N, D) for all patches."""
        return self.decoder(self.code_embeddings(codes))

    def decoder_context(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Codes -> unet_proj(x_rec) (B, N, unet_context_dim): the pixel decoder's cross-attention context."""
        return self.decoder.unet_proj(self.decode(codes))

    # -- composition ---------------------------------------------------------------------------------------------
    def tokenize(
        self,
        pixel_values: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        selection: Selection = "deterministic",
        generator: torch.Generator | None = None,
        quantize: bool = True,
    ) -> TokenizerOutput:
        """Run every stage. ``keep_mask`` (B, N) bool forces M; otherwise M comes from the selector."""
        features = self.encode_features(pixel_values)
        log_probs = self.selector_log_probs(features)
        if keep_mask is not None:
            keep = self._forced_mask(keep_mask, features.shape[:2], features.device)
        else:
            keep = self.select(log_probs, selection, generator)
        merged = self.merge(features, keep)
        flat, lengths = self.gather_kept_flat(merged, keep)  # (sum K_i, D): the tail runs once for the batch
        codes = None
        if quantize:
            codes = list(self.quantize.nearest_codes(self.encode_for_quantizer_flat(flat)).split(lengths))
        return TokenizerOutput(
            encoder_features=features,
            selector_log_probs=log_probs,
            keep_mask=keep > 0.5,
            merged=merged,
            kept_features=list(flat.split(lengths)),
            codes=codes,
            llm_embeds=list(self.vit_proj(flat.to(self.vit_proj.weight.dtype)).split(lengths)),
            keep_weights=keep,
        )

    # -- training objective (Eq. 4) ------------------------------------------------------------------------------
    def ratio_loss(self, keep: torch.Tensor) -> torch.Tensor:
        """(rho - mean_i M_i)^2 per image, averaged over the batch; 0 for the fixed-length ablation."""
        if self.token_predictor is None:
            return keep.sum() * 0.0
        return (self.cfg.keep_ratio - keep.float().mean(dim=1)).pow(2).mean()

    @staticmethod
    def reconstruction_loss(target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Mean over images and patches of 1 - cos(x_i, x_rec_i)."""
        return (1.0 - F.cosine_similarity(reconstruction.float(), target.float(), dim=-1)).mean()

    def compute_loss(
        self,
        pixel_values: torch.Tensor,
        keep_mask: torch.Tensor | None = None,
        selection: Selection = "sampled",
        generator: torch.Generator | None = None,
        quantize: bool = True,
    ) -> TokenizerLoss:
        """Eq. 4 (+ the commitment term when quantizing). ``quantize=False`` is the first training stage: the
        decoder then reads the continuous l2(encode_task_layer(x_hat)) instead of codebook entries."""
        features = self.encode_features(pixel_values)
        if keep_mask is not None:
            keep = self._forced_mask(keep_mask, features.shape[:2], features.device)
        else:
            keep = self.select(self.selector_log_probs(features), selection, generator)
        kept, lengths = self.gather_kept_flat(self.merge(features, keep), keep)
        flat = self.encode_for_quantizer_flat(kept)  # (sum K_i, code_dim)
        if quantize:
            q = self.quantize(flat)
            decoder_inputs, commitment = q.quantized, q.commitment_loss
            usage = codebook_usage(q.codes.detach().cpu(), self.cfg.codebook_size)
            perplexity, fraction = usage.perplexity, usage.fraction_used
        else:
            decoder_inputs, commitment = l2norm(flat), flat.sum() * 0.0
            perplexity, fraction = 0.0, 0.0
        reconstruction = self.decoder(list(torch.split(decoder_inputs, lengths)))
        recon = self.reconstruction_loss(features.detach(), reconstruction)
        ratio = self.ratio_loss(keep)
        loss = recon + self.cfg.ratio_loss_weight * ratio + self.cfg.commitment_weight * commitment
        return TokenizerLoss(
            loss=loss,
            recon_loss=recon,
            ratio_loss=ratio,
            commitment_loss=commitment,
            keep_ratio=float(keep.detach().float().mean()),
            num_tokens=float(sum(lengths)) / max(len(lengths), 1),
            codebook_perplexity=perplexity,
            codebook_fraction_used=fraction,
        )

    @torch.no_grad()
    def init_codebook_kmeans(
        self,
        pixel_values: torch.Tensor,
        selection: Selection = "sampled",
        generator: torch.Generator | None = None,
        iters: int = 10,
    ) -> int:
        """k-means initialisation of the codebook from the encoded kept tokens of a batch (the switch from the
        first, quantizer-free training stage to VQ). Returns the number of vectors used."""
        features = self.encode_features(pixel_values)
        keep = self.select(self.selector_log_probs(features), selection, generator)
        vectors = self.encode_for_quantizer_flat(self.gather_kept_flat(self.merge(features, keep), keep)[0])
        self.quantize.kmeans_init(vectors, iters=iters, generator=None)
        return int(vectors.shape[0])

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> TokenizerLoss:
        return self.compute_loss(pixel_values, **kwargs)

    # -- conveniences --------------------------------------------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        """Parameters per top-level part (works on the meta device)."""
        return {name: sum(p.numel() for p in child.parameters()) for name, child in self.named_children()}

    @property
    def encoder_state_keys(self) -> list[str]:
        """Keys of the encoder-side weights (everything except ``decoder.*``)."""
        return [k for k in self.state_dict() if not k.startswith("decoder.")]


def build_tokenizer(cfg: VisualTokenizerConfig) -> DynamicVisualTokenizer:
    return DynamicVisualTokenizer(DynamicVisualTokenizerConfig.from_visual(cfg))


__all__ = [
    "DynamicVisualTokenizer",
    "DynamicVisualTokenizerConfig",
    "TokenizerLoss",
    "TokenizerOutput",
    "VisualTokenizerConfig",
    "build_tokenizer",
    "CLIP_MEAN",
    "CLIP_STD",
]
