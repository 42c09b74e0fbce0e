"""`POST /verify` (or `/embed`) throughput with `wrk` as the client: a load generator in C, so
that the client takes little of the two cores the service is measured on.

    python -m bench.wrk_load [--route /verify] [--detect true] [--concurrency 1 16 64]
                             [--duration 15] [--pairs 200] [--set NAME=VALUE ...]
                             [--uvicorn-workers 1] [--out bench/results/wrk_load.json]

Needs `wrk` (Debian: `apt-get install wrk`). The same LFW View 2 pairs as bench.load
(`--pairs`, same seed; /embed: their photos), each as a ready multipart body in a temporary
folder (`--detect false`: the aligned crops, as a client that aligns faces itself sends
them); a Lua script cycles through them from a random start (wrk runs one Lua state per
thread, so with `-t1` the connections share one cycle). One server (bench/server.py, default
settings plus `--set`), then for each concurrency a `wrk -t1 -c N` run after a
3-second warm-up run; wrk's own latency percentiles (of all answers) and its count of
non-2xx answers, which give the 200s per second; the service's answers per status from its
/metrics before and after (one worker's, when there are several); and the latency of the
200s alone as the server logged it (`duration_ms`, from the request's arrival to its answer).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.closed_loop import percentiles
from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, Server

BOUNDARY = "faceverifybenchboundary"

LUA = """
local bodies = {}
local n = 0
init = function(args)
  local dir = args[1]
  local count = tonumber(args[2])
  for i = 1, count do
    local f = assert(io.open(dir .. "/" .. i .. ".body", "rb"))
    bodies[i] = f:read("*all")
    f:close()
  end
  n = count
end
local i = 0
local offset = nil
request = function()
  -- one Lua state per wrk thread: its connections share this cycle
  if offset == nil then offset = math.random(n) end
  i = i + 1
  local body = bodies[((offset + i) % n) + 1]
  return wrk.format("POST", "@ROUTE@",
    {["Content-Type"] = "multipart/form-data; boundary=@BOUNDARY@"}, body)
end
"""


def multipart(images: dict[str, bytes], detect: bool = True) -> bytes:
    """A multipart/form-data body: the images as file fields, then `detect`."""
    parts = []
    for name, data in images.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{name}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="detect"\r\n\r\n'
                 f'{"true" if detect else "false"}\r\n'.encode())
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> dict:
    """wrk --latency's report → requests/s, latency percentiles (ms), non-2xx, errors."""
    res = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
           "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    res["latency_ms"] = {f"p{p}": _ms(v) for p, v in
                         re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE)}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    res["socket_errors"] = m.group(1) if m else None
    return res


def write_bodies(folder: Path, bodies: list[dict[str, bytes]], route: str, detect: bool
                 ) -> Path:
    """Each body as `folder/<i>.body` (multipart, from 1) and the Lua script that cycles
    through them; returns the script's path."""
    for i, fields in enumerate(bodies, 1):
        Path(folder, f"{i}.body").write_bytes(multipart(fields, detect))
    script = Path(folder, "load.lua")
    script.write_text(LUA.replace("@BOUNDARY@", BOUNDARY).replace("@ROUTE@", route))
    return script


def run_wrk(url: str, script: Path, bodies: int, connections: int, seconds: int) -> str:
    """wrk's report of one run: one thread, `connections` connections, the bodies beside
    `script`."""
    return subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "30s",
         "-s", str(script), url, "--", str(script.parent), str(bodies)],
        capture_output=True, text=True, check=True).stdout


def statuses(url: str, route: str) -> dict[str, float]:
    """The route's answers so far, by status, from the service's own counter."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {s: float(v) for s, v in re.findall(
        r'^faceverify_requests_total\{route="' + re.escape(route)
        + r'",status="(\d+)"\} (\S+)$', text, re.MULTILINE)}


def main(argv: list[str] | None = None) -> int:
    from bench.load import load_payloads
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--route", choices=["/verify", "/embed"], default="/verify")
    p.add_argument("--detect", choices=["true", "false"], default="true",
                   help="false: the photos' aligned crops, sent with detect=false")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--uvicorn-workers", type=int, default=1)
    p.add_argument("--log-dir", type=Path, default=Path("runs/logs"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    settings = dict(s.split("=", 1) for s in args.set)
    from model.nn.checkpoint import load_encoder
    payloads = load_payloads(args.lfw_dir, args.pairs, spec=load_encoder(args.weights)[0].spec)
    detect = args.detect == "true"
    images = payloads[detect]
    bodies = ([{"image1": images[a], "image2": images[b]} for a, b in payloads["pairs"]]
              if args.route == "/verify" else [{"image": images[x]} for x in payloads["paths"]])
    report = {"route": args.route, "detect": detect, "bodies": len(bodies),
              "pairs": len(payloads["pairs"]), "settings": settings,
              "uvicorn_workers": args.uvicorn_workers, "duration_s": args.duration,
              "cells": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = write_bodies(Path(tmp), bodies, args.route, detect)
        # info: one log line per request with its status and duration (the 200s' latency)
        server = Server(args.weights, {"log_level": "info", **settings},
                        args.log_dir / "wrk_load.log", workers=args.uvicorn_workers)
        try:
            server.wait_ready()
            for c in args.concurrency:
                def run(seconds: int, c=c) -> str:
                    return run_wrk(server.url, script, len(bodies), c, seconds)
                run(3)
                before, seen = statuses(server.url, args.route), len(server.log_lines())
                out = run(args.duration)
                after, lines = statuses(server.url, args.route), server.log_lines()[seen:]
                ok_ms = [ln["duration_ms"] for ln in lines
                         if ln.get("path") == args.route and ln.get("status") == 200]
                cell = {"concurrency": c, **parse_wrk(out),
                        "statuses": {s: after.get(s, 0) - before.get(s, 0) for s in after},
                        "server_ms_of_200s": percentiles(ok_ms)}
                # wrk's counts (the /metrics statuses are one worker's when there are several)
                cell["ok_per_s"] = (cell["requests"] - cell["non_2xx"]) / args.duration
                report["cells"].append(cell)
                print(f"c={c:<3} {cell['ok_per_s']:6.1f} ok answers/s  "
                      f"p50 {cell['latency_ms'].get('p50')} ms  p99 "
                      f"{cell['latency_ms'].get('p99')} ms  200s in the server: p50 "
                      f"{cell['server_ms_of_200s']['p50']} ms  statuses {cell['statuses']}",
                      flush=True)
                time.sleep(1)
        finally:
            server.stop()
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
