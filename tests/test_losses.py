"""Losses against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from model.train.losses import (
    BatchHardTripletLoss,
    ContrastiveLoss,
    DistillationLoss,
    contrastive_loss,
)


def test_contrastive_pair_values_by_hand():
    d = torch.tensor([0.5, 0.5, 1.5, 0.2])
    y = torch.tensor([0, 1, 1, 1])  # 0 = same person, 1 = different people
    out = contrastive_loss(d, y, margin=1.0)
    # same: d² = 0.25; diff inside margin: (1-0.5)² = 0.25; diff beyond margin: 0;
    # diff at 0.2: (0.8)² = 0.64
    assert out.tolist() == pytest.approx([0.25, 0.25, 0.0, 0.64])


def test_batch_contrastive_by_hand():
    # four points on a line; labels a a b b
    emb = torch.tensor([[0.0, 0.0], [0.6, 0.0], [1.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # positives: d(0,1)=0.6 → 0.36; d(2,3)=2.0 → 4.0; mean 2.18
    # negatives (margin 1.5): d(0,2)=1.0 → 0.25; d(0,3)=3 → 0; d(1,2)=0.4 → 1.21; d(1,3)=2.4 → 0
    # active negatives mean = (0.25 + 1.21) / 2 = 0.73
    loss = ContrastiveLoss(margin=1.5)(emb, labels)
    assert float(loss) == pytest.approx(2.18 + 0.73, abs=1e-5)
    all_neg = ContrastiveLoss(margin=1.5, active_negatives=False)(emb, labels)
    assert float(all_neg) == pytest.approx(2.18 + 1.46 / 4, abs=1e-5)


def test_batch_hard_triplet_by_hand():
    emb = torch.tensor([[0.0, 0.0], [0.6, 0.0], [1.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos 0.6, hardest neg 1.0 → 0.6-1.0+0.5 = 0.1
    # anchor 1: pos 0.6, neg 0.4 → 0.7;  anchor 2: pos 2.0, neg 0.4 → 2.1
    # anchor 3: pos 2.0, neg 2.4 → 0.1
    loss = BatchHardTripletLoss(margin=0.5)(emb, labels)
    assert float(loss) == pytest.approx((0.1 + 0.7 + 2.1 + 0.1) / 4, abs=1e-5)


def test_contrastive_gradient_is_finite_for_identical_embeddings():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    ContrastiveLoss()(emb, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(emb.grad).all()
    assert not math.isnan(float(emb.grad.abs().sum()))


def test_cosine_distillation_by_hand():
    loss = DistillationLoss("cosine")
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert loss(s, s * 3).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    t = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # orthogonal, then opposite: (1 + 2) / 2
    assert loss(s, t).item() == pytest.approx(1.5)


def test_relational_distillation_matches_relations_not_coordinates():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    loss = DistillationLoss("relational")
    assert loss(teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert DistillationLoss("cosine")(teacher @ rotation, teacher).item() > 0.1
    assert loss(torch.randn(16, 8), teacher).item() > 0.01
    # hand value: two students at 90 degrees, teachers identical → (0 - 1)^2 on both off-diagonals
    assert loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        DistillationLoss("mse-on-logits")
