"""lm-eval model adapters: the text-only path of a multimodal checkpoint's LLM, one lm-eval model per model family.

`CausalLMAdapter` wraps any transformers causal LM (`PreTrainedModel` + tokenizer) as an lm-eval `TemplateLM`:
context/continuation tokenization is lm-eval's own (`TemplateLM._encode_pair`: trailing context spaces move into
the continuation, the pair is encoded jointly and split), so a checkpoint scores exactly as under lm-eval's `hf`
model; scoring is one forward pass per batch of right-padded sequences with the exact log-softmax sum over the
continuation tokens (no approximations, no caching tricks).

Registered models, each loading `checkpoint=DIR`:
- one per model family with a loader (`model/families.py`), named as the family (`lavit`, `vila`): DIR is anything the
  family's loader accepts (a released directory or one of our training run directories, see the family's
  `checkpoint_help`), and the LLM of the loaded model is scored (`text_lm`: a `CausalLMAdapter` over
  `LoadedModel.llm`);
- `vila-llm`: only the LLM of a per-component VILA release, `DIR/llm/` (`llm/`, `vision_tower/`, `mm_projector/`),
  read as a transformers folder (the text-only benchmarks without loading the vision tower).
A plain transformers causal-LM folder is evaluated with lm-eval's own `hf` model (`pretrained=DIR`).

lm-eval 0.4.13 has no plugin mechanism for models, so the bare `lm_eval` executable cannot see these adapters.
This module is lm-eval's CLI with them registered:

    python -m eval.lm_adapter --model FAMILY --model_args checkpoint=DIR \
        --tasks mmlu_local --include_path TASKS_DIR --num_fewshot 5 --batch_size 8

(`python -m eval.mmlu --write-tasks TASKS_DIR` writes the task YAMLs; `--model hf --model_args pretrained=DIR`
works with the bare `lm_eval` command as well.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import lm_eval.models  # noqa: F401  (fills lm-eval's lazy registry first: get_model() only does so when it is empty)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry

from eval.interface import UnsupportedTaskError
from eval.mmlu_subjects import CATEGORY_NAMES, SUBJECT_CATEGORY, TASK_PREFIX
from model.families import TextLM, families, get_family

eval_logger = logging.getLogger(__name__)

# Context length used when neither the model config nor the tokenizer states one (lm-eval's default too).
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256


def _resolve_max_length(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # HF uses 1e30 for "unset"
        return model_max
    return DEFAULT_MAX_LENGTH


def available_device(device: str | None) -> str:
    """`device`, or cuda when there is one; a cuda request without CUDA falls back to cpu with a warning."""
    requested = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        # lm-eval's CLI passes device="cuda" unless told otherwise; its own hf model also falls back to CPU.
        eval_logger.warning(f"device {requested!r} requested but CUDA is not available; using cpu")
        requested = "cpu"
    return str(requested)


class CausalLMAdapter(TemplateLM):
    """lm-eval `LM` around a causal `PreTrainedModel` and its tokenizer (text only)."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int | str = 8,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        device: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_batch_size: int | None = None,  # passed by lm-eval for batch_size="auto", which is not supported here
    ):
        super().__init__()
        self._device = torch.device(available_device(device))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size='auto' is not supported by this adapter; pass an integer")
        self.batch_size = int(batch_size)
        self._max_length = int(max_length) if max_length else _resolve_max_length(model, tokenizer)
        # None = the tokenizer's own default for special tokens (what lm-eval's hf model does).
        self.add_bos_token = add_bos_token
        self.max_gen_toks = int(max_gen_toks)
        if self.eot_token_id is None and tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has neither an EOS nor a BOS token; loglikelihood of empty contexts needs one")

    # --- tokenizer ---------------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # Conditioning token for empty contexts: BOS when the tokenizer has one (as lm-eval's hf model).
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            bos = self.tokenizer.bos_token
            if bos and string.startswith(bos):  # the string already carries BOS: do not add a second one
                add_special_tokens = False
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **special)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # --- scoring -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Rows are right-padded: under the causal mask no real position sees a pad, so no attention mask is needed
        # (and without one the attention kernels take their fast causal path).
        return self.model(input_ids=input_ids).logits  # (b, t, vocab)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy decode) for token-level requests.

        Requests whose model input is the same token sequence (e.g. the four one-token answers " A".." D" of one
        multiple-choice question) share one forward pass; each still gets its own exact log-probability.
        """
        from tqdm import tqdm

        inputs: list[tuple[int, ...]] = []
        truncated = 0
        for request in requests:
            _, context_enc, continuation_enc = request
            if not context_enc or not continuation_enc:
                raise ValueError(f"empty context or continuation tokens in request {request[0]!r}")
            if len(continuation_enc) > self.max_length:
                raise ValueError(f"continuation of {len(continuation_enc)} tokens exceeds max_length {self.max_length}")
            truncated += len(context_enc) + len(continuation_enc) > self.max_length + 1
            # Left-truncate to the context window; the last token is only a target, never an input.
            inputs.append(tuple((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1]))
        if truncated:
            eval_logger.warning(
                f"{truncated} of {len(requests)} requests exceed max_length={self.max_length} tokens; their contexts "
                "were truncated from the left"
            )
        users: dict[tuple[int, ...], list[int]] = {}
        for i, tokens in enumerate(inputs):
            users.setdefault(tokens, []).append(i)
        # Longest first: the first batch shows the peak memory, and similar lengths pad little.
        unique = sorted(users, key=lambda tokens: (-len(tokens), tokens))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in tqdm(range(0, len(unique), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            rows = unique[start : start + self.batch_size]
            width = len(rows[0])
            input_ids = torch.zeros(len(rows), width, dtype=torch.long)  # (b, width)
            for r, tokens in enumerate(rows):  # right padding keeps every real position's causal prefix intact
                input_ids[r, : len(tokens)] = torch.tensor(tokens)
            logprobs = F.log_softmax(self._logits(input_ids.to(self.device)).float(), dim=-1)  # (b, width, vocab)
            for r, tokens in enumerate(rows):
                for i in users[tokens]:
                    targets = torch.tensor(requests[i][2], device=self.device)  # (n_cont,)
                    n_in, n_cont = len(tokens), len(targets)
                    cont_logprobs = logprobs[r, n_in - n_cont : n_in]  # (n_cont, vocab): predictions of the targets
                    token_logprobs = cont_logprobs.gather(1, targets[:, None]).squeeze(1)  # (n_cont,)
                    is_greedy = bool((cont_logprobs.argmax(dim=-1) == targets).all())
                    results[i] = (float(token_logprobs.sum()), is_greedy)
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of whole strings, scored in disjoint windows of max_length tokens.

        The string is encoded without special tokens: the prefix token (BOS) conditions the first window and is not
        itself scored. (lm-eval's hf model encodes with the tokenizer's special tokens, so for BOS-adding tokenizers
        it also adds log p(BOS | BOS); with `add_bos_token=False` it matches this method.)
        """
        totals = []
        for request in requests:
            (string,) = request.args
            tokens = self.tok_encode(string, add_special_tokens=False)
            windows = [
                lm_utils.make_disjoint_window(window)
                for window in lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1
                )
            ]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            total = sum(score for score, _ in scores)
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if asked) continuation of each context, cut at the first stop sequence."""
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 0.0))
            if temperature == 0.0:
                do_sample = False
            context_enc = self.tok_encode(context)[-(self.max_length - max_new) :]
            input_ids = torch.tensor([context_enc], device=self.device)
            sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id,
                eos_token_id=self.eot_token_id,
                **sampling,
            )
            # generate() stops at EOS itself; special tokens are dropped from the text (as lm-eval's hf model does).
            text = self.tok_decode(generated[0, input_ids.shape[1] :].tolist())
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
        return outputs


def text_lm(loaded: Any, **options: Any) -> TemplateLM:
    """The lm-eval LM of a loaded model's text-only LLM (`model.families.LoadedModel.llm`): a `CausalLMAdapter` over
    its `TextLM` (options: batch_size, device, max_length, ...; the device defaults to the LLM's), or the lm-eval LM
    a family handed over as it is (the tests' stand-ins). A model without one cannot run the text tasks."""
    llm = loaded.llm
    if llm is None:
        raise UnsupportedTaskError(f"{loaded.model_id} has no text-only LLM; the lm-eval tasks need one")
    if not isinstance(llm, TextLM):
        return llm
    options.setdefault("device", llm.device)
    return CausalLMAdapter(llm.model, llm.tokenizer, **options)


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")  # any one marks a tokenizer folder


def load_tokenizer_folder(folder: Path):
    """A folder's tokenizer: transformers' `AutoTokenizer`, or (only SentencePiece's tokenizer.model, as LLaMA-style
    releases ship, which AutoTokenizer cannot load here) the slow-LlamaTokenizer equivalent of
    `model.text_tokenizer`."""
    from transformers import AutoTokenizer

    from model.text_tokenizer import load_text_tokenizer, sentencepiece_only

    if sentencepiece_only(folder):
        return load_text_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _load_llm_folder(folder: Path, tokenizer_folders: list[Path], dtype: str, model_name: str):
    from transformers import AutoModelForCausalLM

    if not folder.is_dir():
        raise FileNotFoundError(f"{model_name} checkpoint has no LLM folder: {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{model_name} LLM folder {folder} has no config.json")
    tokenizer_folder = next(
        (d for d in tokenizer_folders if any((d / name).is_file() for name in TOKENIZER_FILES)), None
    )
    if tokenizer_folder is None:
        looked = ", ".join(str(d) for d in tokenizer_folders)
        raise FileNotFoundError(
            f"{model_name} checkpoint has no tokenizer ({' / '.join(TOKENIZER_FILES)}) in: {looked}"
        )
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(dtypes)}")
    torch_dtype = dtypes[dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
    tokenizer = load_tokenizer_folder(tokenizer_folder)
    return model, tokenizer


class CheckpointLLMAdapter(CausalLMAdapter):
    """Loads the LLM of a multimodal checkpoint from `checkpoint/<LLM_SUBFOLDER>`."""

    MODEL_NAME = "checkpoint"
    LLM_SUBFOLDER = "llm"
    EXTRA_TOKENIZER_SUBFOLDERS: tuple[str, ...] = ()

    def __init__(self, checkpoint: str, dtype: str = "float32", **kwargs: Any):
        root = Path(checkpoint)
        if not root.is_dir():
            raise FileNotFoundError(f"{self.MODEL_NAME} checkpoint folder does not exist: {root}")
        llm = root / self.LLM_SUBFOLDER
        tokenizer_folders = [llm] + [root / sub for sub in self.EXTRA_TOKENIZER_SUBFOLDERS]
        model, tokenizer = _load_llm_folder(llm, tokenizer_folders, dtype, self.MODEL_NAME)
        super().__init__(model, tokenizer, **kwargs)
        self.checkpoint = str(root)


class VILAAdapter(CheckpointLLMAdapter):
    """VILA's LLM (Llama-2) from a VILA checkpoint: `llm/`."""

    MODEL_NAME = "vila-llm"
    LLM_SUBFOLDER = "llm"


class FamilyLM(TemplateLM):
    """The lm-eval model of one model family (`FAMILY`): `checkpoint=DIR` goes through the family's loader, and
    the result is `text_lm` of that model (a `CausalLMAdapter` over its LLM). lm-eval builds models
    with the `create_from_arg_*` classmethods, which return that LM; the class itself is never instantiated."""

    FAMILY = ""

    @classmethod
    def load(cls, checkpoint: str, dtype: str = "float32", device: str | None = None, **lm_options: Any) -> TemplateLM:
        device = available_device(device)
        loaded = get_family(cls.FAMILY).load(checkpoint, device=device, dtype=dtype)
        return text_lm(loaded, device=device, **lm_options)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> TemplateLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.load(**lm_utils.simple_parse_args_string(arg_string), **extra)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> TemplateLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls.load(**arg_dict, **extra)


def _family_models() -> dict[str, type]:
    """One `FamilyLM` subclass per family with a loader, defined in this module so that lm-eval's lazy
    "module:Class" placeholders resolve to it."""
    classes = {}
    for name, family in families().items():
        if family.loader:
            cls_name = f"{name.capitalize()}FamilyLM"
            attrs = {"FAMILY": name, "__doc__": f"lm-eval model of {family.title}", "__module__": __name__}
            classes[name] = type(cls_name, (FamilyLM,), attrs)
    return classes


FAMILY_MODELS = _family_models()
globals().update({cls.__name__: cls for cls in FAMILY_MODELS.values()})

# Registered as lazy "module:Class" targets under this module's import name, not with the @register_model decorator:
# under `python -m eval.lm_adapter` this file also runs as `__main__`, and a decorator would then register a second,
# different class object under the same alias (lm-eval rejects that). A placeholder resolves to one class either way.
# `vila` is the VILA family (any checkpoint its loader reads); `vila-llm` reads only the LLM of a per-component VILA
# release (`DIR/llm/`), enough for the text-only benchmarks without loading the vision tower.
ADAPTERS = {"vila-llm": VILAAdapter, **FAMILY_MODELS}
for _alias, _cls in ADAPTERS.items():
    model_registry.register(_alias, target=f"eval.lm_adapter:{_cls.__name__}")


def registered_models() -> list[str]:
    return sorted(model_registry.keys())


def _adapter_help(cls: type) -> str:
    if issubclass(cls, FamilyLM):
        family = get_family(cls.FAMILY)
        return f"the LLM of {family.title}; DIR is {family.checkpoint_help}"
    return f"the LLM in DIR/{cls.LLM_SUBFOLDER}/ ({(cls.__doc__ or '').strip().splitlines()[0]})"


def help_preface() -> str:
    """What this CLI adds to lm-eval's: the registered adapters and the local MMLU tasks (printed before its --help)."""
    import textwrap

    adapters = "\n".join(f"  {alias:6s} checkpoint=DIR: {_adapter_help(cls)}" for alias, cls in ADAPTERS.items())
    subjects = textwrap.fill(", ".join(sorted(SUBJECT_CATEGORY)), width=110, initial_indent="    ", subsequent_indent="    ")
    groups = ", ".join(f"{TASK_PREFIX}_{c}" for c in CATEGORY_NAMES)
    return (
        "lm-eval-vlm: lm-eval's CLI with this repository's model adapters registered (python -m eval.lm_adapter).\n\n"
        f"model adapters (--model), besides lm-eval's own (hf, ...):\n{adapters}\n\n"
        "local MMLU tasks (--tasks; from CSVs, offline), written by `python -m eval.mmlu --write-tasks TASKS_DIR`\n"
        "and found with --include_path TASKS_DIR:\n"
        f"  {TASK_PREFIX} (all subjects, 5-shot with --num_fewshot 5); groups {groups};\n"
        f"  one task per subject, {TASK_PREFIX}_<subject>, for the subjects\n{subjects}\n\n"
        "example:\n"
        f"  lm-eval-vlm --model {next(iter(FAMILY_MODELS), 'vila')} --model_args checkpoint=DIR --tasks mmlu_local \\\n"
        "      --include_path TASKS_DIR --num_fewshot 5 --batch_size 8\n\n"
        "lm-eval's own help follows.\n"
    )


def main() -> None:
    """lm-eval's own CLI, with this module's models registered (they are, by importing it)."""
    from lm_eval.__main__ import cli_evaluate

    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(help_preface())
    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
