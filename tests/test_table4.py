"""LaVIT Table 4 (`reproduce/table4.py`): the forgetting grid declared on the mini chain, its seed summaries, the
text-only loader of the base LLM (an `llm_pretrain` run), per-task data roots and limits in the table machinery,
and the bars figure. Nothing here trains more than a 2-step llm_pretrain run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from reproduce import table as T
from reproduce import table4

pytestmark = pytest.mark.usefixtures("one_thread")


def _plans(spec, profile: str, tmp_path: Path) -> dict:
    ctx = T.Context(spec, profile, spec.profiles[profile], tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
    return {label: T.plan_chain(row, ctx) for label, row in spec.profiles[profile].rows.items() if isinstance(row, T.Trained)}


def test_the_grid_switches_one_setting_per_row_and_reuses_table1(tmp_path):
    from reproduce.table1 import TABLE as TABLE1

    table1 = [s.directory for s in _plans(TABLE1, "mini", tmp_path)["Ours (mini LaVIT)"]]
    ctx = T.Context(table4.TABLE, "mini", table4.MINI, tmp_path / "runs", tmp_path, tmp_path / "data", None, "local", "cpu")
    high, less, standard = (s for s, _ in table4.SETTINGS)
    rows = table4.MINI.rows
    assert all(rows[s].seeds == table4.SEEDS == (0, 1) for s in (high, less, standard))
    plans = {(label, seed): T.plan_chain(rows[label].with_seed(seed), ctx) for label in (high, less, standard) for seed in table4.SEEDS}
    # The standard setting at seed 0 is Table 1's model: the same run directories, nothing retrained.
    assert [s.directory for s in plans[standard, 0]] == table1
    # The base LLM row is the chain's llm_pretrain run itself.
    assert [s.directory for s in T.plan_chain(rows[table4.BASE], ctx)] == [table1[0]]
    assert all([s.directory for s in chain[:2]] == table1[:2] for chain in plans.values())
    assert len({chain[-1].directory for chain in plans.values()}) == 6  # 3 settings x 2 seeds, all distinct
    for (label, seed), chain in plans.items():
        cfg = chain[-1].config
        assert cfg.loop.seed == seed
        lr, mix = cfg.optim.group_lr["llm"], tuple(cfg.data.text_to_image_text)
        assert (lr, mix) == {high: (1.5e-3, (1.0, 2.0)), less: (5e-4, (1.0, 4.0)), standard: (5e-4, (1.0, 2.0))}[label]
        assert cfg.loop.steps == table1_steps(tmp_path)  # same length as Table 1's stage 2


def table1_steps(tmp_path) -> int:
    from reproduce.table1 import TABLE as TABLE1

    return _plans(TABLE1, "mini", tmp_path)["Ours (mini LaVIT)"][-1].config.loop.steps


def test_mini_rows_and_claims_match_the_mini_reference():
    ref = T.reference_for("mini/lavit_table4")
    assert list(table4.MINI.rows) == ref.rows
    assert [c.label for c in table4.MINI.columns] == ref.columns
    assert ref.claims and all(not c.gate for c in ref.claims)  # the paper's claims: reported, never gated
    paper = T.reference_for("lavit_table4")
    assert set(table4.PAPER.rows) == set(paper.rows) - {"LLaMA-7B"}  # the LLaMA paper's row stays reference-only
    assert [c.label for c in table4.PAPER.columns] == ["Humanities", "STEM", "Social Sciences", "Other", "Average"]


def test_paper_profile_plans_the_two_switched_settings(tmp_path):
    plans = _plans(table4.TABLE, "paper", tmp_path)
    assert set(plans) == {"LaVIT-7B (LR_L 1.5e-4, 66%:33%)", "LaVIT-7B (LR_L 5e-5, 50%:50%)"}
    high = plans["LaVIT-7B (LR_L 1.5e-4, 66%:33%)"][-1].config
    less = plans["LaVIT-7B (LR_L 5e-5, 50%:50%)"][-1].config
    assert high.optim.group_lr == {"llm": 1.5e-4} and tuple(high.data.text_to_image_text) == (2.0, 1.0)
    assert less.optim.group_lr == {"llm": 5e-5} and tuple(less.data.text_to_image_text) == (1.0, 1.0)
    assert not (tmp_path / "runs").exists()


def test_settings_are_read_from_the_run_config(tmp_path):
    unified = tmp_path / "u"
    unified.mkdir()
    (unified / "config.yaml").write_text("optim: {lr: 0.001, group_lr: {llm: 0.0015}}\ndata: {text_to_image_text: [1.0, 4.0]}\n")
    base = tmp_path / "b"
    base.mkdir()
    (base / "config.yaml").write_text("optim: {lr: 0.003}\ndata: {text_weights: {a: 1.0}}\n")
    assert table4.llm_lr(None, unified) == 1.5e-3 and table4.text_share(None, unified) == pytest.approx(20.0)
    assert table4.llm_lr(None, base) == 3e-3 and table4.text_share(None, base) == 100.0
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        table4.llm_lr(None, tmp_path)


def test_evaluate_row_reads_each_task_from_its_own_root_with_its_limit(tmp_path, monkeypatch):
    """mini_knowledge and its recall form from the mini world (all questions), mmlu from the real MMLU (5 per
    subject); one model load."""
    import eval.evaluate
    import model.families

    calls, loads = [], []
    monkeypatch.setattr(eval.evaluate, "evaluate_tasks", lambda tasks, family, ckpt, root, out, **kw: calls.append(
        (tuple(tasks), root, kw["limit"], kw["loaded"])) or pd.DataFrame([{"task": t, "metric": "accuracy", "value": 1.0} for t in tasks]))
    monkeypatch.setattr(model.families.Family, "load", lambda self, path, device="cpu": loads.append(path) or "MODEL")
    ctx = T.Context(table4.TABLE, "mini", table4.MINI, tmp_path, tmp_path, tmp_path / "world", None, "local", "cpu")
    frame = T.evaluate_row("lavit", tmp_path / "run", tmp_path / "out", ctx)
    assert sorted(frame["task"]) == ["mini_knowledge", "mini_knowledge_recall", "mmlu"]
    assert loads == [str(tmp_path / "run")]
    assert sorted(calls) == sorted([
        (("mini_knowledge", "mini_knowledge_recall"), str(tmp_path / "world"), None, "MODEL"),
        (("mmlu",), str((T.CHECKOUT / "../shared/data").resolve()), table4.MMLU_LIMIT, "MODEL"),
    ])


def test_a_missing_mmlu_folder_is_one_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table4.MINI, "task_data", {"mmlu": str(tmp_path / "nowhere")})
    import harness.miniworld

    monkeypatch.setattr(harness.miniworld, "build_miniworld", lambda root: type("W", (), {"root": str(tmp_path)})())
    code = T.main(table4.TABLE, ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: task mmlu expects mmlu/dev/ under") and "nowhere" in err[0]
    assert not (tmp_path / "res").exists()


# --- the base LLM: an llm_pretrain run loads as a text-only LLM ---------------------------------------------------


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory) -> Path:
    from harness.config import get_preset, resolve
    from train.stages import run_stage

    import train.lavit.config  # noqa: F401  (registers the presets)

    out = tmp_path_factory.mktemp("llm_pretrain")
    cfg = resolve(get_preset("train/llm_pretrain", "mini"), overrides=["loop.steps=2", "loop.checkpoint_every=2"])
    assert run_stage("llm_pretrain", cfg, out)["finished"]
    return out


def test_llm_pretrain_run_loads_as_its_text_only_llm(llm_run):
    from lm_eval.api.instance import Instance
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from eval.interface import EvalTask, UnsupportedTaskError, require_method
    from eval.lm_adapter import text_lm
    from model.families import get_family
    from model.lavit.checkpoints import detect_layout
    from train.lavit.config import LlmPretrainStageConfig
    from model.lavit.modeling_lavit import text_llama_config
    from harness.config import load_config
    from train.stages.common import latest_checkpoint_dir

    checkpoint = Path(latest_checkpoint_dir(str(llm_run)))
    assert detect_layout(llm_run) == ("llm run", checkpoint) and detect_layout(checkpoint) == ("llm run", checkpoint)
    loaded = get_family("lavit").load(str(llm_run))
    assert loaded.source == "llm run" and loaded.model_id.endswith("@step=2")
    # The scores are those of a plain Llama holding the checkpoint's weights.
    cfg = load_config(LlmPretrainStageConfig, llm_run / "config.yaml")
    llama = LlamaForCausalLM(text_llama_config(cfg.model)).eval()
    weights = load_file(str(checkpoint / "model.safetensors"))
    llama.load_state_dict({k[len("language_model."):]: v for k, v in weights.items()})
    lm = text_lm(loaded, batch_size=2)
    pairs = [("The cat", " sat"), ("a b", " c d")]
    expected = []
    for context, continuation in pairs:
        n_context = len(lm.tok_encode(context))
        whole = lm.tok_encode(context + continuation)
        with torch.no_grad():
            logprobs = torch.log_softmax(llama(torch.tensor([whole])).logits[0].float(), dim=-1)
        expected.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(n_context, len(whole))))
    got = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)]
    assert got == pytest.approx(expected, abs=1e-4)
    assert lm.max_length == cfg.model.llm.max_position_embeddings
    # Image tasks are refused, naming what is missing.
    with pytest.raises(UnsupportedTaskError, match="caption"):
        require_method(loaded.adapter, EvalTask(name="c", kind="caption", metric="cider"))


# --- the bars figure -------------------------------------------------------------------------------------------


def test_bars_writes_a_png_and_checks_its_input(tmp_path):
    from PIL import Image

    from reproduce.figures import BarGroup, bars

    groups = [BarGroup("base", [30.0, 25.0]), BarGroup("setting", [20.0, 26.0], low=[15.0, None], high=[25.0, None])]
    path = bars(groups, ["a", "b"], tmp_path / "b.png", title="t", lines={"chance": 25.0}, width=400, height=300)
    image = Image.open(path)
    assert image.size == (400, 300) and len(image.convert("RGB").getcolors(maxcolors=1 << 16)) > 3
    with pytest.raises(ValueError, match="one value per series"):
        bars([BarGroup("x", [1.0])], ["a", "b"], tmp_path / "c.png")
