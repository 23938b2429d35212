"""GPU paths: the same results on CUDA as on the CPU. Skipped where no CUDA device exists (CI);
run on a machine with a GPU with ``pytest tests/test_gpu.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factorlens.capture import capture
from factorlens.factorize import cmtf
from factorlens.research.models import DigitsCNN
from factorlens.testing import planted_blocks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_engine_on_cuda_matches_cpu() -> None:
    blocks, _ = planted_blocks(N=400, noise=0.05, seed=2)
    cpu = cmtf(blocks, 3, random_state=0, n_init=1)
    gpu = cmtf(blocks, 3, random_state=0, n_init=1, device="cuda")
    np.testing.assert_allclose(gpu.A, cpu.A, atol=1e-4)
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-4)
    for name in blocks:
        np.testing.assert_allclose(gpu.weights[name], cpu.weights[name], atol=1e-4)


def test_capture_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    images = np.random.default_rng(0).random((70, 1, 8, 8)).astype(np.float32)
    a = capture(model, images, batch_size=32, progress=False)
    b = capture(model, images, batch_size=32, device="cuda", progress=False)
    assert a.names == b.names
    for name in a.names:
        np.testing.assert_allclose(b.block(name)[:], a.block(name)[:], atol=1e-4)
    assert next(model.parameters()).device.type == "cpu"  # the model is handed back as it was


def test_quality_on_cuda_matches_cpu() -> None:
    from factorlens.quality import assess

    torch.manual_seed(0)
    model = DigitsCNN()
    images = np.random.default_rng(1).random((120, 1, 8, 8)).astype(np.float32)
    cpu = assess(model, images, max_rank=2, batch_size=50)
    gpu = assess(model, images, max_rank=2, batch_size=50, device="cuda")
    assert gpu.score == pytest.approx(cpu.score, abs=1e-4)
    assert gpu.prediction_rank == pytest.approx(cpu.prediction_rank, rel=1e-4)
    assert gpu.n_inputs == 120 and gpu.rank == cpu.rank
