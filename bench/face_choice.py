"""Which face does a face-choice rule pick in photos with several faces?

    python -m bench.face_choice [--data ../shared/data/celeba-extra] [--workers 2]
                                [--detector yunet] [--out bench/results/face_choice_celeba.json]

On face-centred photos (celeba-extra, or LFW's deep-funneled images with
`--data ../shared/data/lfw/lfw-deepfunneled`), the person a photo is of is known without
labels: the face over its centre. For every photo where the detector finds more than one face this
counts how often each rule of model/face/pipeline.py (`largest`, `central`), with each candidate
score floor (faces scored below it count only when no face scores higher; the pipeline uses
the detector's `sure_score` for `largest`), picks a face other than that subject: the face whose box
overlaps LFW's centre box (scaled to the photo) most. The figures are in docs/accuracy.md
("Which face").
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.report import print_and_save
from model.face.detect import DEFAULT_DETECTOR, DETECTORS, Detection, _iou
from model.train.pool import process_pool

SCORES = (0.0, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.98, 0.99, 0.995)
_detector = None


def _init_worker(detector: str) -> None:
    global _detector
    import torch

    from model.face.detect import make_detector
    torch.set_num_threads(1)
    _detector = make_detector(detector, device="cpu")


def _detect(paths: list[str]) -> list[tuple[tuple[int, int], list[Detection]]]:
    from model.face.imageio import decode_image
    images = [decode_image(Path(p), max_pixels=None) for p in paths]
    return [(img.size, _detector.detect([img])[0]) for img in images]


def subject(faces: list[Detection], width: int, height: int) -> Detection:
    """The face over the photo's centre: the most overlap with LFW's centre box."""
    from model.face.pipeline import centred_dlib_box
    box = centred_dlib_box(width, height)
    return max(faces, key=lambda f: _iou(f.box, box))


def main(argv: list[str] | None = None) -> int:
    from model.face.pipeline import FACE_CHOICES, choose_face
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba-extra"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    paths = sorted(str(f) for f in args.data.rglob("*")
                   if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
    chunks = [paths[i:i + 32] for i in range(0, len(paths), 32)]
    t0 = time.time()
    with process_pool(args.workers, _init_worker, (args.detector,)) as ex:
        found = [r for chunk in ex.map(_detect, chunks) for r in chunk]
    multi = [(size, faces) for size, faces in found if len(faces) > 1]
    table = {}
    for rule in FACE_CHOICES:
        for score in SCORES:
            wrong = sum(choose_face([f for f in faces if f.score >= score] or faces, *size,
                                    rule, sure_score=0.0)
                        is not subject(faces, *size) for size, faces in multi)
            table[f"{rule}@{score}"] = wrong
    report = {"data": str(args.data), "detector": args.detector, "photos": len(found),
              "without_face": sum(not faces for _, faces in found),
              "with_several_faces": len(multi),
              "not_the_subject": table, "seconds": round(time.time() - t0, 1)}
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
