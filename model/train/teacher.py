"""The distillation teacher: dlib's face-recognition ResNet, its embeddings cached on disk.

Teacher vectors are computed once per image *and view* and kept in a store keyed by the
image file's sha256 and the view (0 = the photo as it is, 1 = mirrored left-right), so a
training run never waits for the teacher: it looks its targets up, and only images the store
has never seen go through the teacher, in a process pool of its own.

The teacher recipe is face_recognition 1.3's (which wraps dlib): HOG detector with one
upsampling, the face nearest the image centre (the fixed box top 70, right 180, bottom 180,
left 70 of LFW's 250x250 layout, scaled to the image, when HOG finds none), 5-point landmarks,
`compute_face_descriptor` with one jitter; the mirrored view uses the mirrored image and box.
It is the recipe the vectors in `shared/data/teacher/dlib-teacher.npz` were made with, so a
store can be seeded from that file (`TeacherStore.import_precomputed`) and spot-checked
against our own computation (`python -m model.train.teacher --check 5`).

dlib is an optional extra (`pip install '.[distill]'`); the service never imports this module.

Why centre: dlib's unit vectors share one dominant direction (their mean has norm ~0.91), so
a plain cosine target mostly teaches that shared direction. `centred_targets` subtracts the
training set's mean unit vector and renormalises; pair relations survive (same AUC).
`whitened_targets` also equalises the variance of every direction (see its docstring).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from model.face.align import CENTRE_BOX_250
from model.train.pool import process_pool

log = logging.getLogger("faceverify.teacher")

TEACHER_NAME = "dlib_face_recognition_resnet_model_v1"
EMBEDDING_DIM = 128
VIEWS = ("original", "mirrored")
DEFAULT_STORE = Path(os.environ.get("FACEVERIFY_CACHE_DIR", "cache")) / "teacher" / f"{TEACHER_NAME}.npz"


class TeacherUnavailableError(RuntimeError):
    """dlib (the `distill` extra) is not installed but the store lacks some images."""


def image_key(path: str | Path) -> str:
    """The store's key for an image: sha256 of its file bytes (renames do not matter)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TeacherStore:
    """On-disk map (image sha256) → (2, 128) float32 raw teacher vectors, [original, mirrored]."""

    def __init__(self, path: str | Path = DEFAULT_STORE):
        self.path = Path(path)
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as z:
                self.vectors = dict(zip(z["keys"].tolist(), z["emb"]))

    def __len__(self) -> int:
        return len(self.vectors)

    def __contains__(self, key: str) -> bool:
        return key in self.vectors

    def get(self, key: str, view: int | None = None) -> np.ndarray:
        emb = self.vectors[key]
        return emb if view is None else emb[view]

    def put(self, key: str, emb: np.ndarray) -> None:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape != (len(VIEWS), EMBEDDING_DIM):
            raise ValueError(f"teacher vectors must be {(len(VIEWS), EMBEDDING_DIM)}, got {emb.shape}")
        self.vectors[key] = emb

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.vectors)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), emb=np.stack([self.vectors[k] for k in keys])
                 if keys else np.zeros((0, len(VIEWS), EMBEDDING_DIM), np.float32))
        tmp.replace(self.path)

    def import_precomputed(self, npz: str | Path, roots: dict[str, str | Path]) -> int:
        """Add vectors from a file of the shared layout (`names` like "lfw/<P>/<f>.jpg",
        `emb` (N, 2, 128)); `roots` maps a name's first part to the folder holding the rest.
        Images whose file is missing are skipped. Returns how many were added."""
        added = 0
        with np.load(npz) as z:
            names, emb = z["names"], z["emb"]
        for name, vectors in zip(names.tolist(), emb):
            prefix, rel = name.split("/", 1)
            if prefix not in roots:
                continue
            path = Path(roots[prefix]) / rel
            if not path.is_file():
                continue
            key = image_key(path)
            if key not in self.vectors:
                self.put(key, vectors)
                added += 1
        return added


