"""Benchmark: peak memory of a rank scan and an analysis of a zarr store, streamed or not.

A store of ``N`` samples is written chunk by chunk from planted factors (rank 6): the input
(28×28, a CP tensor) and two layers of 1,000 features (matrices), noise 20 %, 11.1 kB a
sample in float32. For each ``N`` of ``--sizes`` the scan ``estimate_rank(store, 10)`` runs
in a fresh process twice: with a memory budget of 16 MiB (every block is read chunk by
chunk: the halves through their rows, bi-cross-validation through the blocks' products) and
with the default budget of 2 GiB (every block read into memory, as all scans did before).
Then the child analyses the store at the chosen rank with the same budget
(``analyze_store(..., compress_rows=40)``: the fit, ``inputs.npz`` or ``images.npy`` and the
HTML report) and reports its peak resident memory (``ru_maxrss``) and the chosen rank.

Issue 12 asks for peak memory independent of N for a zarr store. What still grows with N
are the scan's factor-sized working arrays (N × (max_rank + 30) float64, a few at a time):
measured, about 4 kB a sample against the data's 11.1 kB. Last line:
``streamed_rss_gb=<at each N> in_memory_rss_gb=<at each N> chosen=<ranks>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RANK = 6
CHUNK = 4096
LAYER_WIDTH = 1000


def write_store(path: Path, n: int, seed: int = 0) -> None:
    """Write the planted store of ``n`` samples to ``path``, one chunk of rows at a time."""
    from factorlens.store import ZarrStore
    from factorlens.testing import random_unit

    rng = np.random.default_rng(seed)
    b_in, c_in = random_unit(rng, 28, RANK), random_unit(rng, 28, RANK)
    loadings = [random_unit(rng, LAYER_WIDTH, RANK) for _ in range(2)]
    store = ZarrStore.create(path, chunk_rows=CHUNK)
    store.create_block("input", (28, 28), "input")
    for k in range(2):
        store.create_block(f"layer{k + 1}", (LAYER_WIDTH,), "layer")
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        A = rng.standard_normal((rows, RANK)) * np.linspace(3, 1, RANK)
        x = np.einsum("nr,ir,jr->nij", A, b_in, c_in)
        store.append("input", _noisy(x, rng))
        for k, B in enumerate(loadings):
            store.append(f"layer{k + 1}", _noisy(A @ B.T, rng))
    store.close()


def _noisy(x: np.ndarray, rng: np.random.Generator, level: float = 0.2) -> np.ndarray:
    noise = rng.standard_normal(x.shape)
    noise *= level * np.linalg.norm(x) / np.linalg.norm(noise)
    return (x + noise).astype(np.float32)


def child(path: str, budget: int) -> None:
    """Scan the store at ``path``, analyse it at the chosen rank with its report, and print
    JSON: peak RSS (bytes), chosen rank, seconds of the scan and of the analysis."""
    from factorlens import estimate_rank
    from factorlens.pipeline import analyze_store
    from factorlens.store import open_store

    store = open_store(path)
    start = time.perf_counter()
    scan = estimate_rank(store, 10, random_state=0, memory_budget=budget)
    scan_s = time.perf_counter() - start
    out = Path(path).with_name(Path(path).name + "-analysis")
    start = time.perf_counter()
    analyze_store(
        store, out=out, rank=scan.chosen, memory_budget=budget, compress_rows=40, progress=False
    )
    analysis_s = time.perf_counter() - start
    shutil.rmtree(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"rss": peak, "chosen": scan.chosen, "s": scan_s, "analysis_s": analysis_s}))


def run(path: Path, budget: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--budget", str(budget)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,100000", help="comma-separated N")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.budget)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    streamed, in_memory, chosen = [], [], []
    root = Path(tempfile.mkdtemp(prefix="factorlens-bench-ooc-"))
    try:
        for n in sizes:
            path = root / f"n{n}"
            write_store(path, n)
            gb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
            for label, budget, sink in (
                ("streamed", 16 * 1024**2, streamed),
                ("in memory", 2 * 1024**3, in_memory),
            ):
                got = run(path, budget)
                sink.append(got["rss"] / 1e9)
                chosen.append(got["chosen"])
                print(
                    f"N={n} store={gb:.2f} GB {label}: peak RSS {got['rss'] / 1e9:.2f} GB, "
                    f"chosen {got['chosen']}, scan {got['s']:.0f} s, analysis and report "
                    f"{got['analysis_s']:.0f} s",
                    flush=True,
                )
            shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    fmt = "/".join
    print(
        f"streamed_rss_gb={fmt(f'{v:.2f}' for v in streamed)} "
        f"in_memory_rss_gb={fmt(f'{v:.2f}' for v in in_memory)} "
        f"chosen={fmt(str(c) for c in chosen)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
