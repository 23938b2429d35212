"""Shared set-up of the MNIST benchmarks: a trained MnistCNN captured on MNIST test images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from factorlens.capture import capture
from factorlens.data import load_data
from factorlens.research.models import MnistCNN, accuracy, train_classifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
#: the input plus four layers: both pooled conv maps, the hidden dense layer, the logits
LAYERS = ["features.2", "features.5", "classifier.2", "classifier.3"]


def trained_mnist(mnist: Path, epochs: int = 2) -> torch.nn.Module:
    """Train MnistCNN (seed 0) on train-10k.npz; prints the training time and accuracy."""
    if not (mnist / "train-10k.npz").is_file():
        raise SystemExit(f"MNIST data not found in {mnist}; see ../shared/data/README.md")
    torch.manual_seed(0)
    train = np.load(mnist / "train-10k.npz")
    x_train = (train["images"][:, None] / 255.0).astype(np.float32)
    t0 = time.perf_counter()
    model = train_classifier(MnistCNN(), x_train, train["labels"], epochs=epochs, seed=0)
    test = load_data(f"mnist:{mnist}")
    acc = accuracy(model, test.images, test.labels)
    print(f"trained MnistCNN in {time.perf_counter() - t0:.1f} s: test accuracy {acc:.4f}")
    return model


def trained_mnist_store(mnist: Path, n: int, epochs: int = 2, model=None):
    """Capture ``LAYERS`` of ``model`` (default: :func:`trained_mnist`) on ``n`` test images.

    Returns the in-memory activation store; prints the block shapes.
    """
    model = model if model is not None else trained_mnist(mnist, epochs)
    test = load_data(f"mnist:{mnist}")
    store = capture(model, test.subset(n, random_state=0), LAYERS, progress=False)
    for name in store.names:
        print(f"  block {name:<13} {'×'.join(map(str, store.block(name).shape))}")
    return store
