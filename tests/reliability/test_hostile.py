"""Hostile and unusual inputs beyond the issue's list: each gives one clear ``error:`` line
(exit 2, no traceback) and leaves every file that existed before as it was."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import analyze_args

Setup = Callable[[dict[str, Path]], list[str]]


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _analyze_with(*extra: str) -> Setup:
    """The tiny project's analyze command with ``extra`` options."""
    return lambda p: analyze_args(p, p["root"] / "out", *extra)


def _quality(p: dict[str, Path], *extra: object) -> list[object]:
    """``factorlens quality --no-rank`` of the tiny model on its data, plus ``extra``."""
    return ["quality", "--model", f"{p['model']}:TinyNet", "--data", f"npz:{p['data']}",
            "--no-rank", *extra]  # fmt: skip


def _with_model(p: dict[str, Path], source: str, cls: str = "Net") -> list[str]:
    model = _write(p["root"] / "hostile_model.py", source)
    return [
        "analyze", "--model", f"{model}:{cls}", "--data", f"npz:{p['data']}",
        "--rank", "2", "--out", p["root"] / "out", "--quiet",
    ]  # fmt: skip


def _swap(args: list, flag: str, value: object) -> list[str]:
    """``args`` with the value after ``flag`` replaced."""
    out = [str(a) for a in args]
    out[out.index(flag) + 1] = str(value)
    return out


def _with_weights(p: dict[str, Path], content: bytes | None = None, obj=None) -> list[str]:
    weights = p["root"] / "hostile.pt"
    if obj is not None:
        torch.save(obj, weights)
    else:
        _write(weights, content or b"")
    return _swap(analyze_args(p, p["root"] / "out"), "--weights", weights)


def _with_data(p: dict[str, Path], spec: str) -> list[str]:
    return _swap(analyze_args(p, p["root"] / "out"), "--data", spec)


def _npz(p: dict[str, Path], **arrays) -> list[str]:
    path = p["root"] / "hostile.npz"
    np.savez(path, **arrays)
    return _with_data(p, f"npz:{path}")


def _store_attrs(p: dict[str, Path], edit: Callable[[dict], None]) -> list[str]:
    from factorlens.capture import capture

    store = p["root"] / "acts"
    capture(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
            np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32),
            store=store, progress=False)  # fmt: skip
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    edit(doc)
    meta.write_text(json.dumps(doc))
    return ["analyze", "--store", store, "--rank", "2", "--out", p["root"] / "out"]


GOOD = "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(64, 3)\n    def forward(self, x):\n        return self.fc(x.flatten(1))\n"

