"""Evaluation math on synthetic distances with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from model.evaluate.lfw import identities_in, parse_folds, read_pairs
from model.evaluate.metrics import (
    accuracy_at,
    best_threshold,
    equal_error_rate,
    kfold_accuracy,
    roc_auc,
    summarize,
    tar_at_far,
)


def test_perfectly_separated_distances():
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    t = best_threshold(d, same)
    assert 0.3 < t < 0.9
    assert accuracy_at(d, same, t) == 1.0
    assert roc_auc(d, same) == 1.0
    assert equal_error_rate(d, same) == 0.0


def test_known_overlap():
    # same: 0.1 0.2 0.6 0.8; different: 0.5 0.7 0.9 1.0
    d = np.array([0.1, 0.2, 0.6, 0.8, 0.5, 0.7, 0.9, 1.0])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    # pairs (pos < neg): 0.1→4, 0.2→4, 0.6→3, 0.8→2  = 13 of 16
    assert roc_auc(d, same) == pytest.approx(13 / 16)
    # best accuracy: threshold between 0.2 and 0.5 → 6/8, or between 0.8 and 0.9 → 6/8
    assert accuracy_at(d, same, best_threshold(d, same)) == pytest.approx(6 / 8)
    # FAR 0 allowed → accept only below 0.5 → TAR 2/4
    tar, thr = tar_at_far(d, same, 0.0)
    assert tar == pytest.approx(0.5) and 0.2 < thr <= 0.5
    # FAR ≤ 25 % → one negative (0.5) may pass → accept below 0.7 → TAR 3/4
    assert tar_at_far(d, same, 0.25)[0] == pytest.approx(0.75)


def test_ties_count_half_in_auc():
    d = np.array([0.5, 0.5])
    same = np.array([True, False])
    assert roc_auc(d, same) == 0.5


def test_kfold_threshold_comes_from_other_folds():
    # fold 1 alone would prefer a threshold near 0.45; folds 2 and 3 agree on ~0.25
    d = np.array([0.4, 0.5, 0.2, 0.3, 0.2, 0.3])
    same = np.array([1, 0, 1, 0, 1, 0], bool)
    folds = np.array([1, 1, 2, 2, 3, 3])
    res = {r.fold: r for r in kfold_accuracy(d, same, folds)}
    assert res[1].threshold == pytest.approx(0.25)
    assert res[1].accuracy == 0.5  # 0.4 is rejected by a threshold learnt elsewhere
    assert res[2].accuracy == 1.0


def test_summary_has_every_figure():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.normal(0.6, 0.1, 500), rng.normal(1.0, 0.1, 500)])
    same = np.arange(1000) < 500
    s = summarize(d, same)
    # two unit-variance-scaled normals 4 sd apart: AUC = Φ(4/√2) ≈ 0.9977
    assert s["auc"] == pytest.approx(0.9977, abs=0.004)
    assert 0.95 < s["accuracy_at_best_threshold"] < 0.99
    assert s["tar_at_far_1e-2"] < 1 and s["tar_at_far_1e-3"] <= s["tar_at_far_1e-2"]


def test_lfw_protocol_files_parse(lfw_images):
    view2 = read_pairs(lfw_images.parent / "pairs.txt")
    assert len(view2) == 6000 and {p.fold for p in view2} == set(range(1, 11))
    assert sum(p.same for p in view2) == 3000
    assert view2[0].left.endswith("_0001.jpg") and view2[0].same
    dev = read_pairs(lfw_images.parent / "pairsDevTest.txt")
    assert len(dev) == 1000
    for p in view2[:50] + dev[:50]:
        assert (lfw_images / p.left).is_file() and (lfw_images / p.right).is_file()
    assert identities_in(view2, {1}) < identities_in(view2)
    assert parse_folds("1-3,7") == {1, 2, 3, 7}
