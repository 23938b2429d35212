"""The checkpoints workflow: score checkpoints without labels, analyse each, write one report.

:func:`assess_quality` is what ``factorlens quality`` runs, as one API function: every
checkpoint is captured on the same inputs and scored (:mod:`factorlens.quality`), then the
scores are set against each other (the consensus mode); with ``out`` each checkpoint's joint
factorization is written (at the rank the scan chose, or at ``rank``) with its scores, and a
checkpoints report opens on the table of scores, linked to each one's own report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factorlens.errors import FactorlensError
from factorlens.options import (
    DEFAULT_SEED,
    CaptureOptions,
    QualityOptions,
    RankOptions,
    capture_settings,
)
from factorlens.output import check_output_dir
from factorlens.pages import small_pages
from factorlens.pipeline import REPORT_HTML, REPORT_NAMES

if TYPE_CHECKING:
    import numpy as np

    from factorlens.quality import QualityReport

_Q, _R = QualityOptions(), RankOptions()

#: what ``out`` receives: the scores, every checkpoint's analysis, the checkpoints report
QUALITY_JSON = "quality.json"
CHECKPOINTS_DIR = "checkpoints"
QUALITY_NAMES = (QUALITY_JSON, CHECKPOINTS_DIR, *REPORT_NAMES)


@small_pages()
def assess_quality(
    checkpoints: Mapping[str, Any] | Sequence[tuple[str, Any]],
    data: Any,
    *,
    out: str | Path | None = None,
    mode: str = _Q.mode,
    scan: bool = True,
    max_rank: int = _R.max_rank,
    rank: int | None = None,
    layers: list[str] | str | None = None,
    preprocess: Callable | None = None,
    select: dict[str, Any] | None = None,
    scratch: str | Path | None = _Q.scratch,
    random_state: int = DEFAULT_SEED,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    capture_options: CaptureOptions | None = None,
    **settings: Any,
) -> list[QualityReport]:
    """Score checkpoints on the same unlabelled inputs; with ``out``, analyse each and report.

    Parameters
    ----------
    checkpoints : mapping of str to torch.nn.Module or callable, or (name, model) pairs
        ``{name: model}`` in training order; a value may be a function with no arguments that
        builds the model, so that one model is held at a time. Pairs may repeat a name (the
        same file given twice is scored twice, as the command line does).
    data : ImageData
        The inputs every checkpoint is scored on (labels, when present, give the reference
        accuracy only).
    out : str or pathlib.Path, optional
        Also write ``quality.json``, ``checkpoints/<n>-<name>/`` (each checkpoint's analysis
        and report) and ``index.html`` (the checkpoints report) there.
    mode : str
        ``"auto"``, ``"single"`` or ``"consensus"`` (see :func:`factorlens.quality.resolve_mode`).
    scan : bool
        Estimate each checkpoint's joint rank (:func:`factorlens.rank.estimate_rank`, R up to
        ``max_rank``); the score does not need it.
    rank : int, optional
        Without ``scan``: the rank of every analysis written into ``out`` (default 10).
    layers, preprocess, select
        As in :func:`factorlens.pipeline.analyze`.
    scratch : str or pathlib.Path, optional
        Capture each checkpoint into a temporary store in this folder instead of memory.
    random_state : int
        Seeds the perturbations, the bootstrap and the scan.
    meta : dict, optional
        Metadata of every checkpoint's analysis (model, data), its ``checkpoint`` added.
    overwrite : bool
        Replace results factorlens wrote into ``out`` before.
    progress : bool
        Show a progress bar on stderr.
    capture_options : CaptureOptions, optional
        The capture's settings (:class:`~factorlens.options.CaptureOptions`: ``batch_size``,
        ``device``, ``nonfinite``, and in memory ``sketch`` and ``memory_budget``); the
        analyses' factorizations run on its ``device`` too.
    **settings
        Those fields as keywords (``batch_size=64``), which win over ``capture_options``.

    Returns
    -------
    list of QualityReport
        One per checkpoint, in the order given, scored in the chosen mode.
    """
    from factorlens.output import publish
    from factorlens.quality import resolve_mode

    pairs = list(checkpoints.items()) if isinstance(checkpoints, Mapping) else list(checkpoints)
    if not pairs:
        raise FactorlensError("no checkpoints given; pass {name: model} for one or more")
    if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise FactorlensError(
            "`checkpoints` must be {name: model} or a list of (name, model) pairs"
        )
    resolve_mode(mode, len(pairs))  # a mode that cannot run: before any work
    if rank is not None and scan:
        raise FactorlensError(
            "`rank` fixes the rank of the analyses only with `scan=False`; with the scan each "
            "checkpoint's rank is its estimated one (drop `rank`, or pass `scan=False`)"
        )
    if not scan and max_rank != _R.max_rank:
        raise FactorlensError(
            "`max_rank` bounds the rank scan, which `scan=False` turns off; drop one of them"
        )
    captured = capture_settings(capture_options, **settings)
    if scratch is not None and captured.sketch != CaptureOptions.sketch:
        raise FactorlensError(
            "`sketch` applies to a capture held in memory; with `scratch` every layer is "
            "captured whole on disk: drop one of them"
        )
    plan = {
        "mode": mode,
        "scan": scan,
        "max_rank": max_rank,
        "rank": rank,
        "capture": captured,
        "layers": layers,
        "preprocess": preprocess,
        "select": select or {},
        "scratch": scratch,
        "random_state": random_state,
        "meta": dict(meta or {}),
        "progress": progress,
    }
    reports: list[QualityReport] = []
    if out is None:
        reports = _score_all(pairs, data, plan, None)
        return reports
    target = check_output_dir(out, overwrite, (QUALITY_JSON, REPORT_HTML))

    def produce(stage: Path) -> None:
        reports.extend(_score_all(pairs, data, plan, stage))

    publish(target, produce, QUALITY_NAMES, overwrite=overwrite)
    return reports


def _score_all(
    checkpoints: list[tuple[str, Any]], data: Any, settings: dict[str, Any], stage: Path | None
) -> list[QualityReport]:
    """Capture and score each checkpoint; with a ``stage`` folder also analyse and report."""
    from factorlens.progress import progress_bar
    from factorlens.quality import perturbations, resolve_mode, score_together, scratch_store
    from factorlens.report.assets import safe_name

    mode = resolve_mode(settings["mode"], len(checkpoints))
    copies = perturbations(data.images, settings["random_state"])  # the same for every one
    analyses: list[Path] = []
    outputs, single = [], []
    model_name = "model"
    bar = progress_bar(
        len(checkpoints), "quality", unit="checkpoint", disable=not settings["progress"]
    )
    try:
        for i, (name, source) in enumerate(checkpoints):
            bar.set_postfix_str(Path(name).name)
            model = source() if callable(source) and not _is_module(source) else source
            model_name = type(model).__name__
            target = None
            if stage is not None:
                target = stage / CHECKPOINTS_DIR / f"{i + 1:02d}-{safe_name(Path(name).stem)}"
            with scratch_store(settings["scratch"]) as where:  # None: in memory
                report, out = _score_one(model, data, name, copies, settings, where, target)
            single.append(report)
            outputs.append(out)
            if target is not None:
                analyses.append(target)
            bar.update(1)
    finally:
        bar.close()  # before any message, which would otherwise share its line
    reports = score_together(single, outputs, mode)
    if stage is None:
        return reports
    for target, report in zip(analyses, reports, strict=True):  # the scores of the mode
        _record_quality(target, report)
    from factorlens.pipeline import checkpoints_report

    checkpoints_report(stage, analyses, title=f"factorlens quality — {model_name}")
    (stage / QUALITY_JSON).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    return reports


def _is_module(obj: Any) -> bool:
    from torch import nn

    return isinstance(obj, nn.Module)


def _score_one(
    model: Any,
    data: Any,
    name: str,
    copies: list[np.ndarray],
    settings: dict[str, Any],
    store: Path | None,
    target: Path | None,
) -> tuple[QualityReport, np.ndarray]:
    """Capture one checkpoint (into the store path ``store``, or memory) and score it alone.

    Returns its report and its ``(N, K)`` outputs; with a ``target`` folder also writes its
    analysis there, at the scan's rank (or at ``rank``, default 10, without the scan).
    """
    from factorlens.options import DEFAULT_RANK
    from factorlens.pipeline import analyze_store
    from factorlens.quality import (
        OUTPUT_BLOCK,
        assess_store,
        capture_for_score,
        model_outputs,
        perturbed_outputs,
    )
    from factorlens.store import StoreView

    capture: CaptureOptions = settings["capture"]
    scan, fixed = settings["scan"], settings["rank"] or DEFAULT_RANK
    acts = capture_for_score(
        model,
        data,
        options=capture,
        layers=settings["layers"],
        scan=scan or target is not None,  # an analysis needs the layers
        # a sketch's directions: for the scan's largest rank, or the one fixed rank fitted
        max_rank=settings["max_rank"] if scan else fixed,
        preprocess=settings["preprocess"],
        store=store,
        select=settings["select"],
        meta={"model_name": type(model).__name__, **settings["meta"], "checkpoint": name},
    )
    report = assess_store(
        acts,
        perturbed_outputs(model, copies, capture, settings["preprocess"], settings["select"]),
        max_rank=settings["max_rank"],
        random_state=settings["random_state"],
        checkpoint=name,
        scan=scan,
        progress=settings["progress"],
    )
    if target is not None:
        analyze_store(
            StoreView(acts, [OUTPUT_BLOCK, *report.degenerate]),
            out=target,
            rank=report.rank if scan else fixed,
            progress=False,
            device=capture.device,
            extra_meta={
                "overview": "../../index.html",  # DIR/checkpoints/NN-name/ -> DIR/index.html
                "rank_scan": report.rank_scan,
                "quality_score": report.score,
                "quality": {k: v for k, v in report.to_dict().items() if k != "rank_scan"},
            },
        )
    return report, model_outputs(acts)


def _record_quality(target: Path, report: QualityReport) -> None:
    """Put a checkpoint's final scores (those of the mode) into its staged analysis."""
    from factorlens.factorize.result import CMTFResult

    result = CMTFResult.load(target)
    quality = {k: v for k, v in report.to_dict().items() if k != "rank_scan"}
    result.meta.update(quality_score=report.score, quality=quality)
    result.save(target)
