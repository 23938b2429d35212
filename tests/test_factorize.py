"""The joint factorization engine: planted-factor recovery, exact references, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import coupled_matrix_tensor_3d_factorization

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult, cmtf, factor_match_score
from factorlens.factorize.blocks import Block
from factorlens.testing import planted_blocks


def _recovery(result: CMTFResult, truth: dict) -> dict[str, float]:
    scores = {"A": factor_match_score([truth["A"]], [result.A])}
    for name in ("input", "layer1", "layer2"):
        fitted = result.factors[name]
        if name == "layer2":  # the planted zero column has no direction: compare the others
            keep = [0, 1]
            true_a = truth["A"][:, keep]
            _, perm = factor_match_score([true_a], [result.A], return_permutation=True)
            V = truth[name][0][:, keep]
            scores[name] = factor_match_score([V], [fitted[0][:, perm]])
        else:
            scores[name] = factor_match_score([truth["A"], *truth[name]], [result.A, *fitted])
    return scores


@pytest.mark.parametrize("nonneg", [False, True])
def test_planted_factors_are_recovered(nonneg: bool) -> None:
    blocks, truth = planted_blocks(nonneg=nonneg, noise=0.05)
    result = cmtf(blocks, 3, nonneg=nonneg, random_state=0)
    scores = _recovery(result, truth)
    assert min(scores.values()) >= 0.99, scores
    for name in blocks:
        assert result.block_fit[name] > 0.99  # 5 % noise leaves 1 - 0.05² of the energy
    if nonneg:
        assert result.A.min() >= 0
        assert all(f.min() >= 0 for fs in result.factors.values() for f in fs)


@pytest.mark.parametrize("nonneg", [False, True])
def test_component_absent_from_a_block_gets_near_zero_weight(nonneg: bool) -> None:
    blocks, truth = planted_blocks(nonneg=nonneg, noise=0.05, missing=("layer2", 2))
    result = cmtf(blocks, 3, nonneg=nonneg, random_state=0)
    # find the fitted component that matches planted component 2 through the sample factor
    _, perm = factor_match_score([truth["A"]], [result.A], return_permutation=True)
    absent = perm[2]
    w = result.weights["layer2"]
    assert w[absent] < 0.02 * w.max(), w
    others = [r for r in range(3) if r != absent]
    assert w[others].min() > 0.2
    assert result.weights["layer1"][absent] > 0.2


def test_l1_penalty_sets_absent_component_to_exact_zero() -> None:
    blocks, _ = planted_blocks(noise=0.01, missing=("layer2", 2))
    result = cmtf(blocks, 3, l1_penalty=0.05, random_state=0)
    assert np.sum(result.weights["layer2"] == 0.0) == 1
    assert np.all(result.weights["layer1"] > 0)
    # the documented contract: every non-shared factor column has unit norm, also when absent
    for facs in result.factors.values():
        for f in facs:
            np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, atol=1e-9)


@pytest.mark.parametrize("seed", [1, 6])
def test_a_component_switched_off_in_a_cp_block_comes_back(seed: int) -> None:
    # start from the true loadings with the third replaced by noise: the penalty switches that
    # component off in the input's CP block at once; once the layers have pulled its loadings
    # into place it must return (it used to stay at zero, with zeroed mode columns, for good)
    blocks, truth = planted_blocks(N=200, R=3, noise=0.05, seed=seed, missing=None)
    A0 = truth["A"].copy()
    A0[:, 2] = np.random.default_rng(seed).standard_normal(200)
    result = cmtf(blocks, 3, l1_penalty=0.05, init=A0, n_init=1, n_iter_max=300)
    assert result.weights["input"].min() > 0.2
    assert factor_match_score([result.A], [truth["A"]]) > 0.99
    for f in result.factors["input"]:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0, atol=1e-9)


def test_colour_input_is_fitted_as_four_way_cp() -> None:
    blocks, truth = planted_blocks(colour=True, noise=0.05, missing=None)
    result = cmtf(blocks, 3, random_state=0)
    assert result.block_models == ["cp", "matrix", "matrix"]
    assert [f.shape for f in result.factors["input"]] == [(3, 3), (12, 3), (10, 3)]
    assert (
        factor_match_score([truth["A"], *truth["input"]], [result.A, *result.factors["input"]])
        >= 0.99
    )


def test_all_matrix_unconstrained_equals_truncated_svd_of_weighted_concatenation() -> None:
    rng = np.random.default_rng(3)
    N, R = 120, 4
    A = rng.standard_normal((N, R)) * np.array([5.0, 4.0, 3.0, 2.0])
    blocks = {
        "x": (A @ rng.standard_normal((R, 40)) + 0.3 * rng.standard_normal((N, 40))),
        "y": (A @ rng.standard_normal((R, 25)) + 0.3 * rng.standard_normal((N, 25))),
    }
    result = cmtf(blocks, R, l1_penalty=0.0, tol=1e-12, n_iter_max=3000, n_init=1)
    cat = np.concatenate([b / np.linalg.norm(b) for b in blocks.values()], axis=1)
    U, s, _ = np.linalg.svd(cat, full_matrices=False)
    assert result.loss == pytest.approx(float((s[R:] ** 2).sum()), rel=1e-6)
    # same column space: all principal angles ~ 0
    cosines = np.linalg.svd(U[:, :R].T @ np.linalg.qr(result.A)[0], compute_uv=False)
    assert cosines.min() > 1 - 1e-6
    # the model reproduces the rank-R SVD reconstruction
    recon = U[:, :R] * s[:R] @ np.linalg.svd(cat, full_matrices=False)[2][:R]
    ours = np.concatenate(
        [
            result.A * result.weights[n] @ result.factors[n][0].T
            for n in blocks  # weights are relative to the unit-norm blocks
        ],
        axis=1,
    )
    assert np.allclose(ours, recon, atol=1e-6)


def test_loss_no_worse_than_tensorly_cmtf_on_the_same_data() -> None:
    blocks, _ = planted_blocks(N=200, noise=0.1, missing=None, seed=4)
    scaled = {k: v.astype(np.float64) / np.linalg.norm(v) for k, v in blocks.items()}
    matrix = np.concatenate([scaled["layer1"], scaled["layer2"]], axis=1)
    cp, mp, _ = coupled_matrix_tensor_3d_factorization(scaled["input"], matrix, 3)
    tl_loss = (
        np.linalg.norm(scaled["input"] - tl.cp_to_tensor(cp)) ** 2
        + np.linalg.norm(matrix - tl.cp_to_tensor(mp)) ** 2
    )
    ours = cmtf({"input": scaled["input"], "layers": matrix}, 3, l1_penalty=0.0, weighting="none")
    assert ours.loss <= tl_loss * (1 + 1e-6)


def test_loss_formula_matches_explicit_reconstruction() -> None:
    blocks, _ = planted_blocks(N=80, noise=0.2, missing=None, seed=5)
    for nonneg in (False, True):
        model = CMTF(3, nonneg=nonneg, l1_penalty=0.0, n_init=1, n_iter_max=30).fit(blocks)
        res = model.result_
        explicit = 0.0
        for name, Y in blocks.items():
            norm = np.linalg.norm(Y.astype(np.float64))
            comps = sum(
                res.weights[name][r] * np.multiply.outer(res.A[:, r], res.component_map(name, r))
                for r in range(3)
            )
            explicit += np.linalg.norm(Y / norm - comps) ** 2
        assert res.loss == pytest.approx(explicit, rel=1e-5, abs=1e-9)


def test_loss_never_increases() -> None:
    blocks, _ = planted_blocks(N=100, noise=0.3, seed=6)
    blocks = {k: v.astype(np.float64) for k, v in blocks.items()}  # float64: exact to round-off
    for nonneg in (False, True):
        hist = (
            CMTF(4, nonneg=nonneg, n_init=1, n_iter_max=60, tol=0).fit(blocks).result_.loss_history
        )
        assert np.all(np.diff(hist) <= 1e-12 * hist[0])


def test_loss_never_increases_beyond_float32_round_off() -> None:
    blocks, _ = planted_blocks(N=300, noise=0.05, seed=6)  # float32, as captured
    for nonneg in (False, True):
        hist = CMTF(3, nonneg=nonneg, n_init=1, n_iter_max=150).fit(blocks).result_.loss_history
        total = float(len(blocks))  # unit-norm blocks
        assert np.all(np.diff(hist) <= 1e-6 * total)


def test_centring_a_large_offset_converges_like_centred_data() -> None:
    blocks, _ = planted_blocks(N=200, noise=0.05, seed=12, missing=None)
    shifted = {k: (v + 300.0).astype(np.float32) for k, v in blocks.items()}
    model = CMTF(3, center=True, l1_penalty=0.0, n_init=1, n_iter_max=500).fit(shifted)
    assert model.result_.options["converged"]
    assert model.n_iter_ < 300


def test_same_seed_same_result_and_sorted_components() -> None:
    blocks, _ = planted_blocks(N=100, noise=0.2, seed=7)
    a = cmtf(blocks, 3, random_state=11)
    b = cmtf(blocks, 3, random_state=11)
    np.testing.assert_array_equal(a.A, b.A)
    total = a.flow.sum(axis=1)
    assert np.all(np.diff(total) <= 1e-12)
    assert np.all(a.A.sum(axis=0) >= 0)


def test_centering_equals_fitting_centred_data() -> None:
    blocks, _ = planted_blocks(N=90, noise=0.1, seed=8, missing=None)
    shifted = {k: v + 3.0 for k, v in blocks.items()}
    centred = {k: v - v.mean(axis=0, keepdims=True) for k, v in shifted.items()}
    a = cmtf(shifted, 3, center=True, l1_penalty=0.0, n_init=1, random_state=0)
    b = cmtf(centred, 3, center=False, l1_penalty=0.0, n_init=1, random_state=0)
    assert a.loss == pytest.approx(b.loss, rel=1e-4)
    assert np.allclose(a.means["layer1"], shifted["layer1"].mean(axis=0), atol=1e-5)


class _ChunkedArray:
    """A stand-in for an on-disk chunked array: only slices are readable."""

    def __init__(self, data: np.ndarray, chunk: int) -> None:
        self._data, self.shape, self.dtype = data, data.shape, data.dtype
        self.chunks = (chunk, *data.shape[1:])
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self._data[key]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    width=st.integers(1, 7),
    chunk=st.integers(1, 50),
    k=st.integers(1, 4),
    center=st.booleans(),
    backend=st.sampled_from(["numpy", "torch"]),
)
def test_block_products_match_dense_algebra(n, width, chunk, k, center, backend) -> None:
    rng = np.random.default_rng(n * 100 + width)
    Y = rng.standard_normal((n, 2, width)).astype(np.float32)
    arr = _ChunkedArray(Y, chunk)
    block = Block("b", arr, center=center, chunk_rows=chunk, memory_budget=0, backend=backend)
    block.scale = 0.5
    dense = Y.reshape(n, -1).astype(np.float64)
    if center:
        dense = dense - dense.mean(axis=0)
    dense *= 0.5
    K = rng.standard_normal((2 * width, k))
    A = rng.standard_normal((n, k))
    np.testing.assert_allclose(block.left(K), dense @ K, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(block.right(A), dense.T @ A, rtol=1e-4, atol=1e-4)
    assert block.norm_sq == pytest.approx(float((dense**2).sum()), rel=1e-4, abs=1e-6)


def test_chunked_and_torch_fits_equal_the_in_memory_fit() -> None:
    blocks, _ = planted_blocks(N=150, noise=0.1, seed=9)
    ref = cmtf(blocks, 3, random_state=0, n_init=1)
    chunked = {k: _ChunkedArray(v, 37) for k, v in blocks.items()}
    got = cmtf(chunked, 3, random_state=0, n_init=1, memory_budget=0)
    assert all(c.reads > 10 for c in chunked.values())  # streamed chunk by chunk on every pass
    np.testing.assert_allclose(got.A, ref.A, atol=1e-4)
    torch_res = cmtf(blocks, 3, random_state=0, n_init=1, backend="torch")
    np.testing.assert_allclose(torch_res.A, ref.A, atol=1e-4)
    assert torch_res.loss == pytest.approx(ref.loss, rel=1e-4)


def test_save_load_round_trip_and_tensorly_interop(tmp_path) -> None:
    blocks, _ = planted_blocks(N=60, noise=0.05, seed=10)
    res = cmtf(blocks, 3, random_state=0)
    res.meta = {"model": "planted", "layers": ["layer1", "layer2"]}
    res.save(tmp_path)
    back = CMTFResult.load(tmp_path)
    np.testing.assert_array_equal(back.A, res.A)
    for n in res.block_names:
        for f, g in zip(res.factors[n], back.factors[n], strict=True):
            np.testing.assert_array_equal(f, g)
        np.testing.assert_array_equal(res.weights[n], back.weights[n])
    assert back.block_fit == res.block_fit and back.meta == res.meta and back.rank == 3
    cp = back.to_cptensor("input")
    model = tl.cp_to_tensor(cp)
    X = blocks["input"].astype(np.float64)
    assert np.linalg.norm(X - model) / np.linalg.norm(X) < 0.06


@pytest.mark.parametrize(
    ("rank", "message"),
    [(0, "positive integer"), (-2, "positive integer"), (10_000, "larger than")],
)
def test_bad_rank_is_refused(rank: int, message: str) -> None:
    blocks, _ = planted_blocks(N=40)
    with pytest.raises(FactorlensError, match=message):
        cmtf(blocks, rank)


def test_bad_blocks_are_refused() -> None:
    blocks, _ = planted_blocks(N=40)
    with pytest.raises(FactorlensError, match="different sample counts"):
        cmtf({**blocks, "layer1": blocks["layer1"][:30]}, 2)
    with pytest.raises(FactorlensError, match="no samples"):
        cmtf({k: v[:0] for k, v in blocks.items()}, 2)
    bad = blocks["layer1"].copy()
    bad[3, 4] = np.nan
    with pytest.raises(FactorlensError, match="'layer1' holds 1 NaN"):
        cmtf({**blocks, "layer1": bad}, 2)
    with pytest.raises(FactorlensError, match="no blocks"):
        cmtf({}, 2)
    with pytest.raises(FactorlensError, match="cannot be combined"):
        cmtf(blocks, 2, nonneg=True, center=True)


def test_noise_threshold_sits_just_above_the_noise() -> None:
    from factorlens.factorize.penalty import noise_threshold

    rng = np.random.default_rng(0)
    E = rng.standard_normal((300, 120))
    S = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 120)) * 3
    top_noise = np.linalg.svd(E, compute_uv=False)[0]
    for X in (E, S + E):
        tau = noise_threshold(Block("x", X), rank=3)
        assert top_noise < tau < 1.3 * top_noise  # above every pure-noise direction
    # a block sampled down to 64 rows and columns gives about the same floor
    big = Block("x", S + E)
    assert noise_threshold(big, 3, max_side=64) == pytest.approx(noise_threshold(big, 3), rel=0.2)
    # ten columns at rank 10: no spectrum beyond the fit, so no penalty rather than a guess
    assert noise_threshold(Block("x", rng.standard_normal((200, 10))), rank=10) == 0.0


@pytest.mark.parametrize("noise", [0.1, 0.25])
def test_auto_penalty_separates_shared_and_unshared_components(noise: float) -> None:
    from factorlens.testing import acar_blocks

    blocks, A_true, support = acar_blocks(3, noise)
    result = cmtf(blocks, 5)  # the default penalty: l1_penalty="auto"
    assert result.options["l1_penalty"] == "auto"
    score, perm = factor_match_score([A_true], [result.A], return_permutation=True)
    assert score > 0.95
    np.testing.assert_array_equal(result.presence()[perm], support)
    # absent means exactly zero, and the floor that decided it is recorded per block
    assert np.all(result.flow[perm][~support] == 0.0)
    assert set(result.options["absent_below"]) == {"tensor", "matrix"}
    assert result.spare_components() == []


def test_one_component_too_many_is_flagged() -> None:
    from factorlens.testing import acar_blocks

    blocks, _, _ = acar_blocks(0, 0.25)
    notes = cmtf(blocks, 6).spare_components()
    assert notes and "try one component fewer" in notes[0]


@pytest.mark.parametrize("noise", [0.1, 0.25])
def test_a_component_no_block_needs_is_named_against_the_fit_with_one_fewer(noise) -> None:
    from factorlens.testing import acar_blocks

    blocks, _, _ = acar_blocks(7, noise)
    five = cmtf(blocks, 5, random_state=1)
    six = cmtf(blocks, 6, random_state=1)
    floors = six.options["noise_floor"]
    gains = six.options["gain_over_fewer"]
    assert set(gains) == {"tensor", "matrix"}
    assert all(gains[b] <= floors[b] ** 2 for b in gains)  # the sixth fits noise only
    assert any("the data hold at most 5 components" in n for n in six.spare_components())
    # at the true rank the fifth component is needed in some block, and nothing is named
    g5, f5 = five.options["gain_over_fewer"], five.options["noise_floor"]
    assert any(g5[b] > 4 * f5[b] ** 2 for b in g5)
    assert five.spare_components() == []
    # the check is off in the rank scan and on request; R = 1 has nothing to compare with
    assert "gain_over_fewer" not in cmtf(blocks, 5, check_fewer=False).options
    assert "gain_over_fewer" not in cmtf(blocks, 1).options


def test_cmtf_follows_the_estimator_contract() -> None:
    from sklearn.base import clone

    model = CMTF(4, tol=1e-5, n_init=1, l1_penalty=0.0)
    params = model.get_params()
    assert params["rank"] == 4 and params["tol"] == 1e-5 and params["l1_penalty"] == 0.0
    copy = clone(model)
    assert copy is not model and copy.get_params() == params
    assert model.set_params(rank=3, check_fewer=False) is model and model.rank == 3
    assert repr(model) == "CMTF(rank=3, l1_penalty=0.0, n_init=1, tol=1e-05, check_fewer=False)"
    with pytest.raises(FactorlensError, match="CMTF has no parameter 'ranks'"):
        model.set_params(ranks=2)
    blocks, _ = planted_blocks(N=40, seed=2)
    a = clone(model).fit(blocks).result_
    b = model.fit(blocks).result_
    np.testing.assert_array_equal(a.A, b.A)  # a clone fits exactly like the original


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "big"])
def test_bad_penalty_is_refused(bad) -> None:
    blocks, _ = planted_blocks(N=40)
    with pytest.raises(
        FactorlensError, match="`l1_penalty` must be 'auto' or a finite number >= 0"
    ):
        cmtf(blocks, 2, l1_penalty=bad)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"tol": 2}, "`tol` must be a number from 0"),
        ({"tol": -1e-9}, "`tol` must be"),
        ({"tol": float("nan")}, "`tol` must be"),
        ({"n_iter_max": -1}, "`n_iter_max` must be an integer >= 1"),
        ({"n_iter_max": 2.5}, "`n_iter_max` must be"),
        ({"n_init": 0}, "`n_init` must be"),
        ({"inner_sweeps": True}, "`inner_sweeps` must be"),
        ({"weighting": "equal"}, "`weighting` must be 'unit', 'none' or a mapping"),
        ({"weighting": {"input": -1.0}}, "finite weight > 0"),
        ({"random_state": -3}, "`random_state` must be an integer from 0 to 4294967295"),
        ({"memory_budget": -1}, "`memory_budget` must be"),
        ({"backend": "jax"}, "`backend` must be"),
        ({"device": "gpu"}, "`device` must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got 'gpu'"),
    ],
)
def test_settings_out_of_range_are_refused_through_the_api_too(setting, message) -> None:
    blocks, _ = planted_blocks(N=40)
    with pytest.raises(FactorlensError, match=message):
        CMTF(2, **setting).fit(blocks)
    model = CMTF(2, n_init=1).set_params(**setting)  # checked in fit, as scikit-learn does
    with pytest.raises(FactorlensError, match=message):
        model.fit_blocks(CMTF(2).prepare(blocks))


def test_presence_and_its_floor_survive_save_and_load(tmp_path) -> None:
    from factorlens.testing import acar_blocks

    blocks, _, support = acar_blocks(1, 0.1)
    result = cmtf(blocks, 5)
    back = CMTFResult.load(result.save(tmp_path / "r"))
    np.testing.assert_array_equal(back.presence(), result.presence())
    assert back.options["absent_below"] == pytest.approx(result.options["absent_below"])
    assert int((~result.presence()).sum()) == int((~support).sum())  # one absence per block


def test_penalized_strengths_are_present_when_above_zero() -> None:
    # a fixed penalty already subtracted its floor from every strength: what is left above 0
    # is present, and the floor is only recorded for display
    blocks, _ = planted_blocks(noise=0.01, missing=("layer2", 2))
    result = cmtf(blocks, 3, l1_penalty=0.05, random_state=0)
    assert result.options["noise_floor"]["layer1"] == pytest.approx(0.025)
    assert set(result.options["absent_below"].values()) == {0.0}
    np.testing.assert_array_equal(result.presence(), result.flow > 0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 999),
    share=st.floats(0.05, 1.0),
    lo=st.integers(0, 70),
    hi=st.integers(0, 70),
)
def test_a_row_subset_reads_the_rows_it_names(n, seed, share, lo, hi) -> None:
    from factorlens.factorize.blocks import RowSubset

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, 3, 2)).astype(np.float32)
    rows = np.sort(rng.choice(n, max(1, int(n * share)), replace=False))
    subset = RowSubset(data, rows)
    assert subset.shape == (rows.size, 3, 2) and len(subset) == rows.size
    np.testing.assert_array_equal(subset[lo:hi], data[rows][lo:hi])
    np.testing.assert_array_equal(subset[:], data[rows])


def test_a_row_subset_refuses_what_it_cannot_read() -> None:
    from factorlens.factorize.blocks import RowSubset

    data = np.zeros((5, 2))
    with pytest.raises(FactorlensError, match="sorted, distinct"):
        RowSubset(data, np.array([2, 1]))
    with pytest.raises(FactorlensError, match=r"in \[0, 5\)"):
        RowSubset(data, np.array([3, 5]))
    with pytest.raises(TypeError, match="contiguous slices"):
        RowSubset(data, np.array([1, 2]))[np.array([0])]


@pytest.mark.parametrize("n_blocks", [3, 40])
def test_a_result_prints_as_a_few_lines_not_its_arrays(n_blocks: int) -> None:
    from factorlens.testing import random_result

    names = ["input"] + [f"layer{i}.conv" for i in range(1, n_blocks)]
    shapes = [(500, 8, 8)] + [(500, 64, 7, 7)] * (n_blocks - 1)
    result = random_result(names, shapes, rank=6, models={"input": "cp"}, loss_history=[0.5])
    text = repr(result)
    lines = text.splitlines()
    assert lines[0].startswith("CMTFResult(rank=6, n_samples=500, ")
    assert len(lines) <= 15 and len(text) < 1500, text
    assert "input" in lines[1] and "500×8×8" in lines[1] and "cp" in lines[1]
    assert names[-1] in lines[-1]  # the last block is always shown
    if n_blocks > 10:
        assert f"… {n_blocks - 9} more blocks" in text
    else:
        assert len(lines) == 1 + n_blocks
    # summary() is the text with every block; to_dict() the data of result.json
    assert result.summary().splitlines()[0] == lines[0]
    assert len(result.summary().splitlines()) == 1 + n_blocks
    data = result.to_dict()
    assert data["format"] == "factorlens-result" and len(data["blocks"]) == n_blocks


def test_the_old_name_of_block_fit_still_reads_it_with_a_warning() -> None:
    from factorlens.testing import random_result

    result = random_result(["input", "fc"], [(20, 4, 4), (20, 6)], rank=2)
    with pytest.warns(DeprecationWarning, match="block_fit"):
        old = result.fit
    assert old is result.block_fit


def test_the_loss_history_says_where_each_objective_starts() -> None:
    from factorlens.testing import planted_blocks

    blocks, _ = planted_blocks(N=120, R=3, noise=0.2, seed=1)
    # tol=0: no start converges in its 20 screening iterations, so the best one is refined
    result = cmtf(blocks, 3, n_init=2, check_fewer=False, tol=0, n_iter_max=60)
    stages = result.options["loss_stages"]
    assert [what for what, _ in stages] == ["fit", "refine", "refit"]
    assert stages[0][1] == 0 < stages[1][1] <= stages[2][1] < len(result.loss_history)
    at = stages[2][1]  # the refit drops the penalty: its objective is another, much lower
    assert result.loss_history[at] < 0.5 * result.loss_history[at - 1]
    compressed = cmtf(blocks, 3, compress_rows=10, check_fewer=False)
    names = [what for what, _ in compressed.options["loss_stages"]]
    assert names[0] == "fit (compressed)" and names[-1] == "refine on all rows"
