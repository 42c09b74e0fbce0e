"""The closed-loop load generator that bench.load's cells run: N clients, each sending its
next request as soon as its previous one is answered, and what their answers add up to
(throughput, latency percentiles and histogram, the service's own stage timings)."""
from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np

STAGES = ("read", "detect_wait", "decode", "detect", "queue", "encode")  # the service's timings_ms stages
def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def histogram(values: list[float], bins: np.ndarray) -> list[int]:
    return np.histogram(np.asarray(values), bins=bins)[0].tolist() if values else []


LAT_BINS = np.logspace(0, 5, 201)  # 1 ms .. 100 s, for the latency-distribution plot


async def closed_loop(send, items: list, concurrency: int, duration: float, warmup: float,
                      max_requests: int) -> dict:
    """N workers each send their next request as soon as the previous one is answered.
    `send(item)` returns (status, error_code, timings_ms or None). Requests started in the
    warm-up are not counted; the measured window ends when the last counted one returns."""
    loop_t0 = time.perf_counter()
    measure_from = loop_t0 + warmup
    stop_at = measure_from + duration
    counter = iter(range(10**9))
    records: list[tuple[float, float, int, str | None, dict | None]] = []
    sent = 0

    async def worker():
        nonlocal sent
        while True:
            now = time.perf_counter()
            if now >= stop_at or sent >= max_requests:
                return
            i = next(counter)
            t = time.perf_counter()
            status, code, timings = await send(items[i % len(items)])
            end = time.perf_counter()
            if t >= measure_from:
                sent += 1
                records.append((t, end, status, code, timings))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if not records:
        return {"requests": 0}
    window = max(r[1] for r in records) - measure_from
    ok = [r for r in records if r[2] == 200]
    lat = [1000 * (r[1] - r[0]) for r in ok]
    errors: dict[str, int] = {}
    for r in records:
        if r[2] != 200:
            key = f"{r[2]} {r[3] or ''}".strip()
            errors[key] = errors.get(key, 0) + 1
    out = {"requests": len(records), "ok": len(ok), "window_s": window,
           "ok_per_s": len(ok) / window, "latency_ms": percentiles(lat),
           "latency_hist": histogram(lat, LAT_BINS), "errors": errors}
    timed = [(1000 * (r[1] - r[0]), r[4]) for r in ok if r[4]]
    if timed:
        stage = {s: statistics.fmean(t.get(s, 0.0) for _, t in timed) for s in STAGES}
        stage["total_in_service"] = statistics.fmean(t["total"] for _, t in timed)
        client = statistics.fmean(c for c, _ in timed)
        # time in the service outside the timed stages: mostly waiting for a free
        # decode/detect thread (FACEVERIFY_DETECT_WORKERS) when more requests than threads
        stage["detect_pool_wait_and_other"] = (stage["total_in_service"]
                                               - sum(stage[s] for s in STAGES))
        stage["http_and_client"] = client - stage["total_in_service"]
        out["stage_ms"] = stage
        out["stage_share"] = {k: v / client for k, v in stage.items() if k != "total_in_service"}
        out["batch_size_mean"] = statistics.fmean(t["batch_size"] for _, t in timed)
        # encoder throughput seen inside the server: faces per second of forward pass
        out["encoder_img_s_in_server"] = statistics.fmean(
            t["batch_size"] / (t["encode"] / 1000) for _, t in timed if t["encode"] > 0)
    return out
