"""Fixtures shared by the test modules: a tiny model file, its weights and an npz data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

MODEL_FILE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
                                        nn.Linear(6, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """A model file, its weights and a small npz data set, all under tmp_path."""
    model_py = tmp_path / "tiny.py"
    model_py.write_text(MODEL_FILE)
    ns: dict = {}
    exec(compile(MODEL_FILE, str(model_py), "exec"), ns)
    torch.manual_seed(0)
    net = ns["TinyNet"]()
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, weights)
    rng = np.random.default_rng(0)
    images = (rng.random((60, 8, 8)) * 255).astype(np.uint8)
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=rng.integers(0, 3, 60))
    return {"model": model_py, "weights": weights, "data": data, "root": tmp_path}
