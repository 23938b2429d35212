"""Rank evidence and the rank rule on planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import factorlens
from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF
from factorlens.rank import bi_cross_validation, core_consistency, estimate_rank
from factorlens.rank import scan as scan_module
from factorlens.rank.criteria import top_singular
from factorlens.rank.scan import choose_rank
from factorlens.testing import planted_blocks


def test_scan_finds_the_planted_rank() -> None:
    blocks, _ = planted_blocks(N=240, R=3, noise=0.05, missing=None, seed=1)
    scan = factorlens.estimate_rank(blocks, 6, random_state=0)  # the public name
    assert scan.ranks == [1, 2, 3, 4]  # R > 4 lower the bi-CV error no more (4 shows it)
    assert scan.chosen == 3, scan.table()
    c = scan.criteria
    assert np.all(np.diff(c["fit"]) >= -1e-6)  # more components never fit worse
    assert c["fit"][2] > 0.99  # 5 % noise
    assert c["stability"][2] > 0.95  # the planted components reappear on other samples
    assert c["stability"][3] < 0.8  # one spurious component is enough to fail the test
    assert len(scan.split_stability) == 3 and scan.plausible[0] <= 3 <= scan.plausible[1]
    assert "chosen rank: 3" in scan.summary()
    assert c["corcondia"][2] > 90  # the input keeps its CP structure at the true rank
    assert c["bicv"][2] < c["bicv"][1]
    assert set(scan.block_fit) == set(blocks)
    d = scan.to_dict()
    assert d["chosen"] == 3 and len(d["criteria"]["bicv"]) == 4
    assert "*" in scan.table().splitlines()[3]


def test_parallel_chains_give_the_sequential_scan() -> None:
    blocks, _ = planted_blocks(N=160, R=3, noise=0.05, missing=None, seed=3)
    one = estimate_rank(blocks, 5, random_state=4, n_jobs=1)
    three = estimate_rank(blocks, 5, random_state=4, n_jobs=3)
    assert one.chosen == three.chosen == 3
    for name, values in one.criteria.items():
        np.testing.assert_allclose(three.criteria[name], values, rtol=1e-4, atol=1e-4)


def test_max_rank_is_clipped_and_said() -> None:
    blocks, _ = planted_blocks(N=12, R=2, noise=0.05, missing=None, seed=2)
    scan = estimate_rank(blocks, 50)
    assert any("max rank 50 clipped to 6" in n for n in scan.notes)
    assert any("R = 4..6 were not fitted" in n for n in scan.notes)
    with pytest.raises(FactorlensError, match="`max_rank` must be an integer >= 1, got 0"):
        estimate_rank(blocks, 0)


def test_ranks_the_rule_cannot_choose_are_not_fitted_and_said() -> None:
    blocks, _ = planted_blocks(N=160, R=3, noise=0.05, missing=None, seed=3)
    scan = estimate_rank(blocks, 8, random_state=4)
    assert scan.chosen == 3
    bicv = scan.criteria["bicv"]
    last = scan.ranks[-1]
    assert last < 8 and bicv[-1] >= bicv[-2]  # the last fitted R shows the turn
    assert any(f"R = {last + 1}..8 were not fitted" in n for n in scan.notes)
    assert all(len(row) == last for row in scan.split_stability)


def test_the_scan_stops_once_stability_failed_on_every_split_for_patience_ranks(
    monkeypatch,
) -> None:
    blocks, _ = planted_blocks(N=160, R=3, noise=0.05, missing=None, seed=3)
    # a bi-CV error that falls at every R (as on real data): only the patience stop can act
    falling = lambda data, max_rank, **kw: np.linspace(1.0, 0.5, max_rank)  # noqa: E731
    monkeypatch.setattr(scan_module, "bi_cross_validation", falling)
    stopped = estimate_rank(blocks, 10, random_state=4)
    every = estimate_rank(blocks, 10, random_state=4, patience=0)
    assert every.ranks == list(range(1, 11)) and stopped.chosen == every.chosen == 3
    last = stopped.ranks[-1]
    assert 6 <= last < 10  # R = 4, 5, 6 fail on every split (spurious components)
    failed = np.array(stopped.split_stability)[:, last - 3 :]
    assert failed.max() < 0.8
    assert any(f"R = {last + 1}..10 were not fitted (patience=3" in n for n in stopped.notes)
    for name, values in stopped.criteria.items():  # the same fits up to the stop
        np.testing.assert_allclose(values, every.criteria[name][:last], rtol=1e-6, atol=1e-9)
    with pytest.raises(FactorlensError, match="`patience` must be an integer >= 0"):
        estimate_rank(blocks, 4, patience=-1)


def test_failures_before_a_rank_above_one_qualified_do_not_stop_the_scan() -> None:
    evidence = scan_module._Evidence([], n_splits=2)
    for stability in ([1.0, 1.0], [0.3, 0.5], [0.2, 0.6], [0.4, 0.1]):  # too few: unstable
        evidence.split_stability[0].append(stability[0])
        evidence.split_stability[1].append(stability[1])
        evidence.criteria["stability"].append(float(np.median(stability)))
        evidence.criteria["bicv"].append(1.0 - len(evidence.criteria["bicv"]) / 10)
    assert not evidence.turned(0.8, 3)  # nothing above R = 1 qualified yet
    for stability in ([0.9, 0.95], [0.5, 0.7], [0.1, 0.2], [0.3, 0.79]):  # R = 5 qualifies
        evidence.split_stability[0].append(stability[0])
        evidence.split_stability[1].append(stability[1])
        evidence.criteria["stability"].append(float(np.median(stability)))
        evidence.criteria["bicv"].append(1.0 - len(evidence.criteria["bicv"]) / 10)
    assert evidence.qualified(0.8) == 5 and evidence.turned(0.8, 3)
    assert not evidence.turned(0.8, 4) and not evidence.turned(0.8, 0)
    assert not evidence.turned(0.75, 3)  # one split's 0.79 passes a lower threshold


def test_core_consistency_is_100_for_an_exact_cp_model() -> None:
    blocks, _ = planted_blocks(N=150, R=3, noise=0.0, missing=None, seed=3)
    blocks = {k: v.astype(np.float64) for k, v in blocks.items()}  # exact model, exact data
    model = CMTF(3, l1_penalty=0.0, n_init=1, tol=1e-12, n_iter_max=1000)
    data = model.prepare(blocks)
    model.fit_blocks(data)
    assert core_consistency(model.result_, data[0]) == pytest.approx(100.0, abs=1e-3)
    assert math.isnan(core_consistency(model.result_, data[1]))  # a matrix block


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("normalised", [False, True])
def test_core_consistency_equals_tlviz(rank: int, normalised: bool) -> None:
    tlviz = pytest.importorskip("tlviz.model_evaluation", reason="tlviz (bench extra) absent")
    blocks, _ = planted_blocks(N=200, R=3, noise=0.1, missing=None, seed=1)
    blocks = {k: v.astype(np.float64) for k, v in blocks.items()}
    model = CMTF(rank, l1_penalty=0.0)
    data = model.prepare(blocks)
    result = model.fit_blocks(data).result_
    X = blocks["input"] * data[0].scale  # the block as fitted
    sigma = result.weights["input"] * np.sqrt(data[0].norm_sq)
    ref = tlviz.core_consistency((sigma, [result.A, *result.factors["input"]]), X, normalised)
    ours = core_consistency(result, data[0], normalised=normalised)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)
    if rank <= 3:
        assert ours > 99  # the planted CP structure
    elif not normalised:
        assert ours < 0  # Bro & Kiers: an over-factored CP model is flagged, not hidden


def test_bi_cross_validation_is_minimal_at_the_true_rank_of_a_matrix() -> None:
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 60)) * 3
    Z += rng.standard_normal(Z.shape) * 0.5
    model = CMTF(1)
    errors = bi_cross_validation(model.prepare({"z": Z}), 8, random_state=0)
    assert int(np.argmin(errors)) + 1 == 3


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), p=st.integers(2, 40), k=st.integers(1, 12), seed=st.integers(0, 99))
def test_top_singular_matches_the_full_svd(n, p, k, seed) -> None:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, p)) * np.logspace(0, -2, p)  # decaying columns: distinct values
    U, s, Vt = top_singular(m, k)
    U0, s0, Vt0 = np.linalg.svd(m, full_matrices=False)
    kk = min(k, n, p)
    assert U.shape == (n, kk) and s.shape == (kk,) and Vt.shape == (kk, p)
    np.testing.assert_allclose(s, s0[:kk], rtol=1e-6, atol=1e-9 * s0[0])
    good = s0[:kk] > 1e-4 * s0[0]  # directions are defined where values are not tiny
    approx = (U[:, good] * s[good]) @ Vt[good]
    np.testing.assert_allclose(approx, (U0[:, :kk][:, good] * s0[:kk][good]) @ Vt0[:kk][good],
                               atol=1e-6 * s0[0])  # fmt: skip


def test_rule() -> None:
    # stability dips at 2, bicv stops improving after 4
    assert choose_rank([1, 0.6, 0.9, 0.95, 0.9, 0.5], [5, 4, 3, 2, 2.5, 1], 0.8) == 4
    assert choose_rank([1, 0.1, 0.1], [3, 2, 1], 0.8) == 1


def test_a_compressed_block_fits_like_the_full_one_with_loadings_in_its_basis() -> None:
    from factorlens.factorize.compress import compressed
    from factorlens.factorize.penalty import noise_threshold

    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 3))
    Y = A @ rng.standard_normal((3, 400)) + 0.1 * rng.standard_normal((300, 400))
    full = CMTF(1).prepare({"layer": Y})[0]
    small = compressed(full, 5, np.random.default_rng(1))
    assert small.shape == (300, 15) and small.basis.shape == (400, 15)
    np.testing.assert_allclose(small.basis.T @ small.basis, np.eye(15), atol=1e-10)
    assert small.norm_sq == pytest.approx(full.norm_sq)
    assert noise_threshold(small, 3) == pytest.approx(noise_threshold(full, 3))  # full spectrum
    on_small = CMTF(3, l1_penalty=0, n_init=1, random_state=0).fit_blocks([small]).result_
    on_full = CMTF(3, l1_penalty=0, n_init=1, random_state=0).fit_blocks([full]).result_
    assert on_small.block_fit["layer"] == pytest.approx(on_full.block_fit["layer"], abs=1e-4)
    # the compressed fit's loss is the full-data loss of its loadings mapped back (B = V B̃)
    B = small.basis @ on_small.factors["layer"][0]
    model = (on_small.A * on_small.weights["layer"] * math.sqrt(full.norm_sq)) @ B.T
    truth = full.dense()
    full_fit = 1 - np.sum((truth - model) ** 2) / full.norm_sq
    assert full_fit == pytest.approx(on_small.block_fit["layer"], abs=1e-8)
    assert compressed(small, 20, rng) is small  # not narrower: left as it is


def test_a_cp_block_compressed_in_its_modes_fits_like_the_full_one() -> None:
    from factorlens.factorize.compress import compressed_modes
    from factorlens.factorize.penalty import noise_threshold
    from factorlens.factorize.reduced import expand_result

    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 3))
    X = np.einsum("nr,ar,br->nab", A, rng.standard_normal((30, 3)), rng.standard_normal((4, 3)))
    X = X + 0.1 * rng.standard_normal(X.shape)
    full = CMTF(1).prepare({"input": X})[0]
    small = compressed_modes(full, 2, np.random.default_rng(1))  # k = 12: mode 1 only
    assert small.shape == (200, 12, 4) and small.mode_bases[1] is None
    U = small.mode_bases[0]
    np.testing.assert_allclose(U.T @ U, np.eye(12), atol=1e-10)
    assert small.norm_sq == pytest.approx(full.norm_sq)
    assert noise_threshold(small, 3) == pytest.approx(noise_threshold(full, 3))  # full spectrum
    fit = {"n_init": 1, "random_state": 0, "l1_penalty": 0}
    on_small = CMTF(3, **fit).fit_blocks([small]).result_
    on_full = CMTF(3, **fit).fit_blocks([full]).result_
    assert on_small.block_fit["input"] == pytest.approx(on_full.block_fit["input"], abs=1e-4)
    # mapped back (b = U b̃), the factors' loss on the full block is the fit the copy reported
    res = expand_result(on_small, [small])
    assert res.block_shapes[0] == (200, 30, 4) and res.factors["input"][0].shape == (30, 3)
    b, c = res.factors["input"]
    weights = res.weights["input"] * math.sqrt(full.norm_sq)
    model = np.einsum("nr,ar,br->nab", res.A * weights, b, c).reshape(200, -1)
    full_fit = 1 - np.sum((full.dense() - model) ** 2) / full.norm_sq
    assert full_fit == pytest.approx(on_small.block_fit["input"], abs=1e-8)
    assert compressed_modes(small, 20, rng) is small  # no mode wider than k: left as it is


def test_the_compressed_scan_gives_the_rank_and_evidence_of_the_full_one() -> None:
    from factorlens.testing import rank_blocks

    blocks, _ = rank_blocks(N=240, R=4, noise=0.1, seed=5)
    blocks["wide"] = np.hstack([blocks["layer1"]] * 8)  # 400 columns: compressed to 16
    fast = estimate_rank(blocks, 6, random_state=0, keep_results=True)
    slow = estimate_rank(blocks, 6, random_state=0, compress=False)
    assert fast.chosen == slow.chosen == 4
    # from the true rank on the same fits; below it (underfit, several local optima) the
    # warm-start chains on compressed samples may end in another optimum
    np.testing.assert_allclose(fast.criteria["fit"][3:], slow.criteria["fit"][3:], atol=2e-3)
    np.testing.assert_allclose(fast.criteria["fit"][:3], slow.criteria["fit"][:3], atol=0.03)
    np.testing.assert_allclose(
        fast.criteria["corcondia"][3:], slow.criteria["corcondia"][3:], atol=1.0
    )
    at = [0, 1, 3]  # R = 3 is underfit: which optimum each half's chain finds may differ
    np.testing.assert_allclose(
        np.take(fast.criteria["stability"], at), np.take(slow.criteria["stability"], at), atol=0.02
    )
    res = fast.results[4]
    assert res.A.shape == (240, 4)  # the samples too: A = Q Â
    assert res.factors["wide"][0].shape == (400, 4)  # mapped back to the full block
    np.testing.assert_allclose(np.linalg.norm(res.factors["wide"][0], axis=0), 1.0, atol=1e-8)


def test_a_failed_threaded_scan_does_not_cancel_later_fits(monkeypatch) -> None:
    import factorlens.rank.scan as scan_module

    blocks, _ = planted_blocks(N=80, R=2, noise=0.05, missing=None, seed=1)
    real = scan_module._Chains._fit
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FactorlensError("one chain fails")
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_module._Chains, "_fit", failing)
    with pytest.raises(FactorlensError, match="one chain fails"):
        estimate_rank(blocks, 3, n_jobs=3)
    CMTF(2, n_init=1).fit(blocks)  # would raise Cancelled if the flag stayed set


def test_a_nonnegative_scan_fits_the_full_blocks() -> None:
    rng = np.random.default_rng(0)
    A = rng.random((120, 2))
    blocks = {"input": A @ rng.random((2, 30)), "wide": A @ rng.random((2, 200))}
    scan = estimate_rank(blocks, 3, nonneg=True, keep_results=True, n_jobs=1)
    assert scan.criteria["fit"][1] > 0.95
    assert (scan.results[2].factors["wide"][0] >= 0).all()


def test_streamed_bi_cross_validation_matches_the_dense_one(tmp_path) -> None:
    from factorlens.testing import rank_blocks, zarr_store

    blocks, _ = rank_blocks(N=300, R=4, noise=0.1, seed=2)
    store = zarr_store(tmp_path / "acts", blocks, 64)
    for center in (False, True):
        dense = CMTF(1, center=center).prepare(blocks)
        disk = CMTF(1, center=center, memory_budget=0).prepare(store)
        assert not any(b.in_memory for b in disk)  # read chunk by chunk: the streamed path
        want = bi_cross_validation(dense, 8, random_state=3)
        # within the budget the blocks on disk are read once into the same concatenation
        np.testing.assert_allclose(bi_cross_validation(disk, 8, random_state=3), want, rtol=1e-9)
        got = bi_cross_validation(disk, 8, random_state=3, memory_budget=0)
        np.testing.assert_allclose(got[:4], want[:4], rtol=1e-6)  # to the true rank: exact
        np.testing.assert_allclose(got, want, atol=1e-4)  # the noise tail: randomized, close
        assert int(np.argmin(got)) == int(np.argmin(want))
        # blocks in memory whose concatenation exceeds the budget take the streamed path too
        over = bi_cross_validation(dense, 8, random_state=3, memory_budget=0)
        np.testing.assert_allclose(over[:4], want[:4], rtol=1e-6)


def test_the_dense_quarters_are_the_held_out_pairs_for_any_number_of_folds() -> None:
    """The fold-ordered concatenation (quarters as views) against plain boolean indexing."""
    from factorlens.rank.criteria import _dense_quarters, top_singular
    from factorlens.testing import rank_blocks

    blocks, _ = rank_blocks(N=90, R=3, noise=0.1, seed=4)
    data = CMTF(1, center=True).prepare(blocks)
    Z = np.concatenate([b.dense() for b in data], axis=1)
    rng = np.random.default_rng(0)
    for folds in (2, 3):
        row_fold, col_fold = rng.permutation(90) % folds, rng.permutation(Z.shape[1]) % folds
        got = list(_dense_quarters(data, 5, row_fold, col_fold, folds))
        assert len(got) == folds * folds
        for (fi, fj), (left, right_gram, cross, d_sq) in zip(
            np.ndindex(folds, folds), got, strict=True
        ):
            r, c = row_fold == fi, col_fold == fj
            A_, D_ = Z[np.ix_(~r, ~c)], Z[np.ix_(r, c)]
            U, s, Vt = top_singular(A_, 5)
            want_left, want_right = Z[np.ix_(r, ~c)] @ Vt.T / s, Z[np.ix_(~r, c)].T @ U
            # what bi-CV reads of them (free of the singular vectors' signs)
            np.testing.assert_allclose(
                (left.T @ left) * right_gram,
                (want_left.T @ want_left) * (want_right.T @ want_right),
                atol=1e-10,
            )
            want_cross = np.einsum("it,it->t", want_left, D_ @ want_right)
            np.testing.assert_allclose(cross, want_cross, atol=1e-10)
            assert d_sq == pytest.approx(float(np.sum(D_**2)), rel=1e-12)


def test_bi_cross_validation_from_the_samples_grams_is_the_dense_one(monkeypatch) -> None:
    """Blocks too large together but not one at a time, few samples: the Gram path, exact."""
    import factorlens.rank.criteria as criteria
    from factorlens.testing import rank_blocks

    blocks, _ = rank_blocks(N=60, R=4, noise=0.1, seed=5)  # 60 samples, 200 features
    data = CMTF(1, center=True).prepare(blocks)
    width = sum(b.width for b in data)
    want = bi_cross_validation(data, 8, random_state=1)
    taken: list[str] = []
    real = criteria._gram_quarters
    monkeypatch.setattr(criteria, "_gram_quarters", lambda *a: taken.append("gram") or real(*a))
    got = bi_cross_validation(data, 8, random_state=1, memory_budget=8 * 60 * width - 1)
    assert taken == ["gram"]
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_the_scan_of_a_store_on_disk_reads_chunks_and_matches_the_in_memory_scan(
    tmp_path, monkeypatch
) -> None:
    from factorlens.store import _CheckedArray
    from factorlens.testing import rank_blocks, zarr_store

    blocks, _ = rank_blocks(N=240, R=4, noise=0.1, seed=5)
    store = zarr_store(tmp_path / "acts", blocks, 40)
    reads: list[int] = []
    real = _CheckedArray.__getitem__

    def counted(self, index):
        out = real(self, index)
        reads.append(int(out.shape[0]))
        return out

    monkeypatch.setattr(_CheckedArray, "__getitem__", counted)
    disk = estimate_rank(store, 6, random_state=0, memory_budget=0)
    memory = estimate_rank(blocks, 6, random_state=0)
    assert reads and max(reads) <= 80  # chunks (40 rows) or a half's span of one: never 240
    assert disk.chosen == memory.chosen == 4
    for name in ("fit", "bicv", "stability"):
        np.testing.assert_allclose(disk.criteria[name], memory.criteria[name], atol=1e-3)


def test_the_scan_takes_the_model_from_engine_options_and_keywords_win() -> None:
    from factorlens.options import EngineOptions

    blocks, _ = planted_blocks(N=40, R=2, noise=0.05, missing=None, seed=4)
    model = EngineOptions(nonneg=True, l1_penalty=0.0, n_iter_max=3)  # iterations: the scan's
    by_object = estimate_rank(blocks, 4, model=model)
    by_keywords = estimate_rank(blocks, 4, nonneg=True, l1_penalty=0.0)
    assert by_object.table() == by_keywords.table()
    overridden = estimate_rank(blocks, 4, model=model, nonneg=False)
    plain = estimate_rank(blocks, 4, l1_penalty=0.0)
    assert overridden.table() == plain.table()


def test_an_interrupted_scan_stops_its_side_threads_before_the_error_goes_on(
    monkeypatch,
) -> None:
    import threading
    import time

    from factorlens.interrupt import CANCEL, Cancelled, check

    blocks, _ = planted_blocks(N=60, R=2, noise=0.05, missing=None, seed=1)
    started, stopped = threading.Event(), threading.Event()

    def slow_bicv(data, max_rank, **kw):  # a long bi-CV that checks, as the real one does
        started.set()
        try:
            for _ in range(2000):
                check()
                time.sleep(0.005)
        except Cancelled:
            stopped.set()
            raise
        return np.linspace(1.0, 0.5, max_rank)

    def interrupted(*args, **kw):
        assert started.wait(5)
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_module, "bi_cross_validation", slow_bicv)
    monkeypatch.setattr(scan_module, "_chain_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        estimate_rank(blocks, 3)
    # cancelled at its next check (not run on to its end), and later fits may run
    assert stopped.is_set() and not CANCEL.is_set()
    monkeypatch.undo()
    assert estimate_rank(blocks, 3).chosen == 2
