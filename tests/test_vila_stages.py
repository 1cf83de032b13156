"""VILA's training stages through the launcher (`python -m train vila_*`): a few steps of each on a small mini world,
what each stage trains and freezes, the weights a stage starts from, the presets, the ablation switches, and the
one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.config import get_preset, resolve
from harness.errors import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(stage: str, *overrides: str):
    import train.vila.config  # noqa: F401  (registers the presets)

    return resolve(get_preset(f"train/{stage}", "mini"), overrides=list(overrides))


def _launch(stage: str, out: Path, *overrides: str) -> int:
    from train.__main__ import main

    argv = [stage, "--config", "mini", "--output-dir", str(out)]
    for o in overrides:
        argv += ["--set", o]
    return run_cli(main, argv)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from train.stages.common import latest_checkpoint_dir

    return load_file(str(Path(latest_checkpoint_dir(str(run))) / "model.safetensors"))


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.miniworld import build_miniworld

    return build_miniworld(tmp_path_factory.mktemp("mw") / "world", seed=0, train_images=40, test_images=10)


@pytest.fixture(scope="module")
def llm_file(tmp_path_factory) -> Path:
    """An llm_pretrain-layout weights file (`language_model.*`) with the mini LLM shapes."""
    from transformers import LlamaForCausalLM

    from model.vila.modeling_vila import llama_config
    from train.vila.config import mini_model

    torch.manual_seed(5)
    llm = LlamaForCausalLM(llama_config(mini_model()))
    path = tmp_path_factory.mktemp("llm") / "llm.safetensors"
    save_file({f"language_model.{k}": v.contiguous() for k, v in llm.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def chain(world, llm_file, tmp_path_factory) -> dict[str, Path]:
    """vila_vision_pretrain -> vila_projector -> vila_pretrain -> vila_sft, a few steps each, through the launcher."""
    root = tmp_path_factory.mktemp("chain")
    w = f"data.miniworld={world.root}"
    runs = {name: root / name for name in ("vision", "projector", "pretrain", "sft", "sft_frozen")}
    assert _launch("vila_vision_pretrain", runs["vision"], w, "loop.steps=3", "loop.global_batch_size=8", "loop.micro_batch_size=8") == 0
    assert _launch("vila_projector", runs["projector"], w, f"llm_path={llm_file}", f"vision_tower_path={runs['vision']}",
                   "loop.steps=2", "loop.global_batch_size=4", "loop.micro_batch_size=2") == 0
    assert _launch("vila_pretrain", runs["pretrain"], w, f"init_from={runs['projector']}", "seq_len=256",
                   "loop.steps=2", "loop.global_batch_size=2", "loop.micro_batch_size=2") == 0
    small = ("loop.steps=2", "loop.global_batch_size=4", "loop.micro_batch_size=4")
    assert _launch("vila_sft", runs["sft"], w, f"init_from={runs['pretrain']}", *small) == 0
    assert _launch("vila_sft", runs["sft_frozen"], w, f"init_from={runs['pretrain']}", "train_llm=false", *small) == 0
    return runs


def test_each_stage_finishes_through_the_launcher(chain):
    for name, run in chain.items():
        summary = json.loads((run / "run.json").read_text())
        assert summary["finished"] and summary["last_step"] == (3 if name == "vision" else 2), name
        metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    pretrain = [json.loads(l) for l in (chain["pretrain"] / "metrics.jsonl").read_text().splitlines()]
    assert all(m["images"] >= 2 for m in pretrain)  # MMC4 documents and COYO 4-pair samples carry several images


def test_checkpoints_hold_the_whole_model_under_vilas_own_names(chain):
    from model.vila.modeling_vila import build_vila
    from train.vila.config import mini_model

    expected = set(build_vila(mini_model(), device="meta").state_dict())
    for name in ("projector", "pretrain", "sft"):
        assert set(_weights(chain[name])) == expected, name


def test_stage_zero_starts_from_the_stand_ins_and_trains_only_the_projector(chain, llm_file):
    saved = _weights(chain["projector"])
    assert _same(_part(saved, "language_model."), {k: v for k, v in load_file(str(llm_file)).items()})
    assert _same(_part(saved, "vision_tower."), _part(_weights(chain["vision"]), "vision_tower."))


def test_stage_one_trains_the_llm_and_keeps_the_vision_tower(chain):
    before, after = _weights(chain["projector"]), _weights(chain["pretrain"])
    assert _same(_part(before, "vision_tower."), _part(after, "vision_tower."))
    assert not _same(_part(before, "language_model."), _part(after, "language_model."))
    assert not _same(_part(before, "mm_projector."), _part(after, "mm_projector."))


def test_sft_with_a_frozen_llm_trains_only_the_projector(chain):
    start, full, frozen = _weights(chain["pretrain"]), _weights(chain["sft"]), _weights(chain["sft_frozen"])
    assert not _same(_part(start, "language_model."), _part(full, "language_model."))
    assert _same(_part(start, "language_model."), _part(frozen, "language_model."))
    assert not _same(_part(start, "mm_projector."), _part(frozen, "mm_projector."))


def test_the_llm_stand_in_stage_feeds_stage_zero(world, tmp_path):
    root = world.root
    sources = "{" + ", ".join(f'"{n}": ["{root}/text/{n}.jsonl"]' for n in ("shapes", "qa", "facts", "filler")) + "}"
    llm = tmp_path / "llm"
    assert _launch("vila_llm_pretrain", llm, f"text_tokenizer={root}/tokenizer", f"data.text_sources={sources}", "loop.steps=2") == 0
    out = tmp_path / "projector"
    assert _launch("vila_projector", out, f"data.miniworld={root}", f"llm_path={llm}", "vision_tower_path=random-init",
                   "loop.steps=1", "loop.global_batch_size=2", "loop.micro_batch_size=2") == 0
    assert _same(_part(_weights(out), "language_model."), _part(_weights(llm), "language_model."))


def test_a_resumed_stage_reproduces_the_uninterrupted_run(chain, world, tmp_path):
    # The SFT run of the chain, stopped after step 1 and resumed: the stream positions (record permutation, joint-SFT
    # mixture draws), RNG and optimizer come back from the checkpoint, so the weights match bit for bit.
    args = (f"data.miniworld={world.root}", f"init_from={chain['pretrain']}", "loop.steps=2", "loop.global_batch_size=4",
            "loop.micro_batch_size=4")
    out = tmp_path / "sft"
    assert _launch("vila_sft", out, *args, "loop.max_steps_this_run=1") == 0
    assert not (out / "run.json").exists()
    assert _launch("vila_sft", out, *args) == 0
    resumed, straight = _weights(out), _weights(chain["sft"])
    assert _same(resumed, straight)


# ---------------------------------------------------------------------------------------------
# Presets and switches (no training)


def test_paper_presets_are_the_released_recipe():
    import train.vila.config  # noqa: F401

    expected = {"vila_projector": (1e-3, 256, 2048), "vila_pretrain": (5e-5, 1024, 4096), "vila_sft": (2e-5, 128, 4096)}
    for stage, (lr, batch, length) in expected.items():
        cfg = get_preset(f"train/{stage}", "paper")
        assert (cfg.optim.lr, cfg.loop.global_batch_size, cfg.seq_len) == (lr, batch, length), stage
        assert cfg.optim.weight_decay == 0.0 and cfg.optim.schedule == "cosine" and cfg.dist.precision == "bf16"
        assert abs(cfg.optim.warmup_steps / cfg.loop.steps - 0.03) < 0.002  # warm-up ratio 0.03 of the one epoch
        assert cfg.model.llm.hidden_size == 4096 and cfg.model.vision.image_size == 336  # VILA-7B
    pre = get_preset("train/vila_pretrain", "paper")
    assert pre.data.blend == {"mmc4": 1.0, "coyo": 1.0} and pre.data.max_images_per_doc == 6 and pre.data.coyo_pairs_per_sample == 4
    assert get_preset("train/vila_sft", "paper").data.joint_sft


def _counts(stage: str, *overrides: str) -> tuple[int, int]:
    from train.stages import task_class

    return task_class(stage)(_cfg(stage, *overrides), Path("/nonexistent")).parameter_counts()


def test_ablation_switches_reach_the_model():
    projector_only = _counts("vila_pretrain", "train_llm=false")
    full = _counts("vila_pretrain")
    assert projector_only[0] < full[0] and sum(projector_only) == sum(full)  # Table 1 PreT: LLM frozen
    linear = _counts("vila_pretrain", "model.projector.type=linear", "train_llm=false")
    transformer = _counts("vila_pretrain", "model.projector.type=transformer", "train_llm=false")
    assert linear[0] < transformer[0]  # Table 1 (c) vs (d)
    lora = _counts("vila_pretrain", "model.ablation.lora_rank=4")
    assert projector_only[0] < lora[0] < full[0]  # Table 9: adapters train, the LLM does not
    expert = _counts("vila_pretrain", "model.ablation.visual_expert=true")
    # Table 8: the LLaMA stays frozen, the new expert weights (a copy of its attention and MLP) are what trains
    assert expert[0] - projector_only[0] == sum(expert) - sum(full) > 0
    assert _cfg("vila_pretrain", "model.vision.image_size=32").model.tokens_per_image == 16  # Table 7: 224-px analogue
    assert _cfg("vila_pretrain", "model.projector.type=downsample_2x2").model.tokens_per_image == 9


def _error(capsys, stage, out, *overrides) -> str:
    assert _launch(stage, out, *overrides) == 2
    return capsys.readouterr().err.strip()


def test_bad_input_is_one_error_line(capsys, tmp_path, world):
    w = f"data.miniworld={world.root}"
    assert "init_from is not set" in _error(capsys, "vila_pretrain", tmp_path / "a", w)
    assert "llm_path is not set" in _error(capsys, "vila_projector", tmp_path / "b", w, "vision_tower_path=random-init")
    assert "data.blend" in _error(capsys, "vila_pretrain", tmp_path / "c", w, "init_from=random-init", 'data.blend={"laion": 1.0}')
    assert "data.text_ratio" in _error(capsys, "vila_sft", tmp_path / "d", w, "init_from=random-init", "data.text_ratio=1.5")
    assert "data.miniworld" in _error(capsys, "vila_sft", tmp_path / "e", "data.miniworld=/nonexistent", "init_from=random-init")
    assert "released CLIP" in _error(capsys, "vila_vision_pretrain", tmp_path / "f", "released_stand_in=true")


def test_llm_weights_of_other_shapes_are_refused(capsys, tmp_path, world, llm_file):
    bad = tmp_path / "llm.safetensors"
    save_file({k: v for k, v in load_file(str(llm_file)).items()}, str(bad))
    err = _error(capsys, "vila_projector", tmp_path / "run", f"data.miniworld={world.root}", f"llm_path={bad}",
                 "vision_tower_path=random-init", "model.llm.intermediate_size=172", "loop.steps=1")
    assert err.startswith("error:") and "llm_path" in err and "shapes" in err


@pytest.mark.parametrize("corpus", ["coyo", "mmc4-pairs"])
def test_stage_one_trains_each_pair_as_its_own_sequence(world, tmp_path, corpus):
    """COYO's four pairs per sample (and the MMC4-pairs ablation's pairs) are separate rows of the batch, each
    `<s><image>caption</s>` with one image, as the released loader (CONCAT_SAMPLES = False) trains them; the
    micro-batch counts samples. Interleaved MMC4 documents stay one row each, with their images together."""
    from train.distributed import DistInfo
    from train.vila.pretrain import PretrainTask

    blend = {"coyo": ('data.blend={"mmc4": 0.0, "coyo": 1.0}',),
             "mmc4-pairs": ('data.blend={"mmc4": 1.0, "coyo": 0.0}', "data.mmc4_format=pairs")}[corpus]  # fmt: skip
    cfg = _cfg("vila_pretrain", f"data.miniworld={world.root}", *blend, "init_from=random-init", "seq_len=256")
    task = PretrainTask(cfg, tmp_path)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    batch = next(iter(task.build_data(info, 2)))
    image_id, bos = cfg.model.image_token_index, cfg.model.llm.bos_token_id
    if corpus == "coyo":
        assert len(batch) == 2 * 4  # two samples of four pairs
    else:
        assert len(batch) > 2  # the mini documents hold 2-6 matched images each
    for row in batch:
        assert row.input_ids.count(image_id) == 1 and len(row.images) == 1
        assert row.input_ids[0] == bos and row.input_ids[1] == image_id
    interleaved = _cfg("vila_pretrain", f"data.miniworld={world.root}", 'data.blend={"mmc4": 1.0, "coyo": 0.0}',
                       "init_from=random-init", "seq_len=256")  # fmt: skip
    rows = next(iter(PretrainTask(interleaved, tmp_path / "interleaved").build_data(info, 2)))
    assert len(rows) == 2 and all(len(r.images) >= 2 for r in rows)
