"""Label-free baselines with known answers: effective rank, RankMe, WeightWatcher's alpha."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from factorlens.capture import default_layers
from factorlens.errors import FactorlensError
from factorlens.research.baselines import (
    effective_rank,
    layer_effective_ranks,
    penultimate_embeddings,
    rankme,
    rankme_score,
    singular_values,
    weightwatcher_alpha,
)
from factorlens.research.models import BNGapCNN, DigitsCNN, accuracy
from factorlens.research.synthetic import synthetic_retest
from factorlens.research.zoo import build_zoo, load_zoo, zoo_model


@pytest.mark.parametrize("shape", [(7, 30), (30, 7), (12, 12)])
def test_singular_values_match_svd(shape: tuple[int, int]) -> None:
    a = np.random.default_rng(0).standard_normal(shape)
    expected = np.linalg.svd(a, compute_uv=False)
    got = singular_values(a)
    assert got.shape == (min(shape),)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_effective_rank_of_identity_is_k(k: int) -> None:
    assert effective_rank(np.eye(k)) == pytest.approx(k)
    assert effective_rank(5.0 * np.eye(k)) == pytest.approx(k)  # scale invariant


def test_effective_rank_known_spectra() -> None:
    assert effective_rank(np.diag([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    # p = (3/4, 1/4): exp(H) = exp(-(0.75 log 0.75 + 0.25 log 0.25))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(h))
    u = np.random.default_rng(1).standard_normal((50, 1))
    assert effective_rank(u @ np.ones((1, 20))) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.zeros((4, 3))) == 0.0
    # extra axes are flattened: (N, C, H, W) -> (N, C*H*W)
    assert effective_rank(np.eye(6).reshape(6, 1, 2, 3)) == pytest.approx(6.0)


def test_rankme() -> None:
    rng = np.random.default_rng(0)
    rank_one = np.outer(rng.standard_normal(100), rng.standard_normal(16))
    assert rankme(rank_one) == pytest.approx(1.0, abs=1e-3)
    assert rankme(np.eye(8)) == pytest.approx(8.0, rel=1e-5)
    spread = rng.standard_normal((2000, 16))
    assert 14.0 < rankme(spread) <= 16.0
    # with eps = 0 it is Roy & Vetterli's effective rank
    assert rankme(spread, eps=0.0) == pytest.approx(effective_rank(spread))
    assert rankme(torch.eye(4)) == pytest.approx(4.0, rel=1e-5)


def test_matrix_errors() -> None:
    with pytest.raises(FactorlensError, match="matrix"):
        effective_rank(np.ones(5))
    with pytest.raises(FactorlensError, match="NaN"):
        rankme(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(FactorlensError, match="empty"):
        effective_rank(np.ones((0, 3)))


def test_penultimate_embeddings_are_the_head_input() -> None:
    torch.manual_seed(0)
    x = torch.rand(20, 1, 8, 8)
    for model, dim in ((DigitsCNN(), 64), (BNGapCNN(), 64)):
        model.train()
        emb = penultimate_embeddings(model, x.numpy(), batch_size=7)
        assert model.training  # mode restored
        assert emb.shape == (20, dim)
        with torch.no_grad():
            model.eval()
            expected = model.classifier[:-1](model.features(x)).numpy()
        np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
        score = rankme_score(model, x.numpy())
        assert 1.0 <= score <= dim


def test_penultimate_needs_a_linear() -> None:
    with pytest.raises(FactorlensError, match=r"no nn\.Linear"):
        penultimate_embeddings(nn.Sequential(nn.ReLU()), np.zeros((2, 3), dtype=np.float32))


def test_layer_effective_ranks() -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    ranks = layer_effective_ranks(model, x)
    assert list(ranks) == default_layers(model)
    for value in ranks.values():
        assert 1.0 <= value <= 40.0
    assert list(layer_effective_ranks(model, x, "classifier.*")) == [
        "classifier.0",
        "classifier.1",
        "classifier.2",
        "classifier.3",
    ]

    # a linear map onto one direction: centred outputs have rank one; a constant layer has 0
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]))
        lin.bias.fill_(5.0)
    const = nn.Linear(2, 2)
    with torch.no_grad():
        const.weight.zero_()
    net = nn.Sequential(lin, nn.ReLU(), const)
    inputs = np.random.default_rng(1).random((30, 3), dtype=np.float32)
    out = layer_effective_ranks(net, inputs, ["0", "2"])
    assert out["0"] == pytest.approx(1.0, abs=1e-4)  # float32 activations
    assert out["2"] == 0.0


def test_weightwatcher_alpha_is_quiet_and_finite(capsys: pytest.CaptureFixture[str]) -> None:
    root_handlers = list(logging.getLogger().handlers)
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    mlp.train()
    alpha = weightwatcher_alpha(mlp)
    assert isinstance(alpha, float) and math.isfinite(alpha) and alpha > 1.0
    assert mlp.training
    assert weightwatcher_alpha(mlp) == alpha  # deterministic
    # nothing WeightWatcher can fit: NaN, no crash
    assert math.isnan(weightwatcher_alpha(nn.Sequential(nn.ReLU())))
    assert math.isnan(weightwatcher_alpha(nn.Linear(3, 2)))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert logging.getLogger().handlers == root_handlers


def _bench(name: str = "bench_quality"):
    """benchmarks/<name>.py, imported as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_quality_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quality benchmark end to end on a quick digits zoo: both our modes and baselines."""
    bench = _bench()
    zoo = tmp_path / "digits-digitscnn"
    build_zoo("digits", zoo, kinds="steps,noise", quick=True, progress=False)
    report = tmp_path / "scores.json"
    argv = ["--zoo", str(zoo), "--n-samples", "200", "--json", str(report)]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    number = r"(-?\d\.\d{3}|nan)"
    assert re.fullmatch(
        rf"spearman={number} kendall={number} pairs={number} single={number} "
        rf"best_baseline=(rankme|ww_alpha|erank_mean):{number} single_worst={number} "
        rf"anchor_single_worst=(avg_conf|neg_entropy|nuclear):{number} "
        rf"consensus_mae_worst=\d\.\d{{3}} adversarial_ok=\d+/\d+ false_warnings=\d+/1",
        lines[-1],
    ), lines[-1]
    assert any(line.startswith("mean absolute error") for line in lines)
    assert any(line.startswith("adversarial sets") for line in lines)
    assert any(line.startswith("worst zoo") for line in lines)
    saved = json.loads(report.read_text())
    (result,) = saved["zoos"]
    assert result["n_inputs"] == 200 and result["n_checkpoints"] == 5
    # the last steps checkpoint and 0 % noise are one model: counted once over the whole zoo
    assert result["n_distinct"] == 4 and result["correlations"]["all"]["rankme"]["n"] == 4
    # digits has no second test set: no retest reference, and no line claiming one
    assert result["retest"] is None and not any("labelled reference" in x for x in lines)
    for row in result["rows"]:
        assert {"consensus", "single", "rankme", "ww_alpha", "erank_mean"} <= set(row["scores"])
        assert {"avg_conf", "neg_entropy", "nuclear", "agreement"} <= set(row["scores"])
        assert 0.0 <= row["scores"]["consensus"] <= 1.0
    # every adversarial set of the rules, each with its verdict
    assert set(result["sets"]) <= {
        "copies",
        "snapshots",
        "best_worst",
        "poor_only",
        "pair",
        "alone",
    }
    assert {"copies", "pair", "alone"} <= set(result["sets"])
    for verdict in result["sets"].values():
        assert verdict["ok"] == (verdict["best_first"] or bool(verdict["warnings"]))
    assert bench.pair_accuracy([0.1, 0.5, 0.51, 0.9], [1.0, 2.0, 1.5, 3.0]) == 1.0
    assert bench.pair_accuracy([0.1, 0.5, 0.9], [3.0, 2.0, 1.0]) == 0.0
    # correlations are taken against higher = better scores (WeightWatcher negated)
    assert bench.correlations([0.1, 0.5, 0.9], [-3.0, -2.0, -1.0])[:2] == (1.0, 1.0)
    assert math.isnan(bench.correlations([0.1, 0.5], [1.0, 2.0])[0])


def test_bench_quality_retest_reference_on_a_synthetic_zoo(tmp_path: Path) -> None:
    """On a synthetic zoo each distinct checkpoint is also measured on the independent retest
    set, and the table's reference is the test accuracy against that retest accuracy."""
    bench = _bench()
    zoo = build_zoo(
        "shapes", tmp_path / "z", arch="bngap", kinds="steps", quick=True, progress=False
    )
    result = bench.run_zoo(zoo, ["rankme"], n_samples=100, seed=0)
    x, y = synthetic_retest("shapes")
    expected = [accuracy(zoo_model(e), x, y) for e in load_zoo(zoo)]
    assert [r["retest_accuracy"] for r in result["rows"]] == expected
    acc = [r["test_accuracy"] for r in result["rows"]]
    assert result["retest"]["spearman"] == bench.correlations(acc, expected)[0]


