"""The Siamese encoder: one backbone shared by both branches, L2-normalised output.

Two faces are compared by the Euclidean distance between their unit embeddings
(d = sqrt(2 - 2·cos)), the distance the contrastive loss is trained on.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.face.preprocess import PreprocessSpec, spec_for_arch
from model.nn.backbones import build_backbone

DEFAULT_ARCH: dict[str, Any] = {"arch": "mobilefacenet", "embedding_dim": 128}


class SiameseEncoder(nn.Module):
    """`flip_tta`: in eval mode, embed the crop and its mirror image and normalise their sum
    (test-time augmentation). It is an inference setting, not part of the weights: the model
    card's `inference.flip_tta` sets it when the encoder is loaded, so evaluation and the
    service embed faces the same way.

    `spec`: the preprocessing the weights were trained with (crop geometry and pixel
    normalisation, model/face/preprocess.py); it travels with the weights file."""

    def __init__(self, arch: dict[str, Any] | None = None, flip_tta: bool = False,
                 spec: PreprocessSpec | None = None):
        super().__init__()
        self.arch = dict(arch or DEFAULT_ARCH)
        self.backbone = build_backbone(self.arch)
        self.flip_tta = flip_tta
        self.spec = spec or spec_for_arch(self.arch)

    def prepare(self, crops) -> torch.Tensor:
        """(N, S, S, 3) uint8 aligned crops → the normalised input tensor (on the CPU)."""
        return self.spec.to_tensor(crops)

    @property
    def embedding_dim(self) -> int:
        return int(self.arch.get("embedding_dim", 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised crops → (N, D) unit vectors."""
        emb = self.backbone(x)
        if self.flip_tta and not self.training:
            emb = emb + self.backbone(x.flip(3))
        return F.normalize(emb, dim=1)

    def forward_pair(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Both branches through the same weights in one pass; returns the distances."""
        emb = self(torch.cat([a, b]))
        return pair_distance(emb[: len(a)], emb[len(a):])


def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between matching rows of two batches of embeddings."""
    return (a - b).pow(2).sum(1).clamp_min(0).sqrt()


@torch.inference_mode()
def embed_crops(encoder: SiameseEncoder, crops, batch_size: int = 256) -> torch.Tensor:
    """Embed (N, S, S, 3) uint8 aligned crops in batches; returns (N, D) on the CPU."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(crops), batch_size):
        x = encoder.prepare(crops[i:i + batch_size]).to(device)
        out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embedding_dim)
