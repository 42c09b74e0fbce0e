"""Metric-learning losses on unit embeddings.

Label convention (the origin's, Hadsell, Chopra & LeCun 2006): y = 0 for a pair of the SAME
person, y = 1 for DIFFERENT people. With d the Euclidean distance between the two embeddings:

    L(d, y) = (1 - y) · d²  +  y · max(0, m - d)²

Same-person pairs are pulled together; different-person pairs are pushed apart until they are
at least the margin m apart.
"""
from __future__ import annotations

import torch
from torch import nn


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """(N, D) → (N, N) Euclidean distances, with a gradient-safe sqrt at 0."""
    sq = torch.cdist(emb, emb).pow(2) if emb.device.type != "cpu" else (
        (emb.unsqueeze(1) - emb.unsqueeze(0)).pow(2).sum(-1))
    return sq.clamp_min(1e-12).sqrt()


def contrastive_loss(d: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Per-pair contrastive loss; y = 1 means DIFFERENT people (see module docstring)."""
    y = y.to(d.dtype)
    return (1 - y) * d.pow(2) + y * (margin - d).clamp_min(0).pow(2)


class ContrastiveLoss(nn.Module):
    """Contrastive loss over every pair in a P×K batch.

    The same-person and different-person terms are averaged separately and added, so the
    many easy negatives of a P×K batch do not drown the few positives; negatives already
    beyond the margin contribute zero and are left out of their mean (`active_negatives`).
    """

    def __init__(self, margin: float = 1.0, active_negatives: bool = True):
        super().__init__()
        self.margin = margin
        self.active_negatives = active_negatives

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(emb)
        n = len(labels)
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=emb.device), diagonal=1)
        same = (labels[:, None] == labels[None, :]) & upper
        diff = (labels[:, None] != labels[None, :]) & upper
        per_pair = contrastive_loss(d, diff.long(), self.margin)
        pos = per_pair[same].mean() if same.any() else d.new_zeros(())
        neg_losses = per_pair[diff]
        if self.active_negatives:
            neg_losses = neg_losses[neg_losses > 0]
        neg = neg_losses.mean() if neg_losses.numel() else d.new_zeros(())
        return pos + neg


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017): for each anchor, its farthest positive
    and nearest negative in the batch, `mean(max(0, d(a,p) - d(a,n) + m))`."""

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(emb)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
        pos_mask = same & ~eye
        hardest_pos = torch.where(pos_mask, d, torch.zeros_like(d)).amax(1)
        hardest_neg = torch.where(same, torch.full_like(d, float("inf")), d).amin(1)
        valid = pos_mask.any(1) & torch.isfinite(hardest_neg)
        losses = (hardest_pos - hardest_neg + self.margin).clamp_min(0)
        return losses[valid].mean() if valid.any() else d.new_zeros(())


class DistillationLoss(nn.Module):
    """Match the student's unit embeddings to the teacher's (centred, unit) vectors.

    - `cosine`: mean of 1 - cos(student_i, teacher_i) — each face's position in the
      teacher's space (needs equal dimensions);
    - `relational`: mean squared difference between the two batches' cosine-similarity
      matrices, off the diagonal — only the pairwise relations, which are what verification
      uses (any dimensions).
    """

    KINDS = ("cosine", "relational")

    def __init__(self, kind: str = "cosine"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown distillation loss {kind!r}; choose from {self.KINDS}")
        self.kind = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = nn.functional.normalize(student, dim=1)
        t = nn.functional.normalize(teacher, dim=1)
        if self.kind == "cosine":
            return (1 - (s * t).sum(1)).mean()
        n = len(s)
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        return (s @ s.T - t @ t.T)[off].pow(2).mean()


LOSSES = {"contrastive": ContrastiveLoss, "triplet": BatchHardTripletLoss}


def build_loss(name: str, **kwargs) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
