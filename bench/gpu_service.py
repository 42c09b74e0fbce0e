"""The service's CUDA path (the `gpu` extra) against its torch-free CPU path, in one process.

    python -m bench.gpu_service --photos DIR [--clients 32] [--requests 256] [--out FILE]

DIR holds photos named PERSON_NNNN.jpg (at least two people, two photos each). Two apps are
started in-process: device=cuda (the torch module behind the dynamic batcher, fp16 when the
warm-up check holds) and device=cpu (the int8 graph in the face workers, no torch). For each
same-person and different-person pair of DIR, both answer /verify; the report gives both
distances, the time from start to ready, and /verify and /embed?detect=false pairs/s under
`--clients` concurrent clients on each. On a machine without CUDA it exits 2.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app


async def measure(settings: Settings, photos: dict[str, list[Path]], clients: int,
                  requests: int) -> dict:
    t0 = time.perf_counter()
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=120) as c:
            while (await c.get("/health/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            ready_s = time.perf_counter() - t0
            health = (await c.get("/health/ready")).json()
            people = sorted(photos)
            pairs = [(photos[p][0], photos[p][1], True) for p in people] + [
                (photos[a][0], photos[b][0], False) for a, b in itertools.combinations(people, 2)]
            verdicts = []
            for a, b, same in pairs:
                r = await c.post("/verify", files={"image1": ("a.jpg", a.read_bytes()),
                                                   "image2": ("b.jpg", b.read_bytes())})
                body = r.json()
                verdicts.append({"a": a.name, "b": b.name, "same": same, "status": r.status_code,
                                 "distance": body.get("distance"),
                                 "verified": body.get("verified")})
            crop = (await c.post("/embed", params={"return_crops": "true"},
                                 files={"image": ("a.jpg", pairs[0][0].read_bytes())})
                    ).json()["crops"][0]
            import base64
            crop_bytes = base64.b64decode(crop)

            async def load(path: str, files: dict, params: dict) -> dict:
                latencies, statuses = [], []
                queue = iter(range(requests))

                async def client():
                    for _ in queue:
                        s = time.perf_counter()
                        r = await c.post(path, files=files, params=params)
                        latencies.append(time.perf_counter() - s)
                        statuses.append(r.status_code)
                start = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(clients)))
                wall = time.perf_counter() - start
                return {"requests_per_s": round(len(statuses) / wall, 1),
                        "p50_ms": round(statistics.median(latencies) * 1000, 1),
                        "statuses": {str(k): statuses.count(k) for k in set(statuses)}}
            a, b = pairs[0][0].read_bytes(), pairs[0][1].read_bytes()
            verify = await load("/verify", {"image1": ("a.jpg", a), "image2": ("b.jpg", b)}, {})
            embed = await load("/embed", {"image": ("c.png", crop_bytes)}, {"detect": "false"})
            metrics = (await c.get("/metrics")).text
            batches = [line for line in metrics.splitlines()
                       if line.startswith(("faceverify_batch_size_sum",
                                           "faceverify_batch_size_count"))]
    return {"device": settings.device, "ready_s": round(ready_s, 2), "health": health,
            "verdicts": verdicts, "verify_load": verify, "embed_nodetect_load": embed,
            "batch_size_metrics": batches}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, required=True)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--detect-workers", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu_service.json"))
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    photos: dict[str, list[Path]] = {}
    for f in sorted(args.photos.glob("*.jpg")):
        photos.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
    base = {"gallery_enabled": False, "detect_workers": args.detect_workers,
            "max_concurrent_requests": 4 * args.clients}
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "clients": args.clients, "requests": args.requests}
    out["cuda"] = asyncio.run(measure(Settings(device="cuda", **base), photos, args.clients,
                                      args.requests))
    out["cpu_int8"] = asyncio.run(measure(Settings(device="cpu", **base), photos, args.clients,
                                          args.requests))
    out["max_distance_gap"] = max(
        abs(g["distance"] - c["distance"])
        for g, c in zip(out["cuda"]["verdicts"], out["cpu_int8"]["verdicts"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
