"""The label-free quality score and the `rank` / `quality` commands, end to end on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import factorlens.research.models
from factorlens.cli import main
from factorlens.data import load_data
from factorlens.errors import FactorlensError
from factorlens.quality import (
    OUTPUT_BLOCK,
    answer_agreement,
    assess,
    perturbations,
    prediction_rank,
    quality_score,
    score_checkpoints,
    score_spread,
)
from factorlens.research.models import DigitsCNN, MnistCNN, train_classifier

MODEL = f"{Path(factorlens.research.models.__file__)}:DigitsCNN"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """An untrained, a briefly trained and a trained DigitsCNN, and one of another
    architecture."""
    root = tmp_path_factory.mktemp("ckpts")
    digits = load_data("digits")
    torch.manual_seed(0)
    init = DigitsCNN()
    torch.save(init.state_dict(), root / "init.pt")
    brief = train_classifier(DigitsCNN(), digits.images[:60], digits.labels[:60], epochs=2, seed=0)
    torch.save(brief.state_dict(), root / "brief.pt")
    trained = train_classifier(
        DigitsCNN(), digits.images[:1000], digits.labels[:1000], epochs=4, seed=0
    )
    torch.save(trained.state_dict(), root / "trained.pt")
    torch.save(MnistCNN().state_dict(), root / "other.pt")
    return {
        "init": root / "init.pt",
        "brief": root / "brief.pt",
        "trained": root / "trained.pt",
        "other": root / "other.pt",
    }


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
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 200)
    logits = one_hot_logits(ids, 5) / 10.0 + rng.normal(size=(ids.size, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = prediction_rank(logits)
    assert prediction_rank(probs) == pytest.approx(expected)  # a model ending in softmax
    assert prediction_rank(np.log(probs)) == pytest.approx(expected)  # ... or in log_softmax
    moved = [logits + 0.1 * rng.normal(size=logits.shape)]
    assert quality_score(probs, [np.exp(moved[0])]) == pytest.approx(quality_score(logits, moved))


def test_stable_answers_score_one_and_brittle_or_constant_ones_zero() -> None:
    ids = np.arange(300) % 5
    clean = one_hot_logits(ids, 5)
    score, stability, er = quality_score(clean, [clean, clean])
    assert stability == pytest.approx(1.0) and score == pytest.approx(1.0, abs=1e-4)
    rng = np.random.default_rng(1)
    brittle = one_hot_logits(rng.permutation(ids), 5)  # perturbed answers unrelated to clean
    score, stability, er = quality_score(clean, [brittle])
    assert abs(stability) < 0.1 and er == pytest.approx(5.0, abs=1e-3)
    coarse = one_hot_logits(ids % 2, 5)  # stable but only two answers for five classes
    score, stability, _ = quality_score(coarse, [coarse])
    assert stability == pytest.approx(1.0) and score == pytest.approx(np.sqrt(2 / 5), abs=0.05)
    constant = np.zeros((300, 5))
    score, stability, er = quality_score(constant, [constant])
    assert score == 0.0 and stability == 0.0 and er == pytest.approx(1.0)
    with pytest.raises(FactorlensError, match="perturbed copy have shape"):
        quality_score(clean, [clean[:10]])


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 8), seed=st.integers(0, 999), flip=st.floats(0.0, 1.0))
def test_agreement_ignores_class_names_and_is_at_most_one(k, seed, flip) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, k, 120)
    b = np.where(rng.random(a.size) < flip, rng.integers(0, k, a.size), a)
    kappa = answer_agreement(a, b, k)
    assert kappa <= 1.0 + 1e-12
    names = rng.permutation(k)
    assert answer_agreement(names[a], names[b], k) == pytest.approx(kappa)
    score, _, _ = quality_score(one_hot_logits(a, k), [one_hot_logits(b, k)])
    assert score <= 1.0 + 1e-9


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 30),
    c=st.sampled_from([1, 3]),
    side=st.integers(3, 40),
    seed=st.integers(0, 999),
)
def test_perturbations_move_images_by_the_stated_step(n, c, side, seed) -> None:
    x = np.random.default_rng(seed).random((n, c, side, side), dtype=np.float32)
    moved, noisy = perturbations(x, random_state=seed)
    assert moved.shape == noisy.shape == x.shape and moved.dtype == np.float32
    assert 0.0 <= noisy.min() and noisy.max() <= 1.0 and not np.array_equal(noisy, x)
    step = max(1, round(side / 14))
    for i in range(n):  # each image is the original moved by `step` in one of four ways
        shifts = [
            np.array_equal(moved[i, :, step:], x[i, :, :-step]),
            np.array_equal(moved[i, :, :-step], x[i, :, step:]),
            np.array_equal(moved[i, :, :, step:], x[i, :, :, :-step]),
            np.array_equal(moved[i, :, :, :-step], x[i, :, :, step:]),
        ]
        assert any(shifts)
    again = perturbations(x, random_state=seed)
    assert np.array_equal(again[0], moved) and np.array_equal(again[1], noisy)
    assert len(perturbations(x.reshape(n, -1))) == 1  # non-image data: noise only


def test_score_spread_shrinks_with_more_inputs() -> None:
    spreads = []
    for n in (200, 1600):
        rng = np.random.default_rng(6)
        ids = rng.integers(0, 5, n)
        flipped = np.where(rng.random(n) < 0.3, rng.integers(0, 5, n), ids)
        clean, moved = one_hot_logits(ids, 5), [one_hot_logits(flipped, 5)]
        sd = score_spread(clean, moved, random_state=1)
        assert sd == score_spread(clean, moved, random_state=1)  # seeded
        spreads.append(sd)
    assert 0 < spreads[1] < 0.6 * spreads[0]  # 8x the inputs: about 1/sqrt(8) the spread
    stable = one_hot_logits(np.arange(300) % 5, 5)
    assert score_spread(stable, [stable]) < 1e-3


def _load(path: Path) -> DigitsCNN:
    model = DigitsCNN()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def test_trained_scores_higher_than_untrained_without_labels(checkpoints) -> None:
    data = load_data("digits").subset(300, random_state=1)
    data_no_labels = type(data)(data.images, None, None, "no labels")
    reports = {}
    for name in ("init", "trained"):
        reports[name] = assess(
            _load(checkpoints[name]), data_no_labels, max_rank=3, checkpoint=name
        )
    assert reports["trained"].score > reports["init"].score + 0.2
    assert reports["trained"].accuracy is None  # no labels, no accuracy
    model = _load(checkpoints["trained"])  # the score from independent forward passes matches
    with torch.no_grad():
        logits = [
            model(torch.as_tensor(c)).numpy() for c in (data.images, *perturbations(data.images))
        ]
    expected, _, _ = quality_score(logits[0], logits[1:])
    assert reports["trained"].score == pytest.approx(expected, abs=1e-6)  # batched float32
    for r in reports.values():
        assert r.rank_scan["chosen"] == r.rank and len(r.rank_scan["criteria"]["bicv"]) == 3


def test_consensus_orders_checkpoints_by_accuracy(checkpoints) -> None:
    data = load_data("digits").subset(400, random_state=2)
    names = ["init", "brief", "trained"]
    models = [_load(checkpoints[n]) for n in names]
    reports = score_checkpoints(models, data, names=names, mode="consensus")
    assert [r.mode for r in reports] == ["consensus"] * 3
    scores = [r.score for r in reports]
    accs = [r.accuracy for r in reports]
    assert accs[0] < accs[1] < accs[2] and scores[0] < scores[1] < scores[2]
    assert abs(scores[2] - accs[2]) < 0.1  # an estimate of the accuracy itself
    alone = score_checkpoints(models, data)  # auto: three checkpoints are scored alone
    assert [r.mode for r in alone] == ["single"] * 3
    assert [r.score for r in alone] == pytest.approx([r.single_score for r in reports])


def test_degenerate_checkpoint_is_reported_not_fatal() -> None:
    model = DigitsCNN()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = load_data("digits").subset(60, random_state=0)
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
    assert "each checkpoint on its own" in text  # two checkpoints: the single mode
    rows = json.loads(out.read_text())
    assert [r["checkpoint"] for r in rows] == [
        str(checkpoints["init"]),
        str(checkpoints["trained"]),
    ]
    assert all(isinstance(r["rank"], int) and isinstance(r["score"], float) for r in rows)
    assert rows[1]["score"] > rows[0]["score"]
    assert main(args) == 2  # the JSON exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    three = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "300", "--no-rank",
             "--mode", "consensus",
             "--json", str(tmp_path / "three.json"), "--quiet", str(checkpoints["init"]),
             str(checkpoints["brief"]), str(checkpoints["trained"])]  # fmt: skip
    assert main(three) == 0
    assert "estimated accuracy in the consensus of all 3" in capsys.readouterr().out
    rows = json.loads((tmp_path / "three.json").read_text())
    assert [r["mode"] for r in rows] == ["consensus"] * 3
    assert rows[0]["score"] < 0.05  # the untrained one, which says two classes
    assert all(r["estimated_accuracy"] == r["score"] and "single_score" in r for r in rows)
    assert main([*three[:-3], str(checkpoints["init"])]) == 2
    assert "needs at least 3, got 1" in capsys.readouterr().err
    single = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "100",
              "--no-rank", "--quiet", str(checkpoints["trained"])]  # fmt: skip
    assert main(single) == 0
    assert "Spearman" not in capsys.readouterr().out  # one checkpoint: no correlation
    tiny = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "6", "--max-rank",
            "50", "--layers", "classifier.3", "--quiet", str(checkpoints["trained"])]  # fmt: skip
    assert main(tiny) == 0
    assert "max rank 50 clipped to 3" in capsys.readouterr().out


def test_quality_warns_when_copies_leave_too_few_voters(checkpoints, tmp_path, capsys):
    out = tmp_path / "q.json"
    args = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "200", "--no-rank",
            "--json", str(out), "--quiet", str(checkpoints["trained"]),
            *[str(checkpoints["brief"])] * 4]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert "4 checkpoints give near-identical answers and count as 1" in warning
    assert "each checkpoint is scored on its own" in warning
    assert "each checkpoint on its own" in captured.out
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["single"] * 5
    assert rows[0]["warnings"] == [warning.removeprefix("warning: ")]
    assert rows[0]["copies"] == [[str(checkpoints["brief"])] * 4]
    assert rows[0]["score"] > max(r["score"] for r in rows[1:])  # the good one first


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
    score = f"{rows[1]['score']:.3f} ± {rows[1]['score_sd']:.3f}"
    assert 'id="trajectory"' in html and score in html
    assert "test accuracy <small>(labels, reference)</small>" in html
    assert f"{rows[1]['accuracy']:.4f}" in html
    assert "<th>rank</th>" in html and "rank R (estimated)" in html  # ranks were estimated
    assert main(args) == 2  # not over an existing result without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-2], "--rank", "3", "--overwrite", *args[-2:]]) == 2
    assert "--no-rank" in capsys.readouterr().err  # --rank fixes the rank only without a scan
    # without the scan, every analysis is at the fixed rank and the report still links them
    fixed = [a for a in args[:-2] if a not in ("--max-rank", "2")]  # no scan: no --max-rank
    assert main([*fixed, "--no-rank", "--rank", "3", "--overwrite", *args[-2:]]) == 0
    for d in sorted((out / "checkpoints").iterdir()):
        assert json.loads((d / "result.json").read_text())["rank"] == 3
        assert (d / "index.html").is_file()
    html = (out / "index.html").read_text()
    assert "<th>rank</th>" not in html and "rank R" not in html  # a fixed rank is no finding
    assert 'href="checkpoints/01-init/index.html"' in html
    assert 'href="checkpoints/02-trained/index.html"' in html
    assert "← all checkpoints" not in html  # the overview itself has no way back
    # each checkpoint's page is titled by its checkpoint and leads back to the overview
    for d, ckpt in zip(sorted((out / "checkpoints").iterdir()), args[-2:], strict=True):
        page = (d / "index.html").read_text()
        assert f"<title>factorlens — {ckpt} (DigitsCNN)</title>" in page
        assert '<a href="../../index.html" class="back">← all checkpoints</a>' in page


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


def test_a_scratch_capture_scores_like_memory_and_leaves_nothing(
    checkpoints, tmp_path, monkeypatch
) -> None:
    import factorlens.quality as quality

    data = load_data("digits").subset(200, random_state=3)
    model = _load(checkpoints["trained"])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "mine.txt").write_text("the user's")
    seen = []
    real = quality.assess_store

    def spy(store, *args, **kwargs):
        seen.append((type(store).__name__, sorted(p.name for p in scratch.iterdir())))
        return real(store, *args, **kwargs)

    monkeypatch.setattr(quality, "assess_store", spy)
    on_disk = assess(model, data, max_rank=3, scratch=scratch)
    in_memory = assess(model, data, max_rank=3)
    assert seen[0][0] == "ZarrStore" and len(seen[0][1]) == 2  # beside the user's file
    assert seen[1][0] == "MemoryStore"
    assert sorted(p.name for p in scratch.iterdir()) == ["mine.txt"]  # removed, the rest kept
    assert on_disk.to_dict() == in_memory.to_dict()  # the same float32 blocks, the same scan
    with pytest.raises(FactorlensError, match="does not exist"):
        assess(model, data, max_rank=2, scratch=tmp_path / "missing")


def test_a_constant_block_on_disk_is_found_chunk_by_chunk(tmp_path) -> None:
    from factorlens.quality import is_constant
    from factorlens.testing import zarr_store

    flat = np.full((50, 3), 2.5, dtype=np.float32)
    last = flat.copy()
    last[-1, 2] = 2.0  # in the last chunk only
    store = zarr_store(tmp_path / "s", {"input": flat, "flat": flat, "last": last}, 8)
    assert is_constant(store.block("flat")) and is_constant(flat)
    assert not is_constant(store.block("last")) and not is_constant(last)


def test_quality_scratch_on_the_command_line(checkpoints, tmp_path, capsys) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "q"
    args = ["quality", "--model", MODEL, "--data", "digits", "--n-samples", "120",
            "--max-rank", "2", "--layers", "classifier.3", "--scratch", str(scratch),
            "--out", str(out), "--quiet",
            str(checkpoints["init"]), str(checkpoints["trained"])]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert list(scratch.iterdir()) == []  # every checkpoint's store removed once scored
    rows = json.loads((out / "quality.json").read_text())
    assert [r["rank"] >= 1 for r in rows] == [True, True]
    assert len(list((out / "checkpoints").iterdir())) == 2  # analysed from the store on disk
    missing = [*args[:12], str(tmp_path / "nope"), *args[13:]]
    with pytest.raises(SystemExit):  # refused by the parser, before any work
        main(missing)
    assert (
        "argument --scratch: must be an existing folder (create it first)"
        in capsys.readouterr().err
    )


def test_assess_quality_is_the_quality_command_from_python(checkpoints, tmp_path) -> None:
    from factorlens import assess_quality
    from factorlens.modelio import build_model
    from factorlens.pipeline import load

    data = load_data("digits").subset(120, random_state=0)
    built: list[str] = []

    def lazy(name: str):  # built when its turn comes, one model held at a time
        def build():
            built.append(name)
            return build_model(MODEL, checkpoints[name])

        return build

    models = {"init": lazy("init"), "trained": build_model(MODEL, checkpoints["trained"])}
    reports = assess_quality(
        models,
        data,
        out=tmp_path / "q",
        scan=False,
        rank=2,
        layers="features.4,classifier.3",
        progress=False,
    )
    assert built == ["init"] and [r.checkpoint for r in reports] == ["init", "trained"]
    for report, d in zip(reports, sorted((tmp_path / "q" / "checkpoints").iterdir()), strict=True):
        saved = load(d)
        assert saved.rank == 2 and saved.meta["quality_score"] == pytest.approx(report.score)
        assert saved.meta["checkpoint"] == report.checkpoint
    assert (tmp_path / "q" / "index.html").is_file()
    assert [r.score for r in assess_quality(models, data, scan=False, progress=False)] == [
        pytest.approx(r.score) for r in reports
    ]
    with pytest.raises(FactorlensError, match="`rank` fixes the rank"):
        assess_quality(models, data, rank=3)
    with pytest.raises(FactorlensError, match="no checkpoints"):
        assess_quality({}, data)
