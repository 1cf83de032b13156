"""Stage 1 (`vila_pretrain`): visual language pre-training of the LLM and the projector (paper §2, §3.1-3.2).

Data (model/vila/data.py): MMC4 documents (`data.mmc4`, official JSONL; `data.mmc4_format` interleaved / pairs /
reformatted) and COYO pairs (`data.coyo`, tar shards; 4 per sample, each its own row as released), drawn per sample
by `data.blend`. With
`data.miniworld` the documents are built from the mini world's train split and the pairs are its caption samples.
`train_llm=false`: projector-only pre-training (Table 1 "PreT" ✗). Starts from a vila_projector run (`init_from`).
"""

from __future__ import annotations

from functools import partial

from harness.errors import InputError
from model.vila.data import Grouped, coyo_rows, mmc4_image_bytes, mmc4_segments, open_image
from train.vila.common import VilaStageTask, load_vila_weights, miniworld_data, require_files
from train.data import ImageTextShards, JsonlRecords, Mapped, Mixture
from train.distributed import DistInfo
from train.stages.common import require_upstream

CORPORA = ("mmc4", "coyo")


def _load_mmc4_image(info: dict, image_root: str):
    data = mmc4_image_bytes(info, image_root)
    if data is None:
        return None
    try:
        return open_image(data)
    except Exception:  # PIL raises many types for a bad file: the image is left out of its document
        return None


def _is_caption(sample) -> bool:
    """COYO samples are captions; in the mini world's shards (which also hold question texts) only kind "caption"."""
    return sample.meta.get("kind", "caption") == "caption"


class PretrainTask(VilaStageTask):
    stage = 1
    name = "vila_pretrain"
    upstream = "vila_projector"

    def train_llm(self) -> bool | None:
        return self.cfg.train_llm

    def weights(self) -> dict[str, float]:
        return {k: float(w) for k, w in self.cfg.data.blend.items() if w > 0}

    def check_data(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        unknown = set(data.blend) - set(CORPORA)
        if unknown or not self.weights() or any(w < 0 for w in data.blend.values()):
            raise InputError(f"data.blend={data.blend}: weights >= 0 of {CORPORA}, at least one positive")
        if data.mmc4_format not in ("interleaved", "pairs", "reformatted"):
            raise InputError(f"data.mmc4_format={data.mmc4_format!r}: interleaved, pairs or reformatted")
        if data.max_images_per_doc < 1 or data.coyo_pairs_per_sample < 1:
            raise InputError("data.max_images_per_doc and data.coyo_pairs_per_sample must be >= 1")
        for corpus in self.weights():
            require_files(getattr(data, corpus), f"data.{corpus}", data.miniworld)
        require_upstream(cfg.init_from, "init_from", self.name, self.upstream)

    def load_init(self, vila) -> None:
        if self.cfg.init_from != "random-init":
            load_vila_weights(vila, self.cfg.init_from, "init_from")

    def build_samples(self, info: DistInfo):
        data, seed = self.cfg.data, self.cfg.loop.seed
        common = dict(rank=info.rank, world_size=info.world_size, partition=data.partition)
        mmc4, image_root, coyo = list(data.mmc4), data.mmc4_image_root, list(data.coyo)
        if not mmc4 or not coyo:
            paths = miniworld_data(data.miniworld, self.output_dir, info) if data.miniworld else {}
            if not mmc4 and paths:
                mmc4, image_root = [paths["mmc4"]], paths["image_root"]
            if not coyo and data.miniworld:
                coyo = [f"{data.miniworld}/shards/train-*.tar"]
        streams = {}
        weights = self.weights()
        if "mmc4" in weights:
            load = partial(_load_mmc4_image, image_root=image_root)
            to_segments = partial(mmc4_segments, load_image=load, fmt=data.mmc4_format, max_images=data.max_images_per_doc)
            streams["mmc4"] = Mapped(JsonlRecords(mmc4, seed=seed + 11, **common), to_segments)
        if "coyo" in weights:
            pairs = Mapped(ImageTextShards(coyo, seed=seed + 13, **common), lambda s: s if _is_caption(s) else None)
            groups = Grouped(pairs, data.coyo_pairs_per_sample)
            streams["coyo"] = Mapped(groups, lambda group: coyo_rows([(s.image, s.text) for s in group]))
        mixed = Mixture(streams, weights, seed=seed + 3)
        return Mapped(mixed, lambda drawn: drawn[1])
