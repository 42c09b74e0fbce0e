"""Fit the map from a detected face to the box dlib's HOG detector draws around it.

    python -m bench.fit_dlib_box [--detector yunet] [--data ../shared/data/celeba-extra]
                                 [--images 1500]

dlib's 5-point shape predictor was trained to start from HOG boxes, and our pipeline has
the detector's box and points instead (MTCNN's or YuNet's). On training-only photos (celeba-extra, never LFW) where both
detectors find the face, this fits by least squares the HOG box's centre offset and log side
(in units of sqrt(box area), relative to the detected box's centre) from [1, w/s, the five
points' x, the five points' y], prints the held-out residuals against constant offsets, and
the 12x3 table that model/face/pipeline.py keeps as DLIB_BOX_FROM[detector]. (A second step,
the box refitted from the predictor's own points and the predictor run again, was tried:
its residual was no smaller, 0.034 / 0.041 / 0.074, so the HOG box's own noise is the floor.) Needs dlib (`distill`).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np


def features(box, landmarks) -> tuple[np.ndarray, float, float, float]:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    s, cx, cy = np.sqrt(w * h), (x1 + x2) / 2, (y1 + y2) / 2
    lm = np.asarray(landmarks)
    return np.concatenate([[1.0, w / s], (lm[:, 0] - cx) / s, (lm[:, 1] - cy) / s]), s, cx, cy


def main(argv: list[str] | None = None) -> int:
    import dlib
    import torch
    from PIL import Image

    from model.face.detect import DEFAULT_DETECTOR, DETECTORS, make_detector
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba-extra"))
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(args.data.glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    detector, hog = make_detector(args.detector, device="cpu"), dlib.get_frontal_face_detector()
    x_rows, y_rows = [], []
    for f in files[:args.images]:
        img = Image.open(f).convert("RGB")
        faces, boxes = detector.detect([img])[0], hog(np.asarray(img), 1)
        if not faces or not boxes:
            continue
        feats, s, cx, cy = features(faces[0].box, faces[0].landmarks)
        r = min(boxes, key=lambda b: ((b.left() + b.right()) / 2 - cx) ** 2
                + ((b.top() + b.bottom()) / 2 - cy) ** 2)
        x_rows.append(feats)
        y_rows.append([((r.left() + r.right()) / 2 - cx) / s, ((r.top() + r.bottom()) / 2 - cy) / s,
                       np.log((r.right() - r.left() + 1) / s)])
    x, y = np.array(x_rows), np.array(y_rows)
    train = np.arange(len(x)) < 0.7 * len(x)
    for name, cols in (("constant offsets", x[:, :1]), ("linear in the points", x)):
        w = np.linalg.lstsq(cols[train], y[train], rcond=None)[0]
        res = y[~train] - cols[~train] @ w
        print(f"{name:22s} held-out RMS residual (x, y, log side): "
              f"{np.sqrt((res ** 2).mean(0)).round(3).tolist()}")
    table = np.linalg.lstsq(x, y, rcond=None)[0]
    print(f"{len(x)} photos; DLIB_BOX_FROM[{args.detector!r}] =")
    print(np.array2string(table.round(4), separator=", "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
