"""Benchmark: capture against the bare forward pass, MnistCNN on 10,000 MNIST test images.

Builds MnistCNN (seed 0; untrained weights cost the same to run) and, in one process on one
torch thread, times (a) the bare forward pass over the same batches of 256 (inputs converted
as capture converts them), then (b) ``capture`` of the default layers (9 for MnistCNN) into
a new zarr store in a temporary folder, best of ``--repeat`` each. Target (issue 12): ≤ 1.2.
Last line: ``capture_over_forward=<x> capture_s=<s> forward_s=<s> layers=<n>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from factorlens.capture import _batch_tensor, capture, default_layers
from factorlens.data import load_data
from factorlens.research.models import MnistCNN, torch_threads

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def bare_forward(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> float:
    """Seconds for the forward pass over all batches (no hooks, no copies kept)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(_batch_tensor(images, start, start + batch_size))
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (args.mnist / "t10k-images-idx3-ubyte.gz").is_file() and not any(
        args.mnist.glob("t10k-images*")
    ):
        raise SystemExit(f"MNIST data not found in {args.mnist}; see ../shared/data/README.md")
    data = load_data(f"mnist:{args.mnist}").subset(args.n, random_state=0)
    torch.manual_seed(0)
    model = MnistCNN().eval()
    layers = default_layers(model)
    with torch_threads(1):
        forward = min(bare_forward(model, data.images, 256) for _ in range(args.repeat))
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                capture(model, data, layers, store=Path(tmp) / "acts", progress=False)
                times.append(time.perf_counter() - t0)
    seconds = min(times)
    print(f"{len(layers)} layers: {', '.join(layers)}; {args.n} inputs")
    print(
        f"capture_over_forward={seconds / forward:.2f} capture_s={seconds:.2f} "
        f"forward_s={forward:.2f} layers={len(layers)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
