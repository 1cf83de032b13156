"""Competence of the mini world's parts, measured on held-out data: the instruments behind the mini tables.

A mini table can only test a paper claim if the model it ablates works. This module measures each part on the mini
world's *test* images (never trained on), with probes fitted on training images:

    linear_probe             multinomial logistic regression (L-BFGS, scikit-learn) on frozen features: shape, colour
    encoder_features         the ViT's patch features as stage 1a reads them (mean over patches, and all patches)
    tokenizer_statistics     stage 1a under the argmax keep mask: kept tokens per image, codes used, code perplexity,
                             and bag-of-codes features for a probe
    keep_probabilities       stage 1a's selector: the probability of keeping each patch (the argmax keeps those > 0.5)
    reconstruction_by_kept_patches
                             stage 1a's reconstruction under forced keep masks (the shape's patches, background,
                             random, all): does it pay the selector to keep the shape?
    decoder_conditioning     stage 1b's diffusion loss with an image's own context, another's, none: does the pixel
                             decoder use what it is conditioned on?
    scene_qa_accuracy        a text LLM on the corpus' questions about scenes described in words (held-out documents):
                             can it answer, without any image, what VQA asks of it (yes/no, open)?
    vqa_by_context           the multimodal model on the test questions, given the image, the scene in words, both,
                             the image and its own caption, or nothing: does the image reach the answer?

`reproduce/mini_release.py` prints them against their targets (the "mini release" report).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

PROBE_TRAIN_IMAGES = 2000  # train images the probes are fitted on (the first in shard order)


@dataclass
class LabelledImages:
    """Images with their shape and colour labels (index into harness.miniworld.SHAPES / COLORS)."""

    images: list  # PIL images
    shape: torch.Tensor  # (n,) long
    color: torch.Tensor  # (n,) long


def probe_images(world, split: str, n: int | None = None) -> LabelledImages:
    """The first `n` train images (shard order) or every test image (id order), with their labels."""
    from PIL import Image

    from harness.miniworld import COLORS, SHAPES, train_images

    if split == "train":
        pngs = train_images(world, n or PROBE_TRAIN_IMAGES)
        items = [(i, Image.open(io.BytesIO(png)).convert("RGB")) for i, png in pngs.items()]
    elif split == "test":
        ids = sorted(int(i) for i in world.labels["test"])[:n]
        items = [(i, Image.open(world.test_image_dir / f"{i}.png").convert("RGB")) for i in ids]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    labels = [world.labels[split][str(i)] for i, _ in items]
    return LabelledImages(
        images=[image for _, image in items],
        shape=torch.tensor([SHAPES.index(s) for s, _ in labels]),
        color=torch.tensor([COLORS.index(c) for _, c in labels]),
    )


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, c: float = 1.0) -> float:
    """Test accuracy (0-1) of a logistic-regression probe fitted on (train_x, train_y); features standardised with
    the training set's statistics (CLIP's linear-probe protocol, without the C sweep: C = 1)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    fit = LogisticRegression(C=c, max_iter=2000)
    fit.fit(((train_x - mean) / std).double().numpy(), train_y.numpy())
    return float((fit.predict(((test_x - mean) / std).double().numpy()) == test_y.numpy()).mean())


