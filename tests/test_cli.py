"""The CLI end to end on small data, and its answers to bad input."""

from __future__ import annotations

import errno
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import factorlens
from factorlens.cli import main
from factorlens.errors import FactorlensRuntimeError
from factorlens.pipeline import load_inputs
from tinyproject import analyze_args

_analyze_args = analyze_args


def test_analyze_writes_result_factors_inputs_and_report(project, capsys) -> None:
    out = project["root"] / "out"
    assert main(_analyze_args(project, out, "--layers", "features.*,classifier.3")) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["rank"] == 3
    names = [b["name"] for b in summary["blocks"]]
    assert names == ["input", "features.0", "features.1", "features.2", "classifier.3"]
    assert summary["blocks"][0]["shape"] == [60, 8, 8]
    assert all(0.0 <= b["fit"] <= 1.0 for b in summary["blocks"])
    assert len(summary["flow"]) == 3 and all(len(row) == len(names) for row in summary["flow"])
    html = (out / "index.html").read_text()
    assert "features.0" in html and "https://" not in html
    result = factorlens.load(out)
    assert result.A.shape == (60, 3)
    np.testing.assert_allclose(result.flow, np.array(summary["flow"]))
    images, labels, _ = load_inputs(out)
    assert images.shape == (60, 8, 8) and labels.shape == (60,)
    assert "report:" in capsys.readouterr().out


def test_analyze_with_store_then_reanalyse_the_store_without_the_model(project) -> None:
    out, store = project["root"] / "out", project["root"] / "acts.zarr"
    assert main(_analyze_args(project, out, "--store", str(store), "--n-samples", "40")) == 0
    reopened = factorlens.open_store(store)
    assert reopened.n_samples == 40 and reopened.names[0] == "input"
    again = project["root"] / "again"
    args = ["analyze", "--store", str(store), "--rank", "3", "--out", str(again), "--quiet"]
    assert main(args) == 0
    a, b = factorlens.load(out), factorlens.load(again)
    np.testing.assert_allclose(a.A, b.A, atol=1e-6)


def test_store_reuse_refuses_capture_options(project, capsys) -> None:
    out, store = project["root"] / "out", project["root"] / "acts.zarr"
    assert main(_analyze_args(project, out, "--store", str(store), "--compression", "zstd")) == 0
    array = json.loads((store / "b000" / "zarr.json").read_text())
    assert "zstd" in [codec["name"] for codec in array["codecs"]]
    args = ["analyze", "--store", str(store), "--n-samples", "10", "--batch-size", "7",
            "--compression", "zstd", "--rank", "2", "--out", str(project["root"] / "again"),
            "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "--n-samples" in err and "--batch-size" in err and "--compression" in err


def test_a_float16_store_halves_its_chunks_and_fits_like_float32(project, capsys) -> None:
    root = project["root"]
    fits = {}
    for dtype in ("float32", "float16"):
        out, store = root / f"out-{dtype}", root / f"acts-{dtype}.zarr"
        args = _analyze_args(project, out, "--store", str(store), "--store-dtype", dtype)
        assert main(args) == 0
        array = json.loads((store / "b001" / "zarr.json").read_text())
        assert array["data_type"] == dtype
        fits[dtype] = factorlens.load(out)
    a, b = fits["float32"].A, fits["float16"].A
    # the same components: rounding each value to 11 bits moves the fit by round-off only
    cosines = np.abs(np.sum(a * b, axis=0)) / (
        np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    )
    assert cosines.min() > 0.999, cosines
    args = _analyze_args(project, root / "mem", "--store-dtype", "float16")
    assert main(args) == 2
    err = _error(capsys)
    assert "--store-dtype float16 is how a store on disk holds its chunks; give --store PATH" in err


def test_quality_captures_into_memory_so_it_has_no_compression_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["quality", "--model", "m.py:N", "--data", "digits", "--compression", "zstd", "c.pt"])
    assert "unrecognized arguments: --compression" in capsys.readouterr().err


def test_store_overwrite_keeps_the_old_store_when_the_capture_fails(project, capsys) -> None:
    store = project["root"] / "acts.zarr"
    assert main(_analyze_args(project, project["root"] / "a", "--store", str(store))) == 0
    before = sorted(p.name for p in store.rglob("*"))
    bad = _analyze_args(project, project["root"] / "b", "--store", str(store), "--overwrite")
    bad[bad.index("--model") + 1] = f"{project['model']}:Broken"  # fails in its forward pass
    del bad[bad.index("--weights") : bad.index("--weights") + 2]
    assert main(bad) == 1  # a failure at run time, not a refused argument
    assert "shape" in _error(capsys)
    assert sorted(p.name for p in store.rglob("*")) == before
    assert factorlens.open_store(store).n_samples == 60


