"""What an install costs: site-packages size, the server's memory, and its time to ready.

    python -m bench.footprint --variant NAME=PYTHON[@CODE_DIR] ... [--repeats 3]
        [--out bench/results/footprint.json]

Each variant is a Python interpreter (its venv) and where the code comes from: CODE_DIR (a
checkout, run with the default weights there) or, without @, the package installed in that
venv (run from an empty folder, so nothing of the checkout is on the path). For each, the
server (`python -m uvicorn app.main:app`, galleries off, 2 face workers) is started
`--repeats` times; measured from the process start to the first 200 of /health/ready, and the
resident memory of the server and its face workers (from /proc: VmRSS summed over the process
tree) once ready and after 20 /verify requests on two LFW photos. Medians are reported, with
the venv's site-packages size (du) and whether torch was imported (/proc/PID/maps holds
libtorch).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.server import DEFAULT_LFW

PAIR = ("Colin_Powell/Colin_Powell_0001.jpg", "Colin_Powell/Colin_Powell_0002.jpg")


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and all its descendants, MiB."""
    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
        return out
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            todo += children(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return round(total / 1024, 1)


def torch_loaded(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(a: bytes, b: bytes) -> tuple[bytes, str]:
    boundary = "fvfootprint"
    parts = []
    for name, data in (("image1", a), ("image2", b)):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{name}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def one_start(python: str, code: Path | None, lfw: Path) -> dict:
    port = free_port()
    cwd = code or Path(tempfile.mkdtemp(prefix="fv-footprint-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"FACEVERIFY_GALLERY_ENABLED": "false", "FACEVERIFY_DETECT_WORKERS": "2",
                "MALLOC_ARENA_MAX": "2", "PYTHONDONTWRITEBYTECODE": "1"})
    if code is not None:
        env["PYTHONPATH"] = str(code)
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "uvicorn", "app.main:app", "--port", str(port),
                             "--no-access-log"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{python} server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("not ready in 300 s")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        rss_ready = tree_rss_mib(proc.pid)
        body, boundary = multipart(*((lfw / p).read_bytes() for p in PAIR))
        for _ in range(20):
            req = urllib.request.Request(url + "/verify", data=body, headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert json.loads(r.read())["verified"] is True
        return {"ready_s": round(ready_s, 2), "rss_ready_mib": rss_ready,
                "rss_after_verify_mib": tree_rss_mib(proc.pid),
                "torch_loaded": torch_loaded(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(30)


def site_packages_mib(python: str) -> float:
    sp = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
    du = subprocess.run(["du", "-sk", sp], check=True, capture_output=True, text=True).stdout
    return round(int(du.split()[0]) / 1024, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=PYTHON[@CODE_DIR]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    p.add_argument("--out", type=Path, default=Path("bench/results/footprint.json"))
    args = p.parse_args(argv)
    lfw = args.lfw / "lfw-deepfunneled" if (args.lfw / "lfw-deepfunneled").is_dir() else args.lfw
    results = {}
    for spec in args.variant:
        name, rest = spec.split("=", 1)
        python, _, code = rest.partition("@")
        runs = [one_start(python, Path(code).resolve() if code else None, lfw)
                for _ in range(args.repeats)]
        results[name] = {
            "python": python, "code": code or "(installed package)",
            "site_packages_mib": site_packages_mib(python),
            "torch_loaded": runs[0]["torch_loaded"],
            **{k: statistics.median(r[k] for r in runs)
               for k in ("ready_s", "rss_ready_mib", "rss_after_verify_mib")},
            "runs": runs}
        print(name, json.dumps({k: v for k, v in results[name].items() if k != "runs"}),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m bench.footprint " + " ".join(
        f"--variant {v}" for v in args.variant) + f" --repeats {args.repeats}",
        "machine_cores": os.cpu_count(), "variants": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
