"""Verification metrics on pair distances (smaller distance = more likely the same person).

`same` is a boolean array: True for same-person pairs. A pair is predicted "same" when its
distance is below the threshold (strictly less).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def accuracy_at(d: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((d < threshold) == same))


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the highest accuracy; ties → the middle of the best gap."""
    d, same = np.asarray(d, float), np.asarray(same, bool)
    order = np.sort(np.unique(d))
    candidates = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    # vectorised accuracy for every candidate: sort once, count with searchsorted
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    tp = np.searchsorted(pos, candidates, side="left")  # same pairs with d < t
    fp = np.searchsorted(neg, candidates, side="left")
    acc = (tp + (len(neg) - fp)) / len(d)
    return float(candidates[int(np.argmax(acc))])


def roc_curve(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), far increasing; a pair counts as accepted when d < threshold."""
    d, same = np.asarray(d, float), np.asarray(same, bool)
    thresholds = np.concatenate([[-np.inf], np.sort(np.unique(d)) + 1e-9])
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    tar = np.searchsorted(pos, thresholds, side="left") / max(len(pos), 1)
    far = np.searchsorted(neg, thresholds, side="left") / max(len(neg), 1)
    return far, tar, thresholds


def roc_auc(d: np.ndarray, same: np.ndarray) -> float:
    """Probability a random same pair is closer than a random different pair (ties count ½)."""
    d, same = np.asarray(d, float), np.asarray(same, bool)
    pos, neg = d[same], np.sort(d[~same])
    greater = len(neg) - np.searchsorted(neg, pos, side="right")
    ties = np.searchsorted(neg, pos, side="right") - np.searchsorted(neg, pos, side="left")
    return float((greater + 0.5 * ties).sum() / (len(pos) * len(neg)))


def tar_at_far(d: np.ndarray, same: np.ndarray, far_target: float) -> tuple[float, float]:
    """Highest TAR with FAR ≤ target, and the threshold that gives it."""
    far, tar, thr = roc_curve(d, same)
    ok = np.nonzero(far <= far_target + 1e-12)[0]
    i = ok[-1]
    return float(tar[i]), float(thr[i])


def equal_error_rate(d: np.ndarray, same: np.ndarray) -> float:
    far, tar, _ = roc_curve(d, same)
    frr = 1 - tar
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


@dataclass
class FoldResult:
    fold: int
    threshold: float
    accuracy: float


def kfold_accuracy(d: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[FoldResult]:
    """LFW View 2 rule: for each fold, choose the threshold on the other folds, test on it."""
    d, same, folds = np.asarray(d, float), np.asarray(same, bool), np.asarray(folds)
    if len(np.unique(folds)) < 2:
        raise ValueError("k-fold accuracy needs at least two folds to choose thresholds on")
    out = []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        t = best_threshold(d[train], same[train])
        out.append(FoldResult(int(k), t, accuracy_at(d[test], same[test], t)))
    return out


def summarize(d: np.ndarray, same: np.ndarray) -> dict:
    """AUC, EER, TAR at FAR 1 % and 0.1 % with their thresholds, and the best threshold."""
    tar1, thr1 = tar_at_far(d, same, 0.01)
    tar01, thr01 = tar_at_far(d, same, 0.001)
    t = best_threshold(d, same)
    return {
        "pairs": int(len(d)), "auc": roc_auc(d, same), "eer": equal_error_rate(d, same),
        "tar_at_far_1e-2": tar1, "threshold_at_far_1e-2": thr1,
        "tar_at_far_1e-3": tar01, "threshold_at_far_1e-3": thr01,
        "best_threshold": t, "accuracy_at_best_threshold": accuracy_at(d, same, t),
    }


def open_set_identification(mated_correct: np.ndarray, mated_d: np.ndarray,
                            non_mated_d: np.ndarray, threshold: float) -> dict:
    """1:N figures at one threshold (ISO/IEC 19795-1 terms).

    mated_correct: per mated probe, is the rank-1 candidate its own person; mated_d: that
    candidate's distance; non_mated_d: per non-mated probe, its rank-1 distance.
    DIR (detection and identification rate): mated probes whose rank-1 is right and within
    the threshold. FNIR = 1 - DIR. FPIR: non-mated probes whose rank-1 is within it."""
    dir_ = float(np.mean(mated_correct & (mated_d < threshold)))
    return {"threshold": float(threshold), "dir": dir_, "fnir": 1 - dir_,
            "fpir": float(np.mean(non_mated_d < threshold)),
            "mated_matched_wrong_person": float(np.mean(~mated_correct & (mated_d < threshold)))}


def threshold_at_fpir(non_mated_d: np.ndarray, fpir: float) -> float:
    """The largest threshold whose FPIR is at most `fpir` (matches are `d < threshold`)."""
    d = np.sort(non_mated_d)
    k = int(np.floor(fpir * len(d)))  # at most k non-mated probes may fall below
    return float(d[k]) if k < len(d) else float("inf")


def rank_subjects(gallery: np.ndarray, labels: np.ndarray, probes: np.ndarray, top_k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1:N ranking of unit vectors: for each probe, the `top_k` subjects (integer
    labels of the gallery rows) by their nearest gallery vector, nearest first, and those
    distances (Euclidean). The reference the service's search is tested against."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    best = np.maximum.reduceat(probes @ gallery[order].T, starts, axis=1)  # probe × subject
    top = np.argsort(-best, axis=1, kind="stable")[:, :top_k]
    distances = np.sqrt(np.clip(2 - 2 * np.take_along_axis(best, top, 1), 0, None))
    return sorted_labels[starts][top], distances


def identification_summary(ranked: np.ndarray, distances: np.ndarray, truth: np.ndarray,
                           thresholds: dict[str, float]) -> dict:
    """Closed- and open-set figures from `rank_subjects`' answers. `truth`: each probe's own
    label, or -1 for a non-mated probe (a person not in the gallery)."""
    mated = truth >= 0
    rank1 = ranked[mated, 0] == truth[mated]
    rank5 = (ranked[mated, :5] == truth[mated, None]).any(1)
    mated_d, non_d = distances[mated, 0], distances[~mated, 0]
    at = {name: open_set_identification(rank1, mated_d, non_d, t)
          for name, t in thresholds.items()}
    for fpir in (0.1, 0.01, 0.001):
        at[f"fpir_{fpir:g}"] = open_set_identification(rank1, mated_d, non_d,
                                                       threshold_at_fpir(non_d, fpir))
    return {"mated_probes": int(mated.sum()), "non_mated_probes": int((~mated).sum()),
            "rank1": float(rank1.mean()), "rank5": float(rank5.mean()), "open_set": at,
            "mated_rank1_distance_p50": float(np.median(mated_d)),
            "non_mated_rank1_distance_p50": float(np.median(non_d))}
