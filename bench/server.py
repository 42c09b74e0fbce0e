"""The one harness that starts the real service for benchmarks and tests.

`Server` runs `uvicorn app.main:app` in a subprocess on a free 127.0.0.1 port, with
FACEVERIFY_* settings from its arguments only (none leak in from the caller's environment;
the gallery is a SQLite file beside the log unless `gallery_url` is given),
waits for /health/ready, samples the process's memory, and stops it with SIGTERM (SIGKILL
after 30 s). Every server started is also stopped at interpreter exit, whatever happens.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LFW = Path(os.environ.get("FACEVERIFY_LFW_DIR", ROOT.parent / "shared/data/lfw"))
# The weights a benchmark serves unless told (--weights), relative to the repository root
# where the benchmarks run and the servers they start are.
DEFAULT_WEIGHTS = Path(os.environ.get("FACEVERIFY_WEIGHTS",
                                      "weights/faceverify-encoder.safetensors"))
_SERVERS: list[subprocess.Popen] = []  # stopped at exit whatever happens


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(lambda: [_stop(p) for p in _SERVERS])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_mib(pid: int) -> float | None:
    """GPU memory used by this process (nvidia-smi), when there is a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [float(m) for p, m in (ln.split(",") for ln in out.splitlines() if "," in ln)
            if int(p) == pid]
    return sum(used) if used else None


def proc_status(pid: int, key: str) -> int | None:
    """A number from /proc/<pid>/status (kB for the Vm* keys), None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    kb = proc_status(pid, "VmRSS")
    return None if kb is None else kb / 1024


def server_env(weights: Path, device: str = "cpu", **settings) -> dict[str, str]:
    """The caller's environment without its FACEVERIFY_* settings (FACEVERIFY_LFW_DIR stays),
    plus the weights, the device and `settings` (name=value, e.g. max_batch_size=8)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FACEVERIFY_") or k == "FACEVERIFY_LFW_DIR"}
    env.update({"FACEVERIFY_WEIGHTS": str(weights), "FACEVERIFY_DEVICE": device})
    env.update({f"FACEVERIFY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Server:
    """`uvicorn app.main:app` on a free 127.0.0.1 port, with an RSS sampler."""

    def __init__(self, weights: Path, settings: dict, log_path: Path, device: str = "cpu",
                 env: dict[str, str] | None = None, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 — held by the server process
        # a gallery of its own beside its log, unless told (never the repository's data/)
        settings = {"gallery_url": f"sqlite:///{self.log_path.resolve().with_suffix('')}"
                                   "-gallery.db", **settings}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log",
             *(["--workers", str(workers)] if workers > 1 else [])],
            cwd=ROOT, env={**server_env(weights, device, **settings), **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT)
        _SERVERS.append(self.proc)
        self.ready_statuses: list[int] = []  # what /health/ready answered while starting
        self.samples: list[tuple[float, float]] = []
        self.gpu = device.startswith("cuda")
        self.gpu_samples: list[float] = []
        self._sampling = threading.Event()

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds until /health/ready answered 200; RuntimeError (with the log's tail) when
        the process exits or is not ready in time."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/health/ready", timeout=5)
                self.ready_statuses.append(r.status_code)
                if r.status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def log_lines(self) -> list[dict]:
        """The server's log, one JSON object per line (non-JSON lines as {"raw": line})."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"raw": line})
        return out

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def rss(self) -> float | None:
        return rss_mib(self.proc.pid)

    def start_sampling(self, every: float = 0.2) -> None:
        self._sampling.set()

        def loop():
            while self._sampling.is_set() and self.proc.poll() is None:
                r = self.rss()
                if r is not None:
                    self.samples.append((time.monotonic(), r))
                if self.gpu and len(self.samples) % 5 == 0:
                    g = gpu_mib(self.proc.pid)
                    if g is not None:
                        self.gpu_samples.append(g)
                time.sleep(every)
        threading.Thread(target=loop, daemon=True).start()

    def stop_sampling(self) -> None:
        self._sampling.clear()

    def stop(self) -> int | None:
        self.stop_sampling()
        _stop(self.proc)
        self._log.close()
        return self.proc.returncode