@torch.no_grad()
def encoder_features(encoder, preprocess, images: list, batch_size: int = 256) -> torch.Tensor:
    """(n, N * D) frozen patch features (last block, before norm, no CLS: what stage 1a reads), flattened so a linear
    probe can use where a patch is, not only what it holds."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = preprocess(images[start : start + batch_size])
        out.append(encoder(pixels)[:, 1:].flatten(1).float())
    return torch.cat(out)


@dataclass
class TokenizerStatistics:
    kept: torch.Tensor  # (n,) kept tokens per image under the argmax keep mask
    codes: list[torch.Tensor]  # per image, its code ids
    codebook_size: int

    def usage(self):
        """Codes used and their perplexity over all images (`model.lavit.quantizer.codebook_usage`, what stage 1a logs)."""
        from model.lavit.quantizer import codebook_usage

        return codebook_usage(torch.cat(self.codes) if self.codes else torch.zeros(0, dtype=torch.long), self.codebook_size)

    def bag_of_codes(self) -> torch.Tensor:
        """(n, codebook_size) code counts per image: what a probe on the token ids alone can read."""
        bags = torch.zeros(len(self.codes), self.codebook_size)
        for i, codes in enumerate(self.codes):
            bags[i] += torch.bincount(codes, minlength=self.codebook_size).float()
        return bags


@torch.no_grad()
def tokenizer_statistics(tokenizer, images: list, selection: str = "deterministic", seed: int = 0, batch_size: int = 256) -> TokenizerStatistics:
    """Stage 1a's discrete tokens of `images` under the argmax keep mask (`deterministic`) or the released Gumbel
    sampling (`sampled`, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    kept, codes = [], []
    for start in range(0, len(images), batch_size):
        pixels = tokenizer.preprocess(images[start : start + batch_size])
        out = tokenizer.tokenize(pixels, selection=selection, generator=generator if selection == "sampled" else None)
        kept.append(out.keep_mask.sum(1))
        codes.extend(c.cpu() for c in out.codes)
    return TokenizerStatistics(kept=torch.cat(kept), codes=codes, codebook_size=tokenizer.cfg.codebook_size)


@torch.no_grad()
def keep_probabilities(tokenizer, images: list, batch_size: int = 256) -> torch.Tensor:
    """Stage 1a's token selector: the probability of keeping each patch, (n images, N patches). The argmax mask
    keeps the patches above 0.5; the released Gumbel sampling keeps each with this probability."""
    out = []
    for start in range(0, len(images), batch_size):
        features = tokenizer.encode_features(tokenizer.preprocess(images[start : start + batch_size]))
        out.append(tokenizer.selector_log_probs(features)[..., 0].float().exp())
    return torch.cat(out)


def foreground_patches(images: list, grid: int) -> torch.Tensor:
    """(n, grid * grid) share of each patch's pixels that belong to the shape: pixels far from the image's median
    border colour (`harness.miniworld.foreground_mask`, the rule of `image_attributes`). Patches in raster order."""
    from harness.miniworld import foreground_mask

    out = []
    for image in images:
        mask = torch.from_numpy(foreground_mask(image)).float()  # (H, W)
        h, w = mask.shape
        out.append(mask[: h - h % grid, : w - w % grid].reshape(grid, h // grid, grid, w // grid).mean((1, 3)).flatten())
    return torch.stack(out)


# Forced keep masks of `reconstruction_by_kept_patches`, each keeping round(rho * N) patches per image.
FORCED_MASKS = ("foreground", "background", "random")


def forced_keep_masks(foreground: torch.Tensor, k: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """{name in FORCED_MASKS: (n, N) bool keep mask of k patches per image} from `foreground_patches`: the k most
    foreground patches, the k least (ties broken by raster order), k at random."""
    order = foreground.argsort(dim=1, descending=True, stable=True)
    chosen = {"foreground": order[:, :k], "background": order[:, -k:],
              "random": torch.rand(foreground.shape, generator=generator).argsort(dim=1)[:, :k]}  # fmt: skip
    return {name: torch.zeros(foreground.shape, dtype=torch.bool).scatter_(1, chosen[name], True) for name in FORCED_MASKS}


@torch.no_grad()
def reconstruction_by_kept_patches(tokenizer, images: list, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Stage 1a's reconstruction loss (Eq. 4's first term, 1 - cos, quantized) on `images` under different keep masks:
    the selector's own (the released Gumbel sampling, seeded), every patch, and round(rho * N) patches chosen by
    pixels -- the most foreground (the shape), the least (background), or at random. Whether it pays to keep the
    shape is the only reason the selector has to prefer one patch to another: if the foreground mask reconstructs
    no better than the others, the selector has nothing to learn."""
    generator = torch.Generator().manual_seed(seed)
    grid = tokenizer.cfg.image_size // tokenizer.cfg.patch_size
    k = max(1, round(tokenizer.cfg.keep_ratio * grid * grid))
    masks = forced_keep_masks(foreground_patches(images, grid), k, generator)
    totals: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        pixels = tokenizer.preprocess(images[start : start + batch_size])
        b = pixels.shape[0]
        batch = {"selector (sampled)": None, "every patch": torch.ones(b, grid * grid, dtype=torch.bool)}
        batch.update({f"{k} {name} patches": mask[start : start + b] for name, mask in masks.items()})
        for name, mask in batch.items():
            loss = tokenizer.compute_loss(pixels, keep_mask=mask, selection="sampled", generator=generator).recon_loss
            totals[name] = totals.get(name, 0.0) + float(loss) * b
    return {name: total / len(images) for name, total in totals.items()}


@torch.no_grad()
def decoder_conditioning(model, images: list, timesteps: tuple[int, ...] = (100, 300, 600), seed: int = 0) -> dict[str, float]:
    """Does the stage-1b pixel decoder use its conditioning? Its diffusion loss (Eq. 5) on `images` (real test
    images), averaged over fixed `timesteps`, with each image's own context (unet_proj(x_rec) of its stage-1a codes,
    the released Gumbel selection, seeded), another image's (the batch rolled by one), and the unconditional one. A
    decoder that ignores its context scores the three alike. `model`: a LaVIT model with a pixel decoder
    (`load_for_eval(run, pixel_decoder=...)`)."""
    from train.lavit.pixel_decoder import to_unit_range

    tokenizer, decoder = model.visual_tokenizer, model.pixel_decoder
    generator = torch.Generator().manual_seed(seed)
    codes = tokenizer.tokenize(tokenizer.preprocess(images), selection="sampled", generator=generator).codes
    context = tokenizer.decoder_context(codes)  # (n, N, C)
    pixels = torch.stack([to_unit_range(image, decoder.cfg.image_size) for image in images])
    latents = decoder.encode_latents(pixels.to(decoder.device), generator)
    n = latents.shape[0]
    unconditional, unconditional_mask = decoder.unconditional_context(n, context.shape[1], context.dtype)
    full = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    contexts = {"own context": (context, full), "another image's context": (context.roll(1, dims=0), full),
                "unconditional": (unconditional, unconditional_mask)}  # fmt: skip
    scheduler = decoder.training_scheduler()
    totals = dict.fromkeys(contexts, 0.0)
    for step in timesteps:
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)  # CPU generator: same draw anywhere
        t = torch.full((n,), step, dtype=torch.long, device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        for name, (c, mask) in contexts.items():
            predicted = decoder.unet(noisy, t, encoder_hidden_states=c, encoder_attention_mask=mask).sample
            totals[name] += float(torch.nn.functional.mse_loss(predicted.float(), noise.float())) / len(timesteps)
    return totals


def held_out_perplexity(lm, world) -> float:
    """Perplexity of a text LLM (`eval.lm_adapter.text_lm`: .model, .tokenizer) on held-out documents of the mini
    world's corpus sources: new documents of the same generator with another seed, never trained on."""
    import math

    held_out = _held_out_corpus(world, docs_per_source=50)
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for docs in held_out.values():
            for doc in docs:
                ids = lm.tokenizer(doc, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([[lm.tokenizer.bos_token_id, *ids, lm.tokenizer.eos_token_id]])
                logits = lm.model(input_ids=ids).logits.float()
                total_nll += float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
                total_tokens += ids.shape[1] - 1
    return math.exp(total_nll / total_tokens)


SCENE_QA_DOCS = 600  # held-out questions per kind (yes/no, open)


def _held_out_corpus(world, docs_per_source: int, name: str = "held-out corpus") -> dict[str, list[str]]:
    """New documents of the mini world's corpus generator (another seed than the world's): never trained on."""
    import json
    import random
    from pathlib import Path

    from harness.miniworld import corpus

    facts = [json.loads(line) for line in (Path(world.root) / "knowledge" / "facts.jsonl").read_text().splitlines()]
    seed = json.loads((Path(world.root) / "DONE").read_text())["params"]["seed"]
    return corpus(random.Random(f"{seed}/{name}"), facts, docs_per_source=docs_per_source)


def lm_scorer(lm):
    """score(prefix, continuation) -> the log-probability the text LLM `lm` (`eval.lm_adapter.text_lm`, an lm-eval
    LM) gives the continuation after the prefix: lm-eval's own loglikelihood request, as the knowledge tasks use."""
    from lm_eval.api.instance import Instance

    def score(prefix: str, continuation: str) -> float:
        request = Instance(request_type="loglikelihood", doc={}, arguments=(prefix, continuation), idx=0)
        return float(lm.loglikelihood([request], disable_tqdm=True)[0][0])

    return score


def scene_qa_accuracy(score, world, n: int = SCENE_QA_DOCS) -> dict[str, float]:
    """Accuracy (%) on held-out documents of the corpus' "qa" source ("A red circle is drawn on a plain background.
    Question: is there not a circle? Answer: yes"): the first `n` yes/no ones (" yes" against " no") and the first `n`
    open ones (the answer among the colours, the shapes, or the corner counts), each scored by `score(prefix,
    continuation)`. The scene is given in words, so this is what VQA asks of the LLM once the image is read. Each
    document is cut after its first answer: one question about the scene, as a VQA prompt asks."""
    from harness.miniworld import COLORS, SHAPES, VQA_PROMPT, qa_document_parts

    docs = []
    for doc in _held_out_corpus(world, docs_per_source=n, name="held-out scene questions")["qa"]:
        scene, pairs = qa_document_parts(doc)
        docs.append(f"{scene} {VQA_PROMPT.format(q=pairs[0][0], a=pairs[0][1])}")  # the scene and its first question
    yes_no = [d for d in docs if d.endswith((" yes", " no"))][:n]
    open_ = [d for d in docs if not d.endswith((" yes", " no"))][:n]
    if len(yes_no) < n or len(open_) < n:
        raise ValueError(f"the held-out corpus has {len(yes_no)} yes/no and {len(open_)} open questions, fewer than {n}")
    corners = ["none", "three", "four"]

    def hits(items: list[str], candidates_for) -> float:
        right = 0
        for doc in items:
            prefix, gold = doc.rsplit(" ", 1)
            right += max(candidates_for(gold), key=lambda c: score(prefix, " " + c)) == gold
        return 100.0 * right / len(items)

    return {"yes/no": hits(yes_no, lambda gold: ["yes", "no"]),
            "open": hits(open_, lambda gold: COLORS if gold in COLORS else SHAPES if gold in SHAPES else corners)}  # fmt: skip


# The contexts `vqa_by_context` scores each test question in. {image}: the image before the text (as zero-shot VQA
# shows it); {scene}: the scene in words, as the corpus' "qa" documents describe theirs; {caption}: the model's own
# caption of the image (Table 1's saved predictions).
VQA_CONTEXTS = {
    "image": (True, "{question}"),
    "scene in words": (False, "{scene} {question}"),
    "image + scene in words": (True, "{scene} {question}"),
    "image + own caption": (True, "{caption}. {question}"),
    "nothing": (False, "{question}"),
}
VQA_BY_CONTEXT_QUESTIONS = 300  # test questions per answer kind (yes/no, colour/shape)


def vqa_by_context(score, samples, labels: dict, captions: dict, n: int = VQA_BY_CONTEXT_QUESTIONS) -> dict[str, float]:
    """Where does zero-shot VQA break: reading the image, or answering? Accuracy (%) of the first `n` yes/no and the
    first `n` colour/shape questions of `samples` (`eval.tasks` mini_vqa samples, the evaluation's own questions)
    with each context of VQA_CONTEXTS, the answer picked by log-probability among its candidates (" yes" / " no";
    the colours or the shapes), so that decoding plays no part.

    score(context, continuations, image path or None) -> log-probabilities (a LaVIT adapter's `score_text`, under
    the evaluation's keep-mask draw); labels: image id -> (shape, colour); captions: image id -> the model's caption.
    The question is put as the evaluation puts it (the released normalisation, "Question: {} Answer:").
    A model that answers in words but not from the image has not learned to read its visual tokens as a scene: the
    LLM knows the answer, the image does not reach it."""
    from eval.tasks import LAVIT_QUESTIONS, mini_image_id
    from harness.miniworld import COLORS, SHAPES
    from model.lavit import released_processing

    yes_no = [s for s in samples if s.references[0] in ("yes", "no")][:n]
    open_ = [s for s in samples if s.references[0] not in ("yes", "no")][:n]
    if len(yes_no) < n or len(open_) < n:
        raise ValueError(f"{len(yes_no)} yes/no and {len(open_)} open questions, fewer than {n} of each")
    out = {}
    for kind, group in (("yes/no", yes_no), ("colour/shape", open_)):
        for name, (with_image, template) in VQA_CONTEXTS.items():
            right = 0
            for sample in group:
                image_id = mini_image_id(sample.image)
                shape, color = labels[image_id]
                question = LAVIT_QUESTIONS["question_template"].format(released_processing.normalize_question(sample.text))
                context = template.format(question=question, scene=f"The picture shows a {color} {shape}.", caption=captions.get(image_id, ""))
                gold = sample.references[0]
                candidates = ["yes", "no"] if kind == "yes/no" else list(COLORS if gold in COLORS else SHAPES)
                logp = score(context, [" " + c for c in candidates], sample.image if with_image else None)
                right += candidates[max(range(len(candidates)), key=logp.__getitem__)] == gold
            out[f"{kind}, {name}"] = 100.0 * right / n
    return out
