"""Hostile clients against a real server: slow uploads must not lock honest clients out.

130 connections start a /verify multipart upload and then send one byte a second (more than
the 128 concurrency slots). The service takes a slot only once a body is in, so honest
clients are answered as usual meanwhile, and the trickling uploads get 408 request_timeout
once the grace period has passed without the minimum rate.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import lfw_or_skip, lfw_photo
from tests.service_support import running_server

pytestmark = pytest.mark.timeout(300)
TRICKLERS = 130
GRACE_S = 3.0


@pytest.fixture(scope="module")
def server(tiny_weights, tmp_path_factory):
    lfw_or_skip()
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running_server(tiny_weights, log, body_rate_grace_s=GRACE_S, min_body_rate=1024,
                        max_concurrent_requests=128, detect_workers=2) as s:
        yield s


def test_a_body_may_take_its_grace_period_then_must_keep_the_minimum_rate():
    from app.intake import BodyLimits
    limits = BodyLimits(max_upload_bytes=10**7, timeout_s=120, min_rate=10_000, grace_s=5)
    assert limits.wait_s(received=0, elapsed=0) == 5             # nothing due yet
    assert limits.wait_s(received=3, elapsed=4.5) < 0.6          # a trickle: cut at ~5 s
    assert limits.wait_s(received=100_000, elapsed=10) == 5      # 10 kB/s: 5 s in hand
    assert limits.wait_s(received=10**8, elapsed=119) == 1       # fast, but 120 s in all
    assert BodyLimits(10**7, 120, 0, 5).wait_s(0, 100) == 20     # no rate check


def test_body_settings_that_would_refuse_every_upload_are_rejected_at_start():
    from pydantic import ValidationError

    from app.config import Settings
    with pytest.raises(ValidationError, match="body_rate_grace_s"):
        Settings(body_rate_grace_s=0)  # every body would be late before its first byte
    with pytest.raises(ValidationError, match="at least one largest /verify body"):
        Settings(max_body_bytes_in_flight=10 * 1024 * 1024)  # < 2 x 10 MiB as base64
    with pytest.raises(ValidationError, match="max_pixels"):
        Settings(max_pixels=300_000_000)  # past Pillow's own guard


def test_request_bodies_in_flight_hold_a_bounded_number_of_bytes():
    from app.errors import ServiceError
    from app.intake import BodyBytes
    in_flight = BodyBytes(limit=1000, retry_after_s=2)
    in_flight.take(600)
    with pytest.raises(ServiceError) as exc:
        in_flight.take(401)
    assert exc.value.status == 503
    assert exc.value.headers == {"Retry-After": "2", "Connection": "close"}  # rest unread
    in_flight.give(600)
    in_flight.take(1000)


def _start_trickle(port: int) -> socket.socket:
    """A /verify multipart upload that announces 200 kB, sends its headers and the start of
    its first file, and is then fed a byte a second (a valid body, just slow)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: multipart/form-data; boundary=b0undary\r\n"
                 b"Content-Length: 200000\r\n\r\n"
                 b"--b0undary\r\nContent-Disposition: form-data; name=\"image1\"; "
                 b"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8")
    return sock


def _response_of(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the response the server sent (or (0, {}) without one)."""
    data = b""
    sock.settimeout(30)
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return 0, {}
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body[:_length(data)] or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_trickling_uploads_get_408_and_never_lock_out_honest_clients(server):
    port = int(server.url.rsplit(":", 1)[1])
    socks = [_start_trickle(port) for _ in range(TRICKLERS)]
    stop = threading.Event()

    def trickle():  # one more byte a second on every connection, until the server answers
        while not stop.wait(1.0):
            for s in socks:
                try:
                    s.sendall(b"x")
                except OSError:
                    pass

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    a, b = lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)
    files = {"image1": (a.name, a.read_bytes(), "image/jpeg"),
             "image2": (b.name, b.read_bytes(), "image/jpeg")}
    honest = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + GRACE_S - 0.5  # all of these while the 130 trickle
            while time.monotonic() < deadline or not honest:
                t0 = time.monotonic()
                r = client.post("/verify", files=files)
                honest.append((r.status_code, time.monotonic() - t0, r.text[:200]))
        statuses = [_response_of(s) for s in socks]
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert all(code == 200 for code, _, _ in honest), honest
    assert max(seconds for _, seconds, _ in honest) < 2.0, honest
    codes = [code for code, _ in statuses]
    assert codes.count(408) == TRICKLERS, codes
    for _, body in statuses:
        assert body["error"]["code"] == "request_timeout", body
        assert "too slow" in body["error"]["message"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.post("/verify", files=files).status_code == 200
        metrics = client.get("/metrics").text
    assert 'status="408"' in metrics
