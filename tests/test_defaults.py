"""One source of truth: the options dataclasses give the API's and the CLI's defaults."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factorlens.cli import build_parser
from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, cmtf
from factorlens.options import (
    CaptureOptions,
    EngineOptions,
    RankOptions,
    defaults,
    flagged,
    from_args,
    rule_of,
)
from factorlens.rank import estimate_rank
from factorlens.testing import planted_blocks
from factorlens.wording import flags_for_cli


def _signature_defaults(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_cmtf_takes_every_default_from_engine_options() -> None:
    sig = _signature_defaults(CMTF.__init__)
    assert set(sig) == set(defaults(EngineOptions))  # every parameter but the rank
    assert sig == defaults(EngineOptions)


def test_estimate_rank_takes_its_defaults_from_rank_options() -> None:
    sig = _signature_defaults(estimate_rank)
    for name, value in defaults(RankOptions).items():
        assert sig[name] == value, name


@pytest.mark.parametrize("command", ["analyze", "rank"])
def test_cli_flags_are_built_from_the_options(command: str) -> None:
    parser = build_parser()
    base = {"analyze": ["--model", "m.py:N", "--data", "digits", "--out", "o"],
            "rank": ["--model", "m.py:N", "--data", "digits", "--out", "o"]}[command]  # fmt: skip
    args = parser.parse_args([command, *base])
    assert from_args(EngineOptions, args) == EngineOptions()  # no flag: the API's defaults
    if command == "rank":
        assert args.max_rank == RankOptions().max_rank
    changed = parser.parse_args(
        [command, *base, "--max-iter", "7", "--l1", "0.01", "--seed", "3", "--nonneg"]
    )
    opts = from_args(EngineOptions, changed)
    assert (opts.n_iter_max, opts.l1_penalty, opts.random_state, opts.nonneg) == (7, 0.01, 3, True)
    for _, flag, default in flagged(EngineOptions):  # each help text says its default
        if "{default}" in flag.help:
            assert str(default) in flag.help.format(default=default)


@pytest.mark.parametrize(
    ("setting", "flag", "text"),
    [
        ({"tol": 2}, "--tol", "2"),
        ({"n_iter_max": -1}, "--max-iter", "-1"),
        ({"device": "gpu"}, "--device", "gpu"),
        ({"l1_penalty": -1}, "--l1", "-1"),
        ({"random_state": -5}, "--seed", "-5"),
        ({"n_init": 0}, "--n-init", "0"),
    ],
)
def test_the_api_and_the_cli_refuse_a_setting_with_one_message(capsys, setting, flag, text) -> None:
    blocks, _ = planted_blocks(N=30)
    with pytest.raises(FactorlensError) as api:
        CMTF(2, **setting).fit(blocks)
    message = str(api.value)
    (name,) = setting
    assert message.startswith(f"`{name}` must be ")  # one line: the setting, what it must be
    assert "\n" not in message and message.endswith(f"got {setting[name]!r}")
    worded = flags_for_cli(message)  # how the CLI names the setting: its flag
    assert worded == f"{flag} {message.split(' ', 1)[1]}"

    parser = build_parser()
    base = ["analyze", "--model", "m.py:N", "--data", "digits", "--out", "o"]
    with pytest.raises(SystemExit) as cli:
        parser.parse_args([*base, flag, text])
    assert cli.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    flag_words = rule_of(EngineOptions, name).refusal(setting[name], flag=True)  # no API hint
    assert last == f"factorlens analyze: error: argument {flag}: {flag_words}"
    assert flag_words == message.split(" ", 1)[1] or "through the API" in message
    with pytest.raises(FactorlensError, match=re.escape(message)):  # the options object too
        EngineOptions(**setting)


def test_every_setting_has_a_rule_and_every_default_keeps_it() -> None:
    from dataclasses import fields

    from factorlens.options import QualityOptions

    for options in (CaptureOptions, EngineOptions, RankOptions, QualityOptions):
        for f in fields(options):
            assert rule_of(options, f.name).accepts(f.default), (options.__name__, f.name)
        options()  # the defaults pass the check made when an object is built


def test_callback_sees_every_iteration_and_its_loss() -> None:
    blocks, _ = planted_blocks(N=40, seed=1)
    seen: list[tuple[int, float]] = []
    result = cmtf(
        blocks, 3, n_init=1, l1_penalty=0.0, check_fewer=False,
        callback=lambda i, loss: seen.append((i, loss)),
    )  # fmt: skip
    assert [i for i, _ in seen] == list(range(1, len(result.loss_history)))
    assert [loss for _, loss in seen] == pytest.approx(result.loss_history[1:])


def test_guide_and_api_reference_name_every_public_name() -> None:
    from pathlib import Path

    import factorlens

    root = Path(__file__).resolve().parents[1]
    guide = (root / "docs" / "guide.md").read_text()  # the README links the API from there
    section = guide.split("## The Python API")[1].split("\n## ")[0]
    api = (root / "docs" / "api.rst").read_text()
    for name in factorlens.__all__:
        if name == "__version__":
            continue
        assert f"`{name}" in section, f"the guide's API section does not name {name}"
        assert f".{name}\n" in api, f"docs/api.rst does not document {name}"
        getattr(factorlens, name)  # and it resolves


def test_capture_and_quality_take_their_defaults_from_their_options() -> None:
    from factorlens.capture import capture
    from factorlens.options import QualityOptions
    from factorlens.pipeline import analyze
    from factorlens.quality import assess, score_checkpoints

    for fn in (capture, analyze, assess):
        sig = _signature_defaults(fn)
        for name, value in defaults(CaptureOptions).items():
            if name in sig:
                assert sig[name] == value, (fn.__name__, name)
    assert _signature_defaults(score_checkpoints)["mode"] == QualityOptions().mode
    args = build_parser().parse_args(["quality", "--model", "m.py:N", "--data", "digits", "c.pt"])
    assert from_args(QualityOptions, args) == QualityOptions()
    assert from_args(CaptureOptions, args) == CaptureOptions()


def test_engine_options_travel_as_one_object_and_keywords_win() -> None:
    from factorlens.errors import FactorlensError
    from factorlens.options import EngineOptions, engine_options
    from factorlens.pipeline import factorize_store
    from factorlens.testing import memory_store, planted_blocks

    base = EngineOptions(n_init=1, check_fewer=False, l1_penalty=0.0)
    merged = engine_options(base, tol=1e-5)
    assert merged.n_init == 1 and merged.tol == 1e-5 and base.tol == EngineOptions.tol
    with pytest.raises(FactorlensError, match=r"unknown engine option.*'n_iter'"):
        engine_options(base, n_iter=3)
    with pytest.raises(FactorlensError, match=r"must be a factorlens\.options\.EngineOptions"):
        engine_options({"n_init": 1})  # type: ignore[arg-type]
    blocks, _ = planted_blocks(N=80, R=2, seed=3, missing=None)
    store = memory_store(blocks)
    by_object = factorize_store(store, 2, options=merged)
    by_keywords = factorize_store(store, 2, n_init=1, check_fewer=False, l1_penalty=0.0, tol=1e-5)
    assert by_object.options["tol"] == 1e-5 and by_object.options["n_init"] == 1
    np.testing.assert_allclose(by_object.A, by_keywords.A)


def test_no_default_of_an_option_is_written_twice() -> None:
    """A parameter named like an options field takes its default from there, not a literal."""
    import ast
    from dataclasses import fields
    from pathlib import Path

    from factorlens.options import QualityOptions

    literal: dict[str, set] = {}
    for options in (CaptureOptions, EngineOptions, RankOptions, QualityOptions):
        for f in fields(options):  # numbers and strings; a True/False default is no choice
            if isinstance(f.default, int | float | str) and not isinstance(f.default, bool):
                literal.setdefault(f.name, set()).add(f.default)
    src = Path(__file__).resolve().parents[1] / "src" / "factorlens"
    written = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(
                zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True)
            )
            pairs += [
                (k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None
            ]
            for arg, default in pairs:
                if (
                    isinstance(default, ast.Constant)
                    and not isinstance(default.value, bool)
                    and default.value in literal.get(arg.arg, ())
                ):
                    written.append(f"{path.relative_to(src)}:{node.lineno} {arg.arg}")
    assert not written, f"defaults written again instead of read from options.py: {written}"


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.floats(), st.text(max_size=3)), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_rule_refuses_any_value_with_its_one_line_message(data) -> None:
    from dataclasses import fields

    from factorlens.options import CaptureOptions, OptionError, QualityOptions, check_fields

    options = data.draw(
        st.sampled_from([CaptureOptions, EngineOptions, RankOptions, QualityOptions])
    )
    name = data.draw(st.sampled_from([f.name for f in fields(options)]))
    value = data.draw(_ANY_VALUE)
    try:
        check_fields(options, {name: value})  # accepted: then the options object takes it too
    except OptionError as err:  # never a TypeError from inside a rule
        assert str(err).startswith(f"`{name}` must be ") and "\n" not in str(err)
    else:
        options(**{name: value})
