"""Fuzzing the readers of user files: whatever the bytes, ``load_data("npz:FILE")`` and
``CMTFResult.load`` return a valid object or raise :class:`FactorlensError`, nothing else."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factorlens.data import ImageData, load_data
from factorlens.errors import FactorlensError
from factorlens.factorize import CMTFResult, cmtf
from factorlens.factorize.result import FACTORS_NPZ, RESULT_JSON

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# npz data sets

DTYPES = ["uint8", "uint16", "int8", "int64", "float16", "float32", "float64", "bool"]
DTYPES += ["complex64", "U3", "S2"]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0)
ANY_ARRAY = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(np.dtype(dt), SHAPES))
# plausible data sets too, so that some load: images N×H×W or N×C×H×W, labels of any length
UNIT = st.floats(0, 1, width=32)
IMAGES = st.one_of(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=4, max_side=4)),
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=4), elements=UNIT),
)
LABELS = hnp.arrays(
    st.sampled_from([np.int64, np.float64, np.uint8]), st.integers(0, 5).map(lambda n: (n,))
)
PLAUSIBLE = st.fixed_dictionaries(
    {"images": IMAGES}, optional={"labels": LABELS, "class_names": ANY_ARRAY}
)
KEYS = st.sampled_from(["images", "labels", "class_names", "x"])
NPZ_FILES = st.one_of(
    PLAUSIBLE.map(lambda arrays: ("npz", arrays)),
    st.dictionaries(KEYS, ANY_ARRAY, max_size=3).map(lambda arrays: ("npz", arrays)),
    st.binary(max_size=300).map(lambda raw: ("bytes", raw)),
    st.dictionaries(KEYS, st.binary(max_size=40), max_size=3).map(lambda raw: ("zip", raw)),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write_npz(path: Path, kind: str, content: Any) -> None:
    if kind == "npz":
        np.savez(path, **content)
    elif kind == "bytes":
        path.write_bytes(content)
    else:  # a zip whose members are not .npy files
        with zipfile.ZipFile(path, "w") as zf:
            for name, raw in content.items():
                zf.writestr(name, raw)


@FUZZ
@given(NPZ_FILES)
def test_an_npz_data_set_loads_or_is_refused(workdir: Path, case: tuple[str, Any]) -> None:
    path = workdir / "data.npz"
    _write_npz(path, *case)
    try:
        data = load_data(f"npz:{path}")
    except FactorlensError:
        return
    assert isinstance(data, ImageData)
    images = data.images
    assert images.dtype == np.float32 and images.ndim in (2, 4) and images.size > 0
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert data.labels is None or data.labels.shape == (data.n_samples,)


# --------------------------------------------------------------------------------------------
# result.json

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = ["rank", "n_samples", "blocks", "loss_history", "options", "meta"]
DOCUMENTS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"format": st.just("factorlens-result"), "format_version": st.just(1)},
        optional=dict.fromkeys(FIELDS, JSON),
    ),
)
DELETE = object()


@pytest.fixture(scope="module")
def saved(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A real result (a CP input block, a centred matrix and a CP layer) and its summary."""
    rng = np.random.default_rng(0)
    shapes = {"input": (12, 3, 4), "dense": (12, 5), "conv": (12, 2, 3, 2)}
    blocks = {name: rng.random(shape) for name, shape in shapes.items()}
    result = cmtf(blocks, 2, center=True, tensor_blocks=["input", "conv"], n_init=1)
    target = result.save(workdir / "result")
    return target, json.loads((target / RESULT_JSON).read_text())


def _paths(doc: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON document (the first three items of a list)."""
    inner: Any = []
    if isinstance(doc, dict):
        inner = doc.items()
    elif isinstance(doc, list):
        inner = enumerate(doc[:3])
    return [at, *(p for key, value in inner for p in _paths(value, (*at, key)))]


def _mutate(doc: Any, path: tuple, value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced by ``value`` (or deleted: ``DELETE``)."""
    if not path:
        return None if value is DELETE else value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def _load_or_refuse(directory: Path) -> None:
    try:
        result = CMTFResult.load(directory)
    except FactorlensError:
        return
    # a result that loads is whole: the presence rule and the diagnostics run on it
    assert result.presence().shape == (result.rank, len(result.block_names))
    result.spare_components()
    for name in result.block_names:
        result.component_map(name, 0)


@FUZZ
@given(DOCUMENTS)
def test_any_json_document_as_result_json_loads_or_is_refused(saved, doc: Any) -> None:
    target, _ = saved
    (target / RESULT_JSON).write_text(json.dumps(doc))
    _load_or_refuse(target)


@FUZZ
@given(st.data())
def test_a_mutated_result_json_loads_or_is_refused(saved, data: st.DataObject) -> None:
    target, summary = saved
    doc = copy.deepcopy(summary)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        value = data.draw(st.just(DELETE) | JSON | st.sampled_from([0, -1, 2, 1.5, "cp", [12]]))
        doc = _mutate(doc, path, value)
        if not isinstance(doc, (dict, list)):
            break
    (target / RESULT_JSON).write_text(json.dumps(doc))
    _load_or_refuse(target)


@FUZZ
@given(st.data())
def test_a_damaged_factors_npz_loads_or_is_refused(saved, data: st.DataObject) -> None:
    target, summary = saved
    (target / RESULT_JSON).write_text(json.dumps(summary))
    path = target / FACTORS_NPZ
    original = path.read_bytes()
    raw = bytearray(original)
    at = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        raw = raw[:at]
    else:
        raw[at] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    try:
        _load_or_refuse(target)
    finally:
        path.write_bytes(original)
