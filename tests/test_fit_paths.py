"""The engine's faster paths give the plain fit: wide blocks through their row space, many
matrix blocks stacked into one product, a small fit as one compiled loop; the progress lines
of a log."""

from __future__ import annotations

import io

import numpy as np
import pytest

import factorlens.factorize.compiled as compiled
import factorlens.factorize.rowspace as rowspace
import factorlens.factorize.stacked as stacked
from factorlens.factorize import CMTF, factor_match_score
from factorlens.factorize.blocks import Block
from factorlens.progress import LineProgress, progress_bar
from factorlens.testing import planted_blocks


def _wide_blocks(seed: int = 0) -> dict[str, np.ndarray]:
    """60 samples, a 5×6 input and five matrix layers, two of them wider than 2N."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((60, 3))
    out = {"input": np.einsum("nr,ir,jr->nij", A, rng.random((5, 3)), rng.random((6, 3)))}
    for k, width in enumerate((40, 300, 500, 90, 20)):
        layer = A @ rng.standard_normal((3, width)) + 0.3 * rng.standard_normal((60, width))
        out[f"layer{k}"] = layer.astype(np.float32)
    out["input"] = (out["input"] + 0.05 * rng.standard_normal(out["input"].shape)).astype(
        np.float32
    )
    return out


def _fms(a, b) -> float:
    names = a.block_names
    return float(
        factor_match_score(
            [a.A] + [f for n in names for f in a.factors[n]],
            [b.A] + [f for n in names for f in b.factors[n]],
        )
    )


@pytest.fixture
def plain(monkeypatch):
    """Fit without the row-space coordinates, stacking or the compiled loop (the per-block
    engine in Python)."""

    def fit(blocks, rank, **opts):
        with monkeypatch.context() as m:
            m.setattr(rowspace, "WIDTH_RATIO", 10**9)
            m.setattr(stacked, "MIN_BLOCKS", 10**9)
            m.setattr(compiled, "MAX_ENTRIES", 0)
            return CMTF(rank, random_state=0, **opts).fit(blocks).result_

    return fit


@pytest.mark.parametrize(
    "opts",
    [{}, {"l1_penalty": 0.0}, {"l1_penalty": 0.02}, {"center": True}, {"compress_rows": 12}],
)
def test_row_space_coordinates_and_stacking_give_the_plain_fit(plain, opts) -> None:
    blocks = _wide_blocks()
    fast = CMTF(3, random_state=0, **opts).fit(blocks).result_
    slow = plain(blocks, 3, **opts)
    assert _fms(fast, slow) >= 0.9999
    assert fast.loss == pytest.approx(slow.loss, rel=1e-5)
    for name in blocks:
        assert fast.block_fit[name] == pytest.approx(slow.block_fit[name], abs=1e-5)
        assert fast.factors[name][0].shape == slow.factors[name][0].shape
    if opts.get("center"):
        np.testing.assert_allclose(fast.means["layer2"], slow.means["layer2"], atol=1e-6)


def test_nonneg_fits_are_stacked_but_never_through_the_row_space(plain) -> None:
    blocks = {k: np.abs(v) for k, v in _wide_blocks(1).items()}
    fast = CMTF(3, random_state=0, nonneg=True).fit(blocks).result_
    slow = plain(blocks, 3, nonneg=True)
    assert _fms(fast, slow) >= 0.9999
    assert all((f >= 0).all() for fs in fast.factors.values() for f in fs)


def test_the_gram_of_a_block_on_disk_equals_the_one_in_memory(tmp_path) -> None:
    import zarr

    rng = np.random.default_rng(2)
    Y = rng.standard_normal((50, 300)).astype(np.float32)
    arr = zarr.open_array(tmp_path / "y.zarr", mode="w", shape=Y.shape, chunks=(7, 300),
                          dtype="float32")  # fmt: skip
    arr[:] = Y
    in_memory = Block("y", Y)
    on_disk = Block("y", arr, chunk_rows=7, memory_budget=0)
    assert not on_disk.in_memory
    expected = Y.astype(np.float64) @ Y.T.astype(np.float64)
    np.testing.assert_allclose(rowspace.gram(in_memory), expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(rowspace.gram(on_disk, memory_budget=4 * 300 * 20), expected,
                               rtol=1e-5, atol=1e-3)  # fmt: skip


def test_row_space_coordinates_reproduce_the_block_exactly() -> None:
    Y = np.random.default_rng(3).standard_normal((30, 200))
    block = Block("y", Y)
    small = rowspace.coordinates(block)
    assert small.width <= 30 and small.norm_sq == pytest.approx(block.norm_sq)
    np.testing.assert_allclose(small._data @ small._data.T, Y @ Y.T, atol=1e-8)
    f = np.random.default_rng(4).standard_normal((small.width, 2))
    Q = small.basis[0]
    np.testing.assert_allclose(Y @ (Q @ f), small._data @ f, atol=1e-8)  # C = Y Q


def test_planted_recovery_survives_the_fast_paths() -> None:
    blocks, truth = planted_blocks(N=100, R=3, noise=0.05, seed=0)
    rng = np.random.default_rng(5)
    for k in range(3):  # three wide layers (fitted through their row spaces) besides
        V = rng.standard_normal((400 + 50 * k, 3))
        Y = truth["A"] @ V.T
        blocks[f"wide{k}"] = Y + 0.05 * np.linalg.norm(Y) / 200 * rng.standard_normal(Y.shape)
    res = CMTF(3, random_state=0).fit(blocks).result_
    assert factor_match_score([truth["A"]], [res.A]) > 0.98
    assert factor_match_score(truth["layer1"], res.factors["layer1"]) > 0.98


def test_a_log_gets_whole_lines_not_carriage_returns() -> None:
    stream = io.StringIO()
    bar = LineProgress(5, "capture", unit="batch", stream=stream)
    for _ in range(5):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()  # once
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("capture: done 5/5 batches") and "(loss=0.5)" in text


def test_progress_follows_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("FACTORLENS_PROGRESS", "lines")
    assert isinstance(progress_bar(3, "x"), LineProgress)
    monkeypatch.setenv("FACTORLENS_PROGRESS", "bars")
    assert not isinstance(progress_bar(3, "x", disable=True), LineProgress)
