"""Training data: identity folders, a cache of aligned crops, P×K sampling, augmentation.

Layout: `root/<Identity>/<image>` (LFW's layout). Every image is detected and aligned once by
the shared `FacePipeline` as the encoder's preprocessing spec says; the uint8 crops are cached
under `cache_dir`, keyed by the dataset's file list and the spec's version, so epochs never pay
for detection.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.face.detect import DETECTORS
from model.face.preprocess import DEFAULT_SPEC, PreprocessSpec
from model.train.pool import process_pool

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_CACHE_DIR = Path(os.environ.get("FACEVERIFY_CACHE_DIR", "cache"))


def scan_identity_folders(root: str | Path) -> list[str]:
    """Relative paths `<Identity>/<file>` of every image under root, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    paths = [
        f"{d.name}/{f.name}"
        for d in sorted(root.iterdir()) if d.is_dir()
        for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not paths:
        raise FileNotFoundError(f"no images in identity folders under {root}")
    return paths


@dataclass
class AlignedImages:
    """Aligned crops of a set of images, with their identities."""

    crops: np.ndarray  # (N, S, S, 3) uint8
    paths: list[str]  # dataset-prefixed relative paths, e.g. "lfw/Aaron_Eckhart/..._0001.jpg"
    identities: list[str]  # one per image, dataset-prefixed for non-LFW sets
    methods: list[str]  # "detected" or "centred_fallback"

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray | Sequence[int]) -> AlignedImages:
        keep = np.asarray(keep, dtype=np.int64)
        return AlignedImages(self.crops[keep], [self.paths[i] for i in keep],
                             [self.identities[i] for i in keep], [self.methods[i] for i in keep])

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @staticmethod
    def concat(parts: Sequence[AlignedImages]) -> AlignedImages:
        return AlignedImages(
            np.concatenate([p.crops for p in parts]) if len(parts) > 1 else parts[0].crops,
            [x for p in parts for x in p.paths], [x for p in parts for x in p.identities],
            [x for p in parts for x in p.methods])


def _cache_key(root: Path, rel_paths: list[str], spec: PreprocessSpec,
               face_choice: str = "largest", detector: str = "auto") -> str:
    h = hashlib.sha256(spec.version.encode())
    h.update(f"face={face_choice},visible-area".encode())  # model.face.pipeline.choose_face
    from model.face.pipeline import UPRIGHT_SCORE
    h.update(f"upright-{UPRIGHT_SCORE}".encode())  # model.face.pipeline.FacePipeline._upright
    from model.face.pipeline import detector_for
    h.update(DETECTORS[detector_for(spec, detector)].version.encode())
    for rel in rel_paths:
        h.update(rel.encode())
        h.update(str((root / rel).stat().st_size).encode())
    return h.hexdigest()[:16]


_worker_pipeline = None


def _init_worker(device: str, spec: PreprocessSpec, face_choice: str = "largest",
                 detector: str = "auto") -> None:
    global _worker_pipeline
    torch.set_num_threads(1)
    from model.face.pipeline import FacePipeline
    _worker_pipeline = FacePipeline(device=device, spec=spec, face_choice=face_choice,
                                    detector=detector)


def _align_chunk(args: tuple[str, list[str]]) -> tuple[np.ndarray, list[str]]:
    from model.face.imageio import decode_image
    root, rels = args
    images = [decode_image(Path(root) / rel, max_pixels=None) for rel in rels]
    faces = _worker_pipeline.align(images, fallback="centre")
    return np.stack([f.crop for f in faces]), [f.method for f in faces]


def align_folder(root: str | Path, rel_paths: list[str], workers: int = 2,
                 device: str = "cpu", chunk: int = 16, progress: bool = True,
                 spec: PreprocessSpec = DEFAULT_SPEC, face_choice: str = "largest",
                 detector: str = "auto") -> tuple[np.ndarray, list[str]]:
    """Detect and align every image (centred fallback where no face is found)."""
    from tqdm import tqdm
    chunks = [(str(root), rel_paths[i:i + chunk]) for i in range(0, len(rel_paths), chunk)]
    crops, methods = [], []
    bar = tqdm(total=len(rel_paths), desc=f"align {Path(root).name}", disable=not progress,
               unit="img")
    if workers <= 1:
        _init_worker(device, spec, face_choice, detector)
        results: Iterator = map(_align_chunk, chunks)
        for c, m in results:
            crops.append(c), methods.extend(m), bar.update(len(m))
    else:
        with process_pool(workers, _init_worker, (device, spec, face_choice, detector)) as ex:
            for c, m in ex.map(_align_chunk, chunks):
                crops.append(c), methods.extend(m), bar.update(len(m))
    bar.close()
    return np.concatenate(crops), methods


