"""Benchmark: real-size networks analysed within a few forward passes, activations never stored.

For each model a fresh child process does what a user's ``factorlens analyze`` does, with the
defaults (rank 10, every default layer, ``--memory 2G``, ``--sketch auto``): it loads 224 px
colour inputs from an npz file, builds the model (torchvision's layout, random weights, seed
0), times the bare forward pass over the same batches the capture uses, then times
``analyze`` (capture, fit, result files and report, into a temporary folder) and reports its
own peak resident memory (``ru_maxrss``, the forward pass included). The inputs are the
procedural ``shapes`` test images (3×32×32) upsampled bilinearly to 224 px.

* ``resnet18`` at 256 inputs (40 layers, 5.0 M floats per input): also against the
  uncompressed fit — every layer captured whole (5.1 GB in memory), the same options — made
  once in its own child and cached in ``benchmarks/.cache/wide``. That fit runs through each
  wide layer's full 256-dimensional row space (``factorize/rowspace.py``: the plain fit to
  round-off, checked in ``tests/test_fit_paths.py``); the plain per-block ALS on the full
  blocks took 15 s an iteration here, hours for a fit. ``fms_vs_full`` is the factor match
  score over ``A`` and every block's factors; ``loss_ratio`` the data loss of the analysis'
  factors over that of the uncompressed fit, both measured on the full blocks; ``model_diff``
  ``Σ‖X̂ − X̂_full‖² / Σ‖X̂_full‖²``, how far apart the fitted models ``A Kᵀ`` are, and
  ``span_cos`` the least cosine between the spans of the two ``A``. A second uncompressed
  fit (seed 1, also cached) is compared the same way: the coupled fit of 40 matrix blocks is
  pinned against rotations only by the input's CP block, so equally good fits can have other
  factors (a low FMS) and the same model and span; its line says how much agreement there is
  to have.
* ``resnet18-whole`` at 256 inputs with ``--memory 6G``: the default path when the
  activations fit the budget (held whole, one pass), for its time and memory, and against
  the same uncompressed fit (its 224 px input makes the fit compress the samples and the
  image's sides before refining on all of it, as the sketched path does).
* ``resnet50`` (105 layers, 20.9 M floats per input) and ``vit_small`` (ViT-S/16: 38 layers)
  at 2,000 inputs.
* ``resnet18-scan`` at 500 inputs: the rank scan (R = 1..10, defaults) on the sketched
  capture that ``factorlens rank`` makes, timed apart from the capture (its two passes are
  ``capture_s``); ``ratio`` is the scan's time over the bare forward pass.

One line per model:
``model=… samples=… blocks=… activations_gb=… forward_s=… analyze_s=… ratio=… peak_rss_gb=…
fms_vs_full=… loss_ratio=…`` (and, where layers were sketched, ``sketch_k``, the least and
the median captured energy); the last line ``wide_ratio=<worst ratio> wide_peak_rss_gb=<worst
peak> wide_fms=<resnet18 FMS vs uncompressed> wide_model_diff=<its model_diff> seed_fms=<FMS
between the two uncompressed fits> wide_scan_ratio=<the scan's ratio>``, the worst over the
default ``--memory``, the scan apart. Run on a quiet box: ``.venv/bin/python
benchmarks/bench_wide.py [--models resnet18,resnet50,vit_small] [--no-reference]``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "wide"
RANK = 10
BATCH = 32
#: model -> (builder in factorlens.research.torchvision_layout, inputs, --memory)
MODELS = {
    "resnet18": ("resnet18", 256, None),
    "resnet18-whole": ("resnet18", 256, 6 * 1024**3),
    "resnet50": ("resnet50", 2000, None),
    "vit_small": ("vit_small", 2000, None),
}
#: rank scans: name -> (builder, inputs)
SCANS = {"resnet18-scan": ("resnet18", 500)}


def make_inputs(n: int, path: Path) -> None:
    """Write ``n`` shapes test images upsampled to 224 px (uint8) and labels to ``path``."""
    import torch

    from factorlens.research.synthetic import make_images

    x, y = make_images("shapes", n, 0)
    up = torch.nn.functional.interpolate(torch.from_numpy(x), size=224, mode="bilinear")
    images = (up.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    np.savez(path, images=images, labels=y)


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux: ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# ----------------------------------------------------------------------------- children
def timed_forward(builder: str, data_path: Path, n: int) -> tuple[Any, Any, float]:
    """Load the inputs, build the model; return them and the bare forward pass's seconds.

    The pass runs over the same batches (``BATCH``) the capture uses, without hooks.
    """
    import torch

    from factorlens.capture import _batch_tensor
    from factorlens.data import load_data
    from factorlens.research import torchvision_layout as tvl

    data = load_data(f"npz:{data_path}")
    model = getattr(tvl, builder)().eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, BATCH):
            model(_batch_tensor(data.images, start, start + BATCH))
    return data, model, time.perf_counter() - t0


def run_model(name: str, data_path: Path, out_json: Path, result_dir: Path) -> None:
    """Child: time the bare forward pass and ``analyze``; write figures and keep the result."""
    from factorlens.pipeline import analyze

    builder, n, memory = MODELS[name]
    data, model, forward = timed_forward(builder, data_path, n)
    options = {} if memory is None else {"memory_budget": memory}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = analyze(model, data, out=Path(tmp) / "out", rank=RANK, batch_size=BATCH,
                      progress=False, **options)  # fmt: skip
        seconds = time.perf_counter() - t0
    widths = [int(np.prod(s[1:])) for s in res.block_shapes[1:]]
    figures = {
        "blocks": len(widths),
        "activations_gb": n * sum(widths) * 4 / 1e9,
        "forward_s": forward,
        "analyze_s": seconds,
        "peak_rss_gb": peak_rss_gb(),
        "sketch": res.meta.get("sketch", {}),
    }
    res.save(result_dir)  # for the comparison with the uncompressed fit
    out_json.write_text(json.dumps(figures, default=float))


def run_scan(name: str, data_path: Path, out_json: Path) -> None:
    """Child: time the bare forward pass, the sketched capture and the rank scan apart."""
    from factorlens.rank import estimate_rank
    from factorlens.sketched import capture_sketched

    builder, n = SCANS[name]
    data, model, forward = timed_forward(builder, data_path, n)
    t0 = time.perf_counter()
    store = capture_sketched(model, data, rank=RANK, batch_size=BATCH, progress=False)
    captured = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan = estimate_rank(store, RANK)
    seconds = time.perf_counter() - t0
    figures = {
        "blocks": len(store.names) - 1,
        "forward_s": forward,
        "capture_s": captured,
        "scan_s": seconds,
        "peak_rss_gb": peak_rss_gb(),
        "chosen": scan.chosen,
    }
    out_json.write_text(json.dumps(figures, default=float))


def run_reference(data_path: Path, target: Path, seed: int = 0) -> None:
    """Child: the uncompressed fit of resnet18 on 256 inputs (every block whole), seed ``seed``."""
    from factorlens.data import load_data
    from factorlens.pipeline import factorize_store
    from factorlens.research import torchvision_layout as tvl
    from factorlens.sketched import capture_sketched

    data = load_data(f"npz:{data_path}")
    store = capture_sketched(tvl.resnet18().eval(), data, sketch=0, batch_size=BATCH,
                             progress=False)  # fmt: skip
    t0 = time.perf_counter()
    result = factorize_store(store, RANK, progress=True, random_state=seed)
    result.options["reference_seconds"] = time.perf_counter() - t0
    result.save(target)


def run_compare(data_path: Path, reference: Path, others: list[Path], out_json: Path) -> None:
    """Child: FMS and data-loss ratio of each result against the reference, on full blocks."""
    from factorlens.data import load_data
    from factorlens.factorize import CMTF, CMTFResult, factor_match_score
    from factorlens.factorize.linalg import khatri_rao
    from factorlens.research import torchvision_layout as tvl
    from factorlens.sketched import capture_sketched

    data = load_data(f"npz:{data_path}")
    store = capture_sketched(tvl.resnet18().eval(), data, sketch=0, batch_size=BATCH,
                             progress=False)  # fmt: skip
    blocks = CMTF(RANK).prepare(store)

    def loadings(res: CMTFResult, b) -> np.ndarray:
        """The block's scaled loadings ``K``: its fitted model is ``A Kᵀ``."""
        K = khatri_rao([np.asarray(f, dtype=np.float64) for f in res.factors[b.name]])
        return K * (res.weights[b.name] * math.sqrt(b.norm_sq))

    def data_loss(res: CMTFResult) -> float:
        total, AtA = 0.0, res.A.T @ res.A
        for b in blocks:
            K = loadings(res, b)
            T = b.right(res.A)
            total += b.norm_sq - 2 * float(np.sum(T * K)) + float(np.sum(AtA * (K.T @ K)))
        return total

    def model_diff(one: CMTFResult, two: CMTFResult) -> float:
        """``Σ‖X̂₁ − X̂₂‖² / Σ‖X̂₁‖²`` over the blocks: how far apart the fitted models are."""
        num = den = 0.0
        for b in blocks:
            k1, k2 = loadings(one, b), loadings(two, b)
            m11 = float(np.sum((one.A.T @ one.A) * (k1.T @ k1)))
            m22 = float(np.sum((two.A.T @ two.A) * (k2.T @ k2)))
            num += m11 + m22 - 2 * float(np.sum((one.A.T @ two.A) * (k1.T @ k2)))
            den += m11
        return num / den

    def span_cos(one: np.ndarray, two: np.ndarray) -> float:
        """The least cosine of the principal angles between the spans of two ``A``."""
        q1, q2 = np.linalg.qr(one)[0], np.linalg.qr(two)[0]
        return float(np.linalg.svd(q1.T @ q2, compute_uv=False).min())

    def modes(res: CMTFResult) -> list[np.ndarray]:
        return [res.A] + [np.asarray(f) for n in res.block_names for f in res.factors[n]]

    ref = CMTFResult.load(reference)
    ref_loss = data_loss(ref)
    figures = {}
    for path in others:
        res = CMTFResult.load(path)
        figures[path.name] = {
            "fms_vs_full": float(factor_match_score(modes(ref), modes(res))),
            "loss_ratio": data_loss(res) / ref_loss,
            "model_diff": model_diff(ref, res),
            "span_cos": span_cos(ref.A, res.A),
        }
    out_json.write_text(json.dumps(figures))


