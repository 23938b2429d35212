"""Stores that say when they are damaged, and interrupted captures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from harness import analyze_args

from factorlens.errors import FactorlensError
from factorlens.store import PROGRESS_JSON, ZarrStore, open_store


def _store(tmp_path: Path, name: str = "acts", seed: int = 0) -> Path:
    path = tmp_path / name
    store = ZarrStore.create(path, chunk_rows=4)
    store.create_block("input", (3,), "input", "input", n_samples=10)
    store.create_block("fc", (2,), "layer", "Linear", n_samples=10)
    rng = np.random.default_rng(seed)
    store.append("input", rng.random((10, 3)))
    store.append("fc", rng.random((10, 2)))
    store.set_labels(np.arange(10) % 3)
    store.close()
    return path


def _chunk_files(path: Path, key: str) -> list[Path]:
    return sorted(p for p in (path / key / "c").rglob("*") if p.is_file())


def test_a_missing_chunk_file_names_the_block(tmp_path: Path) -> None:
    path = _store(tmp_path)
    _chunk_files(path, "b001")[1].unlink()
    with pytest.raises(FactorlensError, match=r"block 'fc' is missing 1 of its 3 chunk files"):
        open_store(path)


def test_completeness_is_read_off_the_chunk_files_not_an_editable_flag(tmp_path) -> None:
    path = _store(tmp_path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["every_chunk_written"] = False  # hand-edited
    (path / "zarr.json").write_text(json.dumps(doc))
    _chunk_files(path, "b001")[1].unlink()
    with pytest.raises(FactorlensError, match=r"block 'fc' is missing 1 of its 3 chunk files"):
        open_store(path)


def test_a_missing_labels_chunk_is_an_error(tmp_path: Path) -> None:
    path = _store(tmp_path)
    _chunk_files(path, "labels")[0].unlink()
    with pytest.raises(FactorlensError, match=r"block 'labels' is missing"):
        open_store(path)


def test_a_corrupt_chunk_fails_its_checksum_with_the_block_named(tmp_path: Path) -> None:
    path = _store(tmp_path)
    chunk = _chunk_files(path, "b000")[2]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = open_store(path)
    np.testing.assert_array_equal(store.block("fc")[:].shape, (10, 2))  # other blocks read
    with pytest.raises(FactorlensError, match=r"block 'input' fails its checksum"):
        store.block("input")[:]


@pytest.mark.parametrize("source", ["another store", "another row range"])
def test_a_chunk_file_from_elsewhere_is_refused_though_its_checksum_holds(tmp_path, source):
    path = _store(tmp_path)
    if source == "another store":  # same layout, other values: a valid chunk of its own
        donor = _chunk_files(_store(tmp_path, "other", seed=1), "b001")[1]
    else:
        donor = _chunk_files(path, "b001")[0]
    target = _chunk_files(path, "b001")[1]
    target.write_bytes(donor.read_bytes())
    with pytest.raises(FactorlensError, match=r"block 'fc' holds a chunk file .* did not write"):
        open_store(path)
    assert open_store(
        tmp_path / "other" if source == "another store" else _store(tmp_path, "again")
    )


def test_analyze_of_a_damaged_store_is_a_one_line_error(cli, project) -> None:
    store = project["root"] / "acts"
    cli.ok(analyze_args(project, project["root"] / "first", "--store", store))
    chunks = sorted(p for p in (store / "b001" / "c").rglob("*") if p.is_file())
    chunks[0].unlink()
    args = ["analyze", "--store", store, "--rank", "2", "--out", project["root"] / "again"]
    line = cli.fails(args, "damaged", "missing", "chunk", rc=1)  # found at run time: exit 1
    assert line == (
        f"error: store {store} is damaged: block 'features.0' is missing 1 of its "
        f"{len(chunks)} chunk files; capture it again (--overwrite)"
    )
    assert not (project["root"] / "again").exists()


def test_a_half_written_store_offers_resume_and_overwrite_replaces_it(cli, project) -> None:
    store = project["root"] / "acts"
    half = ZarrStore.create(store, chunk_rows=2)
    half.create_block("input", (8, 8), "input", "input", n_samples=60)
    half.append("input", np.zeros((4, 8, 8)))  # killed here: no completion marker
    out = project["root"] / "out"
    cli.fails(analyze_args(project, out, "--store", store), "interrupted capture", "--resume")
    cli.ok(analyze_args(project, out, "--store", store, "--overwrite"))
    assert open_store(store).n_samples == 60
    assert not (store / PROGRESS_JSON).exists()


def test_a_foreign_folder_as_store_is_never_replaced(cli, project) -> None:
    store = project["root"] / "mine"
    store.mkdir()
    (store / "thesis.tex").write_text("...")
    cli.fails(
        analyze_args(project, project["root"] / "out", "--store", store, "--overwrite"),
        "not a factorlens store",
    )


def test_a_block_with_an_all_zero_chunk_and_zero_labels_is_not_called_damaged(tmp_path) -> None:
    path = tmp_path / "acts"
    store = ZarrStore.create(path, chunk_rows=4)
    store.create_block("fc", (2,), "layer", "Linear", n_samples=10)
    store.append("fc", np.zeros((10, 2)))  # zarr alone writes no file for an all-zero chunk
    store.set_labels(np.zeros(10, int))
    store.close()
    again = open_store(path)
    assert again.block("fc")[:].sum() == 0 and again.labels.sum() == 0


def test_fingerprints_hash_empty_buffers_and_bfloat16_weights(tmp_path) -> None:
    import torch

    from factorlens.capture import capture

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).to(torch.bfloat16)
    model.register_buffer("nothing", torch.empty(0))
    images = np.random.default_rng(0).random((6, 1, 2, 2)).astype(np.float32)

    def bf16(x):
        return x.to(torch.bfloat16)

    store = capture(model, images, store=tmp_path / "acts", preprocess=bf16, progress=False)
    assert store.n_samples == 6


def test_resuming_a_capture_stopped_after_its_last_batch(tmp_path, monkeypatch) -> None:
    import torch

    from factorlens.capture import capture

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU())
    images = np.random.default_rng(0).random((10, 1, 2, 2)).astype(np.float32)
    whole = capture(model, images, store=tmp_path / "whole", batch_size=4, progress=False)
    monkeypatch.setattr(ZarrStore, "sync_seconds", 0.0)  # every batch on disk at once
    real_close = ZarrStore.close

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ZarrStore, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capture(model, images, store=tmp_path / "acts", batch_size=4, progress=False)
    monkeypatch.setattr(ZarrStore, "close", real_close)
    resumed = capture(
        model, images, store=tmp_path / "acts", batch_size=4, progress=False, resume=True
    )
    assert resumed.meta["layers"] == whole.meta["layers"] == ["1", "2"]
    for name in whole.names:
        np.testing.assert_array_equal(resumed.block(name)[:], whole.block(name)[:])


def test_chunks_are_flushed_to_disk_before_the_progress_file_names_them(tmp_path, monkeypatch):
    import os

    import factorlens.store as store_module

    synced: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", record)
    monkeypatch.setattr(ZarrStore, "sync_seconds", 0.0)
    store = ZarrStore.create(tmp_path / "acts", chunk_rows=4)
    store.create_block("fc", (2,), "layer", "Linear", n_samples=12)
    store.append("fc", np.ones((8, 2)))
    synced.clear()
    store.mark_batch(8, {})
    progress = json.loads((tmp_path / "acts" / PROGRESS_JSON).read_text())
    assert progress["rows"] == 8
    chunks = sorted(str(p) for p in (tmp_path / "acts").rglob("c/*/*") if p.is_file())
    assert chunks and set(chunks) <= set(synced)  # both chunks of rows 0-7, before the file
    assert synced.index(chunks[-1]) < len(synced) - 1  # the progress file's own sync comes last


def test_a_capture_that_fills_the_disk_keeps_its_store_to_resume(tmp_path, monkeypatch) -> None:
    import errno

    import torch

    from factorlens.capture import StoreDiskFull, capture

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU())
    images = np.random.default_rng(0).random((12, 1, 2, 2)).astype(np.float32)
    whole = capture(model, images, store=tmp_path / "whole", batch_size=4, progress=False)
    monkeypatch.setattr(ZarrStore, "sync_seconds", 0.0)
    real_mark = ZarrStore.mark_batch

    def full_after_two(self, stop, counts):
        if stop > 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_mark(self, stop, counts)

    monkeypatch.setattr(ZarrStore, "mark_batch", full_after_two)
    with pytest.raises(StoreDiskFull, match="free some space and rerun the same capture"):
        capture(model, images, store=tmp_path / "acts", batch_size=4, progress=False)
    assert (tmp_path / "acts").is_dir()  # kept, not deleted
    monkeypatch.setattr(ZarrStore, "mark_batch", real_mark)
    resumed = capture(
        model, images, store=tmp_path / "acts", batch_size=4, progress=False, resume=True
    )
    for name in whole.names:
        np.testing.assert_array_equal(resumed.block(name)[:], whole.block(name)[:])


def test_a_float16_capture_resumes_mid_chunk_and_refuses_another_number_type(
    tmp_path, monkeypatch
) -> None:
    import torch

    from factorlens.capture import capture

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU())
    images = np.random.default_rng(0).random((12, 1, 2, 2)).astype(np.float32)
    whole = capture(model, images, store=tmp_path / "whole", batch_size=4, progress=False)
    monkeypatch.setattr(ZarrStore, "sync_seconds", 0.0)  # every batch on disk at once
    real_mark = ZarrStore.mark_batch

    def stopped_after_two(self, stop, counts):
        if stop > 8:
            raise KeyboardInterrupt
        real_mark(self, stop, counts)

    half = {"batch_size": 4, "progress": False, "store_dtype": "float16"}
    monkeypatch.setattr(ZarrStore, "mark_batch", stopped_after_two)
    with pytest.raises(KeyboardInterrupt):
        capture(model, images, store=tmp_path / "acts", **half)
    monkeypatch.setattr(ZarrStore, "mark_batch", real_mark)
    with pytest.raises(
        FactorlensError, match=r"started with other settings \(differs in store_dtype"
    ):
        capture(model, images, store=tmp_path / "acts", batch_size=4, progress=False, resume=True)
    # one chunk of 12 rows per block: the resume reads rows 0-7 back and rewrites the chunk
    resumed = capture(model, images, store=tmp_path / "acts", resume=True, **half)
    for name in whole.names:
        want = whole.block(name)[:]
        got = resumed.block(name)[:]
        assert got.dtype == np.float32
        assert np.all(np.abs(got - want) <= np.maximum(np.abs(want) * 2.0**-11, 2.0**-25))
        assert not np.array_equal(got, want)  # rounded: float16 on disk
    with pytest.raises(FactorlensError, match=r"`store_dtype='float16'` is how a store on disk"):
        capture(model, images, progress=False, store_dtype="float16")
