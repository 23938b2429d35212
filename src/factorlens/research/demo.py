"""The demo model: the reference DigitsCNN trained on scikit-learn's digits.

:class:`~factorlens.research.models.DigitsCNN`, for ``factorlens demo``. The 1797 digits are
shuffled with the seed; the first 1300 train the network and the remaining 497 are held out as
the demo's test inputs (never seen in training). Takes a few seconds on CPU.
"""

from __future__ import annotations

import torch

from factorlens.data import ImageData, digits_split
from factorlens.research.models import DigitsCNN, accuracy, torch_threads, train_classifier

__all__ = ["DEMO_EPOCHS", "N_TRAIN", "train_demo_model"]

N_TRAIN = 1300
DEMO_EPOCHS = 15


def train_demo_model(seed: int = 0, progress: bool = True) -> tuple[DigitsCNN, ImageData, float]:
    """Train DigitsCNN on 1300 shuffled digits.

    Images are 1×8×8 in [0, 1], fed to the model unnormalized.

    Parameters
    ----------
    seed : int
        Seeds the shuffle, the initialisation and the batches.
    progress : bool
        Show a progress bar for the training.

    Returns
    -------
    model : DigitsCNN
        The trained model, in eval mode.
    held_out : ImageData
        The held-out digits.
    accuracy : float
        The held-out accuracy in [0, 1].
    """
    x_train, y_train, held_out = digits_split(seed, N_TRAIN)
    torch.manual_seed(seed)
    model = DigitsCNN()
    train_classifier(
        model,
        x_train,
        y_train,
        epochs=DEMO_EPOCHS,
        batch_size=64,
        lr=2e-3,
        seed=seed,
        progress=progress,
        num_threads=1,  # tiny CNN: one thread is as fast and robust to a busy machine
    )
    assert held_out.labels is not None  # digits_split labels the held-out set
    with torch_threads(1):
        acc = accuracy(model, held_out.images, held_out.labels)
    return model, held_out, acc
