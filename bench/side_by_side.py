"""faceverify's /verify against face_recognition on the same photos and cores, interleaved.

    python -m bench.side_by_side [--rounds 3] [--concurrency 16] [--duration 12]
                                 [--out bench/results/side_by_side.json]

The machines here drift by 10-30 % within minutes, so one measurement of each, minutes
apart, says little about their ratio. This bench alternates them: each round runs
- `wrk` with `--concurrency` clients for `--duration` seconds against one running server
  (default settings, bench/server.py), cycling through the View 2 pairs of bench.wrk_load
  (`--pairs`, same seed), and counts the pairs answered 200 per second;
- face_recognition's whole recipe (HOG with one upsampling, 5 landmarks, dlib's ResNet;
  bench/peer_worker.py in its own venv, one process per core) on every photo of those same
  pairs, and counts its pairs per second (2 photos a pair; wall time);
and gives that round's ratio. The report has every round and the median ratio; the order of
the two alternates from round to round, so that a drift favours neither.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, ROOT, Server
from bench.wrk_load import parse_wrk, run_wrk, statuses, write_bodies


def main(argv: list[str] | None = None) -> int:
    from bench.load import load_payloads
    from bench.peer import peer_cmd, run_pool
    from model.nn.checkpoint import load_encoder
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--peer-python", default=str(ROOT / ".peer/bin/python"))
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=int, default=12)
    p.add_argument("--cores", type=int, nargs="+", default=[0, 1])
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    payloads = load_payloads(args.lfw_dir, args.pairs, spec=load_encoder(args.weights)[0].spec)
    bodies = [{"image1": payloads[True][a], "image2": payloads[True][b]}
              for a, b in payloads["pairs"]]
    photos = list(payloads["paths"])
    peer = peer_cmd(args.peer_python, args.lfw_dir / "lfw-deepfunneled", "full", "largest")
    report = {"command": "python -m bench.side_by_side " + " ".join(argv or []),
              "pairs": len(bodies), "photos": len(photos), "concurrency": args.concurrency,
              "duration_s": args.duration, "settings": dict(s.split("=", 1) for s in args.set),
              "peer": "face_recognition 1.3.0 (dlib-bin 20.0.1), HOG 1 upsampling, "
                      f"one process per core on cores {args.cores}", "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        script = write_bodies(Path(tmp), bodies, "/verify", True)
        server = Server(args.weights, {"log_level": "warning", **report["settings"]},
                        Path("runs/logs/side_by_side.log"))
        try:
            server.wait_ready()
            run_wrk(server.url, script, len(bodies), args.concurrency, 3)  # warm-up

            def ours() -> float:
                before = statuses(server.url, "/verify")
                cell = parse_wrk(run_wrk(server.url, script, len(bodies), args.concurrency,
                                         args.duration))
                after = statuses(server.url, "/verify")
                assert set(after) <= {"200", "503"}, after
                return (cell["requests"] - cell["non_2xx"]) / args.duration

            def theirs() -> float:
                run = run_pool(peer, photos, args.cores, Path(tmp), f"peer-{time.time()}")
                return len(photos) / 2 / run["wall_s"]

            for r in range(args.rounds):
                got = {}
                for name, fn in (("faceverify", ours), ("face_recognition", theirs))[::(
                        1 if r % 2 == 0 else -1)]:
                    got[name] = fn()
                got["ratio"] = got["faceverify"] / got["face_recognition"]
                report["rounds"].append({k: round(v, 2) for k, v in got.items()})
                print(f"round {r + 1}: faceverify {got['faceverify']:.1f} pairs/s, "
                      f"face_recognition {got['face_recognition']:.2f} pairs/s, "
                      f"x{got['ratio']:.2f}", flush=True)
        finally:
            server.stop()
    ratios = [r["ratio"] for r in report["rounds"]]
    report["median_ratio"] = round(statistics.median(ratios), 2)
    report["min_ratio"] = round(min(ratios), 2)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
