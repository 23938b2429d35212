"""Errors that say what is wrong and what to do: damaged results, files that are not what their
name says, pickled checkpoints, preprocess hooks, and model files that import a sibling."""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import analyze_args

from factorlens.errors import FactorlensError, note
from factorlens.modelio import build_model, load_model_class
from factorlens.wording import CLI_FLAGS, cli_wording, flags_for_cli


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

#: refused as not a result or a newer one (exit 2); every other damage is found while reading a
#: result factorlens wrote, a failure at run time (exit 1)
NOT_DAMAGED = {"a JSON list", "a newer format"}


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
    rc = 2 if damage in NOT_DAMAGED else 1
    line = cli.fails(["report", out, "--out", project["root"] / "rep"], needle, str(out), rc=rc)
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
    assert line == "factorlens analyze: error: argument --rank: must be an integer >= 1, got 0"
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
    # the first forward pass is the determinism check, on 8 inputs
    line = cli.fails(args, "preprocess hook", "7 rows", "8 inputs", "factorlens_preprocess")
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


# ------------------------------------------------------------------ arguments, not flags
#: a CLI flag in a message (``--rank``), not a dash inside a word or ``----``
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def test_the_library_names_the_argument_and_no_flag(tmp_path: Path) -> None:
    from factorlens.factorize import CMTF
    from factorlens.pipeline import check_output_dir

    rng = np.random.default_rng(0)
    blocks = {"input": rng.random((10, 4, 4)), "fc": rng.random((10, 3))}
    with pytest.raises(FactorlensError) as err:
        CMTF(rank=500).fit(blocks)
    msg = str(err.value)
    assert "choose `rank` <= 10" in msg and not FLAG.search(msg), msg
    assert "choose --rank <= 10" in flags_for_cli(msg)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FactorlensError) as err:
        check_output_dir(out, overwrite=False)
    assert str(err.value) == (
        f"output directory {out} already holds other files; pass `overwrite=True` to replace "
        "it or choose another `out`"
    )
    assert type(err.value) is FactorlensError and err.value.exit_code == 2  # a usage error


def test_the_same_refusals_through_the_cli_name_the_flags(cli, project) -> None:
    out = project["root"] / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert cli.fails(analyze_args(project, out)) == (
        f"error: output directory {out} already holds other files; pass --overwrite to replace "
        "it or choose another --out"
    )
    mine = project["root"] / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("...")
    args = analyze_args(project, project["root"] / "new", "--store", mine, "--overwrite")
    assert cli.fails(args) == (
        f"error: --store {mine} holds something that is not a factorlens store; it is not "
        "replaced even with --overwrite: choose another --store"
    )


@pytest.mark.parametrize(
    ("message", "for_cli"),
    [
        ("choose `rank` <= 12", "choose --rank <= 12"),
        ("pass `overwrite=True` to replace it", "pass --overwrite to replace it"),
        ("drop `nonneg`, or `l1_penalty` 0", "drop --nonneg, or --l1 0"),
        ("`n_iter_max` and `random_state`", "--max-iter and --seed"),
        ('pass `nonfinite="zero"`', "pass --nonfinite zero"),
        ("pick one with `select={'fc': 0}`", "pick one with --select fc=0"),
        ("give `store=PATH`", "give --store PATH"),
        ("use `analyze_store`", "use --store without --model"),
        ("`trust_pickle=True` or `resume=True`", "--trust-pickle or --resume"),
        ("the `preprocess` hook", "the preprocess hook"),  # no flag: the name, plainly
        ("`overwrite=False`", "overwrite=False"),  # no flag says that
        ("rerun `factorlens analyze`", "rerun `factorlens analyze`"),  # not an argument
        ("a--b ----data", "a--b ----data"),  # nothing backticked, nothing changed
    ],
)
def test_flags_for_cli_translates_backticked_arguments_only(message, for_cli) -> None:
    assert flags_for_cli(message) == for_cli


def test_every_flag_of_the_table_is_a_flag_of_the_cli() -> None:
    from factorlens.cli import build_parser

    parser = build_parser()
    known = {
        option
        for sub in parser._subparsers._group_actions[0].choices.values()
        for action in sub._actions
        for option in action.option_strings
    }
    for text in CLI_FLAGS.values():
        for flag in re.findall(r"--[a-z][\w-]*", text):
            assert flag in known, flag


def test_notes_are_worded_for_whoever_calls(capsys) -> None:
    note("rerun it with `resume=True` to continue it")
    assert capsys.readouterr().err == "note: rerun it with `resume=True` to continue it\n"
    with cli_wording():
        note("rerun it with `resume=True` to continue it")
    assert capsys.readouterr().err == "note: rerun it with --resume to continue it\n"


def _library_messages() -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of every string in an error or note the library raises or
    prints, outside the CLI's own modules."""
    import ast

    import factorlens

    root = Path(factorlens.__file__).parent
    speakers = {"FactorlensError", "FactorlensRuntimeError", "note", "print", "warn"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name in ("cli.py", "commands.py", "options.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in speakers:
                continue
            for part in ast.walk(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((str(path.relative_to(root)), part.lineno, part.value))
    return found


def test_no_library_message_quotes_a_cli_flag() -> None:
    messages = _library_messages()
    assert len(messages) > 200  # the scan sees the library's messages
    flagged = [(f, n, s) for f, n, s in messages if FLAG.search(s)]
    assert not flagged, flagged


def test_ctrl_c_in_zoo_says_what_stays(tmp_path, monkeypatch, capsys) -> None:
    import factorlens.research.zoo as zoo
    from factorlens.cli import main

    def interrupted(*_, **__):
        (tmp_path / "z" / "steps").mkdir(parents=True)
        (tmp_path / "z" / "steps" / "step-000000.pt").write_bytes(b"a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "build_zoo", interrupted)
    assert main(["zoo", "--data", "digits", "--out", str(tmp_path / "z"), "--quiet"]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: interrupted (Ctrl-C); the checkpoints trained so far stay")
    assert "no result was written" not in line and "--overwrite" in line
