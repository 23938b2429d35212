"""Label-free baselines for scoring how well a network was trained.

* :func:`rankme` — RankMe (Garrido, Balestriero, Najman & LeCun 2023): the exponential of the
  entropy of the normalized singular values of the embeddings; higher = better. Applied to the
  penultimate-layer embeddings (the input of the last ``nn.Linear``) by :func:`rankme_score`.
* :func:`weightwatcher_alpha` — the mean power-law exponent α of the layer weight spectra
  (Martin, Peng & Mahoney 2021), from the ``weightwatcher`` package; data-free; lower = better.
* :func:`effective_rank` — Roy & Vetterli (2007); :func:`layer_effective_ranks` applies it to
  every chosen layer's flattened, centred outputs.

The field's own label-free accuracy estimators, from the ``(N, K)`` outputs alone
(:func:`output_anchors`; higher = better for each):

* ``avg_conf`` — average max-softmax confidence (Hendrycks & Gimpel 2017; "AC" in Guillory et
  al. 2021 and Garg et al. 2022); it *estimates* the accuracy;
* ``neg_entropy`` — minus the mean entropy of the softmax (in nats);
* ``nuclear`` — the nuclear norm of the ``N×K`` softmax matrix over ``sqrt(N · min(N, K))``,
  in ``[0, 1]`` (Deng et al. 2023, "Confidence and Dispersity Speak");

and from several checkpoints' answers, :func:`agreement_with_others` — each one's mean share
of answers equal to each other checkpoint's (the plain, unweighted form of the consensus).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.capture import capture, select_layers
from factorlens.errors import FactorlensError
from factorlens.options import CaptureOptions
from factorlens.spectra import effective_rank, singular_values, spectral_entropy_rank

__all__ = [
    "RANKME_EPS",
    "agreement_with_others",
    "effective_rank",
    "layer_effective_ranks",
    "output_anchors",
    "penultimate_embeddings",
    "rankme",
    "rankme_score",
    "singular_values",
    "weightwatcher_alpha",
]

#: the small constant RankMe adds to every normalized singular value (Garrido et al. 2023).
RANKME_EPS = 1e-7


def rankme(embeddings: Any, eps: float = RANKME_EPS) -> float:
    """RankMe of embeddings (N, D): ``exp(-Σ p_k log p_k)`` with ``p_k = σ_k / Σσ + eps``.

    Higher = more dimensions used; ~1 for a rank-one matrix, ~min(N, D) for a well spread one.
    The embeddings are used as given (no centring), as in Garrido et al. (2023).
    """
    return spectral_entropy_rank(singular_values(embeddings), float(eps))


# --------------------------------------------------------------------------------------------
# model-based


def _batches(images: Any, batch_size: int):
    x = images.images if hasattr(images, "images") else images
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise FactorlensError(f"images must have shape (N, ...) with N >= 1, got {x.shape}")
    for start in range(0, x.shape[0], batch_size):
        yield torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise FactorlensError(
            f"{type(model).__name__} has no nn.Linear layer; RankMe needs the input of the "
            "classifier's last linear layer"
        )
    return found[-1]


@torch.no_grad()
def penultimate_embeddings(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = CaptureOptions.batch_size,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Return the input of the model's last ``nn.Linear`` for every image.

    The last ``nn.Linear`` is the last in ``named_modules`` order. The model runs in eval
    mode; its mode is restored after.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    images : array-like
        The images, ``(N, C, H, W)``.
    batch_size : int
        Images per forward pass.
    preprocess : callable, optional
        Applied to each batch before the model sees it.

    Returns
    -------
    numpy.ndarray
        The embeddings flattened to ``(N, D)`` float64.
    """
    _, head = _last_linear(model)
    rows: list[np.ndarray] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        rows.append(args[0].detach().to("cpu", torch.float64).reshape(args[0].shape[0], -1).numpy())

    handle = head.register_forward_pre_hook(hook)
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    try:
        for batch in _batches(images, batch_size):
            x = preprocess(batch) if preprocess is not None else batch
            model(x.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return np.concatenate(rows, axis=0)


def rankme_score(model: nn.Module, images: Any, **kwargs: Any) -> float:
    """RankMe of the penultimate-layer embeddings of ``images``; higher = better."""
    return rankme(penultimate_embeddings(model, images, **kwargs))


def layer_effective_ranks(
    model: nn.Module,
    images: Any,
    layers: Sequence[str] | str | None = None,
    *,
    batch_size: int = CaptureOptions.batch_size,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Effective rank of each layer's outputs (flattened to N × features, each feature centred).

    ``layers`` as in :func:`factorlens.capture.select_layers` (None: every conv, linear,
    activation and pooling layer). Returns ``{layer: effective rank}`` in network order.
    """
    chosen = select_layers(model, layers)
    store = capture(
        model,
        images,
        chosen,
        batch_size=batch_size,
        preprocess=preprocess,
        progress=False,
        nonfinite="zero",
    )
    out: dict[str, float] = {}
    for name in chosen:
        block = np.asarray(store.block(name)[:], dtype=np.float64)
        block = block.reshape(block.shape[0], -1)
        out[name] = effective_rank(block - block.mean(axis=0, keepdims=True))
    return out


# --------------------------------------------------------------------------------------------
# WeightWatcher

_WW_LOGGERS = ("weightwatcher", "RMT_Util", "powerlaw")


@contextlib.contextmanager
def _quiet_weightwatcher():
    """Silence weightwatcher.

    Its import calls logging.basicConfig (which would configure the root logger of the whole
    program), it logs warnings and prints to stdout while fitting.
    """
    root = logging.getLogger()
    guard = logging.NullHandler()
    # basicConfig does nothing when the root logger already has a handler
    added = not root.handlers
    if added:
        root.addHandler(guard)
    levels = {name: logging.getLogger(name).level for name in _WW_LOGGERS}
    for name in _WW_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            np.errstate(all="ignore"),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        if added:
            root.removeHandler(guard)
        for name in _WW_LOGGERS:
            # keep weightwatcher quiet for later calls; restore the others
            logging.getLogger(name).setLevel(
                logging.CRITICAL if name == "weightwatcher" else levels[name]
            )


def weightwatcher_alpha(model: nn.Module) -> float:
    """WeightWatcher's mean power-law exponent α over the model's layers (lower = better).

    Layers WeightWatcher cannot fit (α NaN/Inf) are left out of the mean; NaN when none is finite
    (or WeightWatcher finds no layer to analyse). Needs the ``weightwatcher`` package.
    """
    with _quiet_weightwatcher():
        try:
            import weightwatcher
        except ImportError:
            raise FactorlensError(
                "the WeightWatcher baseline needs the weightwatcher package; install it with "
                "pip install weightwatcher"
            ) from None
        was_training = model.training
        try:
            details = weightwatcher.WeightWatcher(model=model).analyze()
        finally:
            model.train(was_training)
    if details is None or len(details) == 0 or "alpha" not in details:
        return float("nan")
    alphas = np.asarray(details["alpha"], dtype=np.float64)
    finite = alphas[np.isfinite(alphas)]
    return float(finite.mean()) if finite.size else float("nan")


def output_anchors(outputs: np.ndarray) -> dict[str, float]:
    """Return ``avg_conf``, ``neg_entropy`` and ``nuclear`` of one checkpoint's outputs.

    ``outputs`` ``(N, K)``: logits, or probabilities (rows of non-negative numbers summing
    to 1), as :func:`factorlens.quality.class_probabilities` reads them.
    """
    from factorlens.quality import class_probabilities

    probs = class_probabilities(np.asarray(outputs))
    n, k = probs.shape
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=1)
    nuclear = float(np.linalg.svd(probs, compute_uv=False).sum() / np.sqrt(n * min(n, k)))
    return {
        "avg_conf": float(probs.max(axis=1).mean()),
        "neg_entropy": float(-entropy.mean()),
        "nuclear": nuclear,
    }


def agreement_with_others(predictions: np.ndarray) -> np.ndarray:
    """Return ``(M,)``: each checkpoint's mean share of answers equal to each other one's.

    ``predictions`` ``(M, N)`` predicted classes of M >= 2 checkpoints on the same inputs.
    """
    pred = np.asarray(predictions)
    if pred.ndim != 2 or pred.shape[0] < 2:
        raise FactorlensError(f"need (M >= 2, N) predictions, got shape {pred.shape}")
    same = (pred[:, None, :] == pred[None, :, :]).mean(axis=2)  # (M, M), 1 on the diagonal
    return (same.sum(axis=1) - 1.0) / (pred.shape[0] - 1)
