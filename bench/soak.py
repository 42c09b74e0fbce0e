"""A soak run: mixed honest and hostile traffic against one server for minutes on end.

    python -m bench.soak [--minutes 10] [--out bench/results/soak.json] [--plot docs/soak.png]

Starts `uvicorn app.main:app` (default weights and settings), records each valid pair's
answer while the server is idle, then for `--minutes` runs at once:
- valid /verify pairs (LFW View 2 photos, multipart and JSON) from `--clients` clients: every
  answer must be 200 with the idle answer's verdict and distance (within 1e-4);
- the bad-input table (broken, truncated, faceless, oversized images, bad fields, a threshold
  above the server's cap): each must get its own 4xx;
- aborted uploads: a connection that sends half a body and closes;
- slow uploads: connections that send a byte a second; each must get 408 request_timeout;
- bursts over capacity every `--burst-every` s: 300 requests at once; 200 or 503 overloaded
  (with Retry-After) only.
Every 2 s it samples the server's RSS, open file descriptors and threads. It reports status
counts, the samples, and how flat RSS and descriptors stay after the first fifth of the run
(the warm-up): their range and least-squares slope per minute. Pass: no 5xx other than 503
overloaded during bursts, every valid answer correct, every bad input its 4xx, every slow
upload 408, open descriptors back to their idle count once the clients have gone, and RSS
within `--max-rss-growth-mib` after the warm-up.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, ROOT, Server, proc_status, rss_mib


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def bad_inputs(good: bytes, faceless: bytes) -> list[tuple[str, dict, int]]:
    """(name, request kwargs for /verify, expected status)."""
    def pair(a: bytes, b: bytes = good) -> dict:
        return {"files": {"image1": ("a.jpg", a, "image/jpeg"),
                          "image2": ("b.jpg", b, "image/jpeg")}}
    g64 = base64.b64encode(good).decode()
    return [
        ("truncated JPEG", pair(good[: len(good) // 3]), 400),
        ("text renamed .jpg", pair(b"hello, this is not an image"), 400),
        ("empty file", pair(b""), 400),
        ("no face", pair(faceless), 422),
        ("broken base64", {"json": {"image1": "!!not*base64!!", "image2": g64}}, 400),
        ("missing field", {"files": {"image1": ("a.jpg", good, "image/jpeg")}}, 422),
        ("threshold above the cap", {**pair(good), "data": {"threshold": "1.9"}}, 422),
        ("oversized image", pair(bytes(11 * 1024 * 1024)), 413),
        ("wrong content type", {"content": good, "headers": {"content-type": "image/jpeg"}},
         415),
    ]


class Soak:
    def __init__(self, server: Server, pairs: list[tuple[bytes, bytes]], bad: list,
                 clients: int, burst_every: float, slow: int, seconds: float):
        self.server, self.pairs, self.bad = server, pairs, bad
        self.clients, self.burst_every, self.slow, self.seconds = clients, burst_every, slow, seconds
        self.expected: list[dict] = []
        self.counts: Counter = Counter()  # "kind:status"
        self.problems: list[str] = []
        self.samples: list[dict] = []
        self.port = int(server.url.rsplit(":", 1)[1])

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)
        self.counts["problems"] += 1

    @staticmethod
    def _as_request(pair: tuple[bytes, bytes], as_json: bool) -> dict:
        if as_json:
            return {"json": {"image1": base64.b64encode(pair[0]).decode(),
                             "image2": base64.b64encode(pair[1]).decode()}}
        return {"files": {"image1": ("a.jpg", pair[0], "image/jpeg"),
                          "image2": ("b.jpg", pair[1], "image/jpeg")}}

    async def record_idle_answers(self, client: httpx.AsyncClient) -> None:
        for pair in self.pairs:
            r = await client.post("/verify", **self._as_request(pair, False))
            r.raise_for_status()
            self.expected.append(r.json())

    async def valid_client(self, client: httpx.AsyncClient, deadline: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            i = rng.randrange(len(self.pairs))
            r = await client.post("/verify", **self._as_request(self.pairs[i], rng.random() < 0.3))
            self.counts[f"valid:{r.status_code}"] += 1
            if r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            if r.status_code != 200:
                self.problem(f"valid pair {i}: {r.status_code} {r.text[:200]}")
                continue
            got, want = r.json(), self.expected[i]
            if got["verified"] != want["verified"] or abs(got["distance"] - want["distance"]) > 1e-4:
                self.problem(f"valid pair {i}: {got['distance']} != idle {want['distance']}")

    async def bad_client(self, client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            for name, kwargs, status in self.bad:
                r = await client.post("/verify", **kwargs)
                self.counts[f"bad:{r.status_code}"] += 1
                if r.status_code != status and r.status_code != 503:
                    self.problem(f"bad input {name!r}: {r.status_code}, expected {status}")
            await asyncio.sleep(0.5)

    async def aborting_client(self, deadline: float) -> None:
        body = b"--x\r\nContent-Disposition: form-data; name=\"image1\"; filename=\"a.jpg\"\r\n\r\n"
        while time.monotonic() < deadline:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                         b" boundary=x\r\nContent-Length: 100000\r\n\r\n" + body + bytes(20000))
            await writer.drain()
            writer.transport.abort()  # gone mid-body
            self.counts["aborted:sent"] += 1
            await asyncio.sleep(0.5)

    async def slow_client(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                         b" boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\nContent-Disposition:"
                         b" form-data; name=\"image1\"; filename=\"a.jpg\"\r\n\r\n")
            status = None
            for _ in range(600):  # a byte a second until the server answers
                try:
                    head = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    try:
                        writer.write(b"x")
                        await writer.drain()
                    except ConnectionError:
                        break
                    continue
                if head.startswith(b"HTTP/1.1 "):
                    status = int(head.split()[1])
                break
            writer.close()
            self.counts[f"slow:{status}"] += 1
            if status != 408:
                self.problem(f"slow upload answered {status}, expected 408")

    async def bursts(self, client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() + self.burst_every < deadline:
            await asyncio.sleep(self.burst_every)
            await self._burst(client)

    async def _burst(self, client: httpx.AsyncClient) -> None:
        """300 requests at once: each gets 200, or 503 overloaded with Retry-After."""
        request = self._as_request(self.pairs[0], False)

        async def one() -> None:
            try:
                r = await client.post("/verify", **request)
            except httpx.TransportError as exc:
                self.problem(f"burst: no answer ({exc!r})")
                return
            self.counts[f"burst:{r.status_code}"] += 1
            if r.status_code not in (200, 503) or (r.status_code == 503 and (
                    r.json()["error"]["code"] != "overloaded" or "retry-after" not in r.headers)):
                self.problem(f"burst: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(one() for _ in range(300)))

    def sample(self, t0: float) -> None:
        """The server's RSS, open descriptors and threads, and the counts so far."""
        pid = self.server.proc.pid
        self.samples.append({"t": round(time.monotonic() - t0, 1), "rss_mib": rss_mib(pid),
                             "fds": open_fds(pid), "threads": proc_status(pid, "Threads"),
                             "counts": dict(self.counts)})

    async def sampler(self, deadline: float, t0: float) -> None:
        while time.monotonic() < deadline:
            self.sample(t0)
            await asyncio.sleep(2.0)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=120, limits=limits) as client:
            await self.record_idle_answers(client)
            t0 = time.monotonic()
            deadline = t0 + self.seconds
            tasks = [self.sampler(deadline, t0), self.bad_client(client, deadline),
                     self.aborting_client(deadline), self.bursts(client, deadline)]
            tasks += [self.valid_client(client, deadline, s) for s in range(self.clients)]
            tasks += [self.slow_client(deadline) for _ in range(self.slow)]
            await asyncio.gather(*tasks)
        await asyncio.sleep(3)  # the clients' connections are closed; let the server see it
        self.sample(t0)


