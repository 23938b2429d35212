"""Tests for the activation store (memory and zarr back ends)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factorlens.errors import FactorlensError
from factorlens.store import (
    ActivationStore,
    MemoryStore,
    ZarrStore,
    default_chunk_rows,
    open_store,
)


def _fill(store: ActivationStore, n: int = 10, batch: int = 3, seed: int = 0) -> dict:
    """Write an input block (N×4×5), a layer (N×3×2×2) and a matrix layer (N×6); return them."""
    rng = np.random.default_rng(seed)
    data = {
        "input": rng.random((n, 4, 5), dtype=np.float32),
        "conv": rng.standard_normal((n, 3, 2, 2)).astype(np.float32),
        "fc": rng.standard_normal((n, 6)).astype(np.float32),
    }
    store.create_block("input", (4, 5), "input", "input")
    store.create_block("conv", (3, 2, 2), "layer", "Conv2d")
    store.create_block("fc", (6,), "layer", "Linear")
    for start in range(0, n, batch):
        for name, arr in data.items():
            store.append(name, arr[start : start + batch])
    return data


def _check_same(store: ActivationStore, data: dict) -> None:
    assert store.names == list(data)
    for name, arr in data.items():
        blk = store.block(name)
        assert blk.shape == arr.shape
        assert blk.dtype == np.float32
        got = blk[0 : arr.shape[0]]
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, arr)


@pytest.fixture(params=["memory", "zarr"])
def new_store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return ZarrStore.create(tmp_path / "store", chunk_rows=4)


def test_round_trip_both_back_ends(new_store):
    data = _fill(new_store)
    new_store.set_labels(np.arange(10) % 3)
    new_store.set_meta({"model": "tiny", "class_names": ["a", "b", "c"]}, layers=["conv", "fc"])
    new_store.close()
    _check_same(new_store, data)
    assert new_store.n_samples == 10
    assert new_store.labels.dtype == np.int64
    np.testing.assert_array_equal(new_store.labels, np.arange(10) % 3)
    assert new_store.meta["class_names"] == ["a", "b", "c"]
    assert new_store.meta["layers"] == ["conv", "fc"]
    info = new_store.info("conv")
    assert info["name"] == "conv"
    assert tuple(info["shape"]) == (10, 3, 2, 2)
    assert info["kind"] == "layer"
    assert info["module"] == "Conv2d"
    assert new_store.info("input")["kind"] == "input"


def test_names_put_input_first(tmp_path):
    store = MemoryStore()
    store.create_block("b", (2,), "layer", "Linear")
    store.create_block("input", (2,), "input", "input")
    store.create_block("a", (2,), "layer", "ReLU")
    assert store.names == ["input", "b", "a"]


def test_reopen_zarr_in_new_object(tmp_path):
    path = tmp_path / "acts"
    store = ZarrStore.create(path, chunk_rows=3)
    data = _fill(store, n=11, batch=4)
    store.set_labels(np.arange(11))
    store.set_meta(model="m", data="d")
    store.close()
    again = open_store(path)
    assert isinstance(again, ZarrStore)
    _check_same(again, data)
    np.testing.assert_array_equal(again.labels, np.arange(11))
    assert again.meta == {"model": "m", "data": "d"}
    assert again.n_samples == 11
    assert again.info("fc") == store.info("fc")
    assert again.info("fc")["chunk_rows"] == 3
    assert again.block("conv").chunks[0] == 3
    # read-only: no writing into a reopened store
    with pytest.raises(FactorlensError, match="read-only"):
        again.append("fc", np.zeros((1, 6), np.float32))
    with pytest.raises(FactorlensError, match="read-only"):
        again.create_block("new", (2,), "layer", "Linear")
    with pytest.raises(Exception, match="read-only"):
        again.block("fc")[0:1] = 1.0


def test_iter_rows_and_to_memory(new_store):
    data = _fill(new_store, n=9, batch=2)
    new_store.close()
    pieces = list(new_store.iter_rows("conv", 4))
    assert [start for start, _ in pieces] == [0, 4, 8]
    assert [len(rows) for _, rows in pieces] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([r for _, r in pieces]), data["conv"])
    mem = new_store.to_memory()
    assert isinstance(mem, MemoryStore)
    assert mem.closed
    _check_same(mem, data)


def test_different_sample_counts_refused(new_store):
    new_store.create_block("input", (2,), "input", "input")
    new_store.create_block("fc", (3,), "layer", "Linear")
    new_store.append("input", np.zeros((5, 2)))
    new_store.append("fc", np.zeros((4, 3)))
    with pytest.raises(FactorlensError, match="different sample counts") as err:
        new_store.close()
    msg = str(err.value)
    assert "input=5" in msg and "fc=4" in msg
    assert "\n" not in msg
    assert not new_store.closed


def test_declared_n_samples_checked(tmp_path):
    mem = MemoryStore()
    mem.create_block("fc", (3,), "layer", "Linear", n_samples=4)
    mem.append("fc", np.ones((3, 3)))
    with pytest.raises(FactorlensError, match="n_samples=4"):
        mem.append("fc", np.ones((2, 3)))
    with pytest.raises(FactorlensError, match="n_samples=4"):
        mem.close()
    mem.append("fc", np.full((1, 3), 2.0))
    mem.close()
    np.testing.assert_array_equal(mem.block("fc")[3], [2.0, 2.0, 2.0])
    assert not mem.block("fc").flags.writeable


def test_append_shape_and_label_checks(new_store):
    new_store.create_block("fc", (3,), "layer", "Linear")
    with pytest.raises(FactorlensError, match=r"rows of shape \(3,\)"):
        new_store.append("fc", np.zeros((2, 4)))
    with pytest.raises(FactorlensError, match=r"no block named 'fx'.*did you mean: fc"):
        new_store.append("fx", np.zeros((2, 3)))
    with pytest.raises(FactorlensError, match="already exists"):
        new_store.create_block("fc", (3,), "layer", "Linear")
    with pytest.raises(FactorlensError, match="kind"):
        new_store.create_block("g", (3,), "weights", "Linear")
    with pytest.raises(FactorlensError, match="integers"):
        new_store.set_labels(np.array([0.5, 1.0]))
    with pytest.raises(FactorlensError, match="1-D"):
        new_store.set_labels(np.zeros((2, 2), dtype=int))
    new_store.append("fc", np.zeros((2, 3)))
    new_store.set_labels([1, 2, 3])
    with pytest.raises(FactorlensError, match="3 labels for 2 samples"):
        new_store.close()


def test_meta_must_be_json(new_store):
    new_store.set_meta(count=np.int64(3), shape=(1, 2), arr=np.arange(2), path=Path("x"))
    assert new_store.meta == {"count": 3, "shape": [1, 2], "arr": [0, 1], "path": "x"}
    json.dumps(new_store.meta)
    with pytest.raises(FactorlensError, match="JSON"):
        new_store.set_meta(bad=object())


def test_overwrite_refusal(tmp_path):
    path = tmp_path / "acts"
    store = ZarrStore.create(path)
    _fill(store)
    store.close()
    with pytest.raises(FactorlensError, match="pass `overwrite=True`") as err:
        ZarrStore.create(path)
    assert "\n" not in str(err.value) and "--" not in str(err.value)
    # overwrite replaces a factorlens store
    fresh = ZarrStore.create(path, overwrite=True)
    data = _fill(fresh, n=4, batch=4, seed=1)
    fresh.close()
    _check_same(open_store(path), data)
    # an unrelated directory is never deleted, even with overwrite
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FactorlensError, match="not a factorlens store"):
        ZarrStore.create(other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    # an existing empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    ZarrStore.create(empty).close()
    assert open_store(empty).names == []


def test_incomplete_store_refused(tmp_path):
    path = tmp_path / "acts"
    store = ZarrStore.create(path, chunk_rows=2)
    store.create_block("fc", (3,), "layer", "Linear")
    store.append("fc", np.ones((5, 3)))  # two chunks written, no completion marker
    with pytest.raises(FactorlensError, match=r"incomplete store.*`resume=True` to continue it"):
        open_store(path)
    with pytest.raises(FactorlensError, match="close"):
        store.block("fc")
    store.close()
    np.testing.assert_array_equal(open_store(path).block("fc")[:], np.ones((5, 3)))


def test_not_a_store_refused(tmp_path):
    with pytest.raises(FactorlensError, match="no activation store"):
        open_store(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "zarr.json").write_text('{"node_type": "group", "attributes": {}}')
    with pytest.raises(FactorlensError, match="not a factorlens activation store"):
        open_store(tmp_path / "junk")
    with pytest.raises(FactorlensError, match="not a factorlens activation store"):
        open_store(tmp_path)


def test_discard_removes_created_directory(tmp_path):
    path = tmp_path / "acts"
    store = ZarrStore.create(path)
    store.create_block("fc", (3,), "layer", "Linear")
    store.append("fc", np.ones((2, 3)))
    store.discard()
    assert not path.exists()


def test_default_chunk_rows():
    assert default_chunk_rows((1024, 1024, 4)) == 1  # 16 MiB per row
    assert default_chunk_rows((1024, 1024, 8)) == 1  # bigger than a chunk: still one row
    assert default_chunk_rows((1024,)) == 4096
    assert default_chunk_rows(()) == 4 * 1024**2


def test_default_chunk_rows_in_whole_batches():
    # 16 MiB over 100 KB rows is 167 rows: with batches of 256 one chunk is one batch
    assert default_chunk_rows((25_000,), multiple=256) == 256
    assert default_chunk_rows((1024,), multiple=256) == 4096  # already a multiple
    assert default_chunk_rows((1024, 1024, 8), multiple=64) == 64  # at least one batch
    assert default_chunk_rows((3000,), multiple=100) == 1400  # 1398 rounded to batches


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_both_compressions_round_trip_and_reopen(tmp_path, compression):
    path = tmp_path / "acts"
    store = ZarrStore.create(path, chunk_rows=4, compression=compression)
    data = _fill(store)
    store.close()
    again = open_store(path)
    _check_same(again, data)
    records = json.loads((path / "zarr.json").read_text())["attributes"]["blocks"]
    key = next(r["array"] for r in records if r["name"] == "fc")
    codecs = json.loads((path / key / "zarr.json").read_text())["codecs"]
    names = [c["name"] for c in codecs]
    assert ("zstd" in names) == (compression == "zstd")
    assert "crc32c" in names  # damage is detected either way


def test_unknown_compression_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(FactorlensError, match=r"compression must be one of none, zstd, got 'lz4'"):
        ZarrStore.create(tmp_path / "acts", compression="lz4")
    assert not (tmp_path / "acts").exists()


def test_append_without_copy_keeps_the_array_and_with_copy_does_not():
    store = MemoryStore()
    store.create_block("fc", (2,), "layer", "Linear")
    owned, lent = np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)
    store.append("fc", owned, copy=False)
    store.append("fc", lent)
    lent[:] = 5.0  # the caller reuses its buffer: the store keeps what it was given
    store.close()
    np.testing.assert_array_equal(store.block("fc"), np.ones((4, 2)))


def test_default_chunk_not_larger_than_block(tmp_path):
    store = ZarrStore.create(tmp_path / "acts")
    store.create_block("fc", (3,), "layer", "Linear", n_samples=7)
    store.append("fc", np.ones((7, 3)))
    store.close()
    assert store.info("fc")["chunk_rows"] == 7
    assert store.block("fc").chunks == (7, 3)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    chunk_rows=st.integers(1, 8),
    declare=st.booleans(),
)
def test_zarr_chunk_boundaries(batches, chunk_rows, declare):
    n = sum(batches)
    rng = np.random.default_rng(n * 31 + chunk_rows)
    full = rng.standard_normal((n, 2, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store = ZarrStore.create(Path(tmp) / "s", chunk_rows=chunk_rows)
        store.create_block("x", (2, 3), "layer", "Conv1d", n_samples=n if declare else None)
        start = 0
        for size in batches:
            store.append("x", full[start : start + size])
            start += size
        store.close()
        again = open_store(Path(tmp) / "s")
        assert again.block("x").shape == (n, 2, 3)
        assert again.block("x").chunks == (chunk_rows, 2, 3)
        np.testing.assert_array_equal(again.block("x")[:], full)
        got = [rows for _, rows in again.iter_rows("x", chunk_rows)]
        if n:
            np.testing.assert_array_equal(np.concatenate(got), full)


def test_store_view_leaves_blocks_out_without_copying(tmp_path):
    from factorlens.store import StoreView

    for store in (MemoryStore(), ZarrStore.create(tmp_path / "s")):
        store.create_block("input", (3,), "input")
        store.create_block("a", (2,))
        store.create_block("out", (2,), "output")
        for name, width in (("input", 3), ("a", 2), ("out", 2)):
            store.append(name, np.arange(4 * width, dtype=np.float32).reshape(4, width))
        store.set_labels(np.arange(4))
        store.set_meta({"shapes": {"input": [4, 3], "a": [4, 2], "out": [4, 2]}})
        with pytest.raises(FactorlensError, match="close"):
            StoreView(store, ["out"])
        store.close()
        view = StoreView(store, ["out"])
        assert store.names == ["input", "a", "out"] and view.names == ["input", "a"]
        assert view.n_samples == 4 and view.meta["shapes"] == {"input": [4, 3], "a": [4, 2]}
        np.testing.assert_array_equal(view.block("a")[:], store.block("a")[:])
        np.testing.assert_array_equal(view.labels, np.arange(4))
        with pytest.raises(FactorlensError, match="no block named 'out'"):
            view.block("out")
        with pytest.raises(FactorlensError, match="no block named 'b'"):
            StoreView(store, ["b"])
        with pytest.raises(FactorlensError):
            view.append("a", np.zeros((1, 2), np.float32))


def _float16_bound(x: np.ndarray) -> np.ndarray:
    """The stated rounding error of float16 chunks: 2⁻¹¹ relative, 2⁻²⁵ absolute near zero."""
    return np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-65_000, 65_000, allow_nan=False, width=32), min_size=1, max_size=40),
    tiny=st.booleans(),
)
def test_float16_chunks_read_back_as_float32_within_the_stated_error(values, tiny):
    x = np.asarray(values, np.float32)[:, None] * np.float32(1e-6 if tiny else 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ZarrStore.create(Path(tmp) / "s", chunk_rows=7, dtype="float16")
        store.create_block("x", (1,), "layer", "Linear")
        store.append("x", x)
        store.close()
        back = open_store(Path(tmp) / "s").block("x")
        assert back.dtype == np.float32
        got = back[:]
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.all(np.abs(got - x) <= _float16_bound(x))
        assert [r.dtype for _, r in open_store(Path(tmp) / "s").iter_rows("x")] == [np.float32] * -(
            -len(x) // 7
        )


def test_a_float16_store_holds_half_the_bytes_and_says_its_format(tmp_path):
    sizes = {}
    for dtype in ("float32", "float16"):
        path = tmp_path / dtype
        store = ZarrStore.create(path, chunk_rows=4, dtype=dtype)
        data = _fill(store)
        store.close()
        again = open_store(path)
        for name, arr in data.items():
            assert np.all(np.abs(again.block(name)[:] - arr) <= _float16_bound(arr))
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        assert attrs["factorlens_store"] == (2 if dtype == "float16" else 1)
        key = next(r["array"] for r in attrs["blocks"] if r["name"] == "fc")
        assert json.loads((path / key / "zarr.json").read_text())["data_type"] == dtype
        sizes[dtype] = sum(p.stat().st_size for p in path.rglob("c/**/*") if p.is_file())
    # each chunk's 4-byte checksum does not halve
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_a_float16_store_refuses_a_value_beyond_its_range_and_names_the_block(tmp_path):
    store = ZarrStore.create(tmp_path / "s", chunk_rows=4, dtype="float16")
    store.create_block("logits", (2,), "layer", "Linear")
    store.append("logits", np.ones((3, 2)))
    with pytest.raises(
        FactorlensError,
        match=r"block 'logits' holds values up to ±7e\+04 \(rows from 3 on\), beyond "
        r"float16's ±65,504; capture it with `store_dtype='float32'`",
    ):
        store.append("logits", np.array([[1.0, -70_000.0]]))
    lent = np.array([[2.0, 1e5]], np.float32)
    lent.setflags(write=False)  # numpy casts what torch may not share: the same check
    with pytest.raises(FactorlensError, match=r"values up to ±1e\+05 \(rows from 3 on\)"):
        store.append("logits", lent, copy=False)
    store.append("logits", np.array([[np.nan, 65_504.0]]))  # NaN is the capture's to check
    lent = np.array([[0.5, -65_504.0]], np.float32)
    lent.setflags(write=False)
    store.append("logits", lent, copy=False)
    store.close()
    np.testing.assert_array_equal(
        open_store(tmp_path / "s").block("logits")[3:], [[np.nan, 65_504.0], [0.5, -65_504.0]]
    )
    with pytest.raises(FactorlensError, match=r"dtype must be one of float32, float16, got 'int8'"):
        ZarrStore.create(tmp_path / "t", dtype="int8")
    assert not (tmp_path / "t").exists()
