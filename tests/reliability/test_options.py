"""Numeric options are checked when the command line is parsed: NaN, infinities, negative or
zero counts and text are refused in one line before any work (argparse's usage, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import analyze_args

from factorlens.cli import build_parser
from factorlens.options import MAX_SEED


def _command(name: str, p: dict[str, Path]) -> list[str]:
    """A command line that would run (on the tiny project) but for the option under test."""
    model = ["--model", f"{p['model']}:TinyNet", "--data", f"npz:{p['data']}"]
    out = ["--out", str(p["root"] / "out"), "--quiet"]
    return {
        "demo": ["demo", *out],
        "analyze": ["analyze", *model, "--weights", str(p["weights"]), *out],
        "rank": ["rank", *model, "--weights", str(p["weights"]), *out],
        "quality": ["quality", str(p["weights"]), *model, *out],
        "zoo": ["zoo", "--data", "digits", *out],
    }[name]


@pytest.mark.parametrize("command", ["demo", "analyze", "rank", "quality", "zoo"])
def test_a_negative_seed_is_refused_before_any_work(cli, project, command: str) -> None:
    cli.usage_error([*_command(command, project), "--seed", "-1"], "argument --seed", "got -1")
    assert not (project["root"] / "out").exists()


BAD_VALUES = [
    *(("analyze", "--tol", v) for v in ("nan", "inf", "-1", "1", "tiny")),
    *(("analyze", "--rank", v) for v in ("0", "-1", "nan", "2.5", "ten")),
    *(("analyze", "--n-samples", v) for v in ("0", "-5", "inf")),
    *(("analyze", "--batch-size", v) for v in ("0", "nan")),
    *(("analyze", "--n-init", v) for v in ("0", "-1")),
    *(("analyze", "--max-iter", v) for v in ("0", "inf")),
    *(("analyze", "--seed", v) for v in ("nan", "1.5", str(MAX_SEED + 1), "x")),
    *(("demo", "--rank", v) for v in ("0", "nan")),
    *(("rank", "--max-rank", v) for v in ("0", "-3", "nan")),
    *(("quality", "--max-rank", v) for v in ("0", "inf")),
    *(("quality", "--seed", v) for v in ("-2", "nan")),
    *(("zoo", "--seed", v) for v in ("inf", "-1")),
    *(("analyze", "--device", v) for v in ("tpu9", "gpu", "cuda:x")),
    *(("analyze", "--nonfinite", v) for v in ("ignore", "")),
]


@pytest.mark.parametrize(("command", "option", "value"), BAD_VALUES)
def test_a_numeric_option_out_of_range_is_refused_at_parse_time(
    cli, project, command: str, option: str, value: str
) -> None:
    line = cli.usage_error([*_command(command, project), option, value], f"argument {option}: ")
    # text that is no value of the option's type, or a value outside what the API accepts
    assert "expected " in line or " must be " in line, line
    assert not (project["root"] / "out").exists()


@pytest.mark.parametrize(
    ("option", "value", "parsed"),
    [("--tol", "1e-3", 1e-3), ("--seed", "0", 0), ("--seed", str(MAX_SEED), MAX_SEED)],
)
def test_values_in_range_still_parse(project, option: str, value: str, parsed) -> None:
    args = build_parser().parse_args([*_command("analyze", project), option, value])
    assert getattr(args, option.lstrip("-")) == parsed


def test_a_huge_l1_penalty_gives_a_result_not_a_traceback(cli, project) -> None:
    out = project["root"] / "out"
    res = cli.ok(analyze_args(project, out, "--l1", "1e308"))
    assert "set every component's strength to zero in every block" in res.out + res.err
    assert (out / "result.json").is_file()


@pytest.mark.parametrize("normalize", ["1e38,1", "0,1e-38", "1e300,1"])
def test_an_extreme_normalization_is_refused_before_the_work(cli, project, normalize) -> None:
    out = project["root"] / "out"  # it overflowed float32 and was blamed on a layer's Inf
    cli.fails(analyze_args(project, out, "--normalize", normalize), "past float32's range")
    assert not out.exists()
