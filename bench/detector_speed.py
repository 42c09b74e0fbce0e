"""Detectors side by side: milliseconds per image on one core, by image size and batch.

    python -m bench.detector_speed [--photos 64] [--out bench/results/detector_speed.json]

For each detector of model/face/detect.py (YuNet with and without its mirror pass, MTCNN), one
thread (torch and ONNX Runtime), on the same images:
- LFW photos (250x250) one at a time, and in batches of 8 (one call: what a cross-request
  detect batcher would gain);
- 12 MP frames (4032x3024, bench.phone_photos) through `FaceDetector.detect` plus the
  refining of the chosen face (the service's path for a large image: detection on a copy
  downscaled to the detector's `max_detect_side`, then a crop at full resolution).
Decoding is not included (bench.phone_photos times the whole request). Recall on all of LFW is
bench.face_choice's `without_face`; accuracy through the whole path is model.evaluate.protocols's.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.report import print_and_save
from bench.server import DEFAULT_LFW


def median_ms(fn, items, repeats: int = 1) -> float:
    fn(items[0])  # warm
    times = []
    for _ in range(repeats):
        for item in items:
            t = time.perf_counter()
            fn(item)
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.phone_photos import phone_photo
    from model.face.detect import make_detector
    from model.face.imageio import decode_image
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--photos", type=int, default=64)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted((args.lfw_dir / "lfw-deepfunneled").glob("*/*.jpg"))
    files = [files[i] for i in np.linspace(0, len(files) - 1, args.photos).astype(int)]
    photos = [decode_image(f) for f in files]
    rng = np.random.default_rng(0)
    frames = [decode_image(phone_photo(photos[i], rng)) for i in range(args.frames)]
    batches = [photos[i:i + 8] for i in range(0, len(photos) - 7, 8)]
    detectors = {"yunet (mirror pass, shipped)": make_detector("yunet", device="cpu"),
                 "mtcnn": make_detector("mtcnn", device="cpu")}
    single = make_detector("yunet", device="cpu")
    single._net.flip = False
    detectors["yunet (one pass)"] = single
    report = {"photos": len(photos), "frames": len(frames), "threads": 1, "detectors": {}}
    for name, det in detectors.items():
        def framed(img, det=det):
            faces = det.detect([img])[0]
            if faces and det.needs_refining(img):
                det.refine(img, faces[0])
        row = {
            "lfw_250px_ms": median_ms(lambda im, det=det: det.detect([im]), photos),
            "lfw_250px_batch8_ms_per_image": median_ms(
                lambda b, det=det: det.detect(b), batches) / 8,
            "frame_12mp_ms": median_ms(framed, frames, repeats=2),
            "max_detect_side": det.max_detect_side,
        }
        report["detectors"][name] = row
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
