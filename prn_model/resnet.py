"""The ResNet encoder of PRN (paper §3.3): torchvision-layout stages ``layer1..layer4`` without the stem.

The stem (7×7 conv + max-pool) is removed; PRN's input module (§3.2) feeds ``layer1`` at 1/4 resolution
instead. Every residual block starts with a CoordConv (the block's first convolution sees its input plus
the 2 coordinate channels), as §3.3 prescribes for each bottleneck. Module and parameter names follow
torchvision's ``ResNet`` (``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight`` …) so that a
torchvision state dict maps onto them by name (see :mod:`prn_model.pretrained`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .coordconv import CoordConv2d

#: Blocks per stage and block type for each supported depth (He et al. 2016, Table 1).
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"batch"`` → BatchNorm2d; ``"group"`` → GroupNorm (for batches too small for batch statistics) with
    32 groups where ``channels`` allows, always ≥ 2 channels per group so a 1×1 map still normalises."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, max(1, min(32, channels // 2))), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


def conv_norm_relu(
    in_channels: int, out_channels: int, kernel_size: int, *, norm: str, stride: int = 1, coords: bool = False
) -> nn.Sequential:
    """(Coord)Conv → norm → ReLU, 'same' padding; the conv has no bias since the norm supplies one."""
    return nn.Sequential(
        CoordConv2d(in_channels, out_channels, kernel_size, stride=stride, bias=False, with_coords=coords),
        make_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class StridedPointwise(nn.Conv2d):
    """A 1×1 convolution with stride ``s`` computed as a 1×1 convolution of every ``s``-th pixel: the same
    products and parameters (checkpoints and torchvision state dicts load unchanged).

    Why: torch 2.13's CPU backward of a strided 1×1 convolution on channels-last tensors corrupts the heap
    for some shapes (8 → 16 channels at 64×64 and larger aborts with "double free or corruption"), which
    the tiny test configurations and any narrow encoder hit; the sliced form takes another kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, 1, bias=False)
        self.step = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, :: self.step, :: self.step])


def _downsample(inplanes: int, outplanes: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(StridedPointwise(inplanes, outplanes, stride), make_norm(norm, outplanes))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions (ResNet-18/34); ``conv1`` is a CoordConv when ``coords``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, *, coords: bool, norm: str):
        super().__init__()
        self.conv1 = CoordConv2d(inplanes, planes, 3, stride=stride, bias=False, with_coords=coords)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, as torchvision's v1.5) → 1×1 ×4; ``conv1`` is a CoordConv when ``coords``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, *, coords: bool, norm: str):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = CoordConv2d(inplanes, planes, 1, bias=False, with_coords=coords)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = make_norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet stages 1–4 over an input already at 1/4 resolution.

    ``forward(x (B, in_channels, H/4, W/4))`` → list of 4 features at 1/4, 1/8, 1/16, 1/32 with
    ``self.out_channels`` channels (``widths[i] × expansion``).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        depth: int = 50,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        coords: bool = True,
        norm: str = "batch",
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        inplanes = in_channels
        self.out_channels: list[int] = []
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(block(inplanes, planes, stride if j == 0 else 1, coords=coords, norm=norm))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(inplanes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats
