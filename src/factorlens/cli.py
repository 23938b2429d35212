"""Command-line front end: ``factorlens demo | analyze | rank | compare | quality | report | zoo``.

A thin door onto :mod:`factorlens.pipeline`. User errors print ``error: <message>`` on one line
and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from factorlens import __version__
from factorlens.errors import FactorlensError
from factorlens.options import (
    COUNT,
    DEFAULT_RANK,
    DEFAULT_SEED,
    FLAG,
    SEED,
    CaptureOptions,
    EngineOptions,
    QualityOptions,
    RankOptions,
    Rule,
    flagged,
    from_args,
    rule_of,
    scheduler_address,
)
from factorlens.wording import cli_wording, flags_for_cli

EPILOG = """examples:
  factorlens demo --out factorlens-demo
  factorlens analyze --model mymodel.py:Net --weights net.pt --data mnist:/data/mnist \\
      --layers 'features.*,classifier.1' --rank 10 --n-samples 2000 --out results/net
  factorlens report results/net --out results/net-report
  factorlens report results/epoch01 results/epoch05 results/epoch20 --out results/training
  factorlens rank --model mymodel.py:Net --weights net.pt --data mnist:/data/mnist \\
      --max-rank 12 --n-samples 2000 --out results/net-rank
  factorlens quality --model mymodel.py:Net --data mnist:/data/mnist --n-samples 1000 \\
      ckpt/epoch01.pt ckpt/epoch05.pt ckpt/epoch20.pt --json quality.json
  factorlens analyze --model resnet.py:ResNet50 --weights r50.pth --data npz:val224.npz \\
      --memory 4G --out results/r50     # layers too wide for --memory are sketched
  factorlens compare --model net.py:Net --weights clean.pt --weights noisy.pt \\
      --data mnist:/data/mnist --n-samples 2000 --out results/clean-vs-noisy
  factorlens zoo --data digits --arch digitscnn --out zoo/digits
