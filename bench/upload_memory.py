"""Peak memory of the service under maximum-size uploads, multipart and JSON.

    python -m bench.upload_memory [--concurrency 128] [--out bench/results/upload_memory.json]

Starts `uvicorn app.main:app` (default weights and settings unless `--setting K=V`), then
sends rounds of `--concurrency` concurrent /verify requests whose two images are each just
under FACEVERIFY_MAX_UPLOAD_BYTES (10 MiB by default):
- `multipart` and `json` (base64): an LFW photo followed by incompressible padding after the
  JPEG's end marker, so the bytes are maximal and the pixels small: what the body path holds;
- `pixels`: JPEGs of noise at the size where their bytes reach the limit (multipart): what
  decoding and detecting full-size images adds;
- `max_pixels`: smooth JPEGs just under FACEVERIFY_MAX_PIXELS (40 MP by default; a few MB):
  the most pixels a request can make the service decode.
It samples the server's RSS every 50 ms and reads its high-water mark (VmHWM), and reports
both per round with the status counts. docs/operations.md derives the memory limits from it.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, ROOT, Server, proc_status


def padded_photo(photo: bytes, size: int, seed: int) -> bytes:
    """`photo` followed by random bytes up to `size`: decoders stop at the JPEG end marker."""
    rng = np.random.default_rng(seed)
    return photo + rng.integers(0, 256, size - len(photo), dtype=np.uint8).tobytes()


def noise_jpeg(max_bytes: int, seed: int) -> bytes:
    """The largest JPEG of noise (quality 90, 4:3) that stays under `max_bytes`."""
    rng = np.random.default_rng(seed)
    best, width = b"", 800
    while True:
        height = width * 3 // 4
        img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        if buf.tell() > max_bytes:
            return best
        best, width = buf.getvalue(), int(width * 1.15)


def smooth_jpeg(pixels: int, seed: int) -> bytes:
    """A 4:3 JPEG of blurred noise with just under `pixels` pixels."""
    width = int((pixels * 4 / 3) ** 0.5) - 1
    height = pixels // width - 1
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((width, height), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def one_round(url: str, kind: str, images: tuple[bytes, bytes], concurrency: int
                    ) -> dict[str, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if kind == "json":
        body = json.dumps({"image1": base64.b64encode(images[0]).decode(),
                           "image2": base64.b64encode(images[1]).decode()}).encode()
        request = {"content": body, "headers": {"content-type": "application/json"}}
    else:
        request = {"files": {"image1": ("a.jpg", images[0], "image/jpeg"),
                             "image2": ("b.jpg", images[1], "image/jpeg")}}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def send() -> int:
            try:
                return (await client.post("/verify", **request)).status_code
            except httpx.TransportError:
                return 0
        statuses = await asyncio.gather(*(send() for _ in range(concurrency)))
    counts: dict[str, int] = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--max-upload-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--rounds", default="multipart,json,pixels,max_pixels")
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--setting", action="append", default=[], metavar="K=V",
                   help="a service setting, e.g. max_concurrent_requests=32")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    settings = dict(s.split("=", 1) for s in args.setting)
    settings.setdefault("max_upload_bytes", args.max_upload_bytes)
    settings.setdefault("max_pixels", args.max_pixels)
    size = args.max_upload_bytes - 1024
    photos = [(args.lfw_dir / "lfw-deepfunneled" / "Colin_Powell" / f"Colin_Powell_000{i}.jpg"
               ).read_bytes() for i in (1, 2)]
    payloads = {"multipart": tuple(padded_photo(ph, size, i) for i, ph in enumerate(photos))}
    payloads["json"] = payloads["multipart"]
    rounds = args.rounds.split(",")
    if "pixels" in rounds:
        payloads["pixels"] = (noise_jpeg(size, 0), noise_jpeg(size, 1))
    if "max_pixels" in rounds:
        payloads["max_pixels"] = (smooth_jpeg(args.max_pixels, 0), smooth_jpeg(args.max_pixels, 1))
    server = Server(args.weights, settings, ROOT / "runs" / "bench" / "upload_memory.log")
    report: dict = {"concurrency": args.concurrency, "settings": settings,
                    "image_bytes": size, "rounds": {}}
    try:
        server.wait_ready()
        report["idle_rss_mib"] = round(server.rss(), 1)
        server.start_sampling(every=0.05)
        for kind in rounds:
            first = len(server.samples)
            t0 = time.monotonic()
            counts = asyncio.run(one_round(server.url, kind, payloads[kind], args.concurrency))
            rss = [r for _, r in server.samples[first:]]
            report["rounds"][kind] = {
                "statuses": counts, "seconds": round(time.monotonic() - t0, 1),
                "peak_rss_mib": round(max(rss), 1) if rss else None,
                "vm_hwm_mib_after": round(proc_status(server.proc.pid, "VmHWM") / 1024, 1),
                "rss_after_mib": round(server.rss(), 1),
            }
            if kind in ("pixels", "max_pixels"):
                w, h = Image.open(io.BytesIO(payloads[kind][0])).size
                report["rounds"][kind]["pixels"] = f"{w}x{h}"
            print(kind, report["rounds"][kind], flush=True)
    finally:
        server.stop()
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
