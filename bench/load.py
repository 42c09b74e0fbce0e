"""Speed under load: a closed-loop load generator against a real server it starts itself.

    python -m bench.load [--weights weights/faceverify-encoder.safetensors] [--duration 15]
                         [--embed-duration 8] [--concurrency 1 4 16 64] [--out bench/results/load.json]

For each batching setting (the service's default, and "off": FACEVERIFY_MAX_BATCH_SIZE=2, the
smallest the service accepts — one /verify pair per forward pass — with no batching delay) it
starts `uvicorn app.main:app` on a free 127.0.0.1 port, waits for /health/ready, and runs every
cell of concurrency x detect (true: LFW photos as they are; false: the same photos' aligned
crops, as a client that aligns faces itself would send them) against /verify (real
LFW View 2 pairs) and then /embed. Each cell is N clients in a closed loop (each sends its next
request as soon as its previous one is answered) for a warm-up, then a measured window; it
stops by itself after `--duration` seconds or `--max-requests` requests, whichever comes first.
The server is stopped (SIGTERM) before the next batching setting, and at the end.

Also, in the same run (so the ratios compare like with like):
- serving overhead: the same pipeline in-process (the service's own `Service` object: face
  stage thread pool + dynamic batcher, no HTTP) at the same concurrency, vs through the server;
- the server's resident memory (VmRSS from /proc) at idle, its peak during the sweep, after;
- encoder efficiency: FLOPs per image (torch.utils.flop_counter) x images/s against a
  measured fp32 torch matmul FLOP/s.
Raw results (every cell's latencies summarised, stage means, errors by status) go to --out.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.closed_loop import LAT_BINS, closed_loop
from bench.load_report import plot, summarize
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, Server, gpu_mib

BATCHING = {  # name -> service settings
    "off": {"max_batch_size": 2, "max_batch_delay_ms": 0},
    "default": {},
}


# ----------------------------------------------------------------------------- payloads
def load_payloads(lfw_dir: Path, n_pairs: int, seed: int = 0, cache_dir: Path | None = None,
                  spec=None) -> dict:
    """n_pairs View 2 pairs (spread over the folds): JPEG bytes as they are, and their
    aligned crops (the evaluator's cache: same pipeline, centred fallback; aligned as the
    served weights' preprocessing spec says) as JPEG q95."""
    from PIL import Image

    from model.evaluate.lfw import read_pairs
    from model.train.data import load_aligned_folder
    pairs = read_pairs(lfw_dir / "pairs.txt")
    order = np.random.default_rng(seed).permutation(len(pairs))[:n_pairs]
    chosen = [pairs[i] for i in order]
    paths = sorted({x for p in chosen for x in (p.left, p.right)})
    photos = {x: (lfw_dir / "lfw-deepfunneled" / x).read_bytes() for x in paths}
    kw = ({"cache_dir": cache_dir} if cache_dir else {}) | ({"spec": spec} if spec else {})
    lfw = load_aligned_folder(lfw_dir / "lfw-deepfunneled", "lfw", progress=False, **kw)
    index = lfw.index()
    crops = {}
    for x in paths:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(lfw.crops[index[f"lfw/{x}"]])).save(buf, "JPEG", quality=95)
        crops[x] = buf.getvalue()
    return {"pairs": [(p.left, p.right) for p in chosen], "paths": paths,
            True: photos, False: crops}


# ------------------------------------------------------------------------------ cells
async def http_cell(url: str, route: str, payloads: dict, detect: bool, concurrency: int,
                    duration: float, warmup: float, max_requests: int) -> dict:
    images = payloads[detect]
    form = {"detect": "true" if detect else "false"}
    if route == "/verify":
        items = [{"image1": ("a.jpg", images[a], "image/jpeg"),
                  "image2": ("b.jpg", images[b], "image/jpeg")} for a, b in payloads["pairs"]]
    else:
        items = [{"image": ("a.jpg", images[x], "image/jpeg")} for x in payloads["paths"]]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits,
                                 timeout=httpx.Timeout(120.0)) as client:
        async def send(files):
            try:
                r = await client.post(route, files=files, data=form)
            except httpx.HTTPError as exc:
                return 0, type(exc).__name__, None
            if r.status_code == 200:
                return 200, None, r.json()["timings_ms"]
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = None
            return r.status_code, code, None
        res = await closed_loop(send, items, concurrency, duration, warmup, max_requests)
    per_item = 2 if route == "/verify" else 1
    res.update({"route": route, "detect": detect, "concurrency": concurrency,
                "images_per_s": res.get("ok_per_s", 0) * per_item})
    if route == "/verify":
        res["pairs_per_s"] = res.get("ok_per_s", 0)
    return res


