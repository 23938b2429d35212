"""Tests for factorlens.research.models and .demo: architectures, training, the demo model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from factorlens.data import load_data
from factorlens.errors import FactorlensError
from factorlens.research.demo import N_TRAIN, train_demo_model
from factorlens.research.models import (
    DigitsCNN,
    MnistCNN,
    accuracy,
    torch_threads,
    train_classifier,
)


def test_digits_cnn_shapes_and_names() -> None:
    model = DigitsCNN()
    out = model(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10)
    names = dict(model.named_modules())
    assert isinstance(names["features.0"], torch.nn.Conv2d)
    assert names["features.0"].out_channels == 16
    assert isinstance(names["features.2"], torch.nn.Conv2d)
    assert names["features.2"].out_channels == 32
    assert isinstance(names["features.4"], torch.nn.MaxPool2d)
    assert names["classifier.1"].in_features == 32 * 4 * 4
    assert names["classifier.3"].out_features == 10
    assert model.features(torch.zeros(2, 1, 8, 8)).shape == (2, 32, 4, 4)


def test_mnist_cnn_shapes_and_names() -> None:
    model = MnistCNN()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [n for n, m in model.named_modules() if isinstance(m, torch.nn.MaxPool2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert convs == ["features.0", "features.3"]
    assert pools == ["features.2", "features.5"]
    assert linears == ["classifier.1", "classifier.3"]
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 32, 7, 7)


def separable_data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 8×8 images: bright top half vs bright bottom half, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    images = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.3
    images[labels == 0, :, :4, :] += 0.6
    images[labels == 1, :, 4:, :] += 0.6
    return images, labels


def test_train_classifier_learns_and_is_deterministic() -> None:
    images, labels = separable_data()

    def run() -> tuple[torch.nn.Module, float]:
        torch.manual_seed(0)
        model = DigitsCNN(n_classes=2)
        before = accuracy(model, images, labels)
        assert 0.0 <= before <= 1.0
        train_classifier(model, images, labels, epochs=3, batch_size=32, seed=4, num_threads=1)
        return model, accuracy(model, images, labels)

    m1, acc1 = run()
    m2, acc2 = run()
    assert acc1 > 0.95
    assert acc1 == acc2
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not m1.training


def test_accuracy_restores_mode_and_batches() -> None:
    images, labels = separable_data(n=50)
    model = DigitsCNN(n_classes=2)
    model.train()
    full = accuracy(model, images, labels, batch_size=512)
    small = accuracy(model, images, labels, batch_size=7)
    assert full == small
    assert model.training
    with torch.no_grad():
        preds = model.eval()(torch.from_numpy(images)).argmax(1).numpy()
    assert full == pytest.approx(float((preds == labels).mean()))


def test_training_input_errors() -> None:
    images, labels = separable_data(n=10)
    model = DigitsCNN(n_classes=2)
    with pytest.raises(FactorlensError, match="one label each"):
        train_classifier(model, images, labels[:5], epochs=1, seed=0)
    with pytest.raises(FactorlensError, match="epochs"):
        train_classifier(model, images, labels, epochs=0, seed=0)
    with pytest.raises(FactorlensError, match="one label each"):
        accuracy(model, images, labels[:3])


def test_progress_prints_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = separable_data(n=20)
    train_classifier(DigitsCNN(2), images, labels, epochs=2, seed=0, progress=True, num_threads=1)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err


def test_demo_model() -> None:
    threads_before = torch.get_num_threads()
    start = time.perf_counter()
    model, held_out, acc = train_demo_model(seed=0, progress=False)
    elapsed = time.perf_counter() - start
    assert isinstance(model, DigitsCNN) and not model.training
    assert acc > 0.9
    assert elapsed < 60
    digits = load_data("digits")
    assert held_out.n_samples == digits.n_samples - N_TRAIN
    assert held_out.images.shape[1:] == (1, 8, 8)
    assert held_out.class_names == [str(i) for i in range(10)]
    assert held_out.labels is not None
    assert acc == pytest.approx(accuracy(model, held_out.images, held_out.labels))
    # the held-out set is exactly the digits rows not among the first N_TRAIN shuffled ones
    order = np.random.default_rng(0).permutation(digits.n_samples)
    assert set(order[:N_TRAIN]).isdisjoint(order[N_TRAIN:])
    np.testing.assert_array_equal(held_out.images, digits.images[np.sort(order[N_TRAIN:])])
    np.testing.assert_array_equal(held_out.labels, digits.labels[np.sort(order[N_TRAIN:])])
    assert torch.get_num_threads() == threads_before


def test_torch_threads_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(FactorlensError):
        with torch_threads(0):
            pass
