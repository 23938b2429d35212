"""Benchmark: comparing models in one joint factorization (issue 30).

Planted cases (``factorlens.testing.model_pair_blocks``): an input and two models' three
layers each, on 300 samples with 10 % noise (``--noise``); some components are in both models' layers,
the others in one model's only. Twenty draws cycle through four splits (shared, unique to
the first, unique to the second) = (3, 2, 2), (2, 1, 3), (4, 1, 1), (1, 2, 2); each is fitted
at the planted rank with the defaults (:func:`factorlens.pipeline.compare_store`). A draw
counts as recovered when every planted component, matched to a fitted one by its sample
loadings (Hungarian on |congruence|), is carried by exactly the models that hold it. Five
more draws compare the first model with a copy of itself: every component must be shared
by both or by neither.

Then the time of ``factorlens.pipeline.compare`` on ten checkpoints of one MNIST CNN (the
``steps`` zoo of ``mnistcnn``, step 0 to 470) on 2,000 test images, default layers, rank 10,
in memory (wide layers sketched as ``analyze`` does), with its phases: capture, joint fit,
CKA. Needs MNIST (``../shared/data/mnist``); the zoo is built into
``benchmarks/.cache/zoos/mnist-mnistcnn-steps`` when absent (about a minute). Last line::

    shared_recovery=<a>/<b> self_all_shared=<yes|no> seconds=<planted cases> mnist10_seconds=<s>

Run: ``.venv/bin/python benchmarks/bench_compare.py [--zoo DIR] [--no-mnist]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from factorlens.comparison import component_sharing
from factorlens.factorize.compare import congruence
from factorlens.pipeline import compare, compare_store
from factorlens.testing import memory_store, model_pair_blocks, random_unit

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "mnist"
ZOO = HERE / ".cache" / "zoos" / "mnist-mnistcnn-steps"
SPLITS = [(3, (2, 2)), (2, (1, 3)), (4, (1, 1)), (1, (2, 2))]
N = 300


def planted(draws: int, out: Path, noise: float) -> tuple[int, bool]:
    """Return (draws recovered, every self-comparison all shared)."""
    ok = 0
    for seed in range(draws):
        shared, unique = SPLITS[seed % len(SPLITS)]
        blocks, owners = model_pair_blocks(seed, N=N, shared=shared, unique=unique, noise=noise)
        store = memory_store(blocks, {"models": {"a": "a", "b": "b"}})
        result = compare_store(
            store, out=out / f"p{seed}", rank=len(owners), progress=False, report=False
        )
        sharing = component_sharing(result)
        truth = random_unit(np.random.default_rng(seed), N, len(owners))
        rows, cols = linear_sum_assignment(-np.abs(congruence(truth, result.A)))
        good = all(
            sorted(sharing.carriers(c)) == sorted(owners[r])
            for r, c in zip(rows, cols, strict=True)
        )
        ok += good
        print(
            f"draw {seed:2d} split {shared}/{unique}: {'ok' if good else 'WRONG'} {sharing.kinds}"
        )
    same = True
    for seed in range(5):
        blocks, owners = model_pair_blocks(100 + seed, N=N, noise=noise)
        layers = {k[2:]: v for k, v in blocks.items() if k.startswith("a.")}
        blocks = {"input": blocks["input"], **{f"a.{k}": v for k, v in layers.items()}}
        blocks.update({f"b.{k}": v.copy() for k, v in layers.items()})
        store = memory_store(blocks, {"models": {"a": "a", "b": "b"}})
        result = compare_store(
            store, out=out / f"s{seed}", rank=len(owners), progress=False, report=False
        )
        kinds = component_sharing(result).kinds
        same &= set(kinds) <= {"all", "none"}
        print(f"self {seed}: {kinds}")
    return ok, same


def mnist_checkpoints(zoo: Path, mnist: Path, n: int, out: Path) -> float:
    """Time compare() of the zoo's ten steps checkpoints on ``n`` test images."""
    from factorlens.data import load_data
    from factorlens.research.zoo import build_zoo, load_zoo, zoo_model

    if not (zoo / "zoo.json").is_file():
        build_zoo(f"mnist:{mnist}", zoo, arch="mnistcnn", kinds="steps", progress=False)
    entries = [e for e in load_zoo(zoo) if e["kind"] == "steps"]
    models = {f"step{e['steps']}": zoo_model(e) for e in entries}
    data = load_data(f"mnist:{mnist}").subset(n, random_state=0)
    t0 = time.perf_counter()
    result = compare(models, data, out=out / "mnist10", rank=10, progress=False)
    seconds = time.perf_counter() - t0
    sharing = component_sharing(result)
    print(f"{len(models)} checkpoints, {len(result.block_names)} blocks: {sharing.counts()}")
    phases = result.meta["comparison"]["seconds"]
    print(
        f"seconds: {seconds:.1f} in all; fit {phases['fit']}, CKA {phases['cka']}, capture "
        f"and writing the rest"
    )
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.1, help="relative noise of every block")
    parser.add_argument("--zoo", type=Path, default=ZOO)
    parser.add_argument("--mnist", type=Path, default=SHARED)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--no-mnist", action="store_true", help="only the planted cases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ok, same = planted(args.draws, Path(tmp), args.noise)
        seconds = time.perf_counter() - t0
        line = (
            f"shared_recovery={ok}/{args.draws} self_all_shared={'yes' if same else 'no'} "
            f"seconds={seconds:.1f}"
        )
        if not args.no_mnist:
            if (args.mnist / "train-10k.npz").is_file():
                line += f" mnist10_seconds={mnist_checkpoints(args.zoo, args.mnist, args.n, Path(tmp)):.1f}"
            else:
                print(f"note: no MNIST in {args.mnist}; the ten-checkpoint timing is skipped")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
