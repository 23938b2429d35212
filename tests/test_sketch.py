"""Tests for fits on compressed samples (CMTF(compress_rows=k), factorize/sketch.py)."""

from __future__ import annotations

import numpy as np
import pytest

from factorlens import CMTF, estimate_rank
from factorlens.errors import FactorlensError
from factorlens.factorize.compare import factor_match_score
from factorlens.factorize.sketch import compress_samples, sample_basis
from factorlens.testing import planted_blocks, zarr_store


@pytest.fixture(scope="module")
def planted() -> tuple[dict[str, np.ndarray], dict]:
    return planted_blocks(N=4000, R=4, seed=1)


def test_the_basis_is_orthonormal_and_holds_the_planted_sample_factor(planted) -> None:
    blocks, truth = planted
    data = CMTF(4).prepare(blocks)
    Q = sample_basis(data, 12, np.random.default_rng(0))
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-10)
    A = truth["A"] / np.linalg.norm(truth["A"], axis=0)
    inside = np.linalg.norm(Q.T @ A, axis=0)  # 1 where a column of A lies in span(Q)
    assert inside.min() > 0.999


def test_compressed_blocks_keep_the_full_norms_and_shapes(planted) -> None:
    blocks, _ = planted
    data = CMTF(4).prepare(blocks)
    _, small = compress_samples(data, 12, np.random.default_rng(0))
    for full, part in zip(data, small, strict=True):
        assert part.shape == (12, *full.shape[1:]) and part.scale == full.scale
        assert part.norm_sq == pytest.approx(full.norm_sq)
        assert part.spectrum is full.spectrum  # the noise floor comes from all rows
        own = float(np.sum(part.dense() ** 2))  # what the 12 directions hold of the block
        assert 0.99 * full.norm_sq < own <= full.norm_sq * (1 + 1e-9)


def test_a_fit_without_the_auto_penalty_reads_no_spectrum(planted) -> None:
    """The spectra feed only l1_penalty="auto"'s floors: a fixed penalty skips that pass."""
    blocks, _ = planted
    fixed = CMTF(4, l1_penalty=0.0, compress_rows=20, check_fewer=False)
    fixed.fit_blocks(data := fixed.prepare(blocks))
    assert all(b.spectrum is None for b in data)
    auto = CMTF(4, compress_rows=20, check_fewer=False)
    auto.fit_blocks(data := auto.prepare(blocks))
    assert all(b.spectrum is not None for b in data)


def test_the_compressed_fit_matches_the_full_one(planted) -> None:
    blocks, truth = planted
    full = CMTF(4, random_state=0).fit(blocks)
    fast = CMTF(4, random_state=0, compress_rows=20).fit(blocks)
    ratio = fast.result_.loss_history[-1] / full.result_.loss_history[-1]
    assert ratio <= 1.001
    # the refinement moves the loss by float32 round-off here (the planted model is exact)
    assert fast.result_.options["compressed_loss"] == pytest.approx(full.result_.loss, rel=1e-3)
    assert factor_match_score([fast.A_], [full.A_]) > 0.999
    assert factor_match_score([fast.A_], [truth["A"]]) > 0.99
    for name in blocks:
        assert fast.fit_[name] == pytest.approx(full.fit_[name], abs=1e-3)
    gains = fast.result_.options["gain_over_fewer"]  # R-1 also fitted, on the small blocks
    want = full.result_.options["gain_over_fewer"]
    assert gains == pytest.approx(want, abs=1e-3)


def test_a_store_on_disk_is_read_in_passes_and_gives_the_same_fit(planted, tmp_path) -> None:
    blocks, _ = planted
    store = zarr_store(tmp_path / "acts", blocks, 700)
    memory = CMTF(4, random_state=0, compress_rows=20, check_fewer=False).fit(blocks)
    disk = CMTF(4, random_state=0, compress_rows=20, check_fewer=False, memory_budget=0)
    disk.fit(store)
    assert factor_match_score([disk.A_], [memory.A_]) > 0.9999
    # the loss is the data's norm² less the model's (unit blocks: 1 each), so float32 sums in
    # another order move it by ~1e-7 of that norm, not of the small loss itself
    disk_loss, memory_loss = disk.result_.loss_history[-1], memory.result_.loss_history[-1]
    assert disk_loss == pytest.approx(memory_loss, abs=1e-6 * len(blocks))


def test_few_rows_fit_on_the_full_data_and_bad_values_are_refused(planted) -> None:
    blocks, _ = planted
    few = {k: v[:50] for k, v in blocks.items()}
    fit = CMTF(4, random_state=0, compress_rows=40, check_fewer=False).fit(few)
    assert "compressed_loss" not in fit.result_.options  # 50 rows: nothing to gain
    with pytest.raises(FactorlensError, match=r"`compress_rows` \(3\) is below the rank 4"):
        CMTF(4, compress_rows=3).fit(blocks)
    with pytest.raises(
        FactorlensError, match=r"`compress_rows` must be an integer >= 0 \(0 = off\), got -1"
    ):
        CMTF(4, compress_rows=-1).fit(blocks)
    with pytest.raises(FactorlensError, match=r"a nonnegative fit cannot use"):
        CMTF(4, compress_rows=20, nonneg=True).fit(blocks)
    with pytest.raises(FactorlensError, match=r"rank scan .* takes no `compress_rows`"):
        estimate_rank(blocks, 3, compress_rows=20)
    warm = np.ones((4000, 4))
    with pytest.raises(FactorlensError, match=r"warm start .* cannot be combined"):
        CMTF(4, compress_rows=20, init=warm).fit(blocks)


def test_a_wide_cp_input_is_compressed_in_its_modes_and_fits_like_the_full_one() -> None:
    """compress_rows with an image-like input: the compressed fit also shrinks the wide
    modes (here 40 -> 13 directions at R = 3), maps them back, and refines on everything."""
    rng = np.random.default_rng(2)
    n, R = 600, 3
    A = rng.random((n, R))
    image = np.einsum("nr,ar,br->nab", A, rng.random((40, R)), rng.random((36, R)))
    layer = A @ rng.standard_normal((R, 50))
    blocks = {
        "input": image + 0.02 * rng.standard_normal(image.shape),
        "layer": layer + 0.02 * rng.standard_normal(layer.shape),
    }
    settings = {"random_state": 0, "check_fewer": False, "l1_penalty": 0.0}
    full = CMTF(R, **settings).fit(blocks).result_
    fast = CMTF(R, compress_rows=30, **settings).fit(blocks).result_
    assert fast.block_shapes[0] == (n, 40, 36) and fast.factors["input"][0].shape == (40, R)
    assert fast.loss_history[-1] / full.loss_history[-1] <= 1.001
    fms = factor_match_score([fast.A, *fast.factors["input"]], [full.A, *full.factors["input"]])
    assert fms >= 0.99
