"""Real-size reference networks in torchvision's module layout: ResNet-18, ResNet-50, ViT.

torchvision does not import beside the CPU build of torch this project pins, so these are our
own implementations of the same architectures with the same module names, parameter names and
forward passes (``resnet.py`` and ``vision_transformer.py`` of torchvision 0.2x): a state dict
saved from torchvision's ``resnet18()``, ``resnet50()`` or ``vit_b_16()`` loads into them
unchanged (:func:`load_torchvision_weights`), and the layer names a user knows
(``layer3.1.conv2``, ``encoder.layers.encoder_layer_4.mlp.0``) are the ones factorlens shows.

The layouts keep torchvision's details that matter to a capture: the ``ReLU`` of a residual
block is one module called two (BasicBlock) or three (Bottleneck) times per forward pass, so it
gives blocks ``relu``, ``relu#2``, ``relu#3``; the projection shortcut is ``downsample.0``; a ViT
encoder block's attention is an ``nn.MultiheadAttention``, which returns a tuple and whose
``out_proj`` never runs as a module.

Weights are random with a fixed seed (``seed``): Kaiming-normal convolutions as torchvision
initialises them, and the batch norms' running statistics calibrated on a few random batches
(``calibrate``), so that activations keep a sane scale through 16 residual blocks in eval mode.
ViT weights follow torchvision's initialisation except the classification head, which
torchvision sets to zero (a block of zeros says nothing) and which is normal here.

The command line reaches them as model files, for example
``--model src/factorlens/research/torchvision_layout.py:ResNet50``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "ViTSmall",
    "ViTTiny",
    "VisionTransformer",
    "load_torchvision_weights",
    "resnet18",
    "resnet50",
    "vit_b_16",
    "vit_small",
    "vit_tiny",
]


# ------------------------------------------------------------------------------------ ResNet
def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's two-conv residual block; ``relu`` runs twice per forward pass."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, inplanes, H, W) -> (N, planes, H/stride, W/stride)."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's 1×1–3×3–1×1 residual block (stride on the 3×3, "ResNet v1.5").

    ``relu`` runs three times per forward pass.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, inplanes, H, W) -> (N, 4·planes, H/stride, W/stride)."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet: stem, four stages ``layer1``–``layer4``, ``avgpool``, ``fc``.

    Parameters
    ----------
    block : type
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers : sequence of int
        Residual blocks per stage (``[2, 2, 2, 2]`` for ResNet-18, ``[3, 4, 6, 3]`` for 50).
    num_classes : int
        Outputs of ``fc``.
    seed : int or None
        Seed of the random weights; ``None`` leaves torch's global generator as it is.
    calibrate : bool
        Set the batch norms' running statistics from a few batches of random 224 px images
        (uniform pixels), so activations keep their scale in eval mode.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        seed: int | None = 0,
        calibrate: bool = True,
    ) -> None:
        super().__init__()
        with _seeded(seed):
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
            if calibrate:
                calibrate_batchnorm(self)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, seed: int | None = 0, calibrate: bool = True) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2): 40 default layers at 224 px, 5.0 M floats per input."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, seed, calibrate)


def resnet50(num_classes: int = 1000, seed: int | None = 0, calibrate: bool = True) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3): 105 default layers at 224 px, 20.9 M floats per input."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, seed, calibrate)


class ResNet18(ResNet):
    """:func:`resnet18` as a class, for ``--model FILE.py:ResNet18`` (1000 classes, seed 0)."""

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2])


class ResNet50(ResNet):
    """:func:`resnet50` as a class, for ``--model FILE.py:ResNet50`` (1000 classes, seed 0)."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])


