"""The several-checkpoint mode: a one-coin Dawid–Skene consensus of the checkpoints' answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factorlens.consensus import consensus_accuracy
from factorlens.errors import FactorlensError
from factorlens.quality import QualityReport, resolve_mode, score_together


def _annotators(accuracies, n=3000, k=10, seed=0):
    """Predictions of checkpoints with the given accuracies, errors independent and uniform."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    preds = []
    for a in accuracies:
        wrong = rng.random(n) >= a
        other = (truth + rng.integers(1, k, n)) % k
        preds.append(np.where(wrong, other, truth))
    return np.stack(preds), truth


def test_recovers_planted_accuracies_without_labels() -> None:
    planted = [0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1]
    preds, _ = _annotators(planted)
    fit = consensus_accuracy(preds, 10)
    assert fit.converged
    assert np.allclose(fit.accuracy, planted, atol=0.025)
    assert np.all(np.diff(fit.accuracy) < 0)
    sd = fit.spread(n_boot=50)
    assert sd.shape == (7,) and (sd > 0).all() and (sd < 0.02).all()


def test_a_constant_answer_gets_the_share_of_its_class() -> None:
    preds, truth = _annotators([0.9, 0.85, 0.8])
    constant = np.full((1, preds.shape[1]), 4)
    fit = consensus_accuracy(np.vstack([preds, constant]), 10)
    assert fit.accuracy[3] == pytest.approx(np.mean(truth == 4), abs=0.02)


def test_bad_predictions_are_refused() -> None:
    with pytest.raises(FactorlensError, match="at least 2 checkpoints"):
        consensus_accuracy(np.zeros((1, 5), dtype=int), 3)
    with pytest.raises(FactorlensError, match=r"outside 0\.\.2"):
        consensus_accuracy(np.array([[0, 3], [1, 2]]), 3)
    with pytest.raises(FactorlensError, match="integer class indices"):
        consensus_accuracy(np.zeros((2, 5)), 3)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 6),
    n=st.integers(1, 40),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_estimates_are_probabilities(m: int, n: int, k: int, seed: int) -> None:
    preds = np.random.default_rng(seed).integers(0, k, (m, n))
    fit = consensus_accuracy(preds, k)
    assert ((fit.accuracy >= 0) & (fit.accuracy <= 1)).all()
    assert np.allclose(fit.posterior.sum(axis=1), 1.0)


def _report(score: float) -> QualityReport:
    return QualityReport(
        score=score,
        rank=0,
        prediction_rank=1.0,
        stability=0.0,
        score_sd=0.01,
        n_outputs=10,
        n_inputs=3000,
    )


def test_score_together_switches_mode_by_the_number_of_checkpoints() -> None:
    preds, _ = _annotators([0.95, 0.7, 0.3, 0.6, 0.5])
    outputs = [np.eye(10)[p] for p in preds]
    reports = [_report(s) for s in (0.1, 0.2, 0.3, 0.4, 0.5)]
    together = score_together(reports, outputs)
    assert [r.mode for r in together] == ["consensus"] * 5
    assert [r.single_score for r in together] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert together[0].score > together[1].score > together[3].score > together[2].score
    assert together[0].to_dict()["estimated_accuracy"] == together[0].score
    alone = score_together(reports, outputs, mode="single")
    assert [r.score for r in alone] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert resolve_mode("auto", 4) == "single" and resolve_mode("auto", 5) == "consensus"
    with pytest.raises(FactorlensError, match="needs at least 3, got 2"):
        resolve_mode("consensus", 2)