DEFAULT_PRECOMPUTED = Path("../shared/data/teacher/dlib-teacher.npz")
DEFAULT_PRECOMPUTED_ROOTS = {"lfw": "../shared/data/lfw/lfw-deepfunneled",
                             "celeba-extra": "../shared/data/celeba-extra"}


def open_store(path: str | Path = DEFAULT_STORE, precomputed: str | Path | None = DEFAULT_PRECOMPUTED,
               roots: dict[str, str | Path] | None = None) -> tuple[TeacherStore, int]:
    """The store at `path`; an empty one is first seeded from `precomputed` when that file
    exists. Returns (store, how many vectors were seeded now)."""
    store = TeacherStore(path)
    seeded = 0
    if len(store) == 0 and precomputed and Path(precomputed).is_file():
        seeded = store.import_precomputed(precomputed, roots or DEFAULT_PRECOMPUTED_ROOTS)
        store.save()
        log.info("teacher store %s seeded with %d vectors from %s", path, seeded, precomputed)
    return store, seeded


# --------------------------------------------------------------------------- the dlib teacher
_dlib = None


def _load_dlib():
    """dlib's detector, 5-point shape predictor and ResNet encoder (once per process)."""
    global _dlib
    if _dlib is None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as exc:
            raise TeacherUnavailableError(
                "the distillation teacher needs dlib and its model files: "
                "pip install '.[distill]'") from exc
        _dlib = (dlib.get_frontal_face_detector(),
                 dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
                 dlib.face_recognition_model_v1(frm.face_recognition_model_location()))
    return _dlib


def teacher_available() -> bool:
    try:
        _load_dlib()
        return True
    except TeacherUnavailableError:
        return False


def _face_box(image: np.ndarray) -> tuple[tuple[int, int, int, int], bool]:
    """(top, right, bottom, left) of the HOG face nearest the centre, or the centre box."""
    detector, _, _ = _load_dlib()
    h, w = image.shape[:2]
    boxes = [(max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0))
             for r in detector(image, 1)]
    if not boxes:
        t, r, b, l_ = CENTRE_BOX_250
        return (round(t * h / 250), round(r * w / 250), round(b * h / 250), round(l_ * w / 250)), False
    cy, cx = h / 2, w / 2
    return min(boxes, key=lambda bx: ((bx[0] + bx[2]) / 2 - cy) ** 2 + ((bx[1] + bx[3]) / 2 - cx) ** 2), True