"""


DATA_EPILOG = (
    "data SPEC: digits | glyphs | shapes | mnist:DIR[:train] | npz:FILE | folder:DIR\n"
    "model preprocessing: images enter as float32 in [0, 1]; --normalize applies "
    "(x - mean) / std per channel;\na model file may define "
    "factorlens_preprocess(x) -> x to add its own step (see the README)."
)


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser of text (``ValueError`` on bad text) as an argparse type."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = parse.__name__  # argparse names the type in its messages
    return wrapped


def _rule_type(rule: Rule) -> Callable[[str], Any]:
    """Return the argparse type of a setting: its text read, then checked, by its rule.

    The check is the API's (:class:`factorlens.options.Rule`): ``--tol 2`` is refused with
    "must be a number from 0 ... got 2", as ``CMTF(tol=2)`` is.
    """

    def parse(text: str) -> Any:
        value = rule.from_text(text)
        if not rule.accepts(value):
            raise ValueError(rule.refusal(value, flag=True))
        return value

    parse.__name__ = getattr(rule.from_text, "__name__", "value")
    return _argtype(parse)


_positive_int = _rule_type(COUNT)
_seed = _rule_type(SEED)


def _add_flags(group: Any, options: type, skip: tuple[str, ...] = ()) -> None:
    """Add a flag for every field of an options dataclass that has one (its default, help).

    ``skip`` names fields whose flag this command does not take (they keep their default).
    A flag's text is read and checked by its field's rule, as the API checks the field.
    """
    for name, flag, default in flagged(options):
        if name in skip:
            continue
        text = flag.help.format(default=default)
        rule = rule_of(options, name)
        if rule is FLAG:
            group.add_argument(flag.name, action="store_true", help=text)
            continue
        choices = "{" + ",".join(map(str, rule.choices)) + "}" if rule.choices else None
        group.add_argument(
            flag.name,
            type=_rule_type(rule),
            default=default,
            metavar=flag.metavar or choices,
            help=text,
        )


def _add_engine_options(p: argparse.ArgumentParser, default_rank: int | None) -> None:
    g = p.add_argument_group("factorization")
    if default_rank is not None:
        g.add_argument(
            "--rank",
            type=_positive_int,
            default=default_rank,
            help=f"number of components R (default {default_rank})",
        )
    # the rank scan's chains start every R from the last fit (warm starts on all rows)
    _add_flags(g, EngineOptions, skip=() if default_rank is not None else ("compress_rows",))
    g.add_argument(
        "--dask",
        action="store_true",
        help="run a capture into --store sharded over a Dask LocalCluster on this machine, and "
        "the factorization's products there (one worker per core; needs pip install "
        "'factorlens[dask]')",
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        type=_argtype(scheduler_address),
        help="the same on the existing Dask cluster whose scheduler is at ADDRESS "
        "(e.g. tcp://10.0.0.5:8786); its workers must see the --store path",
    )
    g.add_argument(
        "--tensor-layers",
        default="",
        help="comma-separated layers to fit with a CP model on their N×C×H×W shape "
        "(channel and spatial factors) instead of a flattened matrix",
    )


def _add_common(
    p: argparse.ArgumentParser,
    overwrite_help: str = "replace an existing result in --out (and an existing --store)",
) -> None:
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def _add_data(g: Any, *, required: bool, what: str) -> None:
    """Add ``--trust-pickle`` and the options that say which inputs, and how prepared."""
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint that is a pickled full model (runs its code)",
    )
    g.add_argument("--data", required=required, help="test inputs SPEC (see below)")
    g.add_argument(
        "--n-samples",
        type=_positive_int,
        help="use a random subset of this many inputs (default: all)",
    )
    g.add_argument(
        "--normalize",
        metavar="MEAN,STD",
        help=f"per-channel normalization {what} trained with, e.g. 0.1307,0.3081",
    )


def _add_model_data(p: argparse.ArgumentParser, *, weights: bool, store: bool) -> None:
    """Add the options that say which model runs on which inputs (analyze, rank, quality)."""
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        required=not store,
        help="FILE.py:Class — the model class (built with no arguments)",
    )
    if weights:
        g.add_argument("--weights", help="checkpoint (state dict, or a dict holding one)")
    _add_data(g, required=not store, what="the model was")
    g.add_argument(
        "--layers",
        help="comma-separated layer names or globs as in named_modules() "
        "(default: every conv, linear, activation and pooling layer)",
    )
    g.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="LAYER=INDEX",
        help="for a layer whose output is a tuple or dict, the element to use",
    )
    # in memory: no chunks, so neither their codec nor their number type
    _add_flags(g, CaptureOptions, skip=() if store else ("compression", "store_dtype"))
    if store:
        g.add_argument(
            "--store",
            help="write the activations to this on-disk (zarr) store; given "
            "without --model, analyse an existing store instead of capturing",
        )
        g.add_argument(
            "--resume",
            action="store_true",
            help="continue the interrupted capture in --store (same command otherwise) from "
            "its last complete batch; the store ends as an uninterrupted capture would",
        )


def _add_compare_models(p: argparse.ArgumentParser) -> None:
    """Add the options of ``compare``: several models and checkpoints, one data set."""
    g = p.add_argument_group("models and data")
    g.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="FILE.py:Class",
        help="a model class (built with no arguments); once per model, or once for all "
        "the --weights",
    )
    g.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="CKPT",
        help="a checkpoint, once per model (in the order of --model)",
    )
    g.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME",
        help="a model's name in block names and the report, once per model (default: the "
        "checkpoint's file name, else the class name)",
    )
    _add_data(g, required=False, what="the models were")
    g.add_argument(
        "--layers",
        action="append",
        default=[],
        metavar="[LABEL=]NAMES",
        help="comma-separated layer names or globs of one model (LABEL=NAMES) or of every "
        "model (NAMES); repeated, they add up, and a model given LABEL=NAMES takes only "
        "those; default: every conv, linear, activation and pooling layer",
    )
    _add_flags(g, CaptureOptions)
    g.add_argument(
        "--store",
        help="write the activations of all models to this on-disk (zarr) store; given "
        "without --model, compare the models of an existing comparison store",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted capture in --store (same command otherwise)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the ``factorlens`` argument parser with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="factorlens",
        description="Look inside a trained PyTorch network: jointly factorize its test inputs "
        "and the outputs of its layers into one shared low-dimensional space, and see how each "
        "input pattern travels through the hidden layers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"factorlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits and analyse it (no download)",
        description="Train a small CNN on scikit-learn's bundled digits (seconds on 2 cores), "
        "capture the input and every layer on held-out digits, factorize and write the report.",
    )
    demo.add_argument(
        "--out", default="factorlens-demo", help="output directory (default ./factorlens-demo)"
    )
    _add_engine_options(demo, default_rank=DEFAULT_RANK)
    _add_common(demo, overwrite_help="replace an existing result in --out")

    ana = sub.add_parser(
        "analyze",
        help="analyse your own model on your data",
        description="Capture the input and the chosen layers of a model on test inputs, "
        "factorize them jointly and write result.json, factors.npz, inputs.npz and index.html.",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_data(ana, weights=True, store=True)
    ana.add_argument("--out", required=True, help="output directory")
    _add_engine_options(ana, default_rank=DEFAULT_RANK)
    _add_common(ana)

    rnk = sub.add_parser(
        "rank",
        help="estimate the rank of the joint factorization, then analyse at that rank",
        description="Scan R = 1..--max-rank: joint and per-block fit, core consistency of the "
        "input's CP part, bi-cross-validation error and split-half stability; pick the rank "
        "by the stated rule (the largest R at which every component, the worst included, "
        "matches across split halves with congruence >= 0.8, median of 3 splits, and whose "
        "R-th component lowers the bi-cross-validation error), print the range of ranks the "
        "splits support one at a time, and write the analysis at the chosen rank, with the "
        "evidence in the report. The scan fits no R past one the rule can no longer choose: "
        "one past the last R whose bi-cross-validation error falls, or after 3 ranks in a "
        "row that fail on every split once an R > 1 qualified (a note names the ranks left "
        "out).",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_data(rnk, weights=True, store=True)
    _add_flags(rnk, RankOptions)
    rnk.add_argument("--out", required=True, help="output directory")
    _add_engine_options(rnk, default_rank=None)
    _add_common(rnk)

    cmp_ = sub.add_parser(
        "compare",
        help="compare two or more models in one joint factorization",
        description="Capture every model (or checkpoint) on the same test inputs into one "
        "store, its layers named LABEL.layer, factorize the input and all the layers jointly "
        "and write the result and a report: which input patterns all models carry, which some "
        "and which only one, in which layers, with linear CKA between matched layers of every "
        "pair of models beside it. Give --model and --weights once per model, or one --model "
        "and several --weights (checkpoints of one architecture).",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_compare_models(cmp_)
    cmp_.add_argument("--out", required=True, help="output directory")
    _add_engine_options(cmp_, default_rank=DEFAULT_RANK)
    _add_common(cmp_)

    qua = sub.add_parser(
        "quality",
        help="score checkpoints' training quality without labels",
        description="Score every checkpoint on the same unlabelled inputs (higher = better "
        "trained) and print its estimated joint rank. With 5 or more checkpoints the default "
        "score (mode consensus) is each checkpoint's estimated accuracy: how often it gives "
        "the class that the reliability-weighted consensus of all of them believes "
        "(Dawid-Skene). On its own (mode single) a checkpoint scores its stability - Cohen's "
        "kappa between its answers on the inputs and on slightly moved or noisy copies - "
        "times the square root of the effective rank of its predicted class probabilities "
        "over the number of classes. Labels are never read for either score; test accuracy "
        "is shown for reference when the data has labels. With --out, also write each "
        "checkpoint's analysis at its estimated rank and a report that opens on the "
        "checkpoints' scores, linked to each one's own report.",
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qua.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints to score")
    _add_model_data(qua, weights=False, store=False)
    _add_flags(qua, RankOptions)
    qua.add_argument(
        "--no-rank",
        action="store_true",
        help="skip the joint rank scan (the score does not need it)",
    )
    _add_flags(qua, QualityOptions)
    qua.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULT_SEED,
        help="seed of --n-samples, the perturbations and the scan",
    )
    qua.add_argument("--json", help="also write the scores to this JSON file")
    qua.add_argument(
        "--out",
        metavar="DIR",
        help="also write DIR/quality.json, DIR/checkpoints/<n>-<name>/ (each checkpoint's "
        "analysis and report, at its estimated rank, or at --rank with --no-rank) and "
        "DIR/index.html (the checkpoints report). Costs a full analysis per checkpoint: "
        "about 10 s each for a small CNN on 500 inputs with --no-rank, more with the scan",
    )
    qua.add_argument(
        "--rank",
        type=_positive_int,
        default=None,
        metavar="R",
        help="with --no-rank --out: the rank of every checkpoint's analysis (default 10); "
        "without --no-rank the scan chooses each checkpoint's rank",
    )
    _add_common(qua, overwrite_help="replace an existing --json file or --out results")

    rep = sub.add_parser(
        "report",
        help="(re)write the HTML report of a saved result",
        description="Write index.html and figures/ for a result directory written by "
        "`analyze` or `demo`. Give several (checkpoints of one model, same layers and test "
        "inputs, in training order) to add a view of how components appear across them; "
        "the best-scoring one (else the last) is shown in full, or the one --main names.",
    )
    rep.add_argument("results", nargs="+", metavar="RESULT", help="result directory (or several)")
    rep.add_argument("--out", help="where to write the report (default: the result directory)")
    rep.add_argument(
        "--main",
        type=_positive_int,
        metavar="N",
        help="with several results: show the N-th in full (1 = the first given; default: the "
        "best-scoring, else the last)",
    )
    rep.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    rep.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    zoo = sub.add_parser(
        "zoo",
        help="train a model zoo: checkpoints of known test accuracy",
        description="Train one architecture, seeded and reproducibly, into checkpoints of known "
        "test accuracy: 'steps' (one run saved from initialisation to convergence), 'noise' "
        "(0-100 % random training labels), 'data' (smaller training sets) and 'width' (other "
        "widths, same budget). Writes "
        "<out>/<kind>/<name>.pt and <out>/zoo.json.",
    )
    zoo.add_argument(
        "--data",
        required=True,
        help="digits, glyphs or shapes (synthetic, made in code), or mnist:DIR (holding "
        "train-10k.npz and t10k files)",
    )
    zoo.add_argument("--out", required=True, help="output directory")
    zoo.add_argument(
        "--arch",
        choices=["mnistcnn", "bngap", "deepbngap", "resnet", "digitscnn"],
        help="architecture (default: mnistcnn for MNIST, digitscnn for digits, bngap for "
        "glyphs and shapes)",
    )
    zoo.add_argument(
        "--kinds",
        default="steps,noise,data",
        help="comma-separated subset of steps,noise,data,width (default steps,noise,data; "
        "width: the architecture at widths 4, 8, 16, 32, same budget)",
    )
    zoo.add_argument(
        "--seed", type=_seed, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    zoo.add_argument(
        "--steps",
        type=_positive_int,
        help="optimizer steps of every run (default: the data's plan, e.g. 470 for MNIST, "
        "2500 for glyphs and shapes); the steps kind saves log-spaced checkpoints up to it",
    )
    zoo.add_argument("--quick", action="store_true", help="a tiny zoo (for tests)")
    zoo.add_argument("--overwrite", action="store_true", help="replace an existing zoo in --out")
    zoo.add_argument("--quiet", action="store_true", help="no progress lines")
    zoo.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


@contextlib.contextmanager
def _cluster(args: argparse.Namespace, engine: EngineOptions) -> Iterator[EngineOptions]:
    """Give the engine's options, on Dask (a cluster up) with ``--dask`` / ``--scheduler``."""
    if not (args.dask or args.scheduler):
        yield engine
        return
    from factorlens.factorize.distributed import dask_cluster

    with dask_cluster(args.scheduler):
        yield replace(engine, backend="dask")