def flatness(samples: list[dict], key: str, skip: float = 0.2) -> dict:
    """Range and least-squares slope (per minute) of `key` after the first `skip` of the run."""
    start = samples[-1]["t"] * skip
    pts = [(s["t"], s[key]) for s in samples if s["t"] >= start and s[key] is not None]
    t, v = np.array(pts, dtype=float).T
    slope = float(np.polyfit(t / 60, v, 1)[0]) if len(t) > 2 else 0.0
    return {"min": float(v.min()), "max": float(v.max()), "first": float(v[0]),
            "last": float(v[-1]), "slope_per_min": round(slope, 3)}


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = report["samples"]
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, [x["rss_mib"] for x in s])
    ax[0].set_ylabel("RSS (MiB)")
    ax[1].plot(t, [x["fds"] for x in s], label="open fds")
    ax[1].plot(t, [x["threads"] for x in s], label="threads")
    ax[1].legend()
    kinds = sorted({k for x in s for k in x["counts"] if ":" in k})
    for k in kinds:
        ax[2].plot(t, [x["counts"].get(k, 0) for x in s], label=k)
    ax[2].set_ylabel("requests (cumulative)")
    ax[2].set_xlabel("minutes")
    ax[2].legend(fontsize=7, ncol=3)
    fig.suptitle(f"bench.soak: {report['minutes']} min, {report['clients']} valid clients")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=8, help="valid clients in a closed loop")
    p.add_argument("--slow", type=int, default=8, help="slow uploads at a time")
    p.add_argument("--burst-every", type=float, default=60.0)
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    p.add_argument("--setting", action="append", default=[], metavar="K=V")
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    from model.evaluate.lfw import read_pairs
    root = args.lfw_dir / "lfw-deepfunneled"
    chosen = read_pairs(args.lfw_dir / "pairs.txt")[:: max(1, 6000 // args.pairs)][: args.pairs]
    pairs = [((root / x.left).read_bytes(), (root / x.right).read_bytes()) for x in chosen]
    buf = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(buf, "JPEG")
    bad = bad_inputs(pairs[0][0], buf.getvalue())
    server = Server(args.weights, dict(s.split("=", 1) for s in args.setting),
                    ROOT / "runs" / "bench" / "soak.log")
    soak = Soak(server, pairs, bad, args.clients, args.burst_every, args.slow, args.minutes * 60)
    try:
        server.wait_ready()
        asyncio.run(soak.run())
        alive = server.proc.poll() is None
    finally:
        server.stop()
    counts = dict(sorted(soak.counts.items()))
    five_xx = {k: v for k, v in counts.items() if ":5" in k and not k.startswith(("burst:503",
                                                                                 "valid:503",
                                                                                 "bad:503"))}
    rss, fds = flatness(soak.samples, "rss_mib"), flatness(soak.samples, "fds")
    report = {
        "minutes": args.minutes, "clients": args.clients, "slow_uploads": args.slow,
        "burst_every_s": args.burst_every, "pairs": len(pairs), "counts": counts,
        "unexpected_5xx": five_xx, "problems": soak.problems, "rss_mib": rss, "fds": fds,
        "threads": flatness(soak.samples, "threads"), "server_alive_at_end": alive,
        # open descriptors before any traffic, and after every client has gone
        "fds_idle": soak.samples[0]["fds"], "fds_after": soak.samples[-1]["fds"],
        "samples": soak.samples,
    }
    report["passed"] = bool(
        alive and not five_xx and not soak.problems
        and rss["max"] - rss["min"] <= args.max_rss_growth_mib
        and fds["last"] <= report["fds_idle"] + 2)
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
