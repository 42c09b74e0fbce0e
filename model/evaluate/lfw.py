"""LFW protocol files: View 1 (pairsDevTrain / pairsDevTest) and View 2 (pairs.txt, 10 folds).

Format (official): a header line, then one pair per line — `name i j` for a same-person pair,
`name1 i name2 j` for a different-person pair. View 2's header is `folds pairs_per_class`;
each fold lists its same pairs, then its different pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    left: str  # path relative to the LFW image root: <Person>/<Person>_NNNN.jpg
    right: str
    same: bool
    fold: int  # 1-based; View 1 files are a single fold


def image_path(name: str, index: int) -> str:
    return f"{name}/{name}_{int(index):04d}.jpg"


def identity_of(rel_path: str) -> str:
    return rel_path.split("/", 1)[0]


def read_pairs(path: str | Path) -> list[Pair]:
    """Parse a View 1 or View 2 pairs file into pairs with their fold numbers."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    header, rows = lines[0], lines[1:]
    if len(header) == 2:
        folds, per_class = int(header[0]), int(header[1])
    else:
        folds, per_class = 1, int(header[0])
    if len(rows) != folds * per_class * 2:
        raise ValueError(f"{path}: expected {folds * per_class * 2} pairs, found {len(rows)}")
    pairs = []
    for i, row in enumerate(rows):
        fold = i // (2 * per_class) + 1
        if len(row) == 3:
            pairs.append(Pair(image_path(row[0], row[1]), image_path(row[0], row[2]), True, fold))
        elif len(row) == 4:
            pairs.append(Pair(image_path(row[0], row[1]), image_path(row[2], row[3]), False, fold))
        else:
            raise ValueError(f"{path}: malformed line {i + 2}: {' '.join(row)}")
    return pairs


def pair_images(pairs: list[Pair]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The distinct images of these pairs (sorted), and for each pair the row of its left
    and of its right image in that list — so each image is embedded once."""
    paths = sorted({x for p in pairs for x in (p.left, p.right)})
    row = {x: i for i, x in enumerate(paths)}
    return (paths, np.array([row[p.left] for p in pairs], dtype=np.int64),
            np.array([row[p.right] for p in pairs], dtype=np.int64))


def identities_in(pairs: list[Pair], folds: set[int] | None = None) -> set[str]:
    """Every identity that appears in the given pairs (optionally only in some folds)."""
    names: set[str] = set()
    for p in pairs:
        if folds is None or p.fold in folds:
            names.add(identity_of(p.left))
            names.add(identity_of(p.right))
    return names


def parse_folds(spec: str | None) -> set[int] | None:
    """'1-5' or '1,2,3' or '6-10' → a set of fold numbers; None/'' → None (all)."""
    if not spec:
        return None
    folds: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            folds.update(range(int(lo), int(hi) + 1))
        else:
            folds.add(int(part))
    return folds


@dataclass(frozen=True)
class IdentificationSets:
    """LFW as a 1:N test: `gallery` is the first photo of every person with two or more,
    `mated` their other photos (each to be found as its person), `non_mated` one photo each
    of people with a single photo (who must not match anyone). Paths relative to the image
    root."""

    gallery: list[str]
    mated: list[str]
    non_mated: list[str]


def identification_sets(images_root: str | Path, non_mated: int = 1000, seed: int = 0,
                        people: int | None = None) -> IdentificationSets:
    """The sets from the image folders (LFW: 1,680 gallery people, 7,484 mated probes; the
    non-mated are a seeded sample of the 4,069 one-photo people). `people` keeps only the
    first so many gallery people (by name), for quick runs."""
    root = Path(images_root)
    photos = {d.name: sorted(p.name for p in d.glob("*.jpg")) for d in sorted(root.iterdir())
              if d.is_dir()}
    several = [n for n, files in photos.items() if len(files) >= 2][:people]
    single = [n for n, files in photos.items() if len(files) == 1]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(single), size=min(non_mated, len(single)), replace=False))
    return IdentificationSets(
        gallery=[f"{n}/{photos[n][0]}" for n in several],
        mated=[f"{n}/{f}" for n in several for f in photos[n][1:]],
        non_mated=[f"{single[i]}/{photos[single[i]][0]}" for i in chosen])