def _iterations(opts: dict) -> str:
    """Return ``"99 iterations (fit 50, refit 49)"``: by stage, each with its own --max-iter."""
    n, stages = opts.get("n_iter"), opts.get("loss_stages") or []
    if not isinstance(n, int) or len(stages) < 2:
        return f"{n} iterations"
    starts = [int(at) for _, at in stages] + [n]
    parts = ", ".join(f"{what} {b - a}" for (what, a), b in zip(stages, starts[1:], strict=True))
    return f"{n} iterations ({parts})"


def _print_summary(result, out: Path, seconds: float) -> None:
    from factorlens import commands

    opts = result.options
    state = "converged" if opts.get("converged") else "stopped at --max-iter"
    print(
        f"joint factorization of {result.n_samples} inputs, R = {result.rank}: "
        f"{_iterations(opts)}, {state}; {seconds:.1f} s in all"
    )
    width = max(len(n) for n in result.block_names)
    captured = result.captured_energy()
    extra = f" {'captured':>9}" if captured else ""  # the share of a sketched layer fitted
    print(f"  {'block':<{width}}  {'shape':<18} {'fit':>7}{extra}  strongest component")
    for name, shape in zip(result.block_names, result.block_shapes, strict=True):
        shape_text = "×".join(str(s) for s in shape)
        w = result.weights[name]
        top = int(w.argmax())
        kept = ""  # the captured column, only when some layer was sketched
        if captured:
            kept = f" {100 * captured[name]:8.1f}%" if name in captured else f" {'whole':>9}"
        print(
            f"  {name:<{width}}  {shape_text:<18} {100 * result.block_fit[name]:6.1f}%"
            f"{kept}  C{top + 1} ({w[top]:.2f})"
        )
    if captured:
        print(
            f"  {len(captured)} layers were sketched (--sketch): fit is of the captured share, "
            f"{100 * min(captured.values()):.1f}-{100 * max(captured.values()):.1f}% of each"
        )
    absent = int((~result.presence()).sum())
    if absent:
        print(f"  {absent} component-block strengths are at or below their block's floor: absent")
    if "comparison" in (result.meta or {}):
        print("\n".join(commands.sharing_lines(result)))
    for note in result.spare_components():
        print(f"note: {note}")
    print(commands.report_line(out))


