"""A model that stays random in eval mode (dropout called in forward) is named in a warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import factorlens


class _Net(nn.Module):
    def __init__(self, random_in_eval: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)
        self.random_in_eval = random_in_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        if self.random_in_eval:
            h = F.dropout(h, 0.5)  # training=True by default: eval() does not stop it
        return self.fc2(h)


@pytest.mark.parametrize("random_in_eval", [False, True])
def test_a_model_random_in_eval_mode_is_warned_about(random_in_eval, capsys) -> None:
    x = np.random.default_rng(0).uniform(0, 1, (40, 4, 4)).astype(np.float32)
    store = factorlens.capture(_Net(random_in_eval), x, progress=False)
    assert store.n_samples == 40
    err = capsys.readouterr().err
    warned = "warning: the model gives different outputs for the same inputs" in err
    assert warned == random_in_eval, err
    if random_in_eval:
        assert "F.dropout(x, p) without training=self.training" in err


def test_a_sketched_capture_checks_the_model_once_not_once_a_pass(monkeypatch) -> None:
    import importlib

    from factorlens.sketched import SketchedStore, capture_sketched

    capture_module = importlib.import_module("factorlens.capture")  # not the function
    calls = []
    real = capture_module.check_deterministic
    monkeypatch.setattr(
        capture_module, "check_deterministic", lambda *a: calls.append(1) or real(*a)
    )
    x = np.random.default_rng(0).uniform(0, 1, (40, 4, 4)).astype(np.float32)
    store = capture_sketched(_Net(False), x, sketch=12, memory_budget=1, progress=False)
    assert isinstance(store, SketchedStore)  # three passes: the probe, the sketch, the project
    assert len(calls) == 1
