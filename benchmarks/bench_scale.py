"""Benchmark: a million inputs, captured sharded on a Dask LocalCluster and factorized at R = 10.

The inputs are the 10,000 MNIST test images tiled with seeded random shifts of up to ±3 px
(made lazily, batch by batch, on the workers: nothing of size N is held anywhere). A small
CNN (two strided convolutions, two dense layers; 2,426 layer features a sample, 3,210 with
the input) is trained for one epoch on train-10k.npz, then:

1. ``capture_sharded`` runs it on ``--n`` inputs on a ``LocalCluster`` of ``--workers``
   single-thread workers, each writing its own rows of one zarr store (raw chunks);
2. ``CMTF(10, compress_rows=K, backend="dask")`` fits input + 4 layers on that cluster: the
   statistics and the noise floor in passes over the store, the fit on the samples
   compressed to K directions, then 5 refining ALS iterations on all rows.

A thread samples the resident memory of this process and all of its children (workers,
nannies, the scheduler) every 0.2 s; the peak of their sum is reported. The store is removed
afterwards (``--keep`` keeps it). Issue 12's target: N = 1,000,000, peak RSS ≤ 4 GB, the whole
run ≤ 30 min on the 2-core box. Last line:
``samples=N peak_rss_gb=X capture_s=Y factorize_s=Z``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from factorlens import CMTF
from factorlens.data import load_data
from factorlens.factorize.distributed import dask_cluster
from factorlens.research.models import accuracy, train_classifier
from factorlens.sharded import capture_sharded

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
LAYERS = ["relu1", "relu2", "relu3", "fc2"]


class SmallCNN(nn.Module):
    """1×28×28 → conv 8@14×14 → conv 16@7×7 → dense 64 → 10 (2,426 layer features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


class ShiftedTiles:
    """``n`` inputs ``(n, 1, 28, 28)``: row i is test image ``i mod 10,000`` shifted by a
    seeded random (dy, dx) in [-3, 3]², zero-filled; rows are made when sliced."""

    PAD = 3

    def __init__(self, images: np.ndarray, n: int, seed: int = 0) -> None:
        self.images = np.pad(images, ((0, 0), (self.PAD, self.PAD), (self.PAD, self.PAD)))
        self.shifts = np.random.default_rng(seed).integers(0, 2 * self.PAD + 1, (n, 2), np.int8)
        self.shape = (int(n), 1, 28, 28)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        out = np.empty((stop - start, 1, 28, 28), np.float32)
        for k, i in enumerate(range(start, stop)):
            dy, dx = self.shifts[i]
            out[k, 0] = self.images[i % len(self.images), dy : dy + 28, dx : dx + 28]
        return out


class PeakMemory:
    """Sample the summed RSS of this process and all its children in a background thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def trained_model(mnist: Path) -> nn.Module:
    """SmallCNN (seed 0) after one epoch on train-10k.npz; prints its test accuracy."""
    train = np.load(mnist / "train-10k.npz")
    torch.manual_seed(0)
    model = train_classifier(
        SmallCNN(), (train["images"][:, None] / 255.0).astype(np.float32), train["labels"],
        epochs=1, seed=0,
    )  # fmt: skip
    test = load_data(f"mnist:{mnist}")
    print(f"SmallCNN, one epoch: test accuracy {accuracy(model, test.images, test.labels):.3f}")
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=1_000_000, help="inputs (default 10^6)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--compress-rows", type=int, default=40)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()
    if not (args.mnist / "train-10k.npz").is_file():
        raise SystemExit(f"MNIST data not found in {args.mnist}; see ../shared/data/README.md")
    t_all = time.perf_counter()
    model = trained_model(args.mnist)
    test = load_data(f"mnist:{args.mnist}")
    tiles = ShiftedTiles((test.images[:, 0] * 255).round().astype(np.uint8) / np.float32(255),
                         args.n)  # fmt: skip
    labels = np.resize(test.labels, args.n)
    where = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
    try:
        with PeakMemory() as memory, dask_cluster(n_workers=args.workers) as client:
            print(f"cluster: {len(client.scheduler_info()['workers'])} workers", flush=True)
            t0 = time.perf_counter()
            store = capture_sharded(
                model, tiles, where / "acts", LAYERS, batch_size=args.batch_size, labels=labels
            )
            capture_s = time.perf_counter() - t0
            gb = sum(store.n_samples * np.prod(store.shape(b)[1:]) * 4 for b in store.names) / 1e9
            print(f"captured {store.n_samples} inputs, {gb:.1f} GB in {capture_s:.0f} s; "
                  f"peak RSS so far {memory.peak / 1e9:.2f} GB", flush=True)  # fmt: skip
            t0 = time.perf_counter()
            fit = CMTF(10, compress_rows=args.compress_rows, backend="dask", random_state=0).fit(
                store
            )
            factorize_s = time.perf_counter() - t0
        result = fit.result_
        print(
            f"R = 10: loss {result.loss:.6f} after refining (compressed fit "
            f"{result.options['compressed_loss']:.6f}); fit per block "
            + ", ".join(f"{k} {v:.3f}" for k, v in result.block_fit.items())
        )
        print(f"whole run {time.perf_counter() - t_all:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    print(
        f"samples={args.n} peak_rss_gb={memory.peak / 1e9:.2f} capture_s={capture_s:.0f} "
        f"factorize_s={factorize_s:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
