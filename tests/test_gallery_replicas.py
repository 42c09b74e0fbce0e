"""The gallery against real server processes (uvicorn, the default weights): an enrollment
that got 201 survives `kill -9` and a restart (SQLite and PostgreSQL); two replicas on one
PostgreSQL see each other's enrollments and deletions, and catch up after the database
restarts under them."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx
import pytest

from bench.server import Server
from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SETTINGS = {"detect_workers": 2, "max_batch_delay_ms": 2, "gallery_allow_anonymous": True}


def photo(name: str, i: int = 1) -> dict:
    return {"image": ("p.jpg", lfw_photo(name, i).read_bytes(), "image/jpeg")}


def start(tmp_path, name: str, **settings) -> Server:
    server = Server(DEFAULT_WEIGHTS, {**SETTINGS, **settings}, tmp_path / f"{name}.log")
    server.wait_ready()
    return server


def enroll(server: Server, gallery: str, subject: str, i: int = 1) -> str:
    r = httpx.post(f"{server.url}/galleries/{gallery}/subjects/{subject}/faces",
                   files=photo(subject, i), timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["face_id"]


def identify(server: Server, gallery: str, subject: str, i: int) -> httpx.Response:
    return httpx.post(f"{server.url}/galleries/{gallery}/identify", files=photo(subject, i),
                      data={"top_k": "10"}, timeout=30)


def top(server: Server, gallery: str, subject: str, i: int) -> list[str]:
    r = identify(server, gallery, subject, i)
    return [c["subject"] for c in r.json()["candidates"]] if r.status_code == 200 else []


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until `check()` held (fails after `timeout`)."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(params=["sqlite", "postgresql"])
def gallery_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gallery.db"
    return request.getfixturevalue("postgres").database()


def test_an_acknowledged_enrollment_survives_kill_9(tmp_path, gallery_url):
    server = start(tmp_path, "first", gallery_url=gallery_url)
    face_ids = [enroll(server, "door", name) for name in
                ("Tony_Blair", "Laura_Bush", "Hans_Blix")]
    r = httpx.delete(f"{server.url}/galleries/door/subjects/Hans_Blix", timeout=30)
    assert r.status_code == 204
    server.proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
    server.proc.wait(30)
    server.stop()

    again = start(tmp_path, "again", gallery_url=gallery_url)
    try:
        r = identify(again, "door", "Tony_Blair", 2)
        cands = r.json()["candidates"]
        assert cands[0]["subject"] == "Tony_Blair" and cands[0]["face_id"] == face_ids[0]
        assert [c["subject"] for c in cands] == ["Tony_Blair", "Laura_Bush"]  # no Hans Blix
    finally:
        again.stop()


def test_two_replicas_share_enrollments_and_deletions_and_catch_up(tmp_path, postgres):
    url = postgres.database()
    # a long catch-up interval: what the replicas see quickly, they see by NOTIFY
    a = start(tmp_path, "a", gallery_url=url, gallery_sync_interval_s=60)
    b = start(tmp_path, "b", gallery_url=url, gallery_sync_interval_s=60)
    try:
        enroll(a, "door", "Tony_Blair")
        enroll(b, "door", "Laura_Bush")
        eventually(lambda: top(b, "door", "Tony_Blair", 2)[:1] == ["Tony_Blair"], 5)
        eventually(lambda: top(a, "door", "Laura_Bush", 2)[:1] == ["Laura_Bush"], 5)

        # deleted on one replica: never returned again by the other
        assert httpx.delete(f"{a.url}/galleries/door/subjects/Tony_Blair").status_code == 204
        assert "Tony_Blair" not in top(a, "door", "Tony_Blair", 2)  # at once where deleted
        eventually(lambda: "Tony_Blair" not in top(b, "door", "Tony_Blair", 2), 5)
        r = httpx.post(f"{b.url}/galleries/door/subjects/Tony_Blair/verify",
                       files=photo("Tony_Blair", 2), timeout=30)
        assert r.status_code == 404

        # the database goes away: writes and listings are 503 store_unavailable, identify
        # keeps answering from memory while its last sync is recent enough (here up to the
        # default 3 x 60 s; test_gallery_trust.py has the 503 store_stale beyond it)
        postgres.stop()
        r = httpx.post(f"{a.url}/galleries/door/subjects/Hans_Blix/faces",
                       files=photo("Hans_Blix"), timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        assert r.headers["Retry-After"]
        assert httpx.get(f"{b.url}/galleries/door/subjects").status_code == 503
        assert top(b, "door", "Laura_Bush", 2)[:1] == ["Laura_Bush"]
        # it comes back: the listening connections reconnect, and a write made while one
        # replica may still be reconnecting reaches it on reconnect (the log, not the
        # notification, is what it applies)
        postgres.start()
        eventually(lambda: httpx.post(f"{a.url}/galleries/door/subjects/Hans_Blix/faces",
                                      files=photo("Hans_Blix"), timeout=30).status_code == 201,
                   20)
        eventually(lambda: top(b, "door", "Hans_Blix", 2)[:1] == ["Hans_Blix"], 20)
        listing = httpx.get(f"{b.url}/galleries/door/subjects").json()["subjects"]
        assert listing == [{"subject": "Hans_Blix", "faces": 1},
                           {"subject": "Laura_Bush", "faces": 1}]
    finally:
        a.stop()
        b.stop()


def test_a_replica_that_cannot_reach_postgresql_does_not_start(tmp_path):
    server = Server(DEFAULT_WEIGHTS, {**SETTINGS,
                                      "gallery_url": "postgresql://u@127.0.0.1:1/none"},
                    tmp_path / "down.log")
    with pytest.raises(RuntimeError, match="exited"):
        server.wait_ready(60)
    assert "cannot open the gallery store" in server.log_tail()
    server.stop()
