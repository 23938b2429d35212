"""Benchmark: the engine and the capture on a CUDA GPU against the CPU, in one run.

The same set-up as ``bench_factorize.py`` (MnistCNN trained on train-10k.npz, the input and
four layers on ``--n`` MNIST test images): ``CMTF(10)`` fitted once on the CPU and once with
``device="cuda"`` (the same start, ``n_init=1``, ``check_fewer=False``), and the capture of
the same layers timed on both devices. Prints the seconds, the losses and the ratios; last
line: ``gpu_over_cpu_fit=X gpu_over_cpu_capture=Y loss_ratio=Z`` (ratios of seconds, so
below 1 is faster on the GPU; loss_ratio is the GPU fit's loss over the CPU fit's).

Without a CUDA device it says so on stderr and exits with status 3: no figure is made up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from factorlens.capture import capture
from factorlens.data import load_data
from factorlens.factorize import CMTF
from mnist_blocks import LAYERS, SHARED, trained_mnist, trained_mnist_store


def timed(fn):
    """Return ``(seconds, fn())``, with CUDA work finished before the clock stops."""
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=10000, help="test inputs (default 10,000)")
    parser.add_argument("--rank", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: bench_gpu.py measures nothing on a CPU-only machine",
              file=sys.stderr)  # fmt: skip
        return 3
    net = trained_mnist(args.mnist)
    store = trained_mnist_store(args.mnist, args.n, model=net)
    opts = {"random_state": 0, "n_init": 1, "check_fewer": False}
    CMTF(args.rank, device="cuda", n_iter_max=2, **opts).fit(store)  # CUDA start-up, untimed
    cpu_s, cpu = timed(lambda: CMTF(args.rank, **opts).fit(store).result_)
    gpu_s, gpu = timed(lambda: CMTF(args.rank, device="cuda", **opts).fit(store).result_)
    print(f"fit R={args.rank}: cpu {cpu_s:.2f} s (loss {cpu.loss:.6g}), "
          f"cuda {gpu_s:.2f} s (loss {gpu.loss:.6g})")  # fmt: skip
    test = load_data(f"mnist:{args.mnist}").subset(args.n, random_state=0)
    cap_cpu, _ = timed(lambda: capture(net, test, LAYERS, progress=False))
    cap_gpu, _ = timed(lambda: capture(net, test, LAYERS, device="cuda", progress=False))
    print(f"capture of {args.n} inputs: cpu {cap_cpu:.2f} s, cuda {cap_gpu:.2f} s")
    print(
        f"gpu_over_cpu_fit={gpu_s / cpu_s:.3f} gpu_over_cpu_capture={cap_gpu / cap_cpu:.3f} "
        f"loss_ratio={gpu.loss / cpu.loss:.5f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
