"""What each CLI command does, in terms of the pipeline (argparse stays in :mod:`cli`)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factorlens.errors import FactorlensError, note
from factorlens.factorize import CMTFResult
from factorlens.options import CaptureOptions, EngineOptions, RankOptions, flagged
from factorlens.output import atomic_write_text
from factorlens.pipeline import (
    OUTPUT_NAMES,
    REPORT_HTML,
    analyze,
    analyze_store,
    capture_for_analysis,
    check_output_dir,
    load,
    load_inputs,
    load_predictions,
    write_report_files,
)

if TYPE_CHECKING:
    from factorlens.quality import QualityReport
    from factorlens.store import ActivationStore, ZarrStore


def report_line(out: Path) -> str:
    """Return the line naming a written report: relative to the working folder when inside it."""
    page = (Path(out) / REPORT_HTML).resolve()
    try:
        return f"report: {page.relative_to(Path.cwd().resolve())}"
    except ValueError:
        return f"report: {page}"


def parse_select(items: list[str]) -> dict[str, Any]:
    """``["layer=0", "block=out"]`` → ``{"layer": 0, "block": "out"}`` (ints where they parse)."""
    select: dict[str, Any] = {}
    for item in items:
        name, sep, key = item.rpartition("=")
        if not sep or not name or not key:
            raise FactorlensError(f"--select expects LAYER=INDEX (e.g. lstm=0), got {item!r}")
        select[name] = int(key) if key.lstrip("-").isdigit() else key
    return select


def _check_rank(rank: int, n_samples: int) -> None:
    """``--rank`` (positive: checked by the parser) against the number of inputs."""
    if rank > n_samples:
        raise FactorlensError(
            f"--rank {rank} is larger than the number of inputs ({n_samples}); "
            f"choose --rank <= {n_samples} or use more inputs"
        )


def run_demo(
    args: argparse.Namespace, engine: EngineOptions, capture: CaptureOptions
) -> tuple[CMTFResult, Path]:
    """Train the digits CNN, analyse it on held-out digits, write the report."""
    from factorlens.research.demo import train_demo_model

    out = check_output_dir(args.out, args.overwrite, OUTPUT_NAMES)
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
    layers = tensor_layers(args)
    if layers:  # the digits are 8×8 images: the input is a CP block too
        engine = replace(engine, tensor_blocks=("input", *[t for t in layers if t != "input"]))
    result = analyze(
        model,
        data,
        out=out,
        rank=args.rank,
        overwrite=args.overwrite,
        progress=not args.quiet,
        meta=meta,
        capture_options=capture,
        options=engine,
    )
    return result, out


def _inputs(args: argparse.Namespace, model_hook: bool = True) -> tuple[Any, Any]:
    """Return the data (sub-sampled) and the preprocessing the options ask for.

    ``model_hook``: the model file's own ``factorlens_preprocess`` too (``compare`` applies
    each model's hook to that model only, after this shared part).
    """
    from factorlens.data import load_data, make_preprocess, parse_normalize
    from factorlens.modelio import find_preprocess_hook

    data = load_data(args.data)
    if args.n_samples is not None and args.n_samples > data.n_samples:
        note(
            f"--n-samples {args.n_samples} is more than the data holds; all its "
            f"{data.n_samples} inputs are used"
        )
    data = data.subset(args.n_samples, random_state=args.seed)
    normalize = parse_normalize(args.normalize) if args.normalize else None
    hook = find_preprocess_hook(args.model) if model_hook else None
    return data, make_preprocess(normalize, hook)


def on_device(
    capture: CaptureOptions, engine: EngineOptions | None = None
) -> tuple[CaptureOptions, EngineOptions]:
    """Return the capture's and the engine's settings on the device ``--device`` names.

    ``auto`` becomes the device it means; CUDA asked for where there is none is a one-line
    error, before any work. The factorization runs where the forward passes do.
    """
    from factorlens.modelio import resolve_device

    device = str(resolve_device(capture.device))
    return replace(capture, device=device), replace(engine or EngineOptions(), device=device)


def _meta(args: argparse.Namespace, model: Any, data: Any, weights: str | None) -> dict:
    return {
        "model_name": type(model).__name__,
        "model": args.model + (f" with weights {weights}" if weights else ""),
        "data": data.description,
        "class_names": data.class_names,
        "normalize": args.normalize,
    }


def _existing_store(args: argparse.Namespace, capture: CaptureOptions) -> ZarrStore:
    """``--store PATH`` without ``--model``: reopen that store (nothing else may be given)."""
    if not args.store:
        raise FactorlensError(
            "give --model FILE.py:Class and --data SPEC (or --store PATH of an existing store)"
        )
    given = {  # what only a capture reads (compare has --label, analyze and rank --select)
        flag: getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        for flag in (
            "--data",
            "--weights",
            "--label",
            "--layers",
            "--normalize",
            "--n-samples",
            "--select",
            "--trust-pickle",
            "--resume",
        )
    } | {
        # the capture's flags, but --device (where the fit runs, too)
        **{
            flag.name: getattr(capture, name) != default
            for name, flag, default in flagged(CaptureOptions)
            if name != "device"
        },
    }
    extra = [flag for flag, value in given.items() if value]
    if extra:
        raise FactorlensError(
            "--store without --model analyses an existing store; drop " + ", ".join(extra)
        )
    from factorlens.store import open_store

    return open_store(args.store)


def _captured(
    args: argparse.Namespace,
    out: Path,
    rank: int | None,
    capture: CaptureOptions,
    engine: EngineOptions,
) -> ActivationStore:
    """Return the activation store for ``analyze``/``rank``: reopened, or captured anew.

    With the engine's Dask backend a capture into ``--store`` runs on the cluster's workers.
    Without ``--store`` the layers too wide for ``--memory`` are sketched for up to
    ``--rank`` (or ``--max-rank``) components.
    """
    if args.model is None:
        acts = _existing_store(args, capture)
        if rank is not None:
            _check_rank(rank, acts.n_samples)
        return acts
    if not args.data:
        raise FactorlensError("--data SPEC is required with --model (e.g. --data mnist:DIR)")
    from factorlens.modelio import build_model

    data, preprocess = _inputs(args)
    if rank is not None:
        _check_rank(rank, data.n_samples)
    model = build_model(
        args.model,
        args.weights,
        trust_pickle=args.trust_pickle,
        device=capture.device,
        seed=args.seed,
    )
    _check_tensor_layers(args, {"": (model, args.layers)})
    return capture_for_analysis(
        model,
        data,
        out=out,
        options=capture,
        layers=args.layers,
        preprocess=preprocess,
        store=args.store,
        select=parse_select(args.select),
        overwrite=args.overwrite,
        progress=not args.quiet,
        meta=_meta(args, model, data, args.weights),
        resume=args.resume,
        sharded=_sharded(args, engine),
        sketch_rank=rank if rank is not None else args.max_rank,
        center=engine.center,
        seed=args.seed,
    )


def _check_tensor_layers(args: argparse.Namespace, models: dict[str, tuple[Any, Any]]) -> None:
    """Refuse a ``--tensor-layers`` name that is not among the blocks to capture, before it.

    ``models``: block-name prefix (``""`` for one model, ``"LABEL."`` in a comparison) →
    ``(model, its --layers)``.
    """
    from factorlens.capture import select_layers

    wanted = tensor_layers(args)
    if not wanted:
        return
    blocks = ["input"] + [
        prefix + layer
        for prefix, (model, layers) in models.items()
        for layer in select_layers(model, layers)
    ]
    for name in wanted:  # a module called twice gives blocks NAME and NAME#2
        if name.split("#")[0] not in blocks:
            shown = ", ".join(blocks[:8]) + (", …" if len(blocks) > 8 else "")
            raise FactorlensError(
                f"--tensor-layers names {name!r}, which is not among the blocks to capture "
                f"({shown}); name captured blocks, or add the layer to --layers"
            )


def _sharded(args: argparse.Namespace, engine: EngineOptions) -> bool:
    """Whether the capture runs on a Dask cluster: a new ``--store`` with ``--dask``/``--scheduler``."""
    return engine.backend == "dask" and args.store is not None and not args.resume


def tensor_layers(args: argparse.Namespace) -> list[str]:
    """Return the layers ``--tensor-layers`` names (none when the command has no such flag)."""
    text = getattr(args, "tensor_layers", "") or ""
    return [t.strip() for t in text.split(",") if t.strip()]


def _with_tensor_blocks(
    store: ActivationStore, engine: EngineOptions, args: argparse.Namespace
) -> EngineOptions:
    """Return the engine options with ``--tensor-layers`` turned into CMTF's ``tensor_blocks``.

    That is the input (when it has two or more feature axes) plus those layers; without
    ``--tensor-layers`` the options as they are.
    """
    layers = tensor_layers(args)
    if not layers:
        return engine
    first = store.names[0]
    base = [first] if len(store.block(first).shape) >= 3 else []
    return replace(engine, tensor_blocks=(*base, *[t for t in layers if t != first]))


def run_analyze(
    args: argparse.Namespace, engine: EngineOptions, capture: CaptureOptions
) -> tuple[CMTFResult, Path]:
    """Analyse the user's model on the user's data (or an existing store)."""
    out = check_output_dir(args.out, args.overwrite, OUTPUT_NAMES)
    capture, engine = on_device(capture, engine)
    acts = _captured(args, out, args.rank, capture, engine)
    return _fit_and_write(analyze_store, args, acts, engine, out), out


def _fit_and_write(
    fit_store: Any,
    args: argparse.Namespace,
    acts: ActivationStore,
    engine: EngineOptions,
    out: Path,
) -> CMTFResult:
    """Run ``fit_store`` (analyze_store or compare_store) on ``acts`` at ``--rank`` into ``out``."""
    return fit_store(
        acts,
        out=out,
        rank=args.rank,
        overwrite=args.overwrite,
        progress=not args.quiet,
        options=_with_tensor_blocks(acts, engine, args),
    )


def compare_models(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """Return ``(label, model spec, weights)`` per model of ``compare``'s repeated options.

    One ``--model`` serves every ``--weights``; otherwise they pair in order. Labels come
    from ``--label``, else the checkpoint's file name, else the class name (made unique).
    """
    specs, weights, labels = list(args.model), list(args.weights), list(args.label)
    if len(specs) == 1 and len(weights) > 1:
        specs = specs * len(weights)
    n = len(specs)
    if n < 2:
        raise FactorlensError(
            "compare needs two or more models: give --model and --weights once per model, or "
            "one --model and two or more --weights"
        )
    if weights and len(weights) != n:
        raise FactorlensError(
            f"{n} --model but {len(weights)} --weights; give one --weights per --model (or one "
            "--model for all the --weights)"
        )
    if labels and len(labels) != n:
        raise FactorlensError(f"{n} models but {len(labels)} --label; give one per model")
    weights_or_none: list[str | None] = list(weights) if weights else [None] * n
    if not labels:
        from factorlens.modelset import LABEL

        for spec, w in zip(specs, weights_or_none, strict=True):
            stem = Path(w).stem if w else spec.rpartition(":")[2]
            base = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).lstrip("_-")
            base = base[:40] if base and LABEL.fullmatch(base[:40]) else "model"
            label, k = base, 2
            while label in labels:
                label, k = f"{base}-{k}", k + 1
            labels.append(label)
    elif len(set(labels)) != n:
        raise FactorlensError(f"--label names a model twice ({labels}); give each its own label")
    return list(zip(labels, specs, weights_or_none, strict=True))


def _note_identical(chosen: list[tuple[str, str, str | None]]) -> None:
    """Say when two of the models compared are one: the same model file and the same weights."""
    first: dict[tuple[str, str | None], str] = {}
    for label, spec, weights in chosen:
        file, _, cls = spec.rpartition(":")
        key = (f"{Path(file).resolve()}:{cls}", str(Path(weights).resolve()) if weights else None)
        if key in first:
            note(
                f"models {first[key]!r} and {label!r} are the same model file and weights, so "
                "they are one model and every comparison between them is trivial (CKA 1)"
            )
        first.setdefault(key, label)


def compare_layers(items: list[str], labels: list[str]) -> dict[str, str]:
    """``--layers [LABEL=]NAMES`` → ``{label: names}``; NAMES without a label apply to all.

    Repeated, they add up; a model named by a LABEL= spec takes only its own specs, whatever
    the order (``--layers 'features.*' --layers b=fc``: ``b`` fc, the others features.*).
    """
    plain: list[str] = []
    own: dict[str, list[str]] = {}
    for item in items:
        label, sep, names = item.partition("=")
        if sep and label in labels:
            own.setdefault(label, []).append(names)
        elif sep and "," not in label and "*" not in label and "." not in label:
            raise FactorlensError(
                f"--layers {item!r} names model {label!r}, which is not one of {labels}"
            )
        else:
            plain.append(item)
    chosen = {label: own.get(label, plain) for label in labels}
    return {label: ",".join(names) for label, names in chosen.items() if names}


def run_compare(
    args: argparse.Namespace, engine: EngineOptions, capture: CaptureOptions
) -> tuple[CMTFResult, Path]:
    """Capture several models on the same inputs, factorize them jointly, write ``--out``."""
    from factorlens.pipeline import compare, compare_store

    out = check_output_dir(args.out, args.overwrite, OUTPUT_NAMES)
    capture, engine = on_device(capture, engine)
    if not args.model:
        if not args.store:
            raise FactorlensError(
                "give --model and --weights for each model and --data SPEC (or --store PATH of "
                "an existing comparison store)"
            )
        acts = _existing_store(args, capture)  # its labels and layers are the capture's
        _check_rank(args.rank, acts.n_samples)
        return _fit_and_write(compare_store, args, acts, engine, out), out
    if not args.data:
        raise FactorlensError("--data SPEC is required with --model (e.g. --data mnist:DIR)")
    from factorlens.modelio import build_model, find_preprocess_hook

    chosen = compare_models(args)
    labels = [label for label, _, _ in chosen]
    _note_identical(chosen)
    layers = compare_layers(args.layers, labels)
    data, preprocess = _inputs(args, model_hook=False)  # each model's hook: its own
    _check_rank(args.rank, data.n_samples)
    models, hooks, described = {}, {}, {}
    for label, spec, weights in chosen:
        models[label] = build_model(
            spec,
            weights,
            trust_pickle=args.trust_pickle,
            device=capture.device,
            seed=args.seed,
        )
        hooks[label] = find_preprocess_hook(spec)
        described[label] = spec + (f" with weights {weights}" if weights else "")
    meta = {
        "models": described,
        "data": data.description,
        "class_names": data.class_names,
        "normalize": args.normalize,
    }
    _check_tensor_layers(args, {f"{k}.": (m, layers.get(k)) for k, m in models.items()})
    if layers_cp := tensor_layers(args):  # block names with their label: LABEL.layer
        engine = replace(engine, tensor_blocks=tuple(layers_cp))
    result = compare(
        models,
        data,
        out=out,
        rank=args.rank,
        layers=layers,
        preprocess=preprocess,
        model_preprocess=hooks,
        store=args.store,
        overwrite=args.overwrite,
        progress=not args.quiet,
        meta=meta,
        resume=args.resume,
        sharded=_sharded(args, engine),
        capture_options=capture,
        options=engine,
    )
    return result, out


def sharing_lines(result: CMTFResult) -> list[str]:
    """Return the lines that say which models carry which component (``compare``)."""
    from factorlens.comparison import component_sharing, strength_contrasts

    sharing = component_sharing(result)
    counts = sharing.counts()
    lines = [
        f"  components shared by all {len(sharing.labels)} models: {counts['all']}, by some: "
        f"{counts['some']}, unique to one: {counts['unique']}, in no model's layers: "
        f"{counts['none']}"
    ]
    for r, kind in enumerate(sharing.kinds):
        if kind == "all":  # the counts said it; the report has the layers
            continue
        where = ", ".join(f"{e.block} {e.strength:.2f}" for e in sharing.evidence[r] if e.present)
        lines.append(f"  C{r + 1}: {sharing.describe(r)}" + (f" (in {where})" if where else ""))
    if len(sharing.labels) > 3:  # the report has every pair
        return lines
    cka = {
        (p["a"], p["b"]): p["layers"]
        for p in result.meta["comparison"].get("cka", {}).get("pairs", [])
    }
    for a, b in itertools.combinations(sharing.labels, 2):
        values = " ".join(f"{float(v):.2f}" for _, _, v in cka.get((a, b), []))
        if values:
            lines.append(f"  linear CKA of {a} and {b}, matched layers in order: {values}")
        for c in strength_contrasts(result, a, b)[:3]:
            if math.isinf(c.ratio):  # zero in the other model's layer
                lines.append(
                    f"    C{c.component + 1} is in {c.stronger}'s {c.layer} and has no strength "
                    f"in {c.weaker}'s {c.other_layer}"
                )
                continue
            lines.append(
                f"    C{c.component + 1} is {c.ratio:.2f}× stronger in {c.stronger}'s {c.layer} "
                f"than in {c.weaker}'s {c.other_layer}"
            )
    return lines


def run_rank(
    args: argparse.Namespace, engine: EngineOptions, capture: CaptureOptions
) -> tuple[CMTFResult, Path]:
    """Scan the rank, print the evidence, write the analysis at the chosen rank."""
    from factorlens.rank import estimate_rank

    out = check_output_dir(args.out, args.overwrite, OUTPUT_NAMES)
    capture, engine = on_device(capture, engine)
    acts = _captured(args, out, None, capture, engine)
    # the scan fits the same model as the analysis (constraints, penalty, weighting, CP
    # blocks); its own iteration cap and tolerance keep twenty ranks affordable
    engine = _with_tensor_blocks(acts, engine, args)
    scan = estimate_rank(
        acts, args.max_rank, random_state=args.seed, verbose=not args.quiet, model=engine
    )
    for text in scan.notes:
        print(f"note: {text}")
    print(scan.table())
    print(scan.summary())
    result = analyze_store(
        acts,
        out=out,
        rank=scan.chosen,
        overwrite=args.overwrite,
        progress=not args.quiet,
        extra_meta={"rank_scan": scan.to_dict()},
        options=engine,
    )
    return result, out


#: below this many inputs `quality` notes that the scores' spreads are wide
RECOMMENDED_QUALITY_INPUTS = 2000


def run_quality(args: argparse.Namespace, capture: CaptureOptions) -> int:
    """Score every checkpoint on the same unlabelled inputs.

    Print a table, write JSON and, with ``--out``, every checkpoint's analysis at its chosen
    rank plus the checkpoints report (:func:`factorlens.assess.assess_quality`).
    """
    import functools

    from factorlens.assess import assess_quality
    from factorlens.modelio import build_model
    from factorlens.quality import resolve_mode

    resolve_mode(args.mode, len(args.checkpoints))  # a mode that cannot run: before any work
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        if json_path.is_dir():
            raise FactorlensError(
                f"--json {json_path} is a folder; give a file path (e.g. {json_path}/scores.json)"
            )
        if args.out is not None and _written_by_quality(json_path, Path(args.out)):
            raise FactorlensError(
                f"--json {json_path} is a file the result in --out {args.out} writes; --out "
                "already holds the scores (quality.json): drop --json or give another path"
            )
        if json_path.exists() and not args.overwrite:
            raise FactorlensError(
                f"{json_path} already exists; pass --overwrite to replace it or choose another "
                "--json"
            )
        in_out = args.out is not None and json_path.parent.resolve() == Path(args.out).resolve()
        if not json_path.parent.is_dir() and not in_out:  # --out is made by the run
            raise FactorlensError(
                f"cannot write {json_path}: folder {json_path.parent} does not exist"
            )
    if getattr(args, "rank", None) is not None and not args.no_rank:
        raise FactorlensError(
            "--rank fixes the rank of the analyses only with --no-rank; without it the rank "
            "scan chooses each checkpoint's rank (drop --rank, or add --no-rank)"
        )
    if args.no_rank and args.max_rank != RankOptions.max_rank:
        raise FactorlensError(
            "--max-rank bounds the rank scan, which --no-rank turns off; drop one of them"
        )
    data, preprocess = _inputs(args)
    capture, _ = on_device(capture)
    build = functools.partial(
        build_model,
        args.model,
        trust_pickle=args.trust_pickle,
        device=capture.device,
        seed=args.seed,
    )
    checkpoints = [(ckpt, functools.partial(build, ckpt)) for ckpt in args.checkpoints]
    reports = assess_quality(
        checkpoints,
        data,
        out=args.out,
        mode=args.mode,
        scan=not args.no_rank,
        max_rank=args.max_rank,
        rank=args.rank,
        layers=args.layers,
        preprocess=preprocess,
        select=parse_select(args.select),
        scratch=args.scratch,
        random_state=args.seed,
        meta={
            "model": args.model,
            "data": data.description,
            "class_names": data.class_names,
            "normalize": args.normalize,
        },
        overwrite=args.overwrite,
        progress=not args.quiet,
        capture_options=capture,
    )
    _print_quality_table(reports, with_acc=reports[0].accuracy is not None)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps([r.to_dict() for r in reports], indent=1))
    if args.out is not None:
        print(report_line(Path(args.out)))
    return 0


def _written_by_quality(path: Path, out: Path) -> bool:
    """Tell whether ``path`` is, or lies under, an entry that ``quality --out OUT`` writes."""
    from factorlens.assess import QUALITY_NAMES
    from factorlens.output import MANIFEST

    try:
        rel = path.resolve().relative_to(out.resolve())
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] in (*QUALITY_NAMES, MANIFEST)


def _print_quality_table(reports: list[QualityReport], with_acc: bool) -> None:
    """Print the quality table on stdout (and Spearman with accuracy when there are labels)."""
    width = max(len("checkpoint"), *(len(r.checkpoint or "") for r in reports))
    head = (
        f"{'checkpoint':<{width}}  {'rank':>4}  {'score':>6}  {'± sd':>6}  {'single':>6}  "
        f"{'stability':>9}  {'pred.rank':>9}"
    )
    print(head + ("  accuracy (labels, for reference only)" if with_acc else ""))
    for r in reports:
        line = (
            f"{r.checkpoint:<{width}}  {r.rank if r.rank_scan else '-':>4}  {r.score:6.3f}  "
            f"{r.score_sd:6.3f}  "
            f"{r.single_score:6.3f}  {r.stability:9.3f}  {r.prediction_rank:9.2f}"
        )
        if with_acc and r.accuracy is not None:
            line += f"  {r.accuracy:.4f}"
        if r.degenerate:
            line += f"  degenerate: {', '.join(r.degenerate)}"
        print(line)
    if len(reports) > 1 and with_acc:
        from scipy.stats import spearmanr

        scores, accuracies = [r.score for r in reports], [r.accuracy for r in reports]
        if len(set(scores)) > 1 and len(set(accuracies)) > 1:
            print(f"Spearman(score, accuracy) = {spearmanr(scores, accuracies)[0]:.3f}")
        else:  # a rank correlation with a constant has no value (scipy warns and gives nan)
            what = "score" if len(set(scores)) == 1 else "accuracy"
            print(f"Spearman(score, accuracy): undefined, every checkpoint has the same {what}")
    if reports[0].mode == "consensus":
        print(
            "score: each checkpoint's estimated accuracy in the consensus of all "
            f"{len(reports)} (Dawid-Skene); single: its own score (stability × "
            "sqrt(pred.rank / K))"
        )
    else:
        print("score: each checkpoint on its own (stability × sqrt(pred.rank / K))")
    notes = {n for r in reports for n in (r.rank_scan or {}).get("notes", [])}
    for text in sorted(notes):
        print(f"note: rank scan: {text}")
    if reports[0].copies and reports[0].mode == "consensus":
        groups = "; ".join(", ".join(g) for g in reports[0].copies)
        print(f"note: near-identical answers (>= 99 % the same) count as one voter: {groups}")
    for warning in reports[0].warnings:  # the set's, the same on every report
        print(f"warning: {warning}", file=sys.stderr)
    n_inputs = reports[0].n_inputs
    if n_inputs < RECOMMENDED_QUALITY_INPUTS:
        print(
            f"note: scored on {n_inputs} inputs; the score separates close checkpoints "
            f"better with more (>= {RECOMMENDED_QUALITY_INPUTS} recommended)",
            file=sys.stderr,
        )


def run_report(args: argparse.Namespace) -> Path:
    """Rewrite the report of a saved result, in place or into another directory.

    Several results (checkpoints): the report of the first plus the checkpoints view.
    """
    sources = [Path(p) for p in args.results]
    seen: dict[Path, Path] = {}
    for s in sources:
        if (same := seen.setdefault(s.resolve(), s)) is not s:
            also = "" if str(same) == str(s) else f" (also as {same})"
            raise FactorlensError(f"result folder {s} is given twice{also}; give each result once")
    source = sources[0]
    result = load(source)
    images, labels, class_names = load_inputs(source)
    out = Path(args.out) if args.out else source
    # in place, the report factorlens wrote there is replaced (and nothing else); the
    # checkpoints view in place of one checkpoint's own report only when asked to
    inside = [s for s in sources if out.resolve() == s.resolve()]
    if len(sources) > 1 and inside and not args.overwrite:
        raise FactorlensError(
            f"the checkpoints report would replace {inside[0]}'s own report; give --out a new "
            "folder, or pass --overwrite to replace it"
        )
    replace = args.overwrite or bool(inside)
    # a result shown that lives in `out` (or under it, as a quality run's checkpoints do)
    # keeps its files: only the old report is replaced; elsewhere the new report replaces
    # the whole old result, which it would no longer match
    beside_result = any(out.resolve() in (s.resolve(), *s.resolve().parents) for s in sources)
    if not inside:
        out = check_output_dir(out, args.overwrite, (REPORT_HTML,))
    title = f"factorlens — {result.meta.get('model_name', 'model')}"
    main = getattr(args, "main", None)
    if len(sources) > 1:
        from factorlens.pipeline import write_checkpoints_report

        if main is not None and not 1 <= main <= len(sources):
            raise FactorlensError(
                f"--main {main} is out of range: give 1 to {len(sources)} (the position of "
                "the result directory to show in full)"
            )
        return write_checkpoints_report(
            out,
            sources,
            main=None if main is None else main - 1,
            title=title,
            overwrite=replace,
            replace_result=not beside_result,
        )
    if main is not None:
        raise FactorlensError("--main chooses among several result directories; give several")
    return write_report_files(
        out,
        result,
        images,
        labels,
        class_names,
        title=title,
        overwrite=replace,
        predictions=load_predictions(source),
        replace_result=not beside_result,
    )


def run_zoo(args: argparse.Namespace) -> int:
    """Train a model zoo into --out and print its checkpoints with their test accuracy."""
    from factorlens.research.zoo import build_zoo, load_zoo

    target = build_zoo(
        args.data,
        Path(args.out),
        arch=args.arch,
        kinds=args.kinds,
        seed=args.seed,
        quick=args.quick,
        steps=args.steps,
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
