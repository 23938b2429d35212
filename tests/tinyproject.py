"""The tiny model project the CLI tests run on: a model file, its weights, an npz data set, and
the ``factorlens analyze`` command line for it."""

from __future__ import annotations

from pathlib import Path

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


def analyze_args(p: dict[str, Path], out: Path, *extra: str, rank: int = 3) -> list[str]:
    """``factorlens analyze`` of the tiny project (quiet), at ``rank``, plus ``extra``."""
    return [
        "analyze",
        "--model", f"{p['model']}:TinyNet",
        "--weights", str(p["weights"]),
        "--data", f"npz:{p['data']}",
        "--rank", str(rank),
        "--out", str(out),
        "--quiet",
        *extra,
    ]  # fmt: skip
