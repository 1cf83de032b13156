"""LaVIT Table 5: the paper preset's text mix as stated and as drawn by stage 2's own sampler."""

from __future__ import annotations

import pandas as pd
import pytest

from reproduce import table5


def test_stated_and_drawn_proportions_match_table5(tmp_path, capsys):
    assert table5.main(["--samples", "20000", "--results-dir", str(tmp_path), "--check"]) == 0
    drawn = pd.read_csv(tmp_path / "lavit_table5_drawn.csv").set_index("subset")
    assert int(drawn["drawn"].sum()) == 20000 and list(drawn.index) == list(table5.SUBSETS)
    assert drawn.loc["C4", "stated %"] == pytest.approx(80.0) and drawn.drop("C4")["stated %"].tolist() == pytest.approx([4.0] * 5)
    assert drawn["deviation (pp)"].abs().max() < 0.5 and 0.0 < drawn["p_value"].iloc[0] <= 1.0
    frame = pd.read_csv(tmp_path / "lavit_table5.csv")
    assert (frame[frame["kind"] == "number"]["verdict"] == "match").all()
    assert "Drawn by stage 2's text sampler" in (tmp_path / "lavit_table5.md").read_text()


def test_a_sampler_off_by_more_than_half_a_point_fails_check(tmp_path, monkeypatch, capsys):
    skewed = {"c4": 7900, "github": 420, "wikipedia": 420, "books": 420, "arxiv": 420, "stackexchange": 420}  # C4 79%
    monkeypatch.setattr(table5, "draw", lambda cfg, samples, directory: skewed)
    assert table5.main(["--results-dir", str(tmp_path)]) == 0  # reported
    assert table5.main(["--results-dir", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    # 1 point off in 10,000 draws: outside the claim although a chi-square test alone would not reject it
    assert "largest deviation 1.000 pp over 10,000 draws" in err and "p = 0.283" in err


def test_a_preset_that_drifts_from_table5_fails_check(tmp_path, monkeypatch):
    cfg = table5.paper_config()
    cfg.data.text_weights = {**cfg.data.text_weights, "c4": 0.7, "books": 0.14}
    monkeypatch.setattr(table5, "paper_config", lambda: cfg)
    assert table5.main(["--samples", "1000", "--results-dir", str(tmp_path), "--check"]) == 1
