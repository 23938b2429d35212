"""Small reference CNNs used by the demo, the tests and the benchmarks, and a minimal trainer.

The networks take images ``(N, C, H, W)`` in the units their trainer used (the demo feeds
[0, 1] pixels directly) and return class logits ``(N, 10)``. ``width`` is the first conv's
channel count (default 16, as each class documents; later stages scale with it), for width
sweeps at a fixed budget. Layers are grouped in two ``nn.Sequential`` blocks, ``features`` and ``classifier``, so layer names read
``features.0`` (first conv), ``classifier.3`` (last linear), …
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.errors import FactorlensError

__all__ = [
    "BNGapCNN",
    "DeepBNGapCNN",
    "DigitsCNN",
    "MnistCNN",
    "ResidualBlock",
    "SmallResNet",
    "accuracy",
    "torch_threads",
    "train_classifier",
]


def _check_width(width: int) -> int:
    """Check the base channel count of a reference CNN (its first conv's output channels)."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise FactorlensError(f"the width must be a positive integer, got {width!r}")
    return width


class DigitsCNN(nn.Module):
    """CNN for scikit-learn's 8×8 digits: input (N, 1, 8, 8), output logits (N, 10).

    features:   0 Conv(1→16, 3×3, pad 1), 1 ReLU, 2 Conv(16→32, 3×3, pad 1), 3 ReLU, 4 MaxPool(2)
    classifier: 0 Flatten, 1 Linear(512→64), 2 ReLU, 3 Linear(64→10)
    """

    def __init__(self, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = _check_width(width)
        self.features = nn.Sequential(
            nn.Conv2d(1, w, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) -> (N, n_classes) logits."""
        return self.classifier(self.features(x))


class MnistCNN(nn.Module):
    """Classic two-conv CNN for MNIST: input (N, 1, 28, 28), output logits (N, 10).

    features:   0 Conv(1→16, 5×5, pad 2), 1 ReLU, 2 MaxPool(2)  -> 16×14×14
                3 Conv(16→32, 5×5, pad 2), 4 ReLU, 5 MaxPool(2) -> 32×7×7
    classifier: 0 Flatten, 1 Linear(1568→128), 2 ReLU, 3 Linear(128→10)
    """

    def __init__(self, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = _check_width(width)
        self.features = nn.Sequential(
            nn.Conv2d(1, w, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) -> (N, n_classes) logits."""
        return self.classifier(self.features(x))


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """3×3 conv (pad 1, no bias), BatchNorm and ReLU, as three modules of a Sequential."""
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class BNGapCNN(nn.Module):
    """Three conv+BatchNorm+ReLU stages, global average pooling and a linear head.

    Takes (N, in_channels, H, W) for any H, W >= 8 (digits, MNIST, glyphs, shapes); output
    logits (N, 10). Channel counts below are for the default ``width=16``.

    features:   0 Conv(1→16, 3×3, pad 1), 1 BN, 2 ReLU                  -> 16×H×W
                3 Conv(16→32, 3×3, stride 2, pad 1), 4 BN, 5 ReLU       -> 32×⌈H/2⌉×⌈W/2⌉
                6 Conv(32→64, 3×3, stride 2, pad 1), 7 BN, 8 ReLU       -> 64×⌈H/4⌉×⌈W/4⌉
    classifier: 0 AdaptiveAvgPool(1), 1 Flatten, 2 Linear(64→10)
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = _check_width(width)
        self.features = nn.Sequential(*self._stages(in_channels, w))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, n_classes),
        )

    @staticmethod
    def _stages(c_in: int, w: int) -> list[nn.Module]:
        """Return the feature stages: ``4 w`` channels at a quarter of the input's side."""
        return [
            *_conv_bn_relu(c_in, w),
            *_conv_bn_relu(w, 2 * w, stride=2),
            *_conv_bn_relu(2 * w, 4 * w, stride=2),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, n_classes) logits."""
        return self.classifier(self.features(x))


class DeepBNGapCNN(BNGapCNN):
    """VGG-style BN-GAP network: three stages of two conv+BatchNorm+ReLU, GAP and a linear head.

    Takes (N, in_channels, H, W) for any H, W >= 8; output logits (N, 10). Unlike
    :class:`BNGapCNN` (receptive field 9 px at its last conv, which caps it near a third on the
    32×32 ``shapes``), its last conv sees 23 px (SmallResNet's 21), enough for whole shapes.
    Channel counts are for the default ``width=16``; each row is conv, BN, ReLU (three indices):

    features:   0–2 Conv(1→16), 3–5 Conv(16→16)                         -> 16×H×W
                6–8 Conv(16→32, stride 2), 9–11 Conv(32→32)              -> 32×⌈H/2⌉×⌈W/2⌉
                12–14 Conv(32→64, stride 2), 15–17 Conv(64→64)           -> 64×⌈H/4⌉×⌈W/4⌉
    classifier: 0 AdaptiveAvgPool(1), 1 Flatten, 2 Linear(64→10)
    """

    @staticmethod
    def _stages(c_in: int, w: int) -> list[nn.Module]:
        """Return the feature stages, two convs each: ``4 w`` channels at a quarter of the side."""
        return [
            *_conv_bn_relu(c_in, w),
            *_conv_bn_relu(w, w),
            *_conv_bn_relu(w, 2 * w, stride=2),
            *_conv_bn_relu(2 * w, 2 * w),
            *_conv_bn_relu(2 * w, 4 * w, stride=2),
            *_conv_bn_relu(4 * w, 4 * w),
        ]


class ResidualBlock(nn.Module):
    """Basic residual block: conv1, bn1, relu1, conv2, bn2, + shortcut, relu (the block output).

    The shortcut is the identity, or a strided 1×1 conv + BN when the shape changes. Every ReLU is
    its own module, so a forward hook on ``relu`` sees the block's output after the addition.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, ⌈H/stride⌉, ⌈W/stride⌉)."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stem conv and two residual blocks, global average pooling and a linear head.

    Takes (N, in_channels, H, W) for any H, W >= 8 (digits, MNIST, glyphs, shapes); output
    logits (N, 10). Channel counts below are for the default ``width=16``.

    features:   0 Conv(1→16, 3×3, pad 1), 1 BN, 2 ReLU                  -> 16×H×W
                3 ResidualBlock(16→32, stride 2)                        -> 32×⌈H/2⌉×⌈W/2⌉
                4 ResidualBlock(32→64, stride 2)                        -> 64×⌈H/4⌉×⌈W/4⌉
    classifier: 0 AdaptiveAvgPool(1), 1 Flatten, 2 Linear(64→10)
    """

    def __init__(self, n_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = _check_width(width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            ResidualBlock(w, 2 * w, stride=2),
            ResidualBlock(2 * w, 4 * w, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, n_classes) logits."""
        return self.classifier(self.features(x))


def _as_tensors(
    images: Any, labels: np.ndarray | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = np.asarray(images)
    if x.ndim < 2:
        raise FactorlensError(f"images must have shape (N, ...), got {x.shape}")
    # contiguous and writeable (torch warns on read-only arrays, e.g. the cached test sets)
    xt = torch.as_tensor(np.require(x, np.float32, ["C", "W"]), device=device)
    if labels is None:
        return xt, None
    y = np.asarray(labels)
    if y.shape != (x.shape[0],):
        raise FactorlensError(
            f"labels have shape {y.shape} but there are {x.shape[0]} images; give one label each"
        )
    return xt, torch.as_tensor(y.astype(np.int64), device=device)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch CPU ops on ``n`` intra-op threads (None: leave the setting alone).

    One thread is as fast for the tiny reference CNNs and does not stall when another process
    keeps a core busy (multi-threaded tiny ops then wait on each other).
    """
    if n is None:
        yield
        return
    if n < 1:
        raise FactorlensError(f"the number of threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def train_classifier(
    model: nn.Module,
    images: Any,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    num_threads: int | None = None,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy on images (N, C, H, W) float32, labels (N,).

    Deterministic for a ``seed`` (shuffling uses its own ``torch.Generator``). Trains on the
    model's device, prints one line per epoch to stderr when ``progress``; ``num_threads`` limits
    torch's CPU threads while training (None: unchanged). Returns the model in eval mode.
    """
    with torch_threads(num_threads):
        return _train(model, images, labels, epochs, batch_size, lr, seed, progress)


def _train(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
) -> nn.Module:
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise FactorlensError(
            f"need epochs >= 1, batch_size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})"
        )
    device = _model_device(model)
    x, y = _as_tensors(images, labels, device)
    assert y is not None
    n = x.shape[0]
    if n == 0:
        raise FactorlensError("no training images; give at least one")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        total, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(1) == y[idx]).sum())
        if progress:
            print(
                f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, train accuracy {correct / n:.3f}",
                file=sys.stderr,
                flush=True,
            )
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: Any, labels: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of images (N, C, H, W) whose argmax logit equals the label (N,); in [0, 1]."""
    device = _model_device(model)
    x, y = _as_tensors(images, labels, device)
    assert y is not None
    if x.shape[0] == 0:
        raise FactorlensError("no images to score; give at least one")
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, x.shape[0], batch_size):
            pred = model(x[start : start + batch_size]).argmax(1)
            correct += int((pred == y[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]
