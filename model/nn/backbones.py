"""Backbones for the Siamese encoder (112x112 RGB input unless noted), built from a config dict.

- `mobilefacenet`: MobileFaceNet-style (Chen et al. 2018): inverted residuals, PReLU, and a
  global depthwise conv (GDC) head that keeps the face's spatial layout. Width and depth are
  configurable.
- `mnv3s`: torchvision's MobileNetV3-Small trunk with the same GDC head.
- `iresnet`: a narrow IResNet (insightface's `iresnet` blocks: BN-conv-BN-PReLU-conv-BN with a
  projection shortcut), sized for CPU: a stride-2 stem, three stride-2 stages, the GDC head.
- `dlib-resnet`: dlib's face-recognition ResNet (150x150 chips; model/nn/dlib_resnet.py), which
  `python -m model.convert.dlib` fills with dlib's public-domain weights.
- `koch`: the origin tutorial's Koch-et-al. convnet (64@10, 128@7, 128@4, 256@4, fc 4096),
  with its fc layer sized to the actual input; kept as a reference point.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.nn.dlib_resnet import DlibResNet


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, stride, groups=mid),
            _conv_bn(mid, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class GDCHead(nn.Module):
    """Global depthwise conv over the final feature map, then a linear embedding + BN."""

    def __init__(self, channels: int, spatial: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__()
        self.gdc = nn.Sequential(
            nn.Conv2d(channels, channels, spatial, groups=channels, bias=False),
            nn.BatchNorm2d(channels))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(channels, embedding_dim, bias=False)
        # No affine parameters: each embedding dimension stays zero-mean, unit-variance over a
        # batch, so the unit vectors cannot all drift to one shared direction (the collapse a
        # contrastive loss invites while negatives start outside the margin).
        self.bn = nn.BatchNorm1d(embedding_dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.drop(self.gdc(x).flatten(1))))


class MobileFaceNet(nn.Module):
    # (expansion, out channels, repeats, stride) at width 1.0 — MobileFaceNet's stages.
    STAGES = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]

    def __init__(self, embedding_dim: int = 128, width: float = 1.0,
                 depth: list[int] | None = None, final_channels: int = 512,
                 dropout: float = 0.0, input_size: int = 112):
        super().__init__()
        c = lambda n: max(8, int(round(n * width / 8)) * 8)
        stem = c(64)
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, 2), _conv_bn(stem, stem, 3, 1, groups=stem)]
        cin = stem
        repeats = depth or [s[2] for s in self.STAGES]
        for (t, cout, _, s), n in zip(self.STAGES, repeats):
            for i in range(n):
                layers.append(InvertedResidual(cin, c(cout), s if i == 0 else 1, t))
                cin = c(cout)
        final = c(final_channels)
        layers.append(_conv_bn(cin, final, 1))
        self.features = nn.Sequential(*layers)
        self.head = GDCHead(final, input_size // 16, embedding_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MobileNetV3SmallFace(nn.Module):
    def __init__(self, embedding_dim: int = 128, width: float = 1.0, dropout: float = 0.0,
                 input_size: int = 112):
        super().__init__()
        from torchvision.models import mobilenet_v3_small
        self.features = mobilenet_v3_small(weights=None, width_mult=width).features
        for m in self.features.modules():
            if isinstance(m, nn.BatchNorm2d):
                # torchvision's 0.01 suits ImageNet-length runs; over a few hundred steps it
                # leaves the running statistics stale and eval-mode outputs collapse.
                m.momentum = 0.1
        channels = self.features[-1].out_channels
        self.head = GDCHead(channels, input_size // 32 + (1 if input_size % 32 else 0),
                            embedding_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class IBasicBlock(nn.Module):
    """IResNet's pre-activation-style basic block (stride on the first conv, for CPU cost)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout), nn.PReLU(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class NarrowIResNet(nn.Module):
    def __init__(self, embedding_dim: int = 128, stem: int = 32,
                 widths: list[int] | None = None, blocks: list[int] | None = None,
                 final_channels: int = 256, dropout: float = 0.0, input_size: int = 112):
        super().__init__()
        widths = widths or [48, 64, 128]
        blocks = blocks or [2, 2, 2]
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, 2)]
        cin = stem
        for w, n in zip(widths, blocks):
            for i in range(n):
                layers.append(IBasicBlock(cin, w, 2 if i == 0 else 1))
                cin = w
        layers.append(_conv_bn(cin, final_channels, 1))
        self.features = nn.Sequential(*layers)
        spatial = input_size // 2 // 2 ** len(widths)
        self.head = GDCHead(final_channels, spatial, embedding_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class KochNet(nn.Module):
    """Koch et al. (2015) Siamese convnet, fc sized to the real feature map."""

    def __init__(self, embedding_dim: int = 128, input_size: int = 112, fc: int = 4096):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 10), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True))
        with torch.no_grad():
            n = self.features(torch.zeros(1, 3, input_size, input_size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, fc), nn.Sigmoid(),
                                  nn.Linear(fc, embedding_dim), nn.BatchNorm1d(embedding_dim, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES = {"mobilefacenet": MobileFaceNet, "mnv3s": MobileNetV3SmallFace,
                 "iresnet": NarrowIResNet, "koch": KochNet, "dlib-resnet": DlibResNet}


def build_backbone(config: dict[str, Any]) -> nn.Module:
    """Build a backbone from {"arch": name, **kwargs}."""
    config = dict(config)
    arch = config.pop("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**config)
