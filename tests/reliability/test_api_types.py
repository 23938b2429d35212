"""The Python API refuses arguments of the wrong kind with one FactorlensError that names the
argument and the fix, not a TypeError or AttributeError from deep inside numpy or torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import factorlens
from factorlens.errors import FactorlensError
from factorlens.options import CaptureOptions

RNG = np.random.default_rng(0)
GOOD = {"input": RNG.random((40, 8, 8)), "h": RNG.random((40, 12))}


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3))  # fmt: skip


def _analyze(tmp: Path, model: Any = None, data: Any = None, **kw: Any) -> Any:
    data = RNG.random((20, 1, 8, 8)).astype(np.float32) if data is None else data
    return factorlens.analyze(_net() if model is None else model, data, out=kw.pop("out", tmp),
                              rank=kw.pop("rank", 2), progress=False, n_init=1, **kw)  # fmt: skip


CASES: dict[str, tuple[Callable[[Path], Any], str]] = {
    "model as a spec": (lambda t: _analyze(t, "net.py:Net"), "build it first"),
    "model class": (lambda t: _analyze(t, torch.nn.Linear), "pass an instance"),
    "data as a spec": (lambda t: _analyze(t, data="npz:x.npz"), "load_data"),
    "complex data": (lambda t: _analyze(t, data=np.ones((9, 64), complex)), "real numbers"),
    "object data": (lambda t: _analyze(t, data=np.array([[1, "a"]] * 9, object)), "real"),
    "layers an int": (lambda t: _analyze(t, layers=3), "`layers` must be layer names"),
    "out None": (lambda t: _analyze(t, out=None), "`out` must be a folder path"),
    "rank True": (lambda t: _analyze(t, rank=True), "rank must be a positive integer"),
    "block a list": (
        lambda t: factorlens.CMTF(2).fit({"input": GOOD["input"].tolist(), "h": GOOD["h"]}),
        "is a list, not an array",
    ),
    "block 0-d": (lambda t: factorlens.CMTF(2).fit({"h": np.float64(3)}), "shape ()"),
    "block of strings": (
        lambda t: factorlens.CMTF(2).fit({**GOOD, "s": np.full((40, 2), "a")}),
        "real numbers",
    ),
    "block name not a str": (
        lambda t: factorlens.CMTF(2).fit({0: GOOD["input"], 1: GOOD["h"]}),
        "block names must be non-empty strings",
    ),
    "weighting of no block": (
        lambda t: factorlens.CMTF(2, weighting={"nosuch": 1.0}).fit(GOOD),
        "'nosuch', which is not a block",
    ),
    "scan option unknown": (
        lambda t: factorlens.estimate_rank(GOOD, 3, bogus=1),
        "unknown option(s) 'bogus'",
    ),
    "scan model of the wrong class": (
        lambda t: factorlens.estimate_rank(GOOD, 3, model=CaptureOptions()),
        "EngineOptions",
    ),
    "score with options as a keyword": (
        lambda t: factorlens.score_model(_net(), RNG.random((30, 64)), options=CaptureOptions()),
        "unknown capture option(s) 'options'",
    ),
    "score n_samples text": (
        lambda t: factorlens.score_model(_net(), RNG.random((30, 64)), n_samples="40"),
        "`n_samples` must be an integer",
    ),
    "checkpoint names too few": (
        lambda t: factorlens.score_checkpoints([_net(), _net()], RNG.random((30, 64)), names=["a"]),
        "2 models but 1 `names`",
    ),
    "load None": (lambda t: factorlens.load(None), "`directory` must be"),
    "data spec not text": (lambda t: factorlens.load_data(5), "a data SPEC is text"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_kind_of_argument_is_one_clear_error(tmp_path: Path, case: str) -> None:
    call, needle = CASES[case]
    with pytest.raises(FactorlensError) as info:
        call(tmp_path / "out")
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_memory_budget_message_shows_a_value_the_api_takes() -> None:
    with pytest.raises(FactorlensError, match=r"2 \* 1024\*\*3"):
        factorlens.CMTF(2, memory_budget="2G").fit(GOOD)
