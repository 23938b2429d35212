"""The label-free quality score and the `rank` / `quality` commands, end to end on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import factorlens.models
from factorlens.cli import main
from factorlens.data import load_data
from factorlens.errors import FactorlensError
from factorlens.models import DigitsCNN, MnistCNN, train_classifier
from factorlens.quality import assess, prediction_rank_score

MODEL = f"{Path(factorlens.models.__file__)}:DigitsCNN"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """An untrained and a trained DigitsCNN, and one of another architecture."""
    root = tmp_path_factory.mktemp("ckpts")
    digits = load_data("digits")
    torch.manual_seed(0)
    init = DigitsCNN()
    torch.save(init.state_dict(), root / "init.pt")
    trained = train_classifier(
        DigitsCNN(), digits.images[:1000], digits.labels[:1000], epochs=4, seed=0
    )
    torch.save(trained.state_dict(), root / "trained.pt")
    torch.save(MnistCNN().state_dict(), root / "other.pt")
    return {"init": root / "init.pt", "trained": root / "trained.pt", "other": root / "other.pt"}


def test_prediction_rank_score_bounds() -> None:
    k = 5
    confident = np.eye(k)[np.arange(200) % k] * 50.0  # one-hot, balanced: rank k
    score, er = prediction_rank_score(confident)
    assert score == pytest.approx(1.0, abs=1e-6) and er == pytest.approx(k, abs=1e-5)
    same = np.tile(np.arange(k, dtype=float), (200, 1))  # every input gets the same answer
    score, er = prediction_rank_score(same)
    assert er == pytest.approx(1.0) and score == pytest.approx(1 / k)
    with pytest.raises(FactorlensError, match="class"):
        prediction_rank_score(np.ones((10, 1)))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 12), m=st.integers(1, 12), reps=st.integers(1, 20), seed=st.integers(0, 99))
def test_confident_answers_spread_over_m_classes_score_m_over_k(k, m, reps, seed) -> None:
    m = min(m, k)
    classes = np.random.default_rng(seed).permutation(k)[:m]
    logits = np.full((m * reps, k), -60.0)
    logits[np.arange(m * reps), np.repeat(classes, reps)] = 60.0  # one confident answer each
    score, er = prediction_rank_score(logits)
    assert er == pytest.approx(m, rel=1e-6)
    assert score == pytest.approx(m / k, rel=1e-6)


def test_trained_scores_higher_than_untrained_without_labels(checkpoints) -> None:
    data = load_data("digits").subset(300, seed=1)
    data_no_labels = type(data)(data.images, None, None, "no labels")
    reports = {}
    for name in ("init", "trained"):
        model = DigitsCNN()
        model.load_state_dict(torch.load(checkpoints[name], weights_only=True))
        reports[name] = assess(model, data_no_labels, max_rank=3, checkpoint=name)
    assert reports["trained"].score > reports["init"].score + 0.2
    assert reports["trained"].accuracy is None  # no labels, no accuracy
    for r in reports.values():
        assert r.rank_scan["chosen"] == r.rank and len(r.rank_scan["criteria"]["bicv"]) == 3


def test_degenerate_checkpoint_is_reported_not_fatal() -> None:
    model = DigitsCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = load_data("digits").subset(60, seed=0)
    report = assess(model, data, max_rank=2)
    assert report.score == pytest.approx(1 / 10)  # every input gets the same answer
    assert "features.0" in report.degenerate and "classifier.3" in report.degenerate


def test_quality_command_end_to_end(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "q.json"
    args = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "200",
            "--max-rank", "3", "--json", str(out), "--quiet",
            str(checkpoints["init"]), str(checkpoints["trained"])]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Spearman(score, accuracy)" in text and "accuracy" in text.splitlines()[0]
    rows = json.loads(out.read_text())
    assert [r["checkpoint"] for r in rows] == [
        str(checkpoints["init"]),
        str(checkpoints["trained"]),
    ]
    assert all(isinstance(r["rank"], int) and isinstance(r["score"], float) for r in rows)
    assert rows[1]["score"] > rows[0]["score"]
    assert main(args) == 2  # the JSON exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    single = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "100",
              "--no-rank", "--quiet", str(checkpoints["trained"])]  # fmt: skip
    assert main(single) == 0
    assert "Spearman" not in capsys.readouterr().out  # one checkpoint: no correlation


def test_quality_json_into_a_missing_folder_is_refused_before_scoring(checkpoints, capsys):
    args = ["quality", "--model", MODEL, "--data", "digits", "--json", "/nonexistent/q.json",
            "--quiet", str(checkpoints["trained"])]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/nonexistent" in err and "\n" not in err.strip()


def test_quality_names_mismatching_keys(checkpoints, capsys) -> None:
    args = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "50", "--quiet",
            str(checkpoints["other"])]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "features" in err


def test_rank_command_writes_the_analysis_at_the_chosen_rank(checkpoints, tmp_path, capsys):
    out = tmp_path / "rank"
    args = ["rank", "--model", MODEL, "--weights", str(checkpoints["trained"]), "--data",
            "digits", "--n-samples", "150", "--layers", "features.4,classifier.3",
            "--max-rank", "4", "--n-init", "1", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "chosen rank:" in text and "stability" in text
    summary = json.loads((out / "result.json").read_text())
    scan = summary["meta"]["rank_scan"]
    assert summary["rank"] == scan["chosen"] and scan["ranks"] == [1, 2, 3, 4]
    assert set(scan["criteria"]) == {"fit", "corcondia", "bicv", "stability"}
    assert (out / "index.html").is_file()
