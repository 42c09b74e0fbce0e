"""Photos as users send them, turned or damaged, through `POST /verify`: how many pairs are
answered, and how many right.

    python -m bench.orientation [--pairs 240] [--out bench/results/orientation.json]
                                [--no-orient]

`--pairs` LFW View 2 pairs (spread over the folds, half same and half different people) go to
a real server (default settings, the default weights). The first photo of a pair is sent as
it is; the second is perturbed and re-encoded as a JPEG (quality 95 unless the perturbation
says otherwise) that carries no EXIF orientation tag. Accuracy counts an unanswered pair
(422 no_face_detected) as wrong, since the caller got no verdict. `--no-orient` runs the
server with FACEVERIFY_ORIENT=false, the behaviour before orientation was detected (the
"before" column of docs/accuracy.md, "Photos in any orientation").
"""
from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, Server


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)  # no EXIF
    return buf.getvalue()


PERTURBATIONS: dict[str, Callable[[Image.Image], bytes]] = {
    "as is": lambda im: jpeg(im),
    "JPEG quality 10": lambda im: jpeg(im, 10),
    "blur radius 2": lambda im: jpeg(im.filter(ImageFilter.GaussianBlur(2))),
    "64 px": lambda im: jpeg(im.resize((64, 64), Image.Resampling.BILINEAR)),
    "dark x0.3": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(0.3)),
    "grayscale": lambda im: jpeg(im.convert("L")),
    "turned 30°": lambda im: jpeg(im.rotate(-30, resample=Image.Resampling.BILINEAR,
                                            fillcolor=(128, 128, 128))),
    "turned 90°": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_270)),  # clockwise
    "turned 270°": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "upside down": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_180)),
}


def run(server: Server, pairs, root: Path) -> dict[str, dict]:
    out = {}
    with httpx.Client(timeout=60) as client:
        for name, perturb in PERTURBATIONS.items():
            answered = right = 0
            rotations: dict[int, int] = {}
            for q in pairs:
                a = (root / q.left).read_bytes()
                b = perturb(Image.open(root / q.right).convert("RGB"))
                r = client.post(server.url + "/verify",
                                files={"image1": ("a.jpg", a, "image/jpeg"),
                                       "image2": ("b.jpg", b, "image/jpeg")})
                if r.status_code != 200:
                    continue
                answered += 1
                body = r.json()
                right += body["verified"] == q.same
                turn = body["faces"][1].get("rotation", 0)
                rotations[turn] = rotations.get(turn, 0) + 1
            out[name] = {"answered": answered, "accuracy": round(right / len(pairs), 4),
                         "rotations": {str(k): v for k, v in sorted(rotations.items())}}
            print(f"{name:16s} answered {answered:3d}/{len(pairs)}  accuracy "
                  f"{out[name]['accuracy']:.3f}  rotations {out[name]['rotations']}",
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from model.evaluate.lfw import read_pairs
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--pairs", type=int, default=240)
    p.add_argument("--no-orient", action="store_true",
                   help="serve with FACEVERIFY_ORIENT=false (every photo taken as upright)")
    p.add_argument("--log-dir", type=Path, default=Path("runs/logs"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    pairs = read_pairs(args.lfw_dir / "pairs.txt")
    same = [q for q in pairs if q.same]
    diff = [q for q in pairs if not q.same]
    half = args.pairs // 2
    chosen = [s[i] for s in (same, diff)
              for i in np.linspace(0, len(s) - 1, half).astype(int)]
    server = Server(args.weights, {"orient": not args.no_orient},
                    args.log_dir / "orientation.log")
    try:
        server.wait_ready()
        results = run(server, chosen, args.lfw_dir / "lfw-deepfunneled")
    finally:
        server.stop()
    report = {"pairs": len(chosen), "orient": not args.no_orient, "results": results}
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
