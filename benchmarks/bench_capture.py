"""Benchmark: capture against the bare forward pass, MnistCNN on 10,000 MNIST test images.

Builds MnistCNN (seed 0; untrained weights cost the same to run) and, in one process on one
torch thread, times (a) the bare forward pass over the same batches of 256 (inputs converted
as capture converts them), then (b) ``capture`` of the default layers (9 for MnistCNN) into
a new zarr store in a temporary folder, and (c) the same capture with float16 chunks
(``store_dtype="float16"``), (b) and (c) in turn, best of ``--repeat`` each; then the largest
relative error of the float16 values against the float32 ones on 1,000 inputs. Target
(issue 12): ≤ 1.2. Last line: ``capture_over_forward=<x> capture_s=<s> forward_s=<s>
layers=<n> float16_over_forward=<x> float16_rel_error=<e>``.
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


#: the store's number types, float32 (the default) first
DTYPES = ("float32", "float16")


def timed_capture(model: torch.nn.Module, data, layers: list[str], dtype: str) -> float:
    """Seconds for ``capture`` into a new zarr store of ``dtype`` chunks (then removed)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        capture(model, data, layers, store=Path(tmp) / "acts", progress=False, store_dtype=dtype)
        return time.perf_counter() - t0


def float16_error(model: torch.nn.Module, data, layers: list[str], n: int = 1000) -> float:
    """Return the largest ``|float16 − float32| / |float32|`` over the values of ``n`` inputs.

    Values below float16's smallest normal number (6.1e-5) are left out: their error is
    absolute (at most 3e-8), not relative.
    """
    sub = data.subset(n, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        full = capture(model, sub, layers, store=Path(tmp) / "f32", progress=False)
        half = capture(
            model, sub, layers, store=Path(tmp) / "f16", progress=False, store_dtype="float16"
        )
        worst = 0.0
        for name in full.names:
            x, y = full.block(name)[:], half.block(name)[:]
            normal = np.abs(x) >= np.finfo(np.float16).tiny
            if normal.any():
                worst = max(worst, float(np.max(np.abs(y - x)[normal] / np.abs(x[normal]))))
    return worst


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
        seconds = {dtype: [] for dtype in DTYPES}
        for _ in range(args.repeat):  # the two number types in turn, against the box's drift
            for dtype in DTYPES:
                seconds[dtype].append(timed_capture(model, data, layers, dtype))
    best = {dtype: min(times) for dtype, times in seconds.items()}
    error = float16_error(model, data, layers)
    print(f"{len(layers)} layers: {', '.join(layers)}; {args.n} inputs")
    print(
        f"float16 chunks: {best['float16']:.2f} s, largest error relative to the value "
        f"{error:.2e} (stated bound 2^-11 = {2.0**-11:.2e})"
    )
    print(
        f"capture_over_forward={best['float32'] / forward:.2f} capture_s={best['float32']:.2f} "
        f"forward_s={forward:.2f} layers={len(layers)} "
        f"float16_over_forward={best['float16'] / forward:.2f} float16_rel_error={error:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
