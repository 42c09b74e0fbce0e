"""12 MP phone photos through `POST /verify`: one client's latency, and what the resolution
policy costs in verdicts.

    python -m bench.phone_photos [--pairs 40] [--min-sides 1280 0]
                                 [--out bench/results/phone_photos.json]

Each of `--pairs` LFW View 2 pairs (spread over the folds) becomes two 4032x3024 JPEGs
(quality 92, 3-4 MB, like a phone's): the LFW photo enlarged by a random factor in
[1.5, 6] (a face of ~190-750 px, from a group shot to a portrait) and pasted at a random
position into textured noise. For each `FACEVERIFY_DECODE_MIN_SIDE` in `--min-sides` a
server is started with otherwise default settings; one client posts the LFW pairs as they are
(the reference verdicts and distances), then the phone-photo pairs one after another (3
unmeasured first). The report has the phone-photo latency percentiles, the service's mean
stage timings, and the verdicts and distance changes against the LFW photos.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.closed_loop import percentiles
from bench.large_frames import paste_into_canvas
from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, Server

FRAME = (4032, 3024)


def phone_photo(photo: Image.Image, rng: np.random.Generator, frame=FRAME) -> bytes:
    """`photo` enlarged 1.5-6x at a random position in a textured 12 MP frame, as JPEG."""
    return paste_into_canvas(photo, rng, frame, scale=float(rng.uniform(1.5, 6.0)),
                             quality=92, grain=6.0)


def post(client: httpx.Client, url: str, a: bytes, b: bytes) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = client.post(url + "/verify", files={"image1": ("a.jpg", a, "image/jpeg"),
                                           "image2": ("b.jpg", b, "image/jpeg")})
    return 1000 * (time.perf_counter() - t0), {"status": r.status_code, **r.json()}


def main(argv: list[str] | None = None) -> int:
    from model.evaluate.lfw import read_pairs
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--min-sides", type=int, nargs="+", default=[1280, 0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", type=Path, default=Path("runs/logs"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    pairs = read_pairs(args.lfw_dir / "pairs.txt")
    chosen = [pairs[i] for i in np.linspace(0, len(pairs) - 1, args.pairs).astype(int)]
    rng = np.random.default_rng(args.seed)
    root = args.lfw_dir / "lfw-deepfunneled"
    originals = [((root / q.left).read_bytes(), (root / q.right).read_bytes()) for q in chosen]
    phones = [(phone_photo(Image.open(root / q.left), rng),
               phone_photo(Image.open(root / q.right), rng)) for q in chosen]
    report = {"frame": list(FRAME), "pairs": len(chosen),
              "jpeg_mb_median": float(np.median([len(x) for pr in phones for x in pr]) / 2**20),
              "settings": {}}
    for min_side in args.min_sides:
        server = Server(args.weights, {"decode_min_side": min_side},
                        args.log_dir / f"phone_photos_{min_side}.log")
        try:
            server.wait_ready()
            with httpx.Client(timeout=60) as client:
                reference = [post(client, server.url, a, b)[1] for a, b in originals]
                for a, b in phones[:3]:
                    post(client, server.url, a, b)
                measured = [post(client, server.url, a, b) for a, b in phones]
        finally:
            server.stop()
        ok = [(ms, r, ref) for (ms, r), ref in zip(measured, reference)
              if r["status"] == 200 and ref["status"] == 200]
        stages = ("decode", "detect", "queue", "encode", "total")
        report["settings"][str(min_side)] = {
            "latency_ms": percentiles([ms for ms, _ in measured]),
            "stage_ms_mean": {s: float(np.mean([r["timings_ms"][s] for _, r, _ in ok]))
                              for s in stages} if ok else {},
            "statuses": {str(s): sum(r["status"] == s for _, r in measured)
                         for s in sorted({r["status"] for _, r in measured})},
            "same_verdict_as_lfw_photos": float(np.mean(
                [r["verified"] == ref["verified"] for _, r, ref in ok])) if ok else None,
            "distance_change": percentiles([abs(r["distance"] - ref["distance"])
                                            for _, r, ref in ok]),
            "lfw_verdict_accuracy": float(np.mean(
                [ref["verified"] == q.same for ref, q in zip(reference, chosen)
                 if ref["status"] == 200])),
        }
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
