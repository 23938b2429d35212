"""Training quality without labels: a score per checkpoint, with the joint rank beside it.

**Score (fixed recipe, higher = better trained)**: the *prediction rank* — the effective rank
(Roy & Vetterli 2007: ``exp`` of the entropy of the normalised singular values) of the
``N×K`` matrix of the network's predicted class probabilities (softmax of the last layer's
output) on the unlabelled test inputs, divided by ``K``. It lies in ``[1/K, 1]``: a network
that answers almost the same for every input (untrained, or one that learnt noise) has
predictions of rank ≈ 1; a well-trained one sorts the inputs into K confident, distinct
answers, rank ≈ K. It reads no label and no training data.

**Rank**: the rank of the joint factorization of the input and the chosen layers, chosen by
:func:`factorlens.rank.estimate_rank` (split-half stability and bi-cross-validation), reported
beside the score as the factorization's own evidence.

Measured on the zoos (benchmarks/bench_quality.py): the plain effective rank of the joint
data, the joint CMTF's per-block fits and strength spectra do *not* track accuracy across
training steps, label noise and training-set size; the prediction rank does on most zoos. See
the README for the table and where it fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factorlens.baselines import effective_rank
from factorlens.errors import FactorlensError


@dataclass
class QualityReport:
    """One checkpoint's label-free assessment."""

    score: float
    rank: int
    prediction_rank: float
    n_outputs: int
    checkpoint: str | None = None
    accuracy: float | None = None
    degenerate: list[str] = field(default_factory=list)
    rank_scan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "checkpoint": self.checkpoint,
            "rank": int(self.rank),
            "score": float(self.score),
            "prediction_rank": float(self.prediction_rank),
            "n_outputs": int(self.n_outputs),
            "degenerate_blocks": self.degenerate,
        }
        if self.accuracy is not None:
            out["accuracy"] = float(self.accuracy)
        if self.rank_scan is not None:
            out["rank_scan"] = self.rank_scan
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` scores, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def prediction_rank_score(outputs: np.ndarray) -> tuple[float, float]:
    """``(score, prediction_rank)`` from the last layer's outputs ``(N, K)``."""
    out = np.asarray(outputs)
    if out.ndim != 2 or out.shape[1] < 2:
        raise FactorlensError(
            f"the last layer's output has shape {out.shape}; the quality score needs class "
            "scores (N, K) with K >= 2 — choose a classifier whose last layer gives them"
        )
    if not np.isfinite(out).all():
        raise FactorlensError("the last layer's output holds NaN or Inf; the checkpoint is broken")
    er = effective_rank(softmax(out))
    return er / out.shape[1], er


def assess(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    max_rank: int = 10,
    preprocess: Any = None,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    checkpoint: str | None = None,
    scan: bool = True,
) -> QualityReport:
    """Capture ``model`` on ``data`` (``ImageData`` or array), score it and scan its joint rank.

    The model's own output (the last module's output) gives the score; the input plus
    ``layers`` (default: every representation layer) give the joint rank.
    """
    from factorlens.capture import capture, select_layers
    from factorlens.rank import estimate_rank

    chosen = select_layers(model, layers)
    store = capture(
        model,
        data,
        chosen,
        batch_size=batch_size,
        device=device,
        preprocess=preprocess,
        progress=False,
    )
    outputs = _model_outputs(model, data, preprocess, batch_size, device)
    score, er = prediction_rank_score(outputs)
    labels = getattr(data, "labels", None)
    accuracy = float(np.mean(outputs.argmax(axis=1) == labels)) if labels is not None else None
    blocks = {}
    degenerate = []
    for name in store.names:
        arr = np.asarray(store.block(name)[:], dtype=np.float32)
        if float(np.ptp(arr)) == 0.0:
            degenerate.append(name)
        else:
            blocks[name] = arr
    rank, evidence = 0, None
    if scan and len(blocks) >= 1 and store.names[0] in blocks:
        result = estimate_rank(blocks, max_rank, random_state=seed)
        rank, evidence = result.chosen, result.to_dict()
    return QualityReport(
        score=score,
        rank=rank,
        prediction_rank=er,
        n_outputs=int(outputs.shape[1]),
        checkpoint=checkpoint,
        accuracy=accuracy,
        degenerate=degenerate,
        rank_scan=evidence,
    )


def score_model(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> QualityReport:
    """:func:`assess` on a random subset of ``n_samples`` inputs (all when None)."""
    if n_samples is not None and hasattr(data, "subset"):
        data = data.subset(n_samples, seed=seed)
    return assess(model, data, layers=layers, seed=seed, **kwargs)


def _model_outputs(model, data, preprocess, batch_size: int, device: str) -> np.ndarray:
    import torch

    images = getattr(data, "images", data)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.as_tensor(np.asarray(images[start : start + batch_size], np.float32))
                if preprocess is not None:
                    x = preprocess(x)
                try:
                    y = model(x.to(device))
                except Exception as exc:
                    raise FactorlensError(
                        f"the model failed on inputs of shape {tuple(x.shape)}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    ) from exc
                if not isinstance(y, torch.Tensor):
                    raise FactorlensError(
                        f"the model returned {type(y).__name__}, not a tensor of class scores"
                    )
                outs.append(y.detach().float().cpu().reshape(y.shape[0], -1).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs, axis=0)
