"""What one photo costs a face worker, stage by stage, on one core.

    python -m bench.face_stage [--photos 200] [--out bench/results/face_stage.json]

The service's worker path (app/faces.py) on LFW photos spread over the whole set, one at a
time: decoding the JPEG, YuNet (both passes), dlib's 5 landmarks and the face chip (dlib's
compiled code and our numpy ports, which give the same numbers), and the encoder's int8
graph on one thread (both flips). Each stage's median in milliseconds, and the whole path's
median with each landmark/chip implementation. Torch is not imported (as in a worker).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS


def main(argv: list[str] | None = None) -> int:
    import json

    from model.encoder.onnx_session import CropEncoder
    from model.face.imageio import decode_reduced
    from model.face.pipeline import FacePipeline, dlib_box
    from model.face.preprocess import PreprocessSpec
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    card = json.loads(args.weights.with_suffix(".json").read_text())
    spec = PreprocessSpec.from_dict(card["preprocessing"])
    files = sorted((args.lfw_dir / "lfw-deepfunneled").glob("*/*.jpg"))
    files = [files[i] for i in np.linspace(0, len(files) - 1, args.photos).astype(int)]
    data = [f.read_bytes() for f in files]
    pipeline = FacePipeline(device="cpu", spec=spec, detector="yunet")  # dlib's code
    ported = FacePipeline(device="cpu", spec=spec, detector="yunet", native=False)
    assert pipeline.landmarks_code == "dlib" and ported.landmarks_code == "numpy"
    encoder = CropEncoder(args.weights.with_suffix(".int8.onnx").read_bytes(), spec, threads=1)

    stages: dict[str, list[float]] = {k: [] for k in (
        "decode", "detect", "landmarks_chip_dlib", "landmarks_chip_ports", "encode")}
    for rep in range(2):  # the first round warms up
        for raw in data:
            t0 = time.perf_counter()
            img = decode_reduced(raw, min_side=1280)[0]
            t1 = time.perf_counter()
            faces = pipeline.detector.detect([img])[0]
            t2 = time.perf_counter()
            if not faces:
                continue
            face = pipeline._choose(img, faces)
            pixels = np.asarray(img)
            box = dlib_box(face.box, face.landmarks, pipeline._dlib_box_table)
            t3 = time.perf_counter()
            _, chip = pipeline.landmarks_and_chip(pixels, box)
            t4 = time.perf_counter()
            ported.landmarks_and_chip(pixels, box)
            t5 = time.perf_counter()
            encoder(chip[None])
            t6 = time.perf_counter()
            if rep:
                for k, s in zip(stages, (t1 - t0, t2 - t1, t4 - t3, t5 - t4, t6 - t5)):
                    stages[k].append(1000 * s)
    med = {k: round(statistics.median(v), 3) for k, v in stages.items()}
    base = med["decode"] + med["detect"] + med["encode"]
    report = {"command": "python -m bench.face_stage", "photos": len(stages["decode"]),
              "ms_median": med,
              "photo_ms_with_dlib": round(base + med["landmarks_chip_dlib"], 2),
              "photo_ms_with_ports": round(base + med["landmarks_chip_ports"], 2),
              "image": "LFW 250x250, spread over the set", "threads": 1}
    assert "torch" not in sys.modules  # as in a face worker
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
