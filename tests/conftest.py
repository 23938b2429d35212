"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tinyproject import MODEL_FILE


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