def test_bench_quality_reads_the_joint_rank_that_bench_rank_claim_saved(tmp_path: Path) -> None:
    """bench_rank_claim.py saves every distinct checkpoint's joint rank in the zoo's folder;
    bench_quality.py's joint_rank column is those ranks, a duplicate taking its twin's, read
    when it scores a zoo or afresh with --tables from a run saved before the claim."""
    zoo = tmp_path / "digits-digitscnn"
    build_zoo("digits", zoo, kinds="steps,noise", quick=True, progress=False)
    bench = _bench()
    # before the rank claim has run on the zoo the column is empty (NaN), not made up
    early = tmp_path / "early.json"
    assert bench.main(["--zoo", str(zoo), "--n-samples", "60", "--json", str(early)]) == 0
    (before,) = json.loads(early.read_text())["zoos"]
    assert all(math.isnan(r["scores"]["joint_rank"]) for r in before["rows"])
    assert math.isnan(before["correlations"]["all"]["joint_rank"]["spearman"])
    assert "joint_rank" not in before["seconds"]  # read, not computed here

    claim = _bench("bench_rank_claim")
    argv = ["--cache", str(tmp_path), "--zoos", zoo.name, "--n", "60", "--max-rank", "3"]
    assert claim.main(argv) == 0
    saved = json.loads((zoo / claim.SAVED).read_text())
    assert saved["n"] == 60 and saved["max_rank"] == 3 and len(saved["rows"]) == 4
    rank = {r["checkpoint"]: r["rule"] for r in saved["rows"]}
    assert all(1 <= v <= 3 for v in rank.values())

    later = tmp_path / "later.json"
    assert bench.main(["--tables", str(early), "--json", str(later)]) == 0
    (after,) = json.loads(later.read_text())["zoos"]
    got = {r["checkpoint"]: r["scores"]["joint_rank"] for r in after["rows"]}
    assert {k: got[k] for k in rank} == rank
    # noise-000 is the last steps checkpoint trained again: it takes that checkpoint's rank
    assert got["noise/noise-000.pt"] == rank["steps/step-000040.pt"]
    # the other scores are the saved ones, their correlations recomputed unchanged
    assert [r["scores"]["consensus"] for r in after["rows"]] == [
        r["scores"]["consensus"] for r in before["rows"]
    ]
    assert after["correlations"]["all"]["rankme"] == before["correlations"]["all"]["rankme"]
    acc = [r["test_accuracy"] for r in bench._dedupe(after["rows"])]
    ranks = [r["scores"]["joint_rank"] for r in bench._dedupe(after["rows"])]
    assert after["correlations"]["all"]["joint_rank"]["n"] == 4
    assert after["correlations"]["all"]["joint_rank"]["spearman"] == pytest.approx(
        bench.correlations(acc, ranks)[0], nan_ok=True
    )
    # scoring the zoo now reads the saved ranks directly
    direct = bench.run_zoo(zoo, ["rankme", "joint_rank"], n_samples=60, seed=0)
    assert {r["checkpoint"]: r["scores"]["joint_rank"] for r in direct["rows"]} == got
