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
from factorlens.quality import (
    N_NEIGHBOURS,
    OUTPUT_BLOCK,
    assess,
    input_embedding,
    input_neighbours,
    neighbour_agreement,
    prediction_rank,
    quality_score,
    score_spread,
)

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


def planted_clusters(n_clusters: int = 5, per: int = 40, seed: int = 0):
    """Inputs ``(n, 30)`` in well-separated Gaussian clusters, with their cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, 30)) * 6.0
    ids = np.repeat(np.arange(n_clusters), per)
    return centres[ids] + rng.normal(size=(ids.size, 30)), ids


def one_hot_logits(classes: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[classes] * 40.0


def test_prediction_rank_bounds() -> None:
    k = 5
    assert prediction_rank(one_hot_logits(np.arange(200) % k, k)) == pytest.approx(k, abs=1e-5)
    same = np.tile(np.arange(k, dtype=float), (200, 1))  # every input gets the same answer
    assert prediction_rank(same) == pytest.approx(1.0)
    with pytest.raises(FactorlensError, match="class"):
        prediction_rank(np.ones((10, 1)))
    with pytest.raises(FactorlensError, match="NaN"):
        prediction_rank(np.full((10, 3), np.nan))


def test_outputs_that_are_already_probabilities_are_not_softmaxed_again() -> None:
    x, ids = planted_clusters()
    logits = one_hot_logits(ids, 5) / 10.0 + np.random.default_rng(0).normal(size=(ids.size, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    log_probs = np.log(probs)
    expected = prediction_rank(logits)
    assert prediction_rank(probs) == pytest.approx(expected)  # a model ending in softmax
    assert prediction_rank(log_probs) == pytest.approx(expected)  # ... or in log_softmax
    nb = input_neighbours(x)
    assert quality_score(probs, nb) == pytest.approx(quality_score(logits, nb))


def test_answers_that_follow_the_input_clusters_score_one_and_random_ones_zero() -> None:
    x, ids = planted_clusters()
    nb = input_neighbours(x)
    assert nb.shape == (x.shape[0], N_NEIGHBOURS)
    score, agreement, er = quality_score(one_hot_logits(ids, 5), nb)
    assert agreement == pytest.approx(1.0) and score == pytest.approx(1.0, abs=1e-4)
    shuffled = np.random.default_rng(1).permutation(ids)  # same answers, ignoring the inputs
    score, agreement, er = quality_score(one_hot_logits(shuffled, 5), nb)
    assert abs(agreement) < 0.1 and er == pytest.approx(5.0, abs=1e-3)
    coarse = ids % 2  # consistent but only two answers for five clusters
    score, agreement, _ = quality_score(one_hot_logits(coarse, 5), nb)
    assert agreement == pytest.approx(1.0) and score == pytest.approx(np.sqrt(2 / 5), abs=0.05)
    score, agreement, er = quality_score(np.zeros((x.shape[0], 5)), nb)
    assert score == 0.0 and agreement == 0.0 and er == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 8), seed=st.integers(0, 999), flip=st.floats(0.0, 1.0))
def test_agreement_ignores_class_names_and_is_at_most_one(k, seed, flip) -> None:
    x, ids = planted_clusters(n_clusters=k, per=15, seed=seed)
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(ids.size) < flip, rng.integers(0, k, ids.size), ids)
    nb = input_neighbours(x)
    kappa = neighbour_agreement(pred, nb, k)
    assert kappa <= 1.0 + 1e-12
    assert neighbour_agreement(rng.permutation(k)[pred], nb, k) == pytest.approx(kappa)
    score, _, _ = quality_score(one_hot_logits(pred, k), nb)
    assert score <= 1.0 + 1e-9


@settings(max_examples=20, deadline=None)
@given(n=st.integers(12, 60), d=st.integers(2, 9), k=st.integers(1, 8), seed=st.integers(0, 999))
def test_input_neighbours_are_the_nearest_in_the_embedding(n, d, k, seed) -> None:
    x = np.random.default_rng(seed).normal(size=(n, d))
    emb = input_embedding(x)
    nb = input_neighbours(x, k=k)
    dist = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    kth = np.sort(dist, axis=1)[:, k - 1]
    got = np.take_along_axis(dist, nb, axis=1)
    assert nb.shape == (n, k) and np.all(got <= kth[:, None] * (1 + 1e-9) + 1e-12)
    assert all(len(set(row)) == k for row in nb)  # k different neighbours


def test_score_spread_shrinks_with_more_inputs() -> None:
    spreads = []
    for per in (40, 320):
        x, ids = planted_clusters(per=per, seed=5)
        rng = np.random.default_rng(6)
        noisy = np.where(rng.random(ids.size) < 0.3, rng.integers(0, 5, ids.size), ids)
        nb = input_neighbours(x)
        sd = score_spread(one_hot_logits(noisy, 5), nb, seed=1)
        assert sd == score_spread(one_hot_logits(noisy, 5), nb, seed=1)  # seeded
        spreads.append(sd)
    assert 0 < spreads[1] < 0.6 * spreads[0]  # 8x the inputs: about 1/sqrt(8) the spread
    x, ids = planted_clusters()
    assert score_spread(one_hot_logits(ids, 5), input_neighbours(x)) < 1e-3  # always agree


def test_input_neighbours_exclude_the_input_itself_even_with_duplicates() -> None:
    x, _ = planted_clusters(per=6)
    x = np.vstack([x, x[:4], x[:4]])  # three copies of four inputs
    nb = input_neighbours(x, k=3)
    assert nb.shape == (x.shape[0], 3)
    assert not (nb == np.arange(x.shape[0])[:, None]).any()
    assert input_neighbours(x[:3], k=10).shape == (3, 2)  # k clipped to N - 1


def test_identical_inputs_have_no_neighbourhoods() -> None:
    with pytest.raises(FactorlensError, match="identical"):
        input_neighbours(np.ones((20, 4)))
    with pytest.raises(FactorlensError, match="at least 2"):
        input_neighbours(np.ones((1, 4)))


def test_large_inputs_use_a_truncated_embedding() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 400))  # rank 5 in 400 dimensions
    emb = input_embedding(x + 1e-3 * rng.normal(size=x.shape))
    assert emb.shape[0] == 300 and emb.shape[1] <= 5


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
    model = DigitsCNN().eval()  # the score from an independent forward pass matches
    model.load_state_dict(torch.load(checkpoints["trained"], weights_only=True))
    with torch.no_grad():
        logits = model(torch.as_tensor(data.images)).numpy()
    expected, _, _ = quality_score(logits, input_neighbours(data.images))
    assert reports["trained"].score == pytest.approx(expected, abs=1e-6)  # batched float32
    for r in reports.values():
        assert r.rank_scan["chosen"] == r.rank and len(r.rank_scan["criteria"]["bicv"]) == 3


def test_degenerate_checkpoint_is_reported_not_fatal() -> None:
    model = DigitsCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = load_data("digits").subset(60, seed=0)
    report = assess(model, data, max_rank=2)
    assert report.score == 0.0 and report.prediction_rank == pytest.approx(1.0)  # one answer
    assert (
        OUTPUT_BLOCK in report.degenerate
        and "features.0" in report.degenerate
        and "classifier.3" in report.degenerate
    )


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
    tiny = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "6", "--max-rank",
            "50", "--layers", "classifier.3", "--quiet", str(checkpoints["trained"])]  # fmt: skip
    assert main(tiny) == 0
    assert "max rank 50 clipped to 3" in capsys.readouterr().out


def test_quality_out_writes_analyses_and_the_trajectory(checkpoints, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "150",
            "--max-rank", "2", "--layers", "features.4,classifier.3", "--out", str(out),
            "--quiet", str(checkpoints["init"]), str(checkpoints["trained"])]  # fmt: skip
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    rows = json.loads((out / "quality.json").read_text())
    dirs = sorted((out / "checkpoints").iterdir())
    assert [d.name for d in dirs] == ["01-init", "02-trained"]
    for row, d in zip(rows, dirs, strict=True):
        summary = json.loads((d / "result.json").read_text())
        assert summary["rank"] == row["rank"] >= 1
        assert summary["meta"]["quality_score"] == pytest.approx(row["score"])
        assert summary["meta"]["checkpoint"] == row["checkpoint"]
        assert [b["name"] for b in summary["blocks"]] == ["input", "features.4", "classifier.3"]
    html = (out / "index.html").read_text()
    assert 'id="trajectory"' in html and f"{rows[1]['score']:.4g}" in html
    assert "test accuracy (labels, for reference)" in html and f"{rows[1]['accuracy']:.4f}" in html
    assert main(args) == 2  # not over an existing result without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-2], "--no-rank", "--overwrite", *args[-2:]]) == 2
    assert "--no-rank" in capsys.readouterr().err


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