# ----------------------------------------------------------------------- Vision Transformer
class MLPBlock(nn.Sequential):
    """torchvision's ViT MLP: ``0`` Linear, ``1`` GELU, ``2`` Dropout, ``3`` Linear, ``4`` Dropout."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """torchvision's pre-norm transformer block (``ln_1``, ``self_attention``, ``ln_2``, ``mlp``).

    ``self_attention`` is an ``nn.MultiheadAttention``: it returns ``(output, weights)``, so a
    capture of it needs ``select={name: 0}``, and its ``out_proj`` runs inside it, not as a
    module of its own.
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, tokens, hidden) -> (N, tokens, hidden)."""
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = self.dropout(y) + x
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding, ``layers.encoder_layer_<i>``, final ``ln`` (torchvision's names)."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(
                        num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, norm_layer
                    ),
                )
                for i in range(num_layers)
            )
        )
        self.ln = norm_layer(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, tokens, hidden) -> (N, tokens, hidden)."""
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision's ViT: ``conv_proj`` patches, ``class_token``, ``encoder``, ``heads.head``.

    Parameters
    ----------
    image_size, patch_size : int
        Input side in pixels and patch side; ``(image_size // patch_size)² + 1`` tokens.
    num_layers, num_heads, hidden_dim, mlp_dim : int
        The encoder's depth, heads, token width and MLP width.
    num_classes : int
        Outputs of ``heads.head``.
    seed : int or None
        Seed of the random weights.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        num_classes: int = 1000,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        with _seeded(seed):
            self.image_size = image_size
            self.patch_size = patch_size
            self.hidden_dim = hidden_dim
            self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
            seq_length = (image_size // patch_size) ** 2 + 1
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            norm = partial(nn.LayerNorm, eps=1e-6)
            self.encoder = Encoder(
                seq_length, num_layers, num_heads, hidden_dim, mlp_dim, 0.0, 0.0, norm
            )
            self.seq_length = seq_length
            head = nn.Linear(hidden_dim, num_classes)
            self.heads = nn.Sequential(OrderedDict(head=head))
            fan_in = 3 * patch_size**2
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
            assert self.conv_proj.bias is not None  # a Conv2d's bias, on by default
            nn.init.zeros_(self.conv_proj.bias)
            nn.init.normal_(head.weight, std=hidden_dim**-0.5)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, image_size, image_size) -> (N, num_classes) logits (from the class token)."""
        n, _, h, w = x.shape
        p = self.patch_size
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(num_classes: int = 1000, seed: int | None = 0) -> VisionTransformer:
    """Torchvision's ViT-B/16 configuration: 224 px, 12 layers, 12 heads, width 768."""
    return VisionTransformer(224, 16, 12, 12, 768, 3072, num_classes, seed)


def vit_small(num_classes: int = 1000, seed: int | None = 0) -> VisionTransformer:
    """ViT-S/16 (Touvron et al. 2021) in torchvision's layout: 12 layers, 6 heads, width 384."""
    return VisionTransformer(224, 16, 12, 6, 384, 1536, num_classes, seed)


def vit_tiny(num_classes: int = 1000, seed: int | None = 0) -> VisionTransformer:
    """ViT-Ti/16 in torchvision's layout: 12 layers, 3 heads, width 192."""
    return VisionTransformer(224, 16, 12, 3, 192, 768, num_classes, seed)


class ViTSmall(VisionTransformer):
    """:func:`vit_small` as a class, for ``--model FILE.py:ViTSmall`` (seed 0)."""

    def __init__(self) -> None:
        super().__init__(224, 16, 12, 6, 384, 1536)


class ViTTiny(VisionTransformer):
    """:func:`vit_tiny` as a class, for ``--model FILE.py:ViTTiny`` (seed 0)."""

    def __init__(self) -> None:
        super().__init__(224, 16, 12, 3, 192, 768)


# --------------------------------------------------------------------------------- helpers
class _seeded:
    """Context: torch's global generator seeded, and restored afterwards (``None``: untouched)."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.state: torch.Tensor | None = None

    def __enter__(self) -> None:
        if self.seed is not None:
            self.state = torch.random.get_rng_state()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.state is not None:
            torch.random.set_rng_state(self.state)


@torch.no_grad()
def calibrate_batchnorm(
    model: nn.Module, batches: int = 2, batch_size: int = 8, size: int = 112
) -> nn.Module:
    """Set every batch norm's running statistics from random images (uniform pixels).

    The model runs ``batches`` forward passes in training mode with cumulative averaging, then
    returns to its previous mode. Returns ``model``.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    was = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for _ in range(batches):
        model(torch.rand(batch_size, 3, size, size))
    for m in norms:
        m.momentum = 0.1
    model.train(was)
    return model


def load_torchvision_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True
) -> nn.Module:
    """Load a state dict saved from the same torchvision architecture into ``model``.

    ``torch.save(torchvision.models.resnet50(weights=...).state_dict(), path)`` on a machine
    with torchvision gives such a file; it is read with ``weights_only=True`` (no code runs).
    Returns ``model``.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state, strict=strict)
    return model
