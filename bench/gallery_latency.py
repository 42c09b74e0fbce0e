"""Identify at scale: exact search over 10 k, 100 k and 1 M enrolled vectors, on SQLite and
on PostgreSQL, through the real server.

    python -m bench.gallery_latency [--sizes 10000 100000 1000000]
                                    [--stores sqlite postgresql] [--requests 60]
                                    [--out bench/results/gallery_latency.json]

For each store and size: a fresh store is filled with synthetic unit vectors (two faces per
subject, tagged with the served weights' sha256, one bulk transaction), a real server
(bench.server.Server, default weights) starts on it and loads them, and then, one request at
a time:
- identify: `POST /galleries/bench/identify` with an aligned crop and `detect=false`, so the
  time is the service's without detection (decode, encode, search); the server's own
  `timings_ms.search` is the exact search alone;
- enroll: `POST /galleries/bench/subjects/…/faces`, the same crop (a committed write, then
  the change log applied to the index).
Reported: medians and p90s, the server's start-up time with the load, its RSS, and the same
search in-process (`GalleryVectors.search`, no HTTP). PostgreSQL is a throwaway local server
(bench.postgres) with its defaults.
"""
from __future__ import annotations

import argparse
import io
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, Server

DIM = 128
FILL_CHUNK = 100_000


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(url: str, n: int, model_sha256: str, seed: int = 0) -> float:
    """n synthetic faces (two per subject) in gallery `bench`; seconds taken."""
    from app.gallery.store import open_store
    rng = np.random.default_rng(seed)
    store = open_store(url)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, FILL_CHUNK):
            v = unit_vectors(rng, min(FILL_CHUNK, n - start))
            store.add_faces("bench", model_sha256, [
                (f"s{(start + i) // 2}", uuid.uuid4().hex, v[i]) for i in range(len(v))])
    finally:
        store.close()
    return time.perf_counter() - t0


def aligned_crop(weights: Path, lfw_dir: Path) -> bytes:
    """A real face, aligned by the shared pipeline, as the PNG a detect=false call sends."""
    from model.face.imageio import decode_image
    from model.face.pipeline import FacePipeline
    from model.nn.checkpoint import load_encoder
    encoder, _ = load_encoder(weights)
    pipeline = FacePipeline(device="cpu", spec=encoder.spec)
    photo = lfw_dir / "lfw-deepfunneled/Tony_Blair/Tony_Blair_0001.jpg"
    crop = pipeline.align([decode_image(photo)])[0].crop
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return buf.getvalue()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def measure(server: Server, crop: bytes, requests: int) -> dict:
    files = {"image": ("crop.png", crop, "image/png")}
    total, search, enroll = [], [], []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for i in range(requests + 3):
            t0 = time.perf_counter()
            r = c.post("/galleries/bench/identify", files=files, data={"detect": "false"})
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 3:  # the first calls warm the caches
                total.append(dt * 1000)
                search.append(r.json()["timings_ms"]["search"])
        for i in range(max(10, requests // 3)):
            t0 = time.perf_counter()
            r = c.post(f"/galleries/bench/subjects/new{i}/faces", files=files,
                       data={"detect": "false"})
            enroll.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 201, r.text
    return {"identify_ms_p50": statistics.median(total), "identify_ms_p90": pct(total, 90),
            "search_ms_p50": statistics.median(search), "search_ms_p90": pct(search, 90),
            "enroll_ms_p50": statistics.median(enroll), "enroll_ms_p90": pct(enroll, 90)}


def in_process_search(n: int, queries: int = 30) -> dict:
    from app.gallery.index import GalleryVectors
    rng = np.random.default_rng(1)
    g = GalleryVectors(DIM, capacity=n)
    for start in range(0, n, FILL_CHUNK):
        v = unit_vectors(rng, min(FILL_CHUNK, n - start))
        for i, x in enumerate(v):
            g.add(f"{start + i:032x}", f"s{(start + i) // 2}", x)
    times = []
    for q in unit_vectors(rng, queries):
        t0 = time.perf_counter()
        g.search(q, 5)
        times.append((time.perf_counter() - t0) * 1000)
    return {"search_ms_p50": statistics.median(times), "search_ms_p90": pct(times, 90)}


def _terminate(*_) -> None:
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"],
                   choices=["sqlite", "postgresql"])
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    # stopped with SIGTERM: still stop the servers and the database it started
    signal.signal(signal.SIGTERM, _terminate)
    from model.encoder.weights import read_card
    sha = read_card(args.weights)["weights_sha256"]
    crop = aligned_crop(args.weights, args.lfw_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as tmp:
        pg = None
        if "postgresql" in args.stores:
            from bench.postgres import Postgres
            pg = Postgres().__enter__()
        try:
            for store in args.stores:
                for n in args.sizes:
                    url = (f"sqlite:///{tmp}/g{n}.db" if store == "sqlite" else pg.database())
                    fill_s = fill(url, n, sha)
                    server = Server(args.weights, {"gallery_url": url, "gallery_allow_anonymous": True},
                                    Path(tmp) / f"{store}-{n}.log")
                    try:
                        ready_s = server.wait_ready(600)
                        row = {"store": store, "vectors": n, "fill_s": round(fill_s, 1),
                               "ready_s": round(ready_s, 1), **measure(server, crop,
                                                                       args.requests),
                               "rss_mib": round(server.rss() or 0, 1)}
                    finally:
                        server.stop()
                    print(row, flush=True)
                    rows.append(row)
        finally:
            if pg is not None:
                pg.__exit__(None, None, None)
    in_proc = {n: in_process_search(n) for n in args.sizes}
    print_and_save({"rows": rows, "in_process": in_proc, "dim": DIM, "top_k": 5,
                    "requests": args.requests, "weights_sha256": sha}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
