"""Row access for inputs on disk, and a report written from a store larger than the budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factorlens.errors import FactorlensRuntimeError
from factorlens.rows import NpyRows, mean_rows, rows_equal, take_rows, write_npy
from factorlens.testing import planted_blocks, zarr_store


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.random((53, 6, 5)).astype(np.float32)
    store = zarr_store(tmp_path_factory.mktemp("rows") / "s", {"input": images}, 8)
    return images, store.block("input")


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 52), min_size=0, max_size=20))
def test_rows_taken_from_disk_are_the_rows_asked_for(on_disk, rows) -> None:
    images, block = on_disk
    np.testing.assert_array_equal(take_rows(block, rows), images[rows])  # order and repeats


def test_mean_equality_and_npy_round_trip(on_disk, tmp_path) -> None:
    images, block = on_disk
    np.testing.assert_allclose(mean_rows(block), images.mean(axis=0, dtype=np.float64))
    assert rows_equal(block, images) and not rows_equal(block, images[:-1])
    other = images.copy()
    other[-1, 0, 0] += 1.0  # in the last chunk only
    assert not rows_equal(block, other)
    write_npy(tmp_path / "x.npy", block)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), images)  # a plain .npy
    rows = NpyRows(tmp_path / "x.npy")
    assert rows.shape == images.shape and len(rows) == 53
    np.testing.assert_array_equal(rows[7:30], images[7:30])
    np.testing.assert_array_equal(take_rows(rows, [52, 0, 0]), images[[52, 0, 0]])
    with pytest.raises(TypeError, match="contiguous slices"):
        rows[[1, 2]]
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-4])
    with pytest.raises(FactorlensRuntimeError, match="damaged"):
        NpyRows(tmp_path / "x.npy")


def test_a_report_from_a_store_above_the_budget_reads_its_inputs_by_chunks(tmp_path) -> None:
    from factorlens.cli import main
    from factorlens.pipeline import (
        IMAGES_NPY,
        factorize_store,
        input_images,
        load_inputs,
        write_outputs,
    )

    blocks, _ = planted_blocks(N=120, R=3, seed=2)
    store = zarr_store(tmp_path / "s", blocks, 16)
    result = factorize_store(store, 3, progress=False, random_state=0, n_init=1)
    lazy = input_images(store, memory_budget=1024)
    assert not isinstance(lazy, np.ndarray)  # above the budget: left on disk
    for name, images in (("memory", input_images(store)), ("disk", lazy)):
        write_outputs(tmp_path / name, result, images, None, None, title="t")
    assert not (tmp_path / "memory" / IMAGES_NPY).exists()
    images, _, _ = load_inputs(tmp_path / "disk")
    assert isinstance(images, NpyRows)  # saved beside the result, reopened by rows
    assert rows_equal(images, blocks["input"])
    same = sorted(p.name for p in (tmp_path / "memory" / "figures").iterdir())
    assert sorted(p.name for p in (tmp_path / "disk" / "figures").iterdir()) == same
    assert (tmp_path / "disk" / "index.html").read_text() == (
        tmp_path / "memory" / "index.html"
    ).read_text()
    for png in same:  # the same thumbnails, patterns and means, read chunk by chunk
        assert (tmp_path / "disk" / "figures" / png).read_bytes() == (
            tmp_path / "memory" / "figures" / png
        ).read_bytes(), png
    # the report rewritten later from the saved rows
    assert main(["report", str(tmp_path / "disk"), "--overwrite"]) == 0
    assert (tmp_path / "disk" / "index.html").is_file()