CASES: dict[str, tuple[Setup, tuple[str, ...]]] = {
    # ---- model files
    "model file missing": (
        lambda p: _swap(_with_model(p, GOOD), "--model", f"{p['root']}/nope.py:Net"),
        ("nope.py",),
    ),
    "model spec without class": (
        lambda p: _swap(_with_model(p, GOOD), "--model", p["root"] / "hostile_model.py"),
        ("class name",),
    ),
    "class name typo": (lambda p: _with_model(p, GOOD, "Nett"), ("Nett",)),
    "syntax error in model file": (
        lambda p: _with_model(p, "def broken(:\n"),
        ("hostile_model.py",),
    ),
    "model file raises at import": (
        lambda p: _with_model(p, "raise RuntimeError('boom')\n"),
        ("boom",),
    ),
    "constructor needs arguments": (
        lambda p: _with_model(p, GOOD.replace("def __init__(self):", "def __init__(self, width):")),
        ("Net",),
    ),
    "constructor raises": (
        lambda p: _with_model(
            p, GOOD.replace("super().__init__()", "raise ValueError('bad config')")
        ),
        ("bad config",),
    ),
    "factory returns a non-module": (
        lambda p: _with_model(p, "def Net():\n    return 42\n"),
        ("Net",),
    ),
    "model path is a folder": (
        lambda p: _swap(_with_model(p, GOOD), "--model", f"{p['root']}:Net"),
        (),
    ),
    "forward fails on the data": (
        lambda p: _with_model(p, GOOD.replace("64, 3", "10, 3")),
        ("the model failed",),
    ),
    "layer gives nan": (
        lambda p: _with_model(
            p,
            GOOD.replace(
                "self.fc = torch.nn.Linear(64, 3)",
                "self.fc = torch.nn.Linear(64, 3)\n        self.fc.bias.data[0] = float('nan')",
            ),
        ),
        ("non-finite", "fc"),
    ),
    # ---- checkpoints
    "weights missing": (
        lambda p: _swap(analyze_args(p, p["root"] / "out"), "--weights", p["root"] / "no.pt"),
        ("no.pt",),
    ),
    "weights empty": (lambda p: _with_weights(p, b""), ("hostile.pt",)),
    "weights random bytes": (lambda p: _with_weights(p, bytes(range(256)) * 4), ("hostile.pt",)),
    "weights a json file": (lambda p: _with_weights(p, b'{"a": 1}'), ("hostile.pt",)),
    "weights missing keys": (
        lambda p: _with_weights(p, obj={"features.0.weight": torch.zeros(4, 1, 3, 3)}),
        ("missing",),
    ),
    "weights wrong shapes": (
        lambda p: _with_weights(
            p, obj={k: torch.zeros(1) for k in torch.load(p["weights"])["state_dict"]}
        ),
        ("shape",),
    ),
    "weights a plain tensor": (lambda p: _with_weights(p, obj=torch.zeros(3)), ("hostile.pt",)),
    "weights a folder": (
        lambda p: _swap(analyze_args(p, p["root"] / "out"), "--weights", p["root"]),
        (),
    ),
    # ---- data
    "npz without images": (lambda p: _npz(p, pixels=np.zeros((4, 8, 8))), ("images",)),
    "npz images 1-D": (lambda p: _npz(p, images=np.zeros(10)), ("images",)),
    "npz labels wrong length": (
        lambda p: _npz(p, images=np.zeros((10, 8, 8)), labels=np.zeros(3, int)),
        ("labels",),
    ),
    "npz with no images": (lambda p: _npz(p, images=np.zeros((0, 8, 8))), ()),
    "npz images nan": (lambda p: _npz(p, images=np.full((10, 8, 8), np.nan)), ()),
    "npz images strings": (lambda p: _npz(p, images=np.array(["a", "b"])), ("images",)),
    "npz file missing": (lambda p: _with_data(p, f"npz:{p['root']}/none.npz"), ("none.npz",)),
    "folder data empty": (
        lambda p: ((p["root"] / "imgs").mkdir(), _with_data(p, f"folder:{p['root']}/imgs"))[-1],
        ("imgs",),
    ),
    "folder data with junk files": (
        lambda p: (
            (p["root"] / "imgs" / "a").mkdir(parents=True),
            _write(p["root"] / "imgs" / "a" / "x.png", b"no png"),
            _with_data(p, f"folder:{p['root']}/imgs"),
        )[-1],
        ("x.png",),
    ),
    "mnist folder without files": (lambda p: _with_data(p, f"mnist:{p['root']}"), ("mnist",)),
    "unknown data scheme": (lambda p: _with_data(p, "imagenet:/x"), ("imagenet",)),
    "wrong channel count": (
        lambda p: _npz(p, images=np.zeros((10, 3, 8, 8), np.float32)),
        ("the model failed",),
    ),
    # ---- options
    "rank above the inputs": (
        lambda p: _swap(analyze_args(p, p["root"] / "out"), "--rank", 500),
        ("--rank 500",),
    ),
    "unknown layer": (
        _analyze_with("--layers", "featurez.0"),
        ("featurez.0",),
    ),
    "layer glob matches nothing": (
        _analyze_with("--layers", "head.*"),
        ("head.*",),
    ),
    "select without =": (
        _analyze_with("--select", "fc"),
        ("--select",),
    ),
    "select of a layer not captured": (
        _analyze_with("--layers", "features.0", "--select", "classifier.1=0"),
        ("classifier.1",),
    ),
    "normalize not numbers": (
        _analyze_with("--normalize", "a,b"),
        ("--normalize",),
    ),
    "normalize wrong channel count": (
        _analyze_with("--normalize", "0.1,0.2,0.3,0.1,0.2,0.3"),
        ("channel",),
    ),
    "normalize zero std": (
        _analyze_with("--normalize", "0.5,0"),
        ("std",),
    ),
    "device cuda without a GPU": (
        _analyze_with("--device", "cuda"),
        ("cuda",),
    ),
    "tensor layer unknown": (
        _analyze_with("--tensor-layers", "nope"),
        ("nope",),
    ),
    # ---- stores
    "store path missing": (
        lambda p: [
            "analyze",
            "--store",
            p["root"] / "none",
            "--rank",
            "2",
            "--out",
            p["root"] / "out",
        ],
        ("none",),
    ),
    "store path a file": (
        lambda p: ["analyze", "--store", p["data"], "--rank", "2", "--out", p["root"] / "out"],
        ("data.npz",),
    ),
    "store from a newer factorlens": (
        lambda p: _store_attrs(p, lambda d: d["attributes"].update(factorlens_store=99)),
        ("newer",),
    ),
    "store zarr.json garbage": (lambda p: _store_attrs(p, lambda d: d.clear()), ("store",)),
    "store with capture options": (
        lambda p: [
            "analyze",
            "--store",
            p["root"] / "x",
            "--normalize",
            "0.5,0.5",
            "--out",
            p["root"] / "out",
        ],
        ("--normalize",),
    ),
    # ---- outputs
    "out is a file": (lambda p: analyze_args(p, p["data"]), ("not a directory",)),
    "out under a file": (lambda p: analyze_args(p, p["data"] / "sub"), ("is a file",)),
    "report of a folder without a result": (lambda p: ["report", p["root"]], ("result.json",)),
    "report of a missing folder": (lambda p: ["report", p["root"] / "none"], ("none",)),
    # ---- quality
    "quality consensus with one checkpoint": (
        lambda p: _quality(p, "--mode", "consensus", p["weights"]),
        ("consensus",),
    ),
    "quality json into a missing folder": (
        lambda p: _quality(p, "--json", p["root"] / "no" / "q.json", p["weights"]),
        ("q.json",),
    ),
    "quality checkpoint missing": (
        lambda p: _quality(p, p["weights"], p["root"] / "gone.pt"),
        ("gone.pt",),
    ),
}


#: the model raises in its forward pass: a failure at run time (exit 1), not a refused argument
RUNTIME = {"forward fails on the data", "wrong channel count"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_gets_one_clear_error(cli, project, case) -> None:
    setup, needles = CASES[case]
    args = setup(project)
    cli.fails(args, *needles, rc=1 if case in RUNTIME else 2)
    assert not (project["root"] / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "not an npz", "no images"])
def test_report_of_a_result_with_a_damaged_inputs_file(cli, project, damage) -> None:
    out = project["root"] / "res"
    cli.ok(analyze_args(project, out))
    inputs = out / "inputs.npz"
    if damage == "truncated":
        inputs.write_bytes(inputs.read_bytes()[:100])
    elif damage == "not an npz":
        inputs.write_text("hello")
    else:
        np.savez(inputs, labels=np.zeros(3, int))
    cli.fails(["report", out, "--out", project["root"] / "rep"], "inputs.npz", rc=1)