# ---------------------------------------------------------------------------- in-process
async def inprocess_cells(weights: Path, payloads: dict, cells: list[tuple[bool, int]],
                          duration: float, warmup: float, max_requests: int,
                          device: str = "cpu", extra: dict | None = None) -> list[dict]:
    """`Service.verify`, the operation behind /verify (face stage + dynamic batcher, default
    settings), called directly: the same work as /verify minus HTTP, parsing and JSON."""
    from app.config import Settings
    from app.metrics import Metrics
    from app.service import Service
    settings = Settings(weights=weights, device=device, **(extra or {}))
    svc = Service(settings, Metrics(settings.max_batch_size))
    svc.load()
    svc.start()
    svc.warm_up()
    out = []
    try:
        for detect, concurrency in cells:
            images = payloads[detect]
            items = [(images[a], images[b]) for a, b in payloads["pairs"]]

            async def send(item, detect=detect):
                t0 = time.perf_counter()
                verdict = await svc.verify(item[0], item[1], detect)
                return 200, None, {"read": 0.0, **verdict.timings_ms,
                                   "total": 1000 * (time.perf_counter() - t0)}

            async def guarded(item, send=send):
                try:
                    return await send(item)
                except Exception as exc:  # noqa: BLE001 — no face etc.: count, carry on
                    return 422, type(exc).__name__, None
            res = await closed_loop(guarded, items, concurrency, duration, warmup,
                                    max_requests)
            res.update({"route": "in-process verify", "detect": detect,
                        "concurrency": concurrency, "pairs_per_s": res.get("ok_per_s", 0),
                        "images_per_s": 2 * res.get("ok_per_s", 0)})
            out.append(res)
            print(f"  in-process detect={detect!s:5} c={concurrency:<3} "
                  f"{res.get('ok_per_s', 0):7.1f} pairs/s  p50 "
                  f"{res['latency_ms']['p50']:.1f} ms", flush=True)
    finally:
        await svc.stop()
    return out


# ---------------------------------------------------------------------- encoder efficiency
def encoder_efficiency(weights: Path, batch: int, repeats: int = 10) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.nn.checkpoint import load_encoder
    enc, _ = load_encoder(weights, device="cpu")
    size = enc.spec.crop_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        enc(torch.randn(1, 3, size, size))
    flops = counter.get_total_flops()

    def best(fn, n):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    rows = {}
    with torch.inference_mode():
        for b in sorted({1, 2, batch}):
            x = torch.randn(b, 3, size, size)
            rows[b] = b / best(lambda x=x: enc(x), repeats)
        n = 2048
        a, m = torch.randn(n, n), torch.randn(n, n)
        t = best(lambda: torch.matmul(a, m), repeats)
    matmul = 2 * n**3 / t
    return {"flops_per_image": flops, "torch_threads": torch.get_num_threads(),
            "encoder_img_s_by_batch": {str(k): v for k, v in rows.items()},
            "matmul_n": n, "matmul_flop_s": matmul,
            "efficiency_by_batch": {str(k): flops * v / matmul for k, v in rows.items()}}


