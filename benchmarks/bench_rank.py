"""Benchmark: the rank scan R = 1..20 on 2,000 MNIST test images, the input and four layers.

Trains MnistCNN (seed 0, 2 epochs on train-10k.npz), captures the input and four layers
(``mnist_blocks.LAYERS``) on 2,000 test images and times ``factorlens.estimate_rank`` for
R = 1..20 with its defaults (every fit on the compressed matrix blocks, run compiled, the
seven warm-start chains in one thread per core), then, as the baseline in the same process, the
uncompressed scan (``compress=False``, chains in three threads: the default before
compression). Target (issue 12): 5 s. Last line:
``scan_seconds=<s> chosen_rank=<R> uncompressed_seconds=<s> uncompressed_rank=<R>
speedup=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from factorlens.rank import estimate_rank
from mnist_blocks import SHARED, trained_mnist_store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--max-rank", type=int, default=20)
    parser.add_argument("--no-baseline", action="store_true", help="skip the uncompressed scan")
    args = parser.parse_args()
    store = trained_mnist_store(args.mnist, args.n)
    t0 = time.perf_counter()
    scan = estimate_rank(store, args.max_rank)
    seconds = time.perf_counter() - t0
    print(scan.table())
    line = f"scan_seconds={seconds:.1f} chosen_rank={scan.chosen}"
    if not args.no_baseline:
        t0 = time.perf_counter()
        plain = estimate_rank(store, args.max_rank, compress=False, n_jobs=3)
        base = time.perf_counter() - t0
        print(plain.table())
        line += (
            f" uncompressed_seconds={base:.1f} uncompressed_rank={plain.chosen}"
            f" speedup={base / seconds:.2f}"
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
