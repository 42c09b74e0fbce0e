"""face_recognition (dlib) side of bench/peer.py; runs in the peer's own venv (.peer/).

    .peer/bin/python bench/peer_worker.py --root LFW_IMAGES --images LIST --out OUT.npz
        [--core N] [--mode full|encode] [--choose largest|centre] [--sync]

Imports nothing from this project (the peer venv has no torch). For each image: decode
(`face_recognition.load_image_file`), HOG detection with one upsampling, the chosen face (the
largest, as faceverify does, or the one nearest the centre), else the fixed centre box (top 70,
right 180, bottom 180, left 70 on 250x250, scaled to the image) — the same no-face rule as
faceverify's centred fallback; then `face_encodings(..., num_jitters=1, model="small")`
(5-point landmarks, aligned chip, ResNet). `--mode encode` detects first (untimed) and times
only the encoding given the box. With `--sync` it prints "ready" after loading and warming up
and starts when a line arrives on stdin, so several workers start together.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

CENTRE_BOX_250 = (70, 180, 180, 70)  # (top, right, bottom, left)


def centre_box(h: int, w: int) -> tuple[int, int, int, int]:
    t, r, b, lft = CENTRE_BOX_250
    return (round(t * h / 250), round(r * w / 250), round(b * h / 250), round(lft * w / 250))


def choose(locs, h: int, w: int, rule: str):
    if rule == "largest":
        return max(locs, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    cy, cx = h / 2, w / 2
    return min(locs, key=lambda b: ((b[0] + b[2]) / 2 - cy) ** 2 + ((b[1] + b[3]) / 2 - cx) ** 2)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--images", required=True, help="file with one relative path a line")
    p.add_argument("--out", required=True)
    p.add_argument("--core", type=int)
    p.add_argument("--mode", choices=["full", "encode"], default="full")
    p.add_argument("--choose", choices=["largest", "centre"], default="largest")
    p.add_argument("--sync", action="store_true")
    args = p.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    import face_recognition as fr

    with open(args.images) as fh:
        rels = [ln for ln in fh.read().splitlines() if ln]
    paths = [os.path.join(args.root, r) for r in rels]

    def detect(img):
        h, w = img.shape[:2]
        locs = fr.face_locations(img, number_of_times_to_upsample=1, model="hog")
        return (choose(locs, h, w, args.choose) if locs else centre_box(h, w)), len(locs)

    def encode(img, box):
        return fr.face_encodings(img, known_face_locations=[box], num_jitters=1,
                                 model="small")[0]

    warm = fr.load_image_file(paths[0])
    encode(warm, detect(warm)[0])
    pre = None
    if args.mode == "encode":  # detection outside the timed loop
        pre = []
        for path in paths:
            img = fr.load_image_file(path)
            pre.append((img, detect(img)[0]))
    if args.sync:
        print("ready", flush=True)
        sys.stdin.readline()
    n = len(paths)
    emb = np.zeros((n, 128), np.float32)
    found = np.zeros(n, np.int32)
    times = np.zeros((n, 3))  # decode, detect, encode (seconds)
    start = time.time()
    for i, path in enumerate(paths):
        if pre is not None:
            img, box = pre[i]
            t2 = time.perf_counter()
            emb[i] = encode(img, box)
            times[i, 2] = time.perf_counter() - t2
            continue
        t0 = time.perf_counter()
        img = fr.load_image_file(path)
        t1 = time.perf_counter()
        box, found[i] = detect(img)
        t2 = time.perf_counter()
        emb[i] = encode(img, box)
        times[i] = (t1 - t0, t2 - t1, time.perf_counter() - t2)
    end = time.time()
    np.savez(args.out, emb=emb, faces_found=found, times=times, start=start, end=end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