# ---------------------------------------------------------------------------------- machine
def machine() -> dict:
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    info = {}
    for ln in Path("/proc/cpuinfo").read_text().splitlines():
        k, _, v = ln.partition(":")
        info.setdefault(k.strip(), v.strip())
    simd = sorted(set(info.get("flags", "").split()) & {"avx2", "avx512f", "avx512_bf16",
                                                        "avx512_vnni", "amx_tile"})
    mem = next((int(ln.split()[1]) / 1024**2 for ln in
                Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cpu_family_model": f"{info.get('cpu family')}/{info.get('model')}",
            "simd": simd, "cores": os.cpu_count(), "mem_gib": round(mem, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "loadavg_at_start": os.getloadavg(),
            "utc_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--pairs", type=int, default=400, help="distinct View 2 pairs to cycle")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--batching", nargs="+", choices=list(BATCHING), default=["off", "default"])
    p.add_argument("--detect", nargs="+", choices=["true", "false"], default=["true", "false"])
    p.add_argument("--duration", type=float, default=15, help="measured seconds per /verify cell")
    p.add_argument("--embed-duration", type=float, default=8, help="per /embed cell; 0 = skip")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds per cell")
    p.add_argument("--max-requests", type=int, default=5000, help="per cell")
    p.add_argument("--inprocess-concurrency", type=int, nargs="*", default=[1, 16])
    p.add_argument("--device", default="cpu", help="FACEVERIFY_DEVICE of the server")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a service setting for every server, e.g. detect_workers=1 "
                        "(FACEVERIFY_DETECT_WORKERS); repeatable")
    p.add_argument("--uvicorn-workers", type=int, default=1,
                   help="server processes (uvicorn --workers), each with its own model; the "
                        "memory figures are then the supervisor's only")
    p.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    p.add_argument("--plots", default="docs",
                   help="folder for bench_throughput.png and bench_latency.png; '' = none")
    p.add_argument("--log-dir", type=Path, default=Path("runs/logs"))
    p.add_argument("--cache-dir", type=Path, help="aligned-crop cache (default: model.train.data's)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    weights = args.weights.resolve()
    detects = [d == "true" for d in args.detect]
    extra = dict(s.split("=", 1) for s in args.set)
    result = {"device": args.device, "command": "python -m bench.load " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
              "machine": machine(), "weights": str(args.weights),
              "settings": {"pairs": args.pairs, "duration_s": args.duration,
                           "embed_duration_s": args.embed_duration, "warmup_s": args.warmup,
                           "max_requests": args.max_requests,
                           "batching": {k: BATCHING[k] for k in args.batching},
                           "service": extra, "uvicorn_workers": args.uvicorn_workers},
              "latency_hist_bins_ms": LAT_BINS.tolist(), "servers": {}, "cells": []}
    card = json.loads(weights.with_suffix(".json").read_text())
    result["model"] = {"name": card.get("name"), "sha256": card.get("weights_sha256"),
                       "threshold": (card.get("threshold") or {}).get("value")}
    from model.nn.checkpoint import load_encoder
    payloads = load_payloads(args.lfw_dir, args.pairs, cache_dir=args.cache_dir,
                             spec=load_encoder(weights)[0].spec)
    print(f"{len(payloads['pairs'])} pairs, {len(payloads['paths'])} photos; "
          f"weights {args.weights}", flush=True)

    for batching in args.batching:
        server = Server(weights, {"log_level": "warning", **extra, **BATCHING[batching]},
                        args.log_dir / f"bench-load-server-{batching}.log", args.device,
                        workers=args.uvicorn_workers)
        try:
            ready_s = server.wait_ready()
            time.sleep(2)
            idle = server.rss()
            gpu_idle = gpu_mib(server.proc.pid) if server.gpu else None
            server.start_sampling()
            for route, dur in (("/verify", args.duration), ("/embed", args.embed_duration)):
                if dur <= 0:
                    continue
                for detect in detects:
                    for c in args.concurrency:
                        res = asyncio.run(http_cell(server.url, route, payloads, detect, c, dur,
                                                    args.warmup, args.max_requests))
                        res["batching"] = batching
                        result["cells"].append(res)
                        lat = res.get("latency_ms", {})
                        print(f"  {batching:7} {route:7} detect={detect!s:5} c={c:<3} "
                              f"{res.get('ok_per_s', 0):7.1f} req/s  p50 {lat.get('p50') or 0:7.1f}"
                              f"  p99 {lat.get('p99') or 0:7.1f} ms  errors {res.get('errors')}",
                              flush=True)
            server.stop_sampling()
            time.sleep(5)
            after = server.rss()
            peak = max((r for _, r in server.samples), default=None)
            result["servers"][batching] = {
                "settings": BATCHING[batching], "ready_after_s": ready_s,
                "rss_mib": {"idle": idle, "peak": peak, "after": after},
                **({"gpu_mib": {"idle": gpu_idle, "peak": max(server.gpu_samples, default=None),
                                "after": gpu_mib(server.proc.pid)}} if server.gpu else {}),
                "rss_samples": [(round(t - server.samples[0][0], 2), round(r, 1))
                                for t, r in server.samples[::5]] if server.samples else []}
        finally:
            result["servers"].setdefault(batching, {})["exit_code"] = server.stop()

    if args.inprocess_concurrency:
        print("in-process (no HTTP), default batching:", flush=True)
        cells = [(d, c) for d in detects for c in args.inprocess_concurrency]
        result["inprocess"] = asyncio.run(inprocess_cells(
            weights, payloads, cells, args.duration, args.warmup, args.max_requests,
            args.device, extra))
    from app.config import Settings
    result["encoder"] = encoder_efficiency(weights, Settings.model_fields["max_batch_size"]
                                           .default)
    result["summary"] = summarize(result)
    result["wall_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    if args.plots:
        plot(result, Path(args.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
