"""Stage 2 (`vila_sft`): visual instruction tuning of everything but the vision tower (paper §2, §3.3).

Data: LLaVA conversation records (`data.files`; the mini world's captions and questions with `data.miniworld`)
rendered with the model's conversation template (vicuna_v1 for VILA-7B; `data.template` overrides), labels only on
the assistant turns. Joint SFT (Table 4, `data.joint_sft`): text-only instruction records (`data.text_files`, FLAN at
paper scale; the mini world corpus' question-answer documents) are drawn with probability `data.text_ratio`.
`train_llm=false`: projector-only SFT (Table 1, setting a). Starts from a vila_pretrain run (`init_from`).
"""

from __future__ import annotations

from harness.errors import InputError
from model.vila.data import read_records
from train.vila.common import VilaStageTask, load_vila_weights, miniworld_data, require_files
from train.vila.projector import conversation_stream
from train.data import Mapped, Mixture
from train.distributed import DistInfo
from train.stages.common import require_upstream


class SftTask(VilaStageTask):
    stage = 2
    name = "vila_sft"
    upstream = "vila_pretrain"

    def train_llm(self) -> bool | None:
        return self.cfg.train_llm

    def template(self) -> str:
        return self.cfg.data.template or self.cfg.model.conversation

    def check_data(self) -> None:
        cfg, data = self.cfg, self.cfg.data
        require_files(data.files, "data.files", data.miniworld)
        if data.joint_sft:
            if not 0.0 < data.text_ratio < 1.0:
                raise InputError(f"data.text_ratio={data.text_ratio} must lie in (0, 1) with data.joint_sft=true")
            require_files(data.text_files, "data.text_files", data.miniworld)
        require_upstream(cfg.init_from, "init_from", self.name, self.upstream)
        from model.vila.conversation import TEMPLATES

        if self.template() not in TEMPLATES:
            raise InputError(f"data.template={self.template()!r}: no such conversation template ({', '.join(TEMPLATES)})")

    def load_init(self, vila) -> None:
        if self.cfg.init_from != "random-init":
            load_vila_weights(vila, self.cfg.init_from, "init_from")

    def build_samples(self, info: DistInfo):
        data, seed = self.cfg.data, self.cfg.loop.seed
        files, text_files, folder = list(data.files), list(data.text_files), data.image_folder
        if not files or (data.joint_sft and not text_files):
            paths = miniworld_data(data.miniworld, self.output_dir, info)
            if not files:
                files, folder = [paths["sft"]], paths["image_root"]
            text_files = text_files or [paths["text_sft"]]
        visual = conversation_stream(read_records(files), self.template(), folder, seed, info)
        if not data.joint_sft:
            return visual
        text = conversation_stream(read_records(text_files), self.template(), folder, seed + 1, info)
        mixed = Mixture({"visual": visual, "text": text}, {"visual": 1.0 - data.text_ratio, "text": data.text_ratio}, seed=seed + 2)
        return Mapped(mixed, lambda drawn: drawn[1])
