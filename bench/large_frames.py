"""Faces that fill a small part of a large frame: same verdicts as the photos alone?

    python -m bench.large_frames [--pairs 600] [--weights weights/faceverify-encoder.safetensors]
                                 [--out bench/results/large_frames.json]

Each LFW View 2 photo (250x250) is pasted at its own scale, at a random position, into a
2000x1500 canvas of mid-grey noise and JPEG-encoded (quality 95), as a phone photo with a
small face would arrive. Both versions of every pair go through the service's own face path
(decode_image → FacePipeline.align with the model card's preprocessing and the service's
face choice → encoder) and the model card's threshold; the report gives the share of pairs with the same verdict, the distance
changes, and images where no face was found.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.report import print_and_save

CANVAS = (2000, 1500)


def paste_into_canvas(photo: Image.Image, rng: np.random.Generator,
                      canvas: tuple[int, int] = CANVAS, scale: float = 1.0,
                      quality: int = 95, grain: float = 0.0) -> bytes:
    """The photo (enlarged `scale` times) at a random position in a canvas of blurred noise
    (plus per-pixel `grain`, for a phone-like JPEG size), as JPEG bytes."""
    noise = rng.normal(128, 20, (canvas[1] // 10, canvas[0] // 10, 3)).clip(0, 255)
    frame = Image.fromarray(noise.astype(np.uint8)).resize(canvas, Image.Resampling.BILINEAR)
    if grain:
        pixels = np.asarray(frame, dtype=np.int16) + rng.normal(0, grain, (canvas[1], canvas[0], 3))
        frame = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    photo = photo.convert("RGB")
    if scale != 1.0:
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                             Image.Resampling.BICUBIC)
    x = int(rng.integers(0, canvas[0] - photo.width))
    y = int(rng.integers(0, canvas[1] - photo.height))
    frame.paste(photo, (x, y))
    buf = io.BytesIO()
    frame.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    from model.evaluate.lfw import read_pairs
    from model.face.imageio import decode_image
    from model.face.pipeline import FACE_CHOICES, FacePipeline, NoFaceError
    from model.nn.checkpoint import load_encoder
    from model.nn.siamese import pair_distance

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw-dir", type=Path, default=Path("../shared/data/lfw"))
    p.add_argument("--weights", type=Path,
                   default=Path("weights/faceverify-encoder.safetensors"))
    p.add_argument("--pairs", type=int, default=600, help="View 2 pairs, spread over folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--face-choice", choices=FACE_CHOICES, default="largest",
                   help="the service's setting (FACEVERIFY_FACE_CHOICE; default largest)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder, card = load_encoder(args.weights)
    threshold = float(card["threshold"]["value"])
    pipeline = FacePipeline(device="cpu", spec=encoder.spec, face_choice=args.face_choice)
    pairs = read_pairs(args.lfw_dir / "pairs.txt")
    rng = np.random.default_rng(args.seed)
    chosen = [pairs[i] for i in np.linspace(0, len(pairs) - 1, args.pairs).round().astype(int)]
    images = args.lfw_dir / "lfw-deepfunneled"

    def embed(data: list[bytes]) -> tuple[torch.Tensor | None, list]:
        """The pair's embeddings (None without a face) and each photo's aligned face."""
        try:
            faces = pipeline.align([decode_image(d) for d in data], fallback="raise")
        except NoFaceError:
            return None, []
        with torch.inference_mode():
            emb = encoder(encoder.prepare(np.stack([f.crop for f in faces])))
        return emb, faces

    rows, t0 = [], time.time()
    for pair in chosen:
        photos = [(images / rel).read_bytes() for rel in (pair.left, pair.right)]
        framed = [paste_into_canvas(Image.open(io.BytesIO(b)), rng) for b in photos]
        (e_photo, photo_faces), (e_frame, frame_faces) = embed(photos), embed(framed)
        row = {"left": pair.left, "right": pair.right, "same": pair.same,
               "photo": None, "frame": None,
               "faces": max((f.faces_found for f in photo_faces), default=0),
               "faces_in_frame": [f.faces_found for f in frame_faces]}
        for key, e in (("photo", e_photo), ("frame", e_frame)):
            if e is not None:
                row[key] = float(pair_distance(e[:1], e[1:])[0])
        rows.append(row)
    both = [r for r in rows if r["photo"] is not None and r["frame"] is not None]
    agree = [(r["photo"] < threshold) == (r["frame"] < threshold) for r in both]
    single = [(r["photo"] < threshold) == (r["frame"] < threshold) for r in both
              if r["faces"] == 1]
    delta = np.abs([r["photo"] - r["frame"] for r in both])
    report = {
        "pairs": len(rows), "canvas": list(CANVAS), "threshold": threshold,
        "weights": str(args.weights), "preprocessing": encoder.spec.version,
        "face_choice": args.face_choice,
        "no_face_photo_pairs": sum(r["photo"] is None for r in rows),
        "no_face_frame_pairs": sum(r["frame"] is None for r in rows),
        "same_verdict": float(np.mean(agree)) if agree else None,
        # pairs whose photos alone show one face each: no choice between faces to make
        "one_face_pairs": len(single),
        "same_verdict_one_face_pairs": float(np.mean(single)) if single else None,
        "distance_change_median": float(np.median(delta)) if len(delta) else None,
        "distance_change_p99": float(np.percentile(delta, 99)) if len(delta) else None,
        "accuracy_photo": float(np.mean([(r["photo"] < threshold) == r["same"] for r in both])),
        "accuracy_frame": float(np.mean([(r["frame"] < threshold) == r["same"] for r in both])),
        "seconds": round(time.time() - t0, 1),
        # the pairs whose verdict changed, to look at
        "changed": [r for r in both if (r["photo"] < threshold) != (r["frame"] < threshold)],
    }
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
