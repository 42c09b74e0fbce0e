"""HTTP checks of the docker smoke test (deploy/ci/docker-smoke.sh). Standard library only.

    python3 smoke_check.py ready  URL [--timeout S]
    python3 smoke_check.py verify URL --lfw-dir DIR [--expect-verdicts]
    python3 smoke_check.py balance LB_URL --lfw-dir DIR --replicas N [--requests M]

`verify` POSTs /verify with two photos of one person and with two different people and checks
the response's shape and types; with --expect-verdicts (the real default weights are baked in)
also the verdicts: same person -> verified true, different people -> false.
`balance` sends requests through the load balancer and checks that at least N different
replicas answered (nginx's X-Upstream header) and that every answer is a valid /verify reply.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

SAME = ("Colin_Powell/Colin_Powell_0001.jpg", "Colin_Powell/Colin_Powell_0002.jpg")
DIFFERENT = ("Colin_Powell/Colin_Powell_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg")


class CheckFailed(Exception):
    pass


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def multipart(files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = bytearray()
    for field, path in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        out += path.read_bytes() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def wait_ready(url: str, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            status, _, body = request(url + "/health/ready", timeout=5)
            if status == 200:
                return json.loads(body)
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(1)
    raise CheckFailed(f"{url}/health/ready not 200 after {timeout:.0f} s (last: {last})")


def post_verify(url: str, a: Path, b: Path) -> tuple[dict, dict]:
    body, ctype = multipart({"image1": a, "image2": b})
    try:
        status, headers, raw = request(url + "/verify", body, {"Content-Type": ctype},
                                       timeout=120)
    except OSError as e:
        raise CheckFailed(f"POST {url}/verify: {e!r}") from e
    if status != 200:
        raise CheckFailed(f"POST {url}/verify ({a.name}, {b.name}) -> HTTP {status}: "
                          f"{raw[:500]!r}")
    try:
        return json.loads(raw), headers
    except json.JSONDecodeError as e:
        raise CheckFailed(f"POST /verify answered non-JSON: {raw[:200]!r}") from e


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_shape(r: dict) -> None:
    problems = []
    if not isinstance(r.get("verified"), bool):
        problems.append(f"verified is {r.get('verified')!r}, not a boolean")
    for key, lo, hi in (("distance", 0, 2.0001), ("threshold", 0, 2.0001),
                        ("similarity", -1.0001, 1.0001)):
        if not (number(r.get(key)) and lo <= r[key] <= hi):
            problems.append(f"{key} is {r.get(key)!r}, not a number in [{lo}, {hi:.0f}]")
    if number(r.get("distance")) and number(r.get("threshold")) and isinstance(
            r.get("verified"), bool) and r["verified"] != (r["distance"] < r["threshold"]):
        problems.append("verified != (distance < threshold)")
    model = r.get("model")
    if not (isinstance(model, dict) and all(isinstance(model.get(k), str) and model[k]
                                            for k in ("name", "version", "sha256"))):
        problems.append(f"model is {model!r}, not {{name, version, sha256}}")
    faces = r.get("faces")
    if not (isinstance(faces, list) and len(faces) == 2):
        problems.append(f"faces is {faces!r}, not a list of 2")
    else:
        for i, f in enumerate(faces):
            box, lm = f.get("box"), f.get("landmarks")
            if not (isinstance(box, list) and len(box) == 4 and all(map(number, box))):
                problems.append(f"faces[{i}].box is {box!r}")
            if not (isinstance(lm, list) and len(lm) == 5
                    and all(isinstance(p, list) and len(p) == 2 and all(map(number, p))
                            for p in lm)):
                problems.append(f"faces[{i}].landmarks is {lm!r}")
            if not number(f.get("score")):
                problems.append(f"faces[{i}].score is {f.get('score')!r}")
            if not (isinstance(f.get("faces_found"), int) and f["faces_found"] >= 1):
                problems.append(f"faces[{i}].faces_found is {f.get('faces_found')!r}")
    if not (isinstance(r.get("timings_ms"), dict) and number(r["timings_ms"].get("total"))):
        problems.append(f"timings_ms is {r.get('timings_ms')!r}")
    if problems:
        raise CheckFailed("bad /verify reply: " + "; ".join(problems) +
                          f"\n{json.dumps(r)[:1500]}")


def cmd_ready(args) -> None:
    info = wait_ready(args.url, args.timeout)
    print(f"ready: {args.url} model={info.get('model', {}).get('name')} "
          f"device={info.get('device')} precision={info.get('precision')}")


def cmd_verify(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    for (a, b), same in ((SAME, True), (DIFFERENT, False)):
        r, _ = post_verify(args.url, lfw / a, lfw / b)
        check_shape(r)
        print(f"verify {Path(a).stem} vs {Path(b).stem}: verified={r['verified']} "
              f"distance={r['distance']:.4f} threshold={r['threshold']:.4f} "
              f"model={r['model']['name']}@{r['model']['sha256'][:12]} "
              f"total={r['timings_ms']['total']} ms")
        if args.expect_verdicts and r["verified"] is not same:
            raise CheckFailed(f"wrong verdict on the default weights: {Path(a).stem} vs "
                              f"{Path(b).stem} verified={r['verified']}, expected {same} "
                              f"(distance {r['distance']:.4f}, threshold {r['threshold']:.4f})")
    print("verify: replies have the documented shape" +
          (" and the right verdicts" if args.expect_verdicts else
           " (verdicts not checked: stand-in weights)"))


def cmd_balance(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    wait_ready(args.url, args.timeout)  # nginx answers once a replica is ready
    seen: dict[str, int] = {}
    for _ in range(args.requests):
        r, headers = post_verify(args.url, lfw / SAME[0], lfw / SAME[1])
        check_shape(r)
        upstream = {k.lower(): v for k, v in headers.items()}.get("x-upstream", "?")
        seen[upstream] = seen.get(upstream, 0) + 1
    print(f"balance: {args.requests} /verify requests through {args.url} answered by "
          f"{len(seen)} replicas: {seen}")
    if len(seen) < args.replicas or "?" in seen:
        raise CheckFailed(f"expected answers from {args.replicas} replicas, got {seen}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ready", "verify", "balance"):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--timeout", type=float, default=180)
        if name != "ready":
            p.add_argument("--lfw-dir", type=Path, required=True)
        if name == "verify":
            p.add_argument("--expect-verdicts", action="store_true")
        if name == "balance":
            p.add_argument("--replicas", type=int, default=2)
            p.add_argument("--requests", type=int, default=8)
    args = ap.parse_args(argv)
    args.url = args.url.rstrip("/")
    try:
        {"ready": cmd_ready, "verify": cmd_verify, "balance": cmd_balance}[args.cmd](args)
    except CheckFailed as e:
        print(f"smoke_check {args.cmd}: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
