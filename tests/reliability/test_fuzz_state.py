"""Fuzzing factorlens's own state files: whatever a lock file, a result folder's manifest or a
capture's progress file holds, a run either does the right thing or stops with one
:class:`FactorlensError`; it never raises anything else, never writes a wrong store, and never
touches a file outside its output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from harness import snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from factorlens.capture import capture
from factorlens.errors import FactorlensError
from factorlens.output import MANIFEST, publish
from factorlens.store import PROGRESS_JSON, ZarrStore, open_store

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NAMES = ("result.json", "figures")
#: JSON values of every kind, the odd ones included (huge, negative, non-ASCII, surrogates)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../outside/keep.txt", "/etc/passwd", "figures", "figures/../x", "\ud800"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _layout(root: Path) -> tuple[Path, Path]:
    """An output folder with a result factorlens wrote and a user's file, and a folder beside
    it that nothing may touch; return ``(out, outside)``."""
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("the user's")
    out = root / "out"
    publish(out, _produce("old"), NAMES)
    (out / "notes.txt").write_text("mine")
    return out, outside


def _produce(text: str):
    def produce(stage: Path) -> None:
        (stage / "figures").mkdir()
        (stage / "figures" / "a.png").write_text(text)
        (stage / "result.json").write_text(json.dumps({"format": "factorlens-result", "x": text}))

    return produce


def _publish_or_refuse(out: Path) -> None:
    try:
        publish(out, _produce("new"), NAMES, overwrite=True)
    except FactorlensError:
        return
    assert json.loads((out / "result.json").read_text())["x"] == "new"


@FUZZ
@given(content=st.binary(max_size=40) | st.text(max_size=30).map(str.encode))
def test_any_lock_file_is_taken_over_or_refused(tmp_path_factory, content: bytes) -> None:
    root = tmp_path_factory.mktemp("lock")
    out, outside = _layout(root)
    before = snapshot(outside)
    (root / ".out.lock").write_bytes(content)
    _publish_or_refuse(out)
    assert snapshot(outside) == before
    assert (out / "notes.txt").read_text() == "mine"


@FUZZ
@given(doc=JSON | st.fixed_dictionaries({"files": st.lists(SCALARS, max_size=6)}))
def test_any_manifest_is_followed_inside_the_folder_or_refused(tmp_path_factory, doc: Any) -> None:
    root = tmp_path_factory.mktemp("manifest")
    out, outside = _layout(root)
    before = snapshot(outside)
    try:
        text = json.dumps(doc)
    except (ValueError, UnicodeEncodeError):
        text = str(doc)
    (out / MANIFEST).write_bytes(text.encode("utf-8", "surrogatepass"))
    _publish_or_refuse(out)
    assert snapshot(outside) == before


# ------------------------------------------------------------------------------ progress file
class _Net(nn.Module):
    """A small deterministic model whose forward stops (as Ctrl-C would) at a chosen call."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.calls, self.stop_at = 0, stop_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.fc(torch.relu(self.conv(x)).flatten(1))


IMAGES = np.random.default_rng(0).random((96, 1, 8, 8)).astype(np.float32)


def _capture(store: Path, model: nn.Module, resume: bool = False) -> Any:
    return capture(
        model, IMAGES, "conv,fc", batch_size=8, store=store, progress=False, resume=resume
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A capture interrupted after 5 of its 12 batches, and the same capture run whole."""
    root = tmp_path_factory.mktemp("stores")
    before, ZarrStore.sync_seconds = ZarrStore.sync_seconds, 0.0  # a resume point every batch
    try:
        with pytest.raises(KeyboardInterrupt):
            _capture(root / "partial", _Net(stop_at=7))  # the probe batch, then 5 batches
    finally:
        ZarrStore.sync_seconds = before
    assert json.loads((root / "partial" / PROGRESS_JSON).read_text())["rows"] >= 8
    _capture(root / "whole", _Net())
    return {"partial": root / "partial", "whole": root / "whole"}


PROGRESS = st.one_of(
    JSON,
    st.fixed_dictionaries({"rows": SCALARS | st.integers(-20, 120), "nonfinite": JSON}),
    st.fixed_dictionaries(
        {"rows": st.sampled_from([0, 8, 16, 32, 40, 48, 96]), "nonfinite": st.just({})}
    ),
)


@FUZZ
@given(doc=PROGRESS)
def test_any_progress_file_resumes_to_the_right_store_or_is_refused(
    stores, tmp_path_factory, doc: Any
) -> None:
    store = tmp_path_factory.mktemp("resume") / "acts"
    shutil.copytree(stores["partial"], store)
    try:
        text = json.dumps(doc)
    except (ValueError, UnicodeEncodeError):
        text = str(doc)
    (store / PROGRESS_JSON).write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        _capture(store, _Net(), resume=True)
    except FactorlensError:
        return
    got, want = open_store(store), open_store(stores["whole"])
    for name in want.names:
        np.testing.assert_array_equal(got.block(name)[:], want.block(name)[:])
