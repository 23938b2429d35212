"""Tests for the capture's background writer (factorlens.writer)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from factorlens.errors import FactorlensError
from factorlens.store import MemoryStore, ZarrStore, open_store
from factorlens.writer import BatchWriter, check_finite


def test_huge_finite_values_whose_sum_overflows_are_not_refused() -> None:
    arr = np.full((4, 1000), 3e38, np.float32)  # the float32 sum is inf, every value finite
    assert check_finite("fc", arr, "raise", 0, {}) is arr


@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 6)),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_zero_policy_replaces_exactly_the_nonfinite_values(arr: np.ndarray) -> None:
    want_bad = int((~np.isfinite(arr)).sum())
    expected = np.where(np.isfinite(arr), arr, 0)
    counts: dict[str, int] = {}
    out = check_finite("fc", arr.copy(), "zero", 7, counts)
    np.testing.assert_array_equal(out, expected)
    assert counts.get("fc", 0) == want_bad
    if want_bad:
        with pytest.raises(FactorlensError, match=rf"layer 'fc' produced {want_bad} non-finite"):
            check_finite("fc", arr.copy(), "raise", 7, {})


def test_batches_are_written_in_order_and_resume_points_recorded(tmp_path) -> None:
    store = ZarrStore.create(tmp_path / "acts", chunk_rows=3)
    store.create_block("input", (2,), "input", "input", n_samples=10)
    writer = BatchWriter(store, "raise", {})
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    for start in range(0, 10, 4):
        writer.put(start, min(start + 4, 10), [("input", rows[start : start + 4].copy())])
    writer.close()
    store.close()
    np.testing.assert_array_equal(open_store(tmp_path / "acts").block("input")[:], rows)


def test_an_error_in_the_thread_reaches_the_caller_once_and_stops_the_writes() -> None:
    store = MemoryStore()
    store.create_block("fc", (2,), "layer", "Linear")
    writer = BatchWriter(store, "raise", {}, depth=1)
    writer.put(0, 1, [("fc", np.ones((1, 2), np.float32))])
    writer.put(1, 2, [("fc", np.array([[np.nan, 0]], np.float32))])
    with pytest.raises(FactorlensError, match=r"layer 'fc' produced 1 non-finite .* sample 1"):
        for start in range(2, 50):  # the error surfaces at a later put, never a hang
            writer.put(start, start + 1, [("fc", np.ones((1, 2), np.float32))])
    writer.close()  # drained; the error is not raised a second time
    assert store.shape("fc") == (1, 2)  # nothing after the bad batch was written
