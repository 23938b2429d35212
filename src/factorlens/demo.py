"""The demo model: :class:`~factorlens.models.DigitsCNN` trained on scikit-learn's digits.

The 1797 digits are shuffled with the seed; the first 1300 train the network and the remaining
497 are held out as the demo's test inputs (never seen in training). Takes a few seconds on CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from factorlens.data import ImageData, load_data
from factorlens.models import DigitsCNN, accuracy, torch_threads, train_classifier

__all__ = ["DEMO_EPOCHS", "N_TRAIN", "train_demo_model"]

N_TRAIN = 1300
DEMO_EPOCHS = 15


def train_demo_model(seed: int = 0, progress: bool = True) -> tuple[DigitsCNN, ImageData, float]:
    """Train DigitsCNN on 1300 shuffled digits; return (model in eval mode, held-out ImageData,
    held-out accuracy in [0, 1]). Images are 1×8×8 in [0, 1], fed to the model unnormalized."""
    digits = load_data("digits")
    order = np.random.default_rng(seed).permutation(digits.n_samples)
    train_idx, test_idx = order[:N_TRAIN], np.sort(order[N_TRAIN:])
    assert digits.labels is not None
    torch.manual_seed(seed)
    model = DigitsCNN()
    train_classifier(
        model,
        digits.images[train_idx],
        digits.labels[train_idx],
        epochs=DEMO_EPOCHS,
        batch_size=64,
        lr=2e-3,
        seed=seed,
        progress=progress,
        num_threads=1,  # tiny CNN: one thread is as fast and robust to a busy machine
    )
    held_out = ImageData(
        images=np.ascontiguousarray(digits.images[test_idx]),
        labels=digits.labels[test_idx].copy(),
        class_names=digits.class_names,
        description=(
            f"scikit-learn digits, {len(test_idx)} held-out images not used in training "
            f"(seed {seed}; 1×8×8, 10 classes)"
        ),
    )
    with torch_threads(1):
        acc = accuracy(model, held_out.images, held_out.labels)
    return model, held_out, acc
