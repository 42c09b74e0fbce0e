"""Open-set identification thresholds: an impostor table, and the threshold that holds a target
false-positive identification rate (FPIR) at a gallery's size.

A 1:N search compares a probe with every enrolled face, so a stranger has N chances to be
accepted: FPIR ≈ 1 - (1 - FAR)^N ≈ N·FAR, where FAR is the per-comparison false-accept rate
at the threshold. A fixed threshold therefore lets more strangers through as a gallery grows;
holding FPIR needs the threshold at FAR = FPIR / N, read from the encoder's impostor table
(the distances below which a given fraction of cross-identity pairs fall). This module builds
that table (`impostor_table`, for `python -m model.evaluate --protocol impostors`, which
writes it into the model card) and reads it (`threshold_for_fpir`, used by the service's
identify and by the identify evaluation, so both apply the same rule).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

# The table's FAR points: 1-2-5 steps per decade from 1e-2 down to 1e-9 (the smallest a set's
# pair count supports is kept: LFW's 87 M pairs reach 1e-7).
FAR_POINTS = tuple(float(f"{m}e-{e}") for e in range(2, 10) for m in (1, 0.5, 0.2))[:-2]
MIN_PAIRS_BELOW = 5  # a FAR point is reported only when at least this many pairs fall below


def impostor_table(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 512,
                   max_far: float = FAR_POINTS[0]) -> dict:
    """Every cross-identity pair of unit `embeddings` (rows with different `labels`), scored
    in row chunks; only the closest `max_far` share is kept (as similarities), so memory is
    that share, not the pairs. Returns {"pairs", "rows": [{"far", "distance",
    "pairs_below"}...]}: for each FAR point with at least MIN_PAIRS_BELOW pairs below it, the
    distance below which that share of pairs falls (matches are `distance < threshold`)."""
    e = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(e)
    _, counts = np.unique(labels, return_counts=True)
    pairs = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    keep = max(1, math.ceil(max_far * pairs))
    cols = np.arange(n)
    best = np.empty(0, np.float32)  # the largest similarities seen, unsorted
    cutoff = -np.inf
    for i0 in range(0, n, chunk):
        rows = np.arange(i0, min(n, i0 + chunk))
        sims = e[rows] @ e.T
        impostor = (cols[None, :] > rows[:, None]) & (labels[None, :] != labels[rows, None])
        found = sims[impostor & (sims > cutoff)]
        best = np.concatenate([best, found])
        if len(best) > 2 * keep:
            best = np.partition(best, len(best) - keep)[-keep:]
            cutoff = float(best.min())
    best = np.sort(best)[::-1]  # most similar first: best[k] is the (k+1)-th closest pair
    table = []
    for far in FAR_POINTS:
        k = int(far * pairs)  # pairs allowed strictly below the threshold
        if far > max_far or k < MIN_PAIRS_BELOW or k >= len(best):
            continue
        s = float(best[k])
        # rounded down: a threshold never admits the next closer pair
        d = math.floor(math.sqrt(max(0.0, 2 - 2 * s)) * 1e5) / 1e5
        table.append({"far": far, "distance": d, "pairs_below": k})
    return {"pairs": pairs, "rows": table}


@dataclass(frozen=True)
class FpirThreshold:
    """The identify threshold for a gallery: `distance`, the per-comparison `far` it stands
    for, and whether the table could not go that low (`floored`: its smallest FAR was used,
    so FPIR may be above target) or that high (`capped`: its largest FAR was used, stricter
    than needed)."""

    distance: float
    far: float
    floored: bool = False
    capped: bool = False


def threshold_for_fpir(rows: list[dict], fpir: float, comparisons: int) -> FpirThreshold:
    """The table's distance at FAR = fpir / comparisons, interpolated linearly in log10(FAR)
    between its points; below its smallest FAR, the smallest (floored), above its largest,
    the largest (capped)."""
    if not rows:
        raise ValueError("the impostor table is empty")
    pts = sorted((float(r["far"]), float(r["distance"])) for r in rows)  # ascending FAR
    far = fpir / max(1, int(comparisons))
    if far <= pts[0][0]:
        return FpirThreshold(pts[0][1], pts[0][0], floored=far < pts[0][0])
    if far >= pts[-1][0]:
        return FpirThreshold(pts[-1][1], pts[-1][0], capped=far > pts[-1][0])
    x = math.log10(far)
    for (f0, d0), (f1, d1) in itertools.pairwise(pts):
        if f0 <= far <= f1:
            t = (x - math.log10(f0)) / (math.log10(f1) - math.log10(f0))
            return FpirThreshold(d0 + t * (d1 - d0), far)
    raise AssertionError("unreachable")