def test_store_inside_out_or_a_file_is_refused(project, capsys) -> None:
    out = project["root"] / "out"
    assert main(_analyze_args(project, out, "--store", str(out / "acts.zarr"))) == 2
    assert "inside --out" in _error(capsys)
    assert not out.exists()
    afile = project["root"] / "afile"
    afile.write_text("x")
    assert main(_analyze_args(project, out, "--store", str(afile))) == 2
    assert "is a file" in _error(capsys)


def test_report_command_rewrites_the_report(project) -> None:
    out = project["root"] / "out"
    assert main(_analyze_args(project, out)) == 0
    (out / "index.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "index.html").is_file()
    other = project["root"] / "elsewhere"
    assert main(["report", str(out), "--out", str(other)]) == 0
    assert (other / "index.html").is_file() and not (other / "result.json").exists()


def test_demo_runs_end_to_end_and_logs_whole_lines(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("FACTORLENS_PROGRESS", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rank", "4", "--n-init", "1"]) == 0
    summary = json.loads((out / "result.json").read_text())
    assert summary["rank"] == 4 and summary["blocks"][0]["name"] == "input"
    assert (out / "index.html").stat().st_size > 10_000
    log = capsys.readouterr().err  # stderr is not a terminal here, as in a CI log
    assert "\r" not in log and "\x1b" not in log  # no bar redraws, no terminal codes
    lines = log.splitlines()
    assert 3 <= len(lines) <= 60, log  # one line per stage (training, capture, the fits)
    assert any(line.startswith("capture") for line in lines), log


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_existing_result_is_not_overwritten_without_asking(project, capsys) -> None:
    out = project["root"] / "out"
    assert main(_analyze_args(project, out)) == 0
    before = (out / "result.json").read_bytes()
    capsys.readouterr()
    assert main(_analyze_args(project, out, "--rank", "2")) == 2
    assert _error(capsys) == (
        f"error: output directory {out} already holds a factorlens result; pass --overwrite "
        "to replace it or choose another --out"
    )
    assert (out / "result.json").read_bytes() == before
    assert main(_analyze_args(project, out, "--rank", "2", "--overwrite")) == 0
    assert json.loads((out / "result.json").read_text())["rank"] == 2


def test_a_failure_leaves_no_output_that_looks_complete(project, monkeypatch, capsys) -> None:
    import factorlens.report

    def boom(*args, **kwargs):
        raise factorlens.FactorlensError("report failed on purpose")

    monkeypatch.setattr(factorlens.report, "write_report", boom)
    out = project["root"] / "out"
    assert main(_analyze_args(project, out)) == 2
    assert "on purpose" in _error(capsys)
    assert not (out / "result.json").exists()
    assert not any(p.name.startswith(".out.staging") for p in project["root"].iterdir())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--layers", "features.O"), "features.0"),  # suggests the close match
        (("--rank", "500"), "larger than the number of inputs"),
        (("--data", "npz:/nonexistent/x.npz"), "/nonexistent/x.npz"),
        (("--weights", "/nonexistent/w.pt"), "/nonexistent/w.pt"),
        (("--data", "bogus:thing"), "digits"),
    ],
)
def test_bad_input_gets_a_one_line_error(project, capsys, change, expected) -> None:
    out = project["root"] / "out"
    args = _analyze_args(project, out)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    assert expected in _error(capsys)
    assert not out.exists()


def test_truncated_checkpoint_and_shape_mismatch(project, capsys) -> None:
    out = project["root"] / "out"
    bad = project["root"] / "bad.pt"
    bad.write_bytes(project["weights"].read_bytes()[:100])
    args = _analyze_args(project, out)
    args[args.index("--weights") + 1] = str(bad)
    assert main(args) == 2
    assert "bad.pt" in _error(capsys)
    args = _analyze_args(project, out)
    args[args.index("--model") + 1] = f"{project['model']}:Broken"
    del args[args.index("--weights") : args.index("--weights") + 2]
    assert main(args) == 1  # the model raises in its forward pass: a failure at run time
    err = _error(capsys)
    assert "(8, 8)" in err or "8, 8" in err or "1, 8, 8" in err
    assert not out.exists()


def test_output_path_under_a_file_is_refused(project, capsys) -> None:
    assert main(_analyze_args(project, project["data"] / "out")) == 2
    assert "is a file" in _error(capsys)


def test_nan_activation_names_the_layer(project, capsys, tmp_path) -> None:
    nan_model = tmp_path / "nanmodel.py"
    nan_model.write_text(
        "import torch\nfrom torch import nn\n\n\nclass Log(nn.Module):\n"
        "    def forward(self, x):\n        return torch.log(x - 0.5)\n\n\n"
        "class NanNet(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.flat = nn.Flatten()\n        self.bad = Log()\n"
        "    def forward(self, x):\n        return self.bad(self.flat(x))\n"
    )
    out = tmp_path / "out"
    args = ["analyze", "--model", f"{nan_model}:NanNet", "--data", f"npz:{project['data']}",
            "--layers", "bad", "--rank", "2", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "bad" in err and "--nonfinite" in err
    assert main([*args, "--nonfinite", "zero"]) == 0


def test_debug_shows_the_traceback(project) -> None:
    with pytest.raises(factorlens.FactorlensError):
        main([*_analyze_args(project, project["root"] / "o", "--rank", "500"), "--debug"])


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("demo", "analyze", "report"):
        assert command in text


def test_tuple_output_needs_select(tmp_path, capsys) -> None:
    model_py = tmp_path / "pair.py"
    model_py.write_text(
        "from torch import nn\n\n\nclass Pair(nn.Module):\n    def forward(self, x):\n"
        "        return x, x * 2\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.flat = nn.Flatten()\n        self.pair = Pair()\n"
        "    def forward(self, x):\n        return self.pair(self.flat(x))[1]\n"
    )
    data = tmp_path / "d.npz"
    np.savez(data, images=np.random.default_rng(0).random((20, 4, 4)).astype(np.float32))
    base = ["analyze", "--model", f"{model_py}:Net", "--data", f"npz:{data}", "--layers", "pair",
            "--rank", "2", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = _error(capsys)
    assert "'pair'" in err and "tuple" in err and "--select" in err
    assert main([*base, "--select", "pair=1", "--out", str(tmp_path / "b")]) == 0


def test_module_is_runnable_as_python_m(project) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "factorlens", "--version"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "factorlens" in run.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "lots"])
def test_a_penalty_that_is_not_a_finite_number_or_auto_is_refused(project, capsys, value) -> None:
    out = project["root"] / "pen"
    with pytest.raises(SystemExit) as stop:
        main([*_analyze_args(project, out, "--rank", "2"), "--l1", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --l1: " in err and (
        "must be 'auto' or a" in err or "expected 'auto' or a" in err
    )
    assert not out.exists()  # refused before any work


def test_analyze_honours_tensor_blocks(project) -> None:
    """``analyze(..., tensor_blocks=...)`` reaches the engine (it used to be replaced)."""
    from factorlens.data import load_data
    from factorlens.modelio import build_model

    model = build_model(f"{project['model']}:TinyNet", str(project["weights"]))
    data = load_data(f"npz:{project['data']}")
    out = project["root"] / "api"
    result = factorlens.analyze(
        model, data, out=out, rank=2, progress=False, report=False, tensor_blocks=["features.0"]
    )
    models = dict(zip(result.block_names, result.block_models, strict=True))
    assert models["features.0"] == "cp" and models["input"] == "matrix"
    # one name for one thing: the library takes tensor_blocks only (--tensor-layers is the
    # CLI's way to name layers on top of the input); refused at the door, before the capture
    with pytest.raises(factorlens.FactorlensError, match=r"unknown option.*'tensor_layers'"):
        factorlens.analyze(
            model, data, out=project["root"] / "api2", rank=2, progress=False, report=False,
            tensor_layers=["features.0"],
        )  # fmt: skip


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (factorlens.FactorlensError("pass `overwrite=True` to replace it"), 2),
        (FactorlensRuntimeError("store x is damaged; capture it again (`overwrite=True`)"), 1),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone"), 2),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2),
        (OSError(errno.ENOSPC, "No space left on device", "/full/x"), 1),
        (OSError(errno.EIO, "Input/output error", "/bad/x"), 1),
    ],
)
def test_usage_errors_exit_2_and_failures_at_run_time_exit_1(
    monkeypatch, capsys, tmp_path, error, status
) -> None:
    from factorlens import commands

    def fail(args):
        raise error

    monkeypatch.setattr(commands, "run_report", fail)
    assert main(["report", str(tmp_path)]) == status
    err = _error(capsys)
    assert "`" not in err and ("--overwrite" in err or "overwrite" not in err), err


def test_analyze_with_compressed_samples_records_the_loss_before_refining(project) -> None:
    out = project["root"] / "out"
    assert main(_analyze_args(project, out, "--compress-rows", "12")) == 0  # 60 inputs
    options = json.loads((out / "result.json").read_text())["options"]
    assert options["compress_rows"] == 12
    assert options["compressed_loss"] >= factorlens.load(out).loss * (1 - 1e-4)


def test_the_rank_scan_takes_no_compress_rows_flag(project, capsys) -> None:
    args = ["rank", "--model", f"{project['model']}:TinyNet", "--data", "digits",
            "--compress-rows", "12", "--out", str(project["root"] / "r")]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    assert "unrecognized arguments: --compress-rows" in capsys.readouterr().err


def test_the_help_examples_keep_their_lines(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    examples = text[text.index("examples:") :].splitlines()[1:]
    assert len(examples) >= 8
    for line in examples:
        # a command starts a line; a continuation is indented further and follows a backslash
        assert line.startswith(("  factorlens ", "      ")) and len(line) <= 100, line
    for before, after in itertools.pairwise(examples):
        assert after.startswith("  factorlens ") or before.endswith("\\"), (before, after)
