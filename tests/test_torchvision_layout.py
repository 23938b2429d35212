"""The real-size reference networks keep torchvision's layout: names, sizes, calls per pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factorlens.capture import capture
from factorlens.research.torchvision_layout import (
    load_torchvision_weights,
    resnet18,
    resnet50,
    vit_b_16,
    vit_tiny,
)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "params"),
    # torchvision's own parameter counts for these architectures (1,000 classes)
    [(resnet18, 11_689_512), (resnet50, 25_557_032), (vit_b_16, 86_567_656)],
)
def test_parameter_counts_are_torchvisions(build, params) -> None:
    model = build(calibrate=False) if build is not vit_b_16 else build()
    assert _count(model) == params


def test_state_dict_names_are_torchvisions() -> None:
    r18 = resnet18(calibrate=False).state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.running_var",
        "fc.bias",
    ):
        assert key in r18  # fmt: skip
    assert "layer3.5.conv3.weight" in resnet50(calibrate=False).state_dict()
    vit = vit_tiny().state_dict()
    for key in (
        "conv_proj.weight",
        "class_token",
        "encoder.pos_embedding",
        "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_11.mlp.3.weight",
        "encoder.ln.bias",
        "heads.head.weight",
    ):
        assert key in vit  # fmt: skip


def test_default_layers_give_torchvisions_block_counts_with_reused_relus(capsys) -> None:
    x = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    r18 = capture(resnet18(calibrate=False), x, progress=False)
    assert len(r18.names) == 1 + 40  # the input and 40 layers
    assert "layer1.0.relu#2" in r18.names and "layer2.0.downsample.0" in r18.names
    r50 = capture(resnet50(calibrate=False), x, progress=False)
    assert len(r50.names) == 1 + 105 and "layer4.2.relu#3" in r50.names
    vit = capture(vit_tiny(), np.random.default_rng(0).random((2, 3, 224, 224)).astype(
        np.float32), progress=False)  # fmt: skip
    # conv_proj, 12 × (mlp.0, mlp.1, mlp.3), heads.head; out_proj never runs as a module
    assert len(vit.names) == 1 + 1 + 36 + 1
    assert "12 default layer(s) never ran" in capsys.readouterr().err


def test_weights_saved_in_the_same_layout_load_back(tmp_path) -> None:
    source = resnet18(seed=1, calibrate=False).eval()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    target = load_torchvision_weights(resnet18(seed=2, calibrate=False), path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_the_seed_fixes_the_weights_and_calibration_keeps_activations_sane() -> None:
    a, b = resnet18(seed=3), resnet18(seed=3)
    torch.testing.assert_close(a.state_dict()["fc.weight"], b.state_dict()["fc.weight"])
    with torch.no_grad():
        out = resnet50().eval()(torch.rand(2, 3, 64, 64))
    assert torch.isfinite(out).all() and float(out.abs().max()) < 1e3