def load_aligned_folder(root: str | Path, name: str | None = None,
                        cache_dir: str | Path = DEFAULT_CACHE_DIR, workers: int = 2,
                        device: str = "cpu", progress: bool = True,
                        spec: PreprocessSpec = DEFAULT_SPEC, face_choice: str = "largest",
                        detector: str = "auto") -> AlignedImages:
    """Aligned crops of every image under an identity-folder root, built once and cached.

    `name` prefixes paths and (for non-LFW sets) identities, so sets can be combined.
    """
    root = Path(root)
    name = name or root.name
    rel_paths = scan_identity_folders(root)
    key = _cache_key(root, rel_paths, spec, face_choice, detector)
    cache_dir = Path(cache_dir)
    npy, meta_path = cache_dir / f"{name}-{key}.npy", cache_dir / f"{name}-{key}.json"
    if npy.exists() and meta_path.exists():
        crops = np.load(npy, mmap_mode="r")
        methods = json.loads(meta_path.read_text())["methods"]
    else:
        log.info("aligning %d images under %s (cached as %s)", len(rel_paths), root, npy)
        crops, methods = align_folder(root, rel_paths, workers=workers, device=device,
                                      progress=progress, spec=spec, face_choice=face_choice,
                                      detector=detector)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_suffix(".tmp.npy")
        np.save(tmp, crops)
        tmp.replace(npy)
        meta_path.write_text(json.dumps({"root": str(root), "pipeline": spec.version,
                                         "face_choice": face_choice, "detector": detector,
                                         "paths": rel_paths, "methods": methods}))
    if crops.shape[1:] != (spec.crop_size, spec.crop_size, 3) or len(crops) != len(rel_paths):
        raise ValueError(f"aligned cache {npy} does not match {root}; delete it and rebuild")
    identities = [r.split("/", 1)[0] for r in rel_paths]
    if name != "lfw":
        identities = [i if i.startswith(f"{name}:") else f"{name}:{i}" for i in identities]
    return AlignedImages(crops, [f"{name}/{r}" for r in rel_paths], identities, list(methods))


class PKSampler:
    """Batches of P identities × K images each (identities with ≥ 2 images only), plus
    `extra` images drawn uniformly from the whole set (singletons included: distillation
    has a target for every image, and for a pair loss they are still genuine negatives).

    Identities with fewer than K images are sampled with replacement. Each rank of a
    distributed run draws from its own seeded stream, so replicas see different batches.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0, rank: int = 0,
                 extra: int = 0):
        self.extra = extra
        self.n = len(labels)
        by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(int(lab), []).append(i)
        self.groups = [np.array(v) for v in by_label.values() if len(v) >= 2]
        if len(self.groups) < p:
            raise ValueError(f"need at least P={p} identities with 2+ images, have {len(self.groups)}")
        self.p, self.k = p, k
        self.rng = np.random.default_rng([seed, rank])
        self.images_in_groups = sum(len(g) for g in self.groups)

    def __len__(self) -> int:
        """Batches per epoch: one pass over the images of multi-image identities."""
        if self.extra:
            return max(1, self.n // (self.p * self.k + self.extra))
        return max(1, self.images_in_groups // (self.p * self.k))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(len(self)):
            chosen = self.rng.choice(len(self.groups), size=self.p, replace=False)
            batch = []
            for g in chosen:
                members = self.groups[g]
                batch.append(self.rng.choice(members, size=self.k, replace=len(members) < self.k))
            if self.extra:
                batch.append(self.rng.choice(self.n, size=min(self.extra, self.n), replace=False))
            yield np.concatenate(batch)


def augment(batch: torch.Tensor, generator: torch.Generator, flip: float = 0.5,
            max_shift: int = 6, scale_jitter: float = 0.08, color: float = 0.25,
            return_flips: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augment normalised (N, 3, H, W) crops: flip, small scale/shift, colour jitter.

    With `return_flips`, also the (N,) bool mask of mirrored crops (which teacher view is
    the target of each)."""
    n, _, h, w = batch.shape
    dev = batch.device
    rand = lambda *s: torch.rand(*s, generator=generator).to(dev)
    do_flip = rand(n) < flip
    batch = torch.where(do_flip[:, None, None, None], batch.flip(3), batch)
    if max_shift or scale_jitter:
        scale = 1 + (rand(n) * 2 - 1) * scale_jitter
        shift = (rand(n, 2) * 2 - 1) * (2 * max_shift / w)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
        batch = torch.nn.functional.grid_sample(batch, grid, padding_mode="border",
                                                align_corners=False)
    if color:
        bright = (rand(n, 1, 1, 1) * 2 - 1) * color
        contrast = 1 + (rand(n, 1, 1, 1) * 2 - 1) * color
        sat = 1 + (rand(n, 1, 1, 1) * 2 - 1) * color
        grey = batch.mean(1, keepdim=True)
        batch = grey + (batch - grey) * sat
        mean = batch.mean((1, 2, 3), keepdim=True)
        batch = (batch - mean) * contrast + mean + bright
        grey_mask = rand(n) < 0.1  # occasional greyscale: LFW has black-and-white photos
        batch = torch.where(grey_mask[:, None, None, None], batch.mean(1, keepdim=True).expand_as(batch), batch)
    batch = batch.clamp(-1, 1)
    return (batch, do_flip.cpu()) if return_flips else batch