def _descriptor(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    import dlib
    _, shape_predictor, encoder = _load_dlib()
    top, right, bottom, left = box
    shape = shape_predictor(image, dlib.rectangle(left, top, right, bottom))
    return np.asarray(encoder.compute_face_descriptor(image, shape, 1), dtype=np.float32)


def teacher_vectors(path: str | Path) -> np.ndarray:
    """(2, 128) raw dlib vectors of one image file: [original, mirrored]."""
    from PIL import Image
    with Image.open(path) as im:
        image = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    box, _ = _face_box(image)
    top, right, bottom, left = box
    w = image.shape[1]
    mirrored = np.ascontiguousarray(image[:, ::-1])
    return np.stack([_descriptor(image, box), _descriptor(mirrored, (top, w - left, bottom, w - right))])


def _init_worker() -> None:
    _load_dlib()


def compute_missing(store: TeacherStore, paths: Sequence[str | Path], workers: int = 2,
                    keys: Sequence[str] | None = None, progress: bool = False) -> int:
    """Run the teacher on the images the store lacks (in its own process pool); save the store."""
    keys = list(keys) if keys is not None else [image_key(p) for p in paths]
    todo: dict[str, Path] = {}
    for key, path in zip(keys, paths):
        if key not in store and key not in todo:
            todo[key] = Path(path)
    if not todo:
        return 0
    _load_dlib()  # fail here, with the install hint, rather than inside a worker
    log.info("teacher: computing %d images (%d workers)", len(todo), workers)
    from tqdm import tqdm
    items = list(todo.items())
    with process_pool(workers, _init_worker) as ex:
        results: Iterable = ex.map(teacher_vectors, [p for _, p in items], chunksize=8)
        for (key, _), emb in tqdm(zip(items, results), total=len(items), disable=not progress,
                                  desc="teacher", unit="img"):
            store.put(key, emb)
    store.save()
    return len(todo)


def lookup(store: TeacherStore, paths: Sequence[str | Path], workers: int = 2,
           progress: bool = False, keys: Sequence[str] | None = None) -> np.ndarray:
    """(N, 2, 128) raw teacher vectors for these image files, computing what is missing
    (`keys`: their `image_key`s, when the caller has them already)."""
    keys = list(keys) if keys is not None else [image_key(p) for p in paths]
    compute_missing(store, paths, workers=workers, keys=keys, progress=progress)
    return np.stack([store.get(k) for k in keys]) if keys else np.zeros((0, 2, EMBEDDING_DIM), np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def centred_targets(raw: np.ndarray, mean: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalise, subtract the mean unit vector (of these vectors, unless given), and
    renormalise. Returns (targets like raw, the mean used)."""
    u = unit(raw.astype(np.float32))
    if mean is None:
        mean = u.reshape(-1, u.shape[-1]).mean(0)
    return unit(u - mean), mean.astype(np.float32)


def whitened_targets(raw: np.ndarray, eps: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Centre, then PCA-whiten (every direction unit variance; `eps` × the largest eigenvalue
    regularises the near-empty directions), then renormalise. Returns (targets, the 128x128
    whitening matrix applied after centring).

    Why: the student's embedding ends in a BatchNorm without affine parameters, so each of
    its dimensions has unit variance over a batch; the centred teacher's variance sits in a
    few directions (participation ratio ~29 of 128), which the student cannot copy
    coordinate by coordinate. Whitened targets have the student's own statistics, and the
    teacher's pair ranking survives (View 1 DevTest AUC 0.998 centred, 0.998 whitened)."""
    u = unit(raw.astype(np.float64))
    flat = u.reshape(-1, u.shape[-1])
    mean = flat.mean(0)
    eigval, eigvec = np.linalg.eigh(np.cov((flat - mean).T))
    eigval = eigval.clip(0)
    w = eigvec @ np.diag(1 / np.sqrt(eigval + eps * eigval.max())) @ eigvec.T
    return unit((u - mean) @ w).astype(np.float32), w.astype(np.float32)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.train.teacher",
                                description="Seed, fill or spot-check the teacher store.")
    p.add_argument("--store", default=str(DEFAULT_STORE))
    p.add_argument("--import-precomputed", metavar="NPZ", help="seed the store from this file")
    p.add_argument("--root", action="append", default=[], metavar="PREFIX=DIR",
                   help="where a precomputed name's first part lives (repeatable)")
    p.add_argument("--check", type=int, metavar="N",
                   help="recompute N seeded images with dlib and report the largest difference")
    p.add_argument("--compute", nargs="*", metavar="IMAGE", help="run the teacher on these files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = TeacherStore(args.store)
    roots = dict(r.split("=", 1) for r in args.root)
    if args.import_precomputed:
        n = store.import_precomputed(args.import_precomputed, roots)
        store.save()
        print(f"imported {n} images; store has {len(store)}")
    if args.check:
        if not args.import_precomputed:
            p.error("--check needs --import-precomputed (the file to check against) and --root")
        with np.load(args.import_precomputed) as z:
            names, emb = z["names"], z["emb"]
        rng = np.random.default_rng(0)
        worst = 0.0
        for i in rng.choice(len(names), size=args.check, replace=False):
            prefix, rel = str(names[i]).split("/", 1)
            mine = teacher_vectors(Path(roots[prefix]) / rel)
            diff = float(np.abs(mine - emb[i]).max())
            worst = max(worst, diff)
            print(f"{names[i]}: max |ours - precomputed| = {diff:.2e}")
        print(f"largest difference over {args.check} images: {worst:.2e}")
    if args.compute:
        vec = lookup(store, args.compute)
        for path, v in zip(args.compute, vec):
            print(path, np.round(v[0, :4], 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
