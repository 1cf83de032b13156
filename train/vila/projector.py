"""Stage 0 (`vila_projector`): projector initialisation on image-caption pairs, ViT and LLM frozen (paper §2).

Data: LLaVA caption-alignment records (`data.files`, LLaVA-1.5's 558K set at paper scale; the mini world's
captions with `data.miniworld`), rendered with the "plain" template: `<image>caption\\n`, labels on the caption.
Starts from `llm_path` (Llama-2 / an llm_pretrain run) and `vision_tower_path` (CLIP / a vila_vision_pretrain run).
"""

from __future__ import annotations

from harness.errors import InputError
from model.vila.data import RecordList, conversation_segments, conversation_turns, read_records, record_image
from train.vila.common import VilaStageTask, load_llm_weights, load_vision_weights, miniworld_data, require_files
from train.data import Mapped
from train.distributed import DistInfo
from train.stages.common import require_upstream


def conversation_stream(records: list[dict], template: str, image_folder: str, seed: int, info: DistInfo):
    """Segments of LLaVA records in a per-epoch permutation (rank-strided); unreadable records are skipped."""
    from model.vila.conversation import get_template

    prompt = get_template(template).prompt

    def to_segments(record: dict):
        try:
            img = record_image(record, image_folder) if record.get("image") else None
            return conversation_segments(conversation_turns(record), prompt, img)
        except (ValueError, OSError):
            return None  # counted as skipped_map

    return Mapped(RecordList(records, seed=seed, rank=info.rank, world_size=info.world_size), to_segments)


class ProjectorTask(VilaStageTask):
    stage = 0
    name = "vila_projector"

    def check_data(self) -> None:
        cfg = self.cfg
        require_files(cfg.data.files, "data.files", cfg.data.miniworld)
        require_upstream(cfg.llm_path, "llm_path", self.name, "vila_llm_pretrain")
        require_upstream(cfg.vision_tower_path, "vision_tower_path", self.name, "vila_vision_pretrain")
        from model.vila.conversation import TEMPLATES

        if cfg.data.template not in TEMPLATES:
            raise InputError(f"data.template={cfg.data.template!r}: no such conversation template ({', '.join(TEMPLATES)})")

    def load_init(self, vila) -> None:
        if self.cfg.llm_path != "random-init":
            load_llm_weights(vila, self.cfg.llm_path)
        if self.cfg.vision_tower_path != "random-init":
            load_vision_weights(vila, self.cfg.vision_tower_path)

    def build_samples(self, info: DistInfo):
        data = self.cfg.data
        files, folder = list(data.files), data.image_folder
        if not files:
            paths = miniworld_data(data.miniworld, self.output_dir, info)
            files, folder = [paths["align"]], paths["image_root"]
        return conversation_stream(read_records(files), data.template, folder, self.cfg.loop.seed, info)
