"""Errors that say what is wrong and what to do: damaged results, files that are not what their
name says, pickled checkpoints, preprocess hooks, and model files that import a sibling."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from harness import analyze_args

from factorlens.modelio import build_model, load_model_class


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(edit(doc)))


def _drop(key: str):
    return lambda doc: {k: v for k, v in doc.items() if k != key}


DAMAGE = {
    "no blocks": ("result.json", _drop("blocks"), "blocks is missing"),
    "a JSON list": ("result.json", lambda doc: [1, 2], "a JSON array, not an object"),
    "not JSON": ("result.json", None, "is not valid JSON"),
    "a newer format": (
        "result.json",
        lambda doc: {**doc, "format_version": 99},
        "written by a newer factorlens",
    ),
    "no format_version": ("result.json", _drop("format_version"), "no valid format_version"),
    "a truncated factors.npz": ("factors.npz", None, "factors.npz in"),
    "a rank the factors do not have": (
        "result.json",
        lambda doc: {**doc, "rank": doc["rank"] + 1},
        "does not match result.json",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_report_refuses_a_damaged_result_in_one_line(cli, project, damage: str) -> None:
    out = project["root"] / "res"
    cli.ok(analyze_args(project, out))
    name, edit, needle = DAMAGE[damage]
    target = out / name
    if edit is not None:
        _edit_json(target, edit)
    else:  # cut the file short
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    line = cli.fails(["report", out, "--out", project["root"] / "rep"], needle, str(out))
    assert ("upgrade factorlens" if damage == "a newer format" else "factorlens analyze") in line
    if damage == "no blocks":  # the whole line, as a user sees it
        assert line == (
            f"error: {target} is damaged (blocks is missing); rerun `factorlens analyze` to "
            "write the result again"
        )
    assert not (project["root"] / "rep").exists()


def test_report_of_a_folder_without_a_result_says_how_to_make_one(cli, project) -> None:
    empty = project["root"] / "empty"
    empty.mkdir()
    line = cli.fails(["report", empty, "--out", project["root"] / "rep"])
    assert line == (
        f"error: {empty} holds no factorlens result (need result.json and factors.npz); "
        "run `factorlens analyze` or `factorlens demo` first"
    )
    assert not (project["root"] / "rep").exists()


#: the commonest refusals of ``factorlens analyze``, whole: option -> (value, error line);
#: ``{root}`` is the project's folder
BAD_ANALYZE = {
    "--data": (
        "npz:{root}/gone.npz",
        "error: npz file {root}/gone.npz does not exist; check the path in npz:FILE",
    ),
    "--weights": (
        "{root}/gone.pt",
        "error: checkpoint {root}/gone.pt does not exist; check the checkpoint path",
    ),
    "--rank": (
        "500",
        "error: --rank 500 is larger than the number of inputs (60); choose --rank <= 60 or "
        "use more inputs",
    ),
}


@pytest.mark.parametrize("flag", list(BAD_ANALYZE))
def test_analyze_refusals_are_the_whole_expected_line(cli, project, flag: str) -> None:
    root = project["root"]
    value, expected = BAD_ANALYZE[flag]
    args = analyze_args(project, root / "out")
    args[args.index(flag) + 1] = value.format(root=root)
    assert cli.fails(args) == expected.format(root=root)
    assert not (root / "out").exists()


def test_a_rank_below_one_is_refused_by_the_parser_in_one_whole_line(cli, project) -> None:
    args = analyze_args(project, project["root"] / "out")
    args[args.index("--rank") + 1] = "0"
    line = cli.usage_error(args)
    assert line == "factorlens analyze: error: argument --rank: expected a positive integer, got 0"
    assert not (project["root"] / "out").exists()


def test_a_text_file_named_npz_is_not_called_pickled_data(cli, project) -> None:
    text = project["root"] / "notes.npz"
    text.write_text("these are not the images you are looking for\n")
    args = analyze_args(project, project["root"] / "out")
    args[args.index("--data") + 1] = f"npz:{text}"
    line = cli.fails(args, "not an npz archive", "np.savez", "images", str(text))
    assert "pickle" not in line


def _full_model(project: dict[str, Path]) -> object:
    torch.manual_seed(0)
    return load_model_class(f"{project['model']}:TinyNet")()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", ["full model", "state dict with an object"])
def test_a_pickled_checkpoint_is_not_called_truncated(
    cli, project, payload: str, protocol: int
) -> None:
    """Refused as pickled objects (with what they need), loaded with --trust-pickle."""
    net = _full_model(project)
    if payload == "full model":
        obj, needs = net, "TinyNet"
    else:
        obj, needs = (
            {"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)},
            ("argparse.Namespace"),
        )
    ckpt = project["root"] / "pickled.pt"
    torch.save(obj, ckpt, pickle_protocol=protocol)
    args = analyze_args(project, project["root"] / "out")
    args[args.index("--weights") + 1] = str(ckpt)
    line = cli.fails(args, "pickled Python objects", needs, "--trust-pickle", str(ckpt))
    assert "truncated" not in line
    cli.ok([*args, "--trust-pickle"])


def test_a_trusted_pickle_names_the_class_it_cannot_find(cli, project, monkeypatch) -> None:
    gone = types.ModuleType("gone_settings")
    exec("class Settings:\n    lr = 0.1\n", gone.__dict__)
    monkeypatch.setitem(sys.modules, "gone_settings", gone)
    ckpt = project["root"] / "settings.pt"
    torch.save({"state_dict": _full_model(project).state_dict(), "cfg": gone.Settings()}, ckpt)
    monkeypatch.delitem(sys.modules, "gone_settings")  # the training script's module is gone
    args = analyze_args(project, project["root"] / "out", "--trust-pickle")
    args[args.index("--weights") + 1] = str(ckpt)
    line = cli.fails(args, "gone_settings.Settings", "cannot be found", "model file")
    assert "truncated" not in line


def test_a_preprocess_hook_that_drops_rows_is_blamed_not_the_layer(cli, project) -> None:
    model = project["root"] / "dropping.py"
    model.write_text(
        project["model"].read_text() + "\n\ndef factorlens_preprocess(x):\n    return x[1:]\n"
    )
    args = analyze_args(project, project["root"] / "out")
    args[args.index("--model") + 1] = f"{model}:TinyNet"
    line = cli.fails(args, "preprocess hook", "59 rows", "60 inputs", "factorlens_preprocess")
    assert "layer" not in line


def test_store_without_model_names_each_option_to_drop_once(cli, project) -> None:
    store = project["root"] / "acts.zarr"
    args = ["analyze", "--store", store, "--out", project["root"] / "out", "--quiet"]
    line = cli.fails([*args, "--data", "digits", "--n-samples", "5"], "drop --data, --n-samples")
    assert "----" not in line


def test_quality_names_a_missing_checkpoint_without_mentioning_weights(cli, project) -> None:
    missing = project["root"] / "epoch09.pt"
    args = ["quality", missing, project["weights"], "--model", f"{project['model']}:TinyNet"]
    args += ["--data", f"npz:{project['data']}", "--no-rank", "--quiet"]
    line = cli.fails(args, str(missing), "does not exist")
    assert "--weights" not in line
    assert line == f"error: checkpoint {missing} does not exist; check the checkpoint path"


def test_model_files_in_two_folders_each_import_their_own_helper(tmp_path: Path) -> None:
    """``import helper`` in a model file finds the helper.py beside it, not another folder's
    one that an earlier model file imported (same process, as in a notebook)."""
    for name, width in (("a", 3), ("b", 5)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "helper.py").write_text(f"WIDTH = {width}\n")
        (folder / "model.py").write_text(
            "import helper\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
            "    def __init__(self):\n        super().__init__()\n"
            "        self.fc = nn.Linear(4, helper.WIDTH)\n"
        )
    try:
        widths = [build_model(f"{tmp_path / n / 'model.py'}:Net").fc.out_features for n in "ab"]
    finally:
        sys.modules.pop("helper", None)
    assert widths == [3, 5]