#: OSError numbers that are a failure at run time (exit 1), not a path the user got wrong
_IO_FAILURES = {getattr(errno, n) for n in ("EIO", "ENOSPC", "EDQUOT") if hasattr(errno, n)}


def _left_behind(args: argparse.Namespace) -> str:
    """Say what an interrupted command left: nothing, or (zoo) the checkpoints so far."""
    if args.command == "zoo":
        return (
            f"the checkpoints trained so far stay in {args.out}, without zoo.json; rerun "
            "with --overwrite to build the zoo again"
        )
    return "no result was written"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``factorlens`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, 2 for usage errors (bad arguments, refused inputs), 1 for
        failures at run time (a damaged store or result file, a model that raises, a full
        disk), 130 for Ctrl-C, 143 for SIGTERM.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from factorlens.interrupt import TERMINATED, Terminated, raise_terminated

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main else None
    TERMINATED.clear()  # a run in this process before may have been terminated
    try:
        with cli_wording():
            return _run(args)
    except Terminated:
        print(f"error: terminated (SIGTERM); {_left_behind(args)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); {_left_behind(args)}", file=sys.stderr)
        return 130
    except SystemExit as exc:  # the arguments were parsed: only code factorlens runs exits
        if getattr(args, "debug", False):
            raise
        print(
            f"error: the model's code called sys.exit({exc.code!r}) while factorlens ran it "
            f"(its constructor, forward or preprocessing hook); {_left_behind(args)}",
            file=sys.stderr,
        )
        return 1
    except FactorlensError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {flags_for_cli(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file the user named could not be read or written, or a disk failed
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1 if exc.errno in _IO_FAILURES else 2
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from factorlens import commands

    start = time.perf_counter()
    if args.command in ("demo", "analyze", "rank", "compare"):
        runner = {
            "demo": commands.run_demo,
            "analyze": commands.run_analyze,
            "compare": commands.run_compare,
        }.get(args.command, commands.run_rank)
        # the capture's and the engine's settings travel as one CaptureOptions and one
        # EngineOptions from the flags to the stages; --tensor-layers become the engine's
        # tensor_blocks once the store's input shape is known
        with _cluster(args, from_args(EngineOptions, args)) as engine:
            result, out = runner(args, engine, from_args(CaptureOptions, args))
    elif args.command == "quality":
        return commands.run_quality(args, from_args(CaptureOptions, args))
    elif args.command == "zoo":
        return commands.run_zoo(args)
    else:
        out = commands.run_report(args)
        print(commands.report_line(out))
        return 0
    _print_summary(result, out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
