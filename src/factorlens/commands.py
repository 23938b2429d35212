"""What each CLI command does, in terms of the pipeline (argparse stays in :mod:`cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTFResult
from factorlens.pipeline import (
    analyze,
    analyze_store,
    check_output_dir,
    load,
    load_inputs,
    write_report_files,
)


def parse_select(items: list[str]) -> dict[str, Any]:
    """``["layer=0", "block=out"]`` → ``{"layer": 0, "block": "out"}`` (ints where they parse)."""
    select: dict[str, Any] = {}
    for item in items:
        name, sep, key = item.rpartition("=")
        if not sep or not name or not key:
            raise FactorlensError(f"--select expects LAYER=INDEX (e.g. lstm=0), got {item!r}")
        select[name] = int(key) if key.lstrip("-").isdigit() else key
    return select


def _check_rank(rank: int, n_samples: int | None = None) -> None:
    if rank <= 0:
        raise FactorlensError(f"--rank must be a positive integer, got {rank}")
    if n_samples is not None and rank > n_samples:
        raise FactorlensError(
            f"--rank {rank} is larger than the number of inputs ({n_samples}); "
            f"choose --rank <= {n_samples} or use more inputs"
        )


def run_demo(args: argparse.Namespace, engine: dict[str, Any]) -> tuple[CMTFResult, Path]:
    """Train the digits CNN, analyse it on held-out digits, write the report."""
    from factorlens.demo import train_demo_model

    out = check_output_dir(args.out, args.overwrite)
    _check_rank(args.rank)
    model, data, accuracy = train_demo_model(seed=args.seed, progress=not args.quiet)
    print(f"trained the demo CNN on scikit-learn digits: held-out accuracy {100 * accuracy:.1f} %")
    _check_rank(args.rank, data.n_samples)
    meta = {
        "model_name": type(model).__name__,
        "model": f"{type(model).__name__} (demo, trained on scikit-learn digits; "
        f"held-out accuracy {100 * accuracy:.1f} %)",
        "data": data.description,
        "class_names": data.class_names,
    }
    result = analyze(
        model,
        data,
        out=out,
        rank=args.rank,
        overwrite=args.overwrite,
        progress=not args.quiet,
        meta=meta,
        **engine,
    )
    return result, out


def run_analyze(args: argparse.Namespace, engine: dict[str, Any]) -> tuple[CMTFResult, Path]:
    """Analyse the user's model on the user's data (or an existing store)."""
    from factorlens.data import load_data, make_preprocess, parse_normalize
    from factorlens.modelio import build_model, find_preprocess_hook, resolve_device

    out = check_output_dir(args.out, args.overwrite)
    _check_rank(args.rank)
    progress = not args.quiet
    if args.model is None:
        if not args.store:
            raise FactorlensError(
                "give --model FILE.py:Class and --data SPEC (or --store PATH of an existing store)"
            )
        extra = [f for f in ("data", "weights", "layers", "normalize") if getattr(args, f)]
        if extra:
            raise FactorlensError(
                "--store without --model analyses an existing store; drop "
                + ", ".join(f"--{f}" for f in extra)
            )
        from factorlens.store import open_store

        acts = open_store(args.store)
        _check_rank(args.rank, acts.n_samples)
        result = analyze_store(
            acts,
            out=out,
            rank=args.rank,
            overwrite=args.overwrite,
            progress=progress,
            device=args.device,
            **engine,
        )
        return result, out
    if not args.data:
        raise FactorlensError("--data SPEC is required with --model (e.g. --data mnist:DIR)")
    device = str(resolve_device(args.device))
    data = load_data(args.data).subset(args.n_samples, seed=args.seed)
    _check_rank(args.rank, data.n_samples)
    model = build_model(args.model, args.weights, trust_pickle=args.trust_pickle, device=device)
    normalize = parse_normalize(args.normalize) if args.normalize else None
    preprocess = make_preprocess(normalize, find_preprocess_hook(args.model))
    meta = {
        "model_name": type(model).__name__,
        "model": args.model + (f" with weights {args.weights}" if args.weights else ""),
        "data": data.description,
        "class_names": data.class_names,
        "normalize": args.normalize,
    }
    result = analyze(
        model,
        data,
        out=out,
        rank=args.rank,
        layers=args.layers,
        preprocess=preprocess,
        store=args.store,
        batch_size=args.batch_size,
        device=device,
        select=parse_select(args.select),
        nonfinite=args.nonfinite,
        overwrite=args.overwrite,
        progress=progress,
        meta=meta,
        **engine,
    )
    return result, out


def run_report(args: argparse.Namespace) -> Path:
    """Rewrite the report of a saved result, in place or into another directory.

    Several results (checkpoints): the report of the first plus the checkpoints view.
    """
    sources = [Path(p) for p in args.results]
    source = sources[0]
    result = load(source)
    images, labels, class_names = load_inputs(source)
    out = Path(args.out) if args.out else source
    if out.resolve() != source.resolve():
        out = check_output_dir(out, args.overwrite)
    title = f"factorlens — {result.meta.get('model_name', 'model')}"
    if len(sources) > 1:
        from factorlens.report.trajectory import write_trajectory_report

        return write_trajectory_report(out, sources, title=title)
    return write_report_files(out, result, images, labels, class_names, title=title)


def run_zoo(args: argparse.Namespace) -> int:
    """Train a model zoo into --out and print its checkpoints with their test accuracy."""
    from factorlens.zoo import build_zoo, load_zoo

    target = build_zoo(
        args.data,
        Path(args.out),
        arch=args.arch,
        kinds=args.kinds,
        seed=args.seed,
        quick=args.quick,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    entries = load_zoo(target)
    width = max(len("checkpoint"), *(len(e["checkpoint"]) for e in entries))
    print(f"{'checkpoint':<{width}}  {'kind':<5}  test accuracy")
    for e in entries:
        print(f"{e['checkpoint']:<{width}}  {e['kind']:<5}  {e['test_accuracy']:.4f}")
    print(f"zoo: {target.resolve()}")
    return 0
