"""Model zoos: checkpoints of one architecture with known test accuracy.

They are for judging label-free training-quality scores.

:func:`build_zoo` trains, seeded and reproducibly, up to three kinds of checkpoints:

* ``steps`` — one run from initialisation to convergence, saved at step 0 and at roughly
  log-spaced steps (MNIST: up to 470 steps ≈ 3 epochs of 10,000 images; digits: 300 steps ≈ 15
  epochs of 1,300 images, as the demo trains);
* ``noise`` — 0, 20, 40, 60, 80, 100 % of the training labels replaced by uniformly random labels
  (fixed seed; a random label equals the true one 1 time in 10), each trained as many steps as the
  ``steps`` run;
* ``data`` — nested random subsets of the training set (MNIST 30 … 10,000 images, digits 20 …
  1,300), each trained as many steps;
* ``width`` — the architecture at other widths (first conv 4, 8, 32 channels beside the default
  16), each trained as many steps on the full data: a capacity sweep at a fixed budget.

All runs start from the same seeded initialisation and draw their mini-batches from the same
seeded generator, so a checkpoint is reproducible bit for bit (training runs on one CPU thread).
Runs with identical settings (the last ``steps`` checkpoint, 0 % noise and the full data set)
are trained once and saved under each kind.

Data: ``glyphs`` and ``shapes`` (:mod:`factorlens.research.synthetic`, made in code) train on
10,000 images drawn from the seed and measure accuracy on the domain's fixed 2,000 test images;
``mnist:DIR`` trains on ``DIR/train-10k.npz`` (else the first 10,000 images of the IDX train
split, shuffled by the seed) and measures accuracy on the 10,000 MNIST test images; ``digits``
trains on the first 1,300 of scikit-learn's digits shuffled by the seed and measures accuracy on
the other 497, exactly as :mod:`factorlens.research.demo` splits them.

Layout of a zoo directory::

    zoo.json                 list of checkpoint entries (see ENTRY_FIELDS), written last
    steps/step-000000.pt ... torch.save(model.state_dict(), path)
    noise/noise-020.pt ...
    data/n-01000.pt ...
    width/width-04.pt ...
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.data import ImageData, digits_split, load_data
from factorlens.errors import FactorlensError, close_matches
from factorlens.output import atomic_write_text
from factorlens.research.models import (
    BNGapCNN,
    DeepBNGapCNN,
    DigitsCNN,
    MnistCNN,
    SmallResNet,
    accuracy,
    torch_threads,
)

__all__ = [
    "ARCHS",
    "ENTRY_FIELDS",
    "KINDS",
    "MODEL_MODULE",
    "STEP_GROWTH",
    "ZOO_JSON",
    "ZooPlan",
    "build_zoo",
    "default_arch",
    "load_zoo",
    "model_class",
    "model_spec",
    "parse_kinds",
    "zoo_model",
    "zoo_plan",
    "zoo_test_data",
]

ZOO_JSON = "zoo.json"
KINDS = ("steps", "noise", "data", "width")
#: the kinds a zoo builds when none are given
DEFAULT_KINDS = ("steps", "noise", "data")
#: the architecture's default width (first conv channels), the reference of the width sweep
BASE_WIDTH = 16
#: beyond a plan's schedule, a longer run's ``steps`` checkpoints are this factor apart
STEP_GROWTH = 1.6
#: synthetic domains a zoo can train on (factorlens.research.synthetic)
SYNTHETIC = ("glyphs", "shapes")

#: CLI name -> model class (each built with no arguments, input (N, 1, H, W), 10 classes).
ARCHS: dict[str, type[nn.Module]] = {
    "mnistcnn": MnistCNN,
    "digitscnn": DigitsCNN,
    "bngap": BNGapCNN,
    "deepbngap": DeepBNGapCNN,
    "resnet": SmallResNet,
}
#: the only input size an architecture accepts (None: any H, W >= 8).
_FIXED_SIZE: dict[str, tuple[int, int] | None] = {
    "mnistcnn": (28, 28),
    "digitscnn": (8, 8),
    "bngap": None,
    "deepbngap": None,
    "resnet": None,
}
#: architectures that take colour (``in_channels``); the others are grayscale only
_ANY_CHANNELS = ("bngap", "deepbngap", "resnet")

ENTRY_FIELDS = (
    "checkpoint",  # path relative to the zoo directory, "<kind>/<name>.pt"
    "kind",  # "steps" | "noise" | "data" | "width"
    "arch",  # a key of ARCHS
    "model",  # informational: "factorlens.research.models:<Class>" (see model_class)
    "dataset",  # the data SPEC the zoo was built from ("digits", "mnist:/abs/dir")
    "test_accuracy",  # in [0, 1], on the held-out test images
    "steps",  # optimizer steps taken
    "label_noise",  # fraction of training labels replaced by uniform random labels
    "n_train",  # training images used
    "seed",
)

#: the module of the reference models, as an entry's ``model`` field names it
MODEL_MODULE = "factorlens.research.models"
#: module paths of zoos written before the reference models moved -> where they live now
_MOVED_MODULES = {"factorlens.models": MODEL_MODULE}

N_CLASSES = 10
DIGITS_TRAIN = 1300  # the same split as factorlens.research.demo (data.digits_split)
MNIST_TRAIN = 10_000


@dataclass(frozen=True)
class ZooPlan:
    """What a zoo trains.

    The ``steps`` schedule (its last entry is every run's length), the label noise fractions,
    the training-set sizes, the widths of the ``width`` sweep, and the optimizer settings
    (Adam, cross-entropy).
    """

    step_schedule: tuple[int, ...]
    noise_levels: tuple[float, ...]
    n_trains: tuple[int, ...]
    batch_size: int
    lr: float
    widths: tuple[int, ...] = (4, 8, 16, 32)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of every run (the last checkpoint of the ``steps`` schedule)."""
        return self.step_schedule[-1]

    def with_steps(self, steps: int) -> ZooPlan:
        """Return this plan with every run ``steps`` optimizer steps long.

        The ``steps`` kind keeps the schedule's points below ``steps`` and ends at ``steps``;
        beyond the schedule's last point it saves every ×``STEP_GROWTH`` steps (a longer
        run for a domain whose plateau comes later keeps the checkpoints log-spaced).
        """
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
            raise FactorlensError(f"the steps must be a positive integer, got {steps!r}")
        points = [s for s in self.step_schedule if s < steps]
        nxt = round(points[-1] * STEP_GROWTH)
        while points[-1] >= self.step_schedule[-1] and nxt < steps:
            points.append(nxt)
            nxt = round(nxt * STEP_GROWTH)
        return replace(self, step_schedule=(*points, int(steps)))


_PLANS = {
    ("mnist", False): ZooPlan(
        step_schedule=(0, 5, 10, 20, 40, 70, 120, 200, 300, 470),
        noise_levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        n_trains=(30, 100, 300, 1000, 3000, 10_000),
        batch_size=64,
        lr=1e-3,
    ),
    ("mnist", True): ZooPlan(
        step_schedule=(0, 10, 30),
        noise_levels=(0.0, 1.0),
        n_trains=(300, 10_000),
        batch_size=64,
        lr=1e-3,
    ),
    ("digits", False): ZooPlan(
        step_schedule=(0, 5, 10, 20, 40, 70, 120, 200, 300),
        noise_levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        n_trains=(20, 50, 100, 300, 650, 1300),
        batch_size=64,
        lr=2e-3,
    ),
    ("digits", True): ZooPlan(
        step_schedule=(0, 10, 40),
        noise_levels=(0.0, 1.0),
        n_trains=(100, 1300),
        batch_size=64,
        lr=2e-3,
    ),
}
# one plan for both synthetic domains; 2,500 steps is a budget, not a plateau: accuracy still
# rises there (and BN-GAP on shapes levels off near 0.34; see benchmarks/RESULTS.md)
for _name in SYNTHETIC:
    _PLANS[(_name, False)] = ZooPlan(
        step_schedule=(0, 10, 30, 60, 120, 250, 500, 900, 1500, 2500),
        noise_levels=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        n_trains=(100, 300, 1000, 3000, 10_000),
        batch_size=64,
        lr=2e-3,
    )
    _PLANS[(_name, True)] = ZooPlan(  # quick zoos for tests: a few checkpoints, tens of steps
        step_schedule=(0, 10, 30),
        noise_levels=(0.0, 1.0),
        n_trains=(100, 300),
        batch_size=32,
        lr=2e-3,
        widths=(4, 16),
    )


def zoo_plan(dataset: str, quick: bool = False) -> ZooPlan:
    """Return the plan for ``dataset`` (mnist, digits, glyphs, shapes).

    ``quick`` gives a tiny zoo for tests.
    """
    try:
        return _PLANS[(dataset, bool(quick))]
    except KeyError:
        raise FactorlensError(
            f"no zoo plan for dataset {dataset!r}; use mnist, digits, glyphs or shapes"
        ) from None


def default_arch(data: str) -> str:
    """Return the architecture for a data SPEC.

    mnistcnn for mnist:DIR (the paper's set-up), digitscnn for digits, bngap for the
    synthetic domains.
    """
    name = data.strip().lower()
    if name in SYNTHETIC:
        return "bngap"
    return "digitscnn" if name == "digits" else "mnistcnn"


def parse_kinds(kinds: str | Sequence[str] = DEFAULT_KINDS) -> tuple[str, ...]:
    """``"steps,noise"`` or a sequence -> a tuple of known kinds in canonical order, no repeats."""
    items = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
    items = [k for k in items if k]
    if not items:
        raise FactorlensError(
            f"no zoo kinds given; use a comma-separated subset of {','.join(KINDS)}"
        )
    for k in items:
        if k not in KINDS:
            raise FactorlensError(
                f"unknown zoo kind {k!r}{close_matches(k, list(KINDS))}; use a comma-separated "
                f"subset of {','.join(KINDS)}"
            )
    return tuple(k for k in KINDS if k in items)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class _Split:
    dataset: str  # "mnist" | "digits" | "glyphs" | "shapes"
    spec: str  # the normalised data SPEC recorded in zoo.json
    x_train: np.ndarray  # (n, 1, H, W) float32 in [0, 1], already in the seeded random order
    y_train: np.ndarray  # (n,) int64
    test: ImageData  # labelled held-out images


def _parse_data(data: str) -> tuple[str, Path | None]:
    if not isinstance(data, str) or not data.strip():
        raise FactorlensError("empty `data`; use digits, glyphs, shapes or mnist:DIR")
    text = data.strip()
    if text.lower() in ("digits", *SYNTHETIC):
        return text.lower(), None
    scheme, sep, rest = text.partition(":")
    if scheme.lower() != "mnist" or not sep or not rest:
        raise FactorlensError(
            f"zoos are built from digits, glyphs, shapes or mnist:DIR, got {data!r}; use "
            "`data` digits, glyphs, shapes or mnist:DIR (the folder holding train-10k.npz and "
            "the t10k IDX files)"
        )
    _head, colon, tail = rest.rpartition(":")
    if colon and tail.lower() in ("train", "test"):
        raise FactorlensError(
            f"give the MNIST folder without a split ({data!r}); the zoo trains on the training "
            "images and measures accuracy on the test split itself: `data` mnist:DIR"
        )
    directory = Path(rest).expanduser()
    if not directory.is_dir():
        raise FactorlensError(f"MNIST folder {directory} does not exist; check `data` mnist:DIR")
    return "mnist", directory.resolve()


def _digits_split(seed: int) -> _Split:
    x_train, y_train, test = digits_split(seed, DIGITS_TRAIN)
    return _Split("digits", "digits", x_train, y_train, test)


def _synthetic_split(domain: str, seed: int) -> _Split:
    from factorlens.research.synthetic import synthetic_split

    x_train, y_train, _x, _y = synthetic_split(domain, seed)
    return _Split(domain, domain, np.array(x_train), np.array(y_train), load_data(domain))


def _split(dataset: str, directory: Path | None, seed: int) -> _Split:
    """Return the training images and the labelled test images of a zoo's data."""
    if dataset == "digits":
        return _digits_split(seed)
    if dataset in SYNTHETIC:
        return _synthetic_split(dataset, seed)
    assert directory is not None
    return _mnist_split(directory, seed)


def _mnist_test(directory: Path) -> ImageData:
    test = load_data(f"mnist:{directory}")
    if test.labels is None:
        raise FactorlensError(
            f"{directory} has no MNIST test labels (t10k-labels-idx1-ubyte[.gz]); the zoo needs "
            "them to measure test accuracy"
        )
    return test


def _mnist_split(directory: Path, seed: int) -> _Split:
    npz = directory / "train-10k.npz"
    if npz.is_file():
        train = load_data(f"npz:{npz}")
    else:
        try:
            train = load_data(f"mnist:{directory}:train")
        except FactorlensError as exc:
            raise FactorlensError(
                f"no MNIST training images in {directory}: put train-10k.npz or the "
                f"train-images-idx3-ubyte[.gz] and train-labels files there ({exc})"
            ) from None
    if train.labels is None:
        raise FactorlensError(f"the MNIST training images in {directory} have no labels")
    if train.images.shape[1:] != (1, 28, 28):
        raise FactorlensError(
            f"the MNIST training images in {directory} have shape {train.images.shape[1:]}, "
            "expected 1×28×28"
        )
    order = np.random.default_rng(seed).permutation(train.n_samples)[:MNIST_TRAIN]
    return _Split(
        "mnist",
        f"mnist:{directory}",
        np.ascontiguousarray(train.images[order]),
        train.labels[order].copy(),
        _mnist_test(directory),
    )


def _noisy_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Replace ``round(fraction * n)`` labels, chosen by the seed, with uniform random classes.

    The chosen positions and the random labels are fixed by the seed, so the noisy sets are
    nested: 40 % noise replaces the 20 % set's labels and 20 % more.
    """
    rng = np.random.default_rng([seed, 1])
    n: int = labels.shape[0]
    where = rng.permutation(n)
    random_labels = rng.integers(0, N_CLASSES, n)
    k = round(fraction * n)
    out = labels.copy()
    out[where[:k]] = random_labels[where[:k]]
    return out


def zoo_test_data(entry: dict[str, Any], data: str | None = None) -> ImageData:
    """Return the labelled held-out test images of a zoo entry.

    They are the images its accuracy was measured on.

    ``data`` overrides the entry's ``dataset`` SPEC (e.g. ``mnist:DIR`` when MNIST moved).
    """
    spec = data if data is not None else entry.get("dataset")
    if not isinstance(spec, str):
        raise FactorlensError("zoo entry has no 'dataset'; pass the data SPEC explicitly")
    dataset, directory = _parse_data(spec)
    if directory is None:
        return _split(dataset, None, int(entry.get("seed", 0))).test
    return _mnist_test(directory)


# --------------------------------------------------------------------------------------------
# training


def _train_steps(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    save_at: Sequence[int] = (),
    on_save: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train with Adam + cross-entropy for exactly ``steps`` mini-batches.

    Epochs are reshuffled by a generator seeded with ``seed``; ``on_save(step, model)`` is
    called (model in eval mode) at ``save_at``.
    """
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    n = xt.shape[0]
    if n == 0:
        raise FactorlensError("no training images; give at least one")
    wanted = set(save_at)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def save(step: int) -> None:
        if on_save is not None and step in wanted:
            model.eval()
            on_save(step, model)

    save(0)
    order = torch.empty(0, dtype=torch.int64)
    pos = 0
    for step in range(1, steps + 1):
        if pos >= order.numel():
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        model.train()
        loss = loss_fn(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        save(step)
    return model.eval()


def arch_kwargs(arch: str, in_channels: int = 1, width: int = BASE_WIDTH) -> dict[str, int]:
    """Return the constructor arguments of ``ARCHS[arch]`` for an input and a width.

    For an input with ``in_channels`` channels at ``width``; only what differs from the
    class's defaults, so old zoos read unchanged.
    """
    kwargs: dict[str, int] = {}
    if in_channels != 1:
        kwargs["in_channels"] = int(in_channels)
    if width != BASE_WIDTH:
        kwargs["width"] = int(width)
    return kwargs


def _new_model(arch: str, seed: int, **kwargs: int) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[arch](**kwargs)


def _check_arch(arch: str, split: _Split) -> None:
    if arch not in ARCHS:
        raise FactorlensError(
            f"unknown architecture {arch!r}{close_matches(arch, list(ARCHS))}; use one of "
            f"{', '.join(ARCHS)}"
        )
    channels = int(split.test.images.shape[1])
    if channels != 1 and arch not in _ANY_CHANNELS:
        raise FactorlensError(
            f"`arch` {arch} takes grayscale images but {split.spec} has {channels} channels; "
            f"use `arch` {' or '.join(_ANY_CHANNELS)}"
        )
    size = tuple(split.test.images.shape[2:])
    fixed = _FIXED_SIZE[arch]
    if fixed is not None and size != fixed:
        fits = [a for a, s in _FIXED_SIZE.items() if s is None or s == size]
        raise FactorlensError(
            f"`arch` {arch} needs {fixed[0]}×{fixed[1]} images but {split.spec} has "
            f"{size[0]}×{size[1]}; use `arch` {' or '.join(fits)}"
        )


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FactorlensError(f"`out` {out} exists and is not a folder; choose another `out`")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            what = "a zoo" if (out / ZOO_JSON).exists() else "other files"
            raise FactorlensError(
                f"`out` {out} already holds {what}; pass `overwrite=True` to replace it or "
                "choose another `out`"
            )
        # replace only what a zoo writes
        (out / ZOO_JSON).unlink(missing_ok=True)
        for kind in KINDS:
            folder = out / kind
            if folder.is_dir():
                for f in folder.glob("*.pt"):
                    f.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FactorlensError(
            f"cannot create `out` {out} ({exc.strerror}); choose another `out`"
        ) from None


def build_zoo(
    data: str,
    out: str | Path,
    *,
    arch: str | None = None,
    kinds: str | Sequence[str] = DEFAULT_KINDS,
    seed: int = 0,
    quick: bool = False,
    steps: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train a zoo of ``arch`` on ``data`` into ``out``.

    An existing non-empty ``out`` is refused unless ``overwrite`` (which replaces only zoo
    files). Training runs on one CPU thread; progress lines go to stderr.

    Parameters
    ----------
    data : str
        The data SPEC: ``"digits"``, ``"glyphs"``, ``"shapes"`` or ``"mnist:DIR"``.
    out : str or pathlib.Path
        The zoo directory.
    arch : str, optional
        A key of :data:`ARCHS` (default: :func:`default_arch`).
    kinds : str or sequence of str
        A subset of ``steps``, ``noise``, ``data``, ``width`` (default the first three).
    seed : int
        Seeds the training data's draw, the initialisation, the batches and the label noise.
    quick : bool
        Train a tiny zoo (a few checkpoints, tens of steps) for tests.
    steps : int, optional
        Train every run this many optimizer steps instead of the plan's
        (:meth:`ZooPlan.with_steps`): for a domain or an architecture whose accuracy is still
        rising at the end of the plan.
    progress : bool
        Print progress lines to stderr.
    overwrite : bool
        Replace the zoo files in an existing ``out``.

    Returns
    -------
    pathlib.Path
        The path of its ``zoo.json``.
    """
    dataset, directory = _parse_data(data)
    kinds_t = parse_kinds(kinds)
    arch = arch or default_arch(data)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise FactorlensError(f"the seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if arch not in ARCHS:
        raise FactorlensError(
            f"unknown architecture {arch!r}{close_matches(arch, list(ARCHS))}; use one of "
            f"{', '.join(ARCHS)}"
        )
    out = Path(out)
    plan = zoo_plan(dataset, quick)
    if steps is not None:
        plan = plan.with_steps(steps)
    split = _split(dataset, directory, seed)
    _check_arch(arch, split)
    in_channels = int(split.test.images.shape[1])
    _prepare_out(out, overwrite)
    assert split.test.labels is not None
    test_x, test_y = split.test.images, split.test.labels
    n_full = split.x_train.shape[0]

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    entries: list[dict[str, Any]] = []
    # (label_noise, n_train, width) -> (final state dict, test accuracy): identical runs train once
    finished: dict[tuple[float, int, int], tuple[dict[str, torch.Tensor], float]] = {}
    t_start = time.perf_counter()

    def record(
        kind: str,
        name: str,
        state,
        acc: float,
        steps: int,
        noise: float,
        n: int,
        width: int = BASE_WIDTH,
    ) -> None:
        rel = Path(kind) / f"{name}.pt"
        (out / kind).mkdir(exist_ok=True)
        torch.save(state, out / rel)
        entries.append(
            {
                "checkpoint": rel.as_posix(),
                "kind": kind,
                "arch": arch,
                "arch_kwargs": arch_kwargs(arch, in_channels, width),
                "width": int(width),
                "model": f"{MODEL_MODULE}:{ARCHS[arch].__name__}",
                "dataset": split.spec,
                "test_accuracy": float(acc),
                "steps": int(steps),
                "label_noise": float(noise),
                "n_train": int(n),
                "seed": seed,
                "batch_size": plan.batch_size,
                "lr": plan.lr,
                "n_test": int(test_x.shape[0]),
            }
        )
        log(
            f"  {rel.as_posix():<24} test accuracy {acc:.4f}  "
            f"({time.perf_counter() - t_start:.0f} s)"
        )

    def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def run(
        noise: float, n: int, width: int = BASE_WIDTH, save_at=(), on_save=None
    ) -> tuple[dict, float]:
        key = (noise, n, width)
        if key in finished and not save_at:
            return finished[key]
        labels = split.y_train[:n] if noise == 0 else _noisy_labels(split.y_train, noise, seed)[:n]
        model = _new_model(arch, seed, **arch_kwargs(arch, in_channels, width))
        _train_steps(
            model,
            split.x_train[:n],
            labels,
            steps=plan.total_steps,
            batch_size=plan.batch_size,
            lr=plan.lr,
            seed=seed,
            save_at=save_at,
            on_save=on_save,
        )
        result = (state_of(model), accuracy(model, test_x, test_y))
        finished[key] = result
        return result

    log(
        f"building a {'quick ' if quick else ''}{arch} zoo on {split.spec} "
        f"({n_full} training, {test_x.shape[0]} test images): {', '.join(kinds_t)}"
    )
    with torch_threads(1):
        if "steps" in kinds_t:

            def on_save(step: int, model: nn.Module) -> None:
                acc = accuracy(model, test_x, test_y)
                record("steps", f"step-{step:06d}", state_of(model), acc, step, 0.0, n_full)

            run(0.0, n_full, save_at=plan.step_schedule, on_save=on_save)
        if "noise" in kinds_t:
            for noise in plan.noise_levels:
                state, acc = run(noise, n_full)
                pct = round(100 * noise)
                record("noise", f"noise-{pct:03d}", state, acc, plan.total_steps, noise, n_full)
        if "data" in kinds_t:
            for n in plan.n_trains:
                n_used = min(n, n_full)
                state, acc = run(0.0, n_used)
                record("data", f"n-{n_used:05d}", state, acc, plan.total_steps, 0.0, n_used)
        if "width" in kinds_t:
            for width in plan.widths:
                state, acc = run(0.0, n_full, width)
                steps, n = plan.total_steps, n_full
                record("width", f"width-{width:02d}", state, acc, steps, 0.0, n, width)

    target = out / ZOO_JSON
    atomic_write_text(target, json.dumps(entries, indent=1) + "\n")
    log(f"zoo of {len(entries)} checkpoints in {time.perf_counter() - t_start:.1f} s: {target}")
    return target


# --------------------------------------------------------------------------------------------
# reading a zoo


def model_spec(spec: str) -> str:
    """Return a zoo entry's ``model`` field (``"module:Class"``) under the current module path.

    Zoos written before the reference models moved to :mod:`factorlens.research.models` name
    ``factorlens.models:<Class>``; that becomes ``factorlens.research.models:<Class>``. Other
    specs are returned unchanged.
    """
    module, colon, name = str(spec).partition(":")
    return f"{_MOVED_MODULES.get(module, module)}{colon}{name}"


def model_class(spec: str) -> type[nn.Module]:
    """Return the reference model class a zoo entry's ``model`` field names.

    ``"factorlens.research.models:<Class>"``, or the ``factorlens.models:<Class>`` of zoos
    written before the move (see :func:`model_spec`). Only the architectures of :data:`ARCHS`
    resolve: nothing else is imported on behalf of a zoo.json.
    """
    module, _, name = model_spec(spec).partition(":")
    classes = {cls.__name__: cls for cls in ARCHS.values()}
    if module != MODEL_MODULE or name not in classes:
        raise FactorlensError(
            f"zoo model {spec!r} is not a reference model; known: "
            f"{', '.join(f'{MODEL_MODULE}:{c}' for c in classes)}"
        )
    return classes[name]


def load_zoo(path: str | Path) -> list[dict[str, Any]]:
    """Return the entries of a zoo (its folder or its zoo.json).

    Each entry has ``"path"``: the checkpoint's absolute path. A ``model`` field that names the
    module path from before the reference models moved is given under the current one (see
    :func:`model_spec`); the file itself is not changed.
    """
    path = Path(path)
    target = path / ZOO_JSON if path.is_dir() else path
    if not target.is_file():
        raise FactorlensError(f"{path} is not a zoo (no {ZOO_JSON}); build one with `build_zoo`")
    try:
        entries = json.loads(target.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FactorlensError(f"cannot read {target} ({exc}); rebuild the zoo") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FactorlensError(f"{target} is not a list of checkpoint entries; rebuild the zoo")
    root = target.parent.resolve()
    out = []
    for e in entries:
        missing = [f for f in ENTRY_FIELDS if f not in e]
        if missing:
            raise FactorlensError(
                f"an entry of {target} lacks {', '.join(missing)}; rebuild the zoo"
            )
        model = model_spec(e["model"]) if isinstance(e["model"], str) else e["model"]
        out.append({**e, "model": model, "path": str(root / e["checkpoint"])})
    return out


def zoo_model(entry: dict[str, Any], root: str | Path | None = None) -> nn.Module:
    """Build the entry's architecture and load its checkpoint; the model is returned in eval mode.

    The checkpoint is ``entry["path"]`` (set by :func:`load_zoo`), else ``root / checkpoint``.
    """
    arch = entry.get("arch")
    cls = ARCHS.get(arch) if isinstance(arch, str) else None
    if cls is None:
        raise FactorlensError(
            f"zoo entry has unknown architecture {arch!r}; known: {', '.join(ARCHS)}"
        )
    if "path" in entry:
        path = Path(entry["path"])
    elif root is not None:
        path = Path(root) / entry["checkpoint"]
    else:
        raise FactorlensError("zoo entry has no 'path'; read the zoo with load_zoo or pass root")
    if not path.is_file():
        raise FactorlensError(f"zoo checkpoint {path} does not exist; rebuild the zoo")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FactorlensError(
            f"cannot read zoo checkpoint {path} ({type(exc).__name__}); rebuild the zoo"
        ) from None
    kwargs = entry.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise FactorlensError(f"zoo entry {entry.get('checkpoint')!r} has bad arch_kwargs")
    try:
        model = cls(**kwargs)
    except (TypeError, FactorlensError) as exc:
        raise FactorlensError(
            f"zoo entry {entry.get('checkpoint')!r}: cannot build {cls.__name__} ({exc})"
        ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:200]
        raise FactorlensError(f"checkpoint {path} does not fit {cls.__name__} ({msg})") from None
    return model.eval()