# ----------------------------------------------------------------------------- parent
def child(*args: str) -> None:
    """Run this file as a child process with ``args``; fail loudly when it fails."""
    subprocess.run([sys.executable, __file__, *args], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="resnet18,resnet18-whole,resnet50,vit_small,resnet18-scan"
    )
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--no-reference", action="store_true", help="skip the FMS comparison")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "model":
            run_model(rest[0], Path(rest[1]), Path(rest[2]), Path(rest[3]))
        elif kind == "scan":
            run_scan(rest[0], Path(rest[1]), Path(rest[2]))
        elif kind == "reference":
            run_reference(Path(rest[0]), Path(rest[1]), int(rest[2]))
        else:
            run_compare(Path(rest[0]), Path(rest[1]), [Path(p) for p in rest[3:]], Path(rest[2]))
        return 0
    picked = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in picked if m not in MODELS and m not in SCANS]
    if unknown:
        parser.error(
            f"unknown model(s) {', '.join(unknown)}: pick from {', '.join([*MODELS, *SCANS])}"
        )
    names, scans = [m for m in picked if m in MODELS], [m for m in picked if m in SCANS]
    args.cache.mkdir(parents=True, exist_ok=True)
    lines, figures = [], {}
    for name in picked:
        n = (MODELS.get(name) or SCANS[name])[1]
        data = args.cache / f"shapes224-{n}.npz"
        if not data.is_file():
            make_inputs(n, data)
        out = args.cache / f"{name}.json"
        if name in SCANS:
            child("--child", "scan", name, str(data), str(out))
        else:
            child("--child", "model", name, str(data), str(out), str(args.cache / f"{name}-result"))
        figures[name] = json.loads(out.read_text())
    compare: dict[str, dict] = {}
    r18 = [m for m in names if MODELS[m][:2] == ("resnet18", 256)]  # both paths, one reference
    if r18 and not args.no_reference:
        data = args.cache / "shapes224-256.npz"
        # two uncompressed fits, seeds 0 and 1: how far apart two equally good fits are
        reference, other_seed = (args.cache / f"resnet18-uncompressed{s}" for s in ("", "-seed1"))
        for seed, path in enumerate((reference, other_seed)):
            if not (path / "factors.npz").is_file():
                child("--child", "reference", str(data), str(path), str(seed))
        out = args.cache / "compare.json"
        child("--child", "compare", str(data), str(reference), str(out), str(other_seed),
              *[str(args.cache / f"{m}-result") for m in r18])  # fmt: skip
        compare = json.loads(out.read_text())
    for name in names:
        f = figures[name]
        c = compare.get(f"{name}-result", {})
        ratio = f["analyze_s"] / f["forward_s"]
        f["ratio"] = ratio
        line = (
            f"model={name} samples={MODELS[name][1]} blocks={f['blocks']} "
            f"activations_gb={f['activations_gb']:.1f} forward_s={f['forward_s']:.1f} "
            f"analyze_s={f['analyze_s']:.1f} ratio={ratio:.2f} "
            f"peak_rss_gb={f['peak_rss_gb']:.2f} "
            f"fms_vs_full={c['fms_vs_full']:.4f} loss_ratio={c['loss_ratio']:.4f} "
            f"model_diff={c['model_diff']:.2e} span_cos={c['span_cos']:.4f}"
            if c
            else f"model={name} samples={MODELS[name][1]} blocks={f['blocks']} "
            f"activations_gb={f['activations_gb']:.1f} forward_s={f['forward_s']:.1f} "
            f"analyze_s={f['analyze_s']:.1f} ratio={ratio:.2f} "
            f"peak_rss_gb={f['peak_rss_gb']:.2f} fms_vs_full=n/a loss_ratio=n/a"
        )
        sketch = f.get("sketch") or {}
        if sketch:
            captured = sketch.get("captured_energy", {}).values()
            line += (
                f" sketch_k={sketch.get('size')} captured_min={min(captured):.3f} "
                f"captured_median={float(np.median(list(captured))):.3f}"
            )
        lines.append(line)
        print(line, flush=True)
    scan_ratio = math.nan
    for name in scans:
        f = figures[name]
        scan_ratio = f["scan_s"] / f["forward_s"]
        print(
            f"model={name} samples={SCANS[name][1]} blocks={f['blocks']} "
            f"forward_s={f['forward_s']:.1f} capture_s={f['capture_s']:.1f} "
            f"scan_s={f['scan_s']:.1f} ratio={scan_ratio:.2f} "
            f"peak_rss_gb={f['peak_rss_gb']:.2f} chosen_rank={f['chosen']}",
            flush=True,
        )
    default = [m for m in names if m != "resnet18-whole"]
    worst_ratio = max((figures[m]["ratio"] for m in default), default=math.nan)
    worst_rss = max((figures[m]["peak_rss_gb"] for m in default), default=math.nan)
    r18, seeds = compare.get("resnet18-result", {}), compare.get("resnet18-uncompressed-seed1", {})
    if seeds:  # the same measures between the two uncompressed fits: what agreement can be
        print(
            f"model=resnet18-uncompressed-seed1 fms_vs_full={seeds['fms_vs_full']:.4f} "
            f"loss_ratio={seeds['loss_ratio']:.4f} model_diff={seeds['model_diff']:.2e} "
            f"span_cos={seeds['span_cos']:.4f}"
        )
    print(
        f"wide_ratio={worst_ratio:.2f} wide_peak_rss_gb={worst_rss:.2f} "
        f"wide_fms={r18.get('fms_vs_full', math.nan):.4f} "
        f"wide_model_diff={r18.get('model_diff', math.nan):.2e} "
        f"seed_fms={seeds.get('fms_vs_full', math.nan):.4f} wide_scan_ratio={scan_ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
