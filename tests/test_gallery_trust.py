"""Galleries fit for biometric data (issue 22), on the real app (its lifespan, the default
weights, real LFW photos) and on real server processes, with SQLite and with PostgreSQL:

- scoped keys: every operation × a gallery in and out of the key's scope × every kind of key;
- no anonymous galleries unless the operator says so;
- the access log names the key, never the key, a gallery or a subject;
- deletion that erases: no byte of a deleted vector, and not its subject's name, in any of
  the store's files or in the replica's memory;
- restoring a backup keeps the erasures made since it was taken (our own backup, and a
  native one with `erasures export/apply`);
- identify answers 503 store_stale when the replica has lost its store for too long;
- a retried enroll with the same Idempotency-Key stores nothing new.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from app.gallery.__main__ import main as gallery_cli
from app.gallery.store import IDEMPOTENCY_TTL_S, open_store, read_backup
from app.keys import Keyring, KeysFileError, new_key, parse_keys_file
from bench.server import Server
from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS
from tests.test_api import captured_logs, serving, settings_for  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(600)


def photo(name: str, i: int = 1) -> dict:
    return {"image": ("p.jpg", lfw_photo(name, i).read_bytes(), "image/jpeg")}


def pair(a=("Tony_Blair", 1), b=("Tony_Blair", 2)) -> dict:
    return {"image1": photo(*a)["image"], "image2": photo(*b)["image"]}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/gallery.db"
    return request.getfixturevalue("postgres").database()


# ------------------------------------------------------------------------------ keys file
def test_a_keys_file_holds_hashes_and_scopes_and_bad_ones_are_refused(tmp_path):
    door = new_key("door", ["staff"], ["identify"])
    assert door["key"] not in json.dumps(door["entry"])  # the file holds only the sha256
    (key,) = parse_keys_file(json.dumps([door["entry"]]))
    assert key.allows("identify", "staff")
    assert not key.allows("identify", "other") and not key.allows("enroll", "staff")
    assert not key.allows("verify", None)  # a key scoped to galleries: not /verify
    everything = parse_keys_file(json.dumps([{**door["entry"], "galleries": ["*"],
                                              "operations": ["*"]}]))[0]
    assert everything.allows("verify", None) and everything.allows("delete", "any")

    entry = door["entry"]
    for bad, message in [
        ("{}", "list"),
        ("[1]", "object"),
        (json.dumps([{**entry, "key_sha256": door["key"]}]), "64 hex"),
        (json.dumps([{**entry, "operations": ["read"]}]), "operations"),
        (json.dumps([{**entry, "galleries": []}]), "galleries"),
        (json.dumps([{**entry, "galleries": ["a/b"]}]), "galleries"),
        (json.dumps([entry, entry]), "unique"),
        (json.dumps([{**entry, "key": "x"}]), "unknown field"),
    ]:
        with pytest.raises(KeysFileError, match=message):
            parse_keys_file(bad)

    # a server does not start on a bad file
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"name\": \"x\"}]")
    from app.main import create_app

    async def start():
        app = create_app(settings_for(DEFAULT_WEIGHTS, api_keys_file=bad))
        async with app.router.lifespan_context(app):
            pass
    with pytest.raises(SystemExit, match="key_sha256"):
        asyncio.run(start())


def test_the_keys_file_is_reread_when_it_changes_and_a_broken_one_refuses_its_keys(
        tmp_path, monkeypatch):
    monkeypatch.setattr("app.keys.RELOAD_CHECK_S", 0.0)
    a, b = new_key("a", ["*"], ["*"]), new_key("b", ["*"], ["*"])
    f = tmp_path / "keys.json"
    f.write_text(json.dumps([a["entry"]]))
    ring = Keyring(["plain-key"], f)
    assert ring.find(a["key"]).name == "a" and ring.find(b["key"]) is None
    assert ring.find("plain-key").name == "api-keys[1]"
    f.write_text(json.dumps([b["entry"]]))  # rotated
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert ring.find(b["key"]).name == "b" and ring.find(a["key"]) is None
    f.write_text("[not json")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert ring.find(b["key"]) is None  # fail closed: no file key is in force
    assert ring.find("plain-key").name == "api-keys[1]"  # FACEVERIFY_API_KEYS stay
    f.write_text(json.dumps([b["entry"]]))
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 3 * 10**9))
    assert ring.find(b["key"]).name == "b"
    f.unlink()  # removed: revoked
    assert ring.find(b["key"]) is None


# --------------------------------------------------------------------------- the scopes
def keys_for(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    made = {
        "door": new_key("door", ["staff"], ["identify"]),
        "hr": new_key("hr", ["staff"], ["enroll", "list", "delete"]),
        "all": new_key("all", ["*"], ["*"]),
    }
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([k["entry"] for k in made.values()]))
    return path, {name: k["key"] for name, k in made.items()}


# What each key kind may do: a key scoped to `staff` for some operations, one for every
# gallery and operation, a plain FACEVERIFY_API_KEYS key (everything), none, an unknown one.
SCOPES = {
    "door": {"identify"},
    "hr": {"enroll", "list", "delete"},
    "all": {"verify", "identify", "enroll", "list", "delete"},
    "plain": {"verify", "identify", "enroll", "list", "delete"},
}
ALLOWED = {"enroll": 201, "identify": 200, "subject_verify": 200, "list": 200,
           "delete": 404}  # deleting a subject that is not there: past the key check


async def attempt(c: httpx.AsyncClient, op: str, gallery: str, headers: dict
                  ) -> httpx.Response:
    base = f"/galleries/{gallery}"
    if op == "enroll":
        return await c.post(f"{base}/subjects/Laura_Bush/faces", files=photo("Laura_Bush"),
                            headers=headers)
    if op == "identify":
        return await c.post(f"{base}/identify", files=photo("Tony_Blair", 3), headers=headers)
    if op == "subject_verify":
        return await c.post(f"{base}/subjects/Tony_Blair/verify", files=photo("Tony_Blair", 3),
                            headers=headers)
    if op == "list":
        return await c.get(f"{base}/subjects", headers=headers)
    return await c.delete(f"{base}/subjects/nobody", headers=headers)


def test_every_operation_in_and_out_of_scope_for_every_kind_of_key(
        tmp_path, store_url, captured_logs):  # noqa: F811 (the fixture imported above)
    keys_file, keys = keys_for(tmp_path)
    keys["plain"] = "plain-key-0123456789"
    handler, logger = captured_logs
    logger.addHandler(handler)
    settings = settings_for(DEFAULT_WEIGHTS, gallery_url=store_url, api_keys_file=keys_file,
                            api_keys=keys["plain"])

    async def go():
        async with serving(settings) as (_, c):
            everything = {"X-API-Key": keys["all"]}
            for gallery in ("staff", "other"):  # both galleries hold Tony Blair
                r = await c.post(f"/galleries/{gallery}/subjects/Tony_Blair/faces",
                                 files=photo("Tony_Blair"), headers=everything)
                assert r.status_code == 201, r.text
            results = {}
            for kind in ("door", "hr", "all", "plain", "none", "unknown"):
                headers = {"none": {}, "unknown": {"X-API-Key": "not-a-key"}}.get(
                    kind, {"Authorization": f"Bearer {keys.get(kind)}"} if kind == "plain"
                    else {"X-API-Key": keys.get(kind)})
                for op in ALLOWED:
                    for gallery in ("staff", "other"):
                        results[kind, op, gallery] = await attempt(c, op, gallery, headers)
                results[kind, "verify", None] = await c.post("/verify", files=pair(),
                                                             headers=headers)
            return results

    results = asyncio.run(go())
    for (kind, op, gallery), r in results.items():
        operation = "identify" if op == "subject_verify" else op
        if kind in ("none", "unknown"):
            expected = 401
        elif operation in SCOPES[kind] and (gallery in (None, "staff")
                                            or kind in ("all", "plain")) and \
                not (operation == "verify" and kind in ("door", "hr")):
            expected = ALLOWED.get(op, 200)
        else:
            expected = 403
        assert r.status_code == expected, (kind, op, gallery, r.status_code, r.text)
        if expected in (401, 403):
            err = r.json()["error"]
            assert err["code"] == ("unauthorized" if expected == 401 else "forbidden")
            assert "timings_ms" not in r.json()  # refused before any image work
    assert "key 'door' may not enroll in gallery 'staff'" in \
        results["door", "enroll", "staff"].json()["error"]["message"]

    # the access log: the key's name, never the key, never a gallery or subject name
    access = [json.loads(line) for line in handler.lines if '"faceverify.access"' in line]
    gallery_lines = [x for x in access if x["route"].startswith("/galleries")]
    assert len(gallery_lines) >= 60
    assert {x.get("key") for x in gallery_lines} >= {"door", "hr", "all", "api-keys[1]"}
    text = "\n".join(handler.lines)
    for secret in keys.values():
        assert secret not in text
    for name in ("staff", "other", "Tony_Blair", "Laura_Bush", "nobody"):
        assert name not in "\n".join(json.dumps(x) for x in access), name
    assert "path" not in access[0]


def test_without_keys_galleries_refuse_everyone_unless_the_operator_allows_it(tmp_path):
    async def go():
        url = f"sqlite:///{tmp_path}/g.db"
        async with serving(settings_for(DEFAULT_WEIGHTS, gallery_url=url)) as (_, c):
            for op in ALLOWED:
                r = await attempt(c, op, "staff", {})
                assert r.status_code == 401, op
                message = r.json()["error"]["message"]
                assert "FACEVERIFY_API_KEYS_FILE" in message and "biometric" in message
            assert (await c.post("/verify", files=pair())).status_code == 200  # 1:1 stays open
        allow = settings_for(DEFAULT_WEIGHTS, gallery_url=url, gallery_allow_anonymous=True)
        async with serving(allow) as (_, c):
            assert (await attempt(c, "enroll", "staff", {})).status_code == 201
    asyncio.run(go())


# ----------------------------------------------------------------------- erasure: SQLite
def scan(folder: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which files of `folder` hold which needle."""
    found: dict[str, list[str]] = {}
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        for name, needle in needles.items():
            if needle in data:
                found.setdefault(name, []).append(f.name)
    return found


def test_a_deleted_face_leaves_no_byte_in_the_store_files_or_the_replica(tmp_path):
    folder = tmp_path / "store"
    url = f"sqlite:///{folder}/gallery.db"
    keys_file, keys = keys_for(tmp_path)
    hr = {"X-API-Key": keys["all"]}
    subjects = ["Erase_Me_Subject_7f3a", "Erase_Me_Face_9c2e"]

    async def go():
        async with serving(settings_for(DEFAULT_WEIGHTS, gallery_url=url,
                                        api_keys_file=keys_file)) as (app, c):
            for name, person in zip(subjects, ["Tony_Blair", "Laura_Bush"]):
                for i in (1, 2):
                    r = await c.post(f"/galleries/staff/subjects/{name}/faces",
                                     files=photo(person, i), headers=hr)
                    assert r.status_code == 201
            r = await c.post("/galleries/staff/subjects/Kept/faces", files=photo("Hans_Blix"),
                             headers=hr)
            kept_id = r.json()["face_id"]
            db = __import__("sqlite3").connect(str(folder / "gallery.db"))
            rows = db.execute("SELECT subject, face_id, embedding FROM faces").fetchall()
            db.close()
            vectors = {fid: bytes(e) for _, fid, e in rows}
            doomed = [(s, fid) for s, fid, _ in rows if s in subjects]
            # before: the bytes are there (so the scan can find them)
            assert scan(folder, {"v": vectors[doomed[0][1]]})
            # erase: one subject whole, the other face by face
            assert (await c.delete(f"/galleries/staff/subjects/{subjects[0]}",
                                   headers=hr)).status_code == 204
            for s, fid in doomed:
                if s == subjects[1]:
                    r = await c.delete(f"/galleries/staff/subjects/{s}/faces/{fid}",
                                       headers=hr)
                    assert r.status_code == 204
            # scanned while the server runs (closing the last connection would remove the
            # WAL anyway)
            needles = {}
            for s, fid in doomed:
                v = vectors[fid]
                needles[f"{fid}:whole"] = v
                needles[f"{fid}:16 bytes"] = v[200:216]
            needles.update({s: s.encode() for s in subjects})
            assert scan(folder, needles) == {}
            assert scan(folder, {"kept": vectors[kept_id]})  # what was not deleted stays
            files = sorted(f.name for f in folder.iterdir())
            assert files == ["gallery.db", "gallery.db-shm", "gallery.db-wal"]
            for f in folder.iterdir():  # the service's user only
                assert f.stat().st_mode & 0o777 == 0o600, f.name
            return vectors, doomed, kept_id, app.state.service.gallery.index.galleries["staff"]
    vectors, doomed, kept_id, memory = asyncio.run(go())
    # the replica's memory: neither the names nor the vectors (the whole matrix, its spare
    # capacity included)
    assert not set(subjects) & (set(memory.subject_code) | set(memory.subject_names))
    matrix = memory.matrix.tobytes()
    assert not any(vectors[fid][:64] in matrix for _, fid in doomed)
    assert vectors[kept_id][:64] in matrix


def test_a_deletion_while_a_reader_holds_the_wal_is_truncated_at_the_next_poll(tmp_path):
    import sqlite3
    store = open_store(f"sqlite:///{tmp_path}/g.db")
    v = np.ones(128, np.float32) / np.sqrt(128) * np.linspace(0.5, 1.5, 128, dtype=np.float32)
    store.add_face("g", "alice", "a" * 32, "m", v, None, None)
    reader = sqlite3.connect(str(tmp_path / "g.db"), timeout=0.1)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM faces").fetchone()  # a read snapshot: WAL pinned
    store._db.execute("PRAGMA busy_timeout=100")
    store.delete_subject("g", "alice")
    assert store._checkpoint_due  # could not truncate yet
    reader.execute("COMMIT")
    reader.close()
    assert store.checkpoint() and not store._checkpoint_due
    assert (tmp_path / "g.db-wal").stat().st_size == 0
    assert scan(tmp_path, {"v": np.asarray(v, "<f4").tobytes()}) == {}
    store.close()


# ------------------------------------------------------------------ backups and restores
def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def subjects_of(store) -> list[tuple[str, str]]:
    _, faces = store.snapshot()
    return sorted((f.gallery, f.subject) for f in faces)


def test_restoring_a_backup_does_not_bring_back_people_erased_since(tmp_path, store_url):
    v = unit_vectors(5, 7)
    store = open_store(store_url)
    try:
        store.add_face("g", "alice", "a" * 32, "m", v[0], b"crop", "spec")
        store.add_face("g", "bob", "b" * 32, "m", v[1], None, None)
        store.add_face("g", "carol", "c" * 32, "m", v[2], None, None)
        store.add_face("g", "carol", "d" * 32, "m", v[3], None, None)
        backup = tmp_path / "backup.db"
        assert gallery_cli(["backup", "--url", store_url, str(backup)]) == 0
        assert backup.stat().st_mode & 0o777 == 0o600
        assert len(list(read_backup(backup))) == 4
        time.sleep(0.01)
        store.delete_subject("g", "alice")  # erased after the backup
        store.delete_face("g", "carol", "d" * 32)  # one face of carol's
        store.add_face("g", "dave", "e" * 32, "m", v[4], None, None)  # after the backup too
        assert gallery_cli(["restore", "--url", store_url, str(backup)]) == 0
        assert subjects_of(store) == [("g", "bob"), ("g", "carol")]
        (carol,) = [f for f in store.snapshot()[1] if f.subject == "carol"]
        assert carol.face_id == "c" * 32
        np.testing.assert_array_equal(carol.embedding, v[2])
        kinds = sorted(e.kind for e in store.erasures())
        assert kinds == ["face", "subject"]  # the records stay, for the next restore

        # alice enrolls again (new consent), then a restore of the same old backup: her old
        # face stays erased; the new one is not in the backup either
        store.add_face("g", "alice", "f" * 32, "m", v[0], None, None)
        assert gallery_cli(["restore", "--url", store_url, str(backup)]) == 0
        assert subjects_of(store) == [("g", "bob"), ("g", "carol")]
    finally:
        store.close()


def test_a_running_replica_reloads_after_a_restore(tmp_path):
    url = f"sqlite:///{tmp_path}/g.db"
    keys_file, keys = keys_for(tmp_path)
    h = {"X-API-Key": keys["all"]}
    settings = settings_for(DEFAULT_WEIGHTS, gallery_url=url, api_keys_file=keys_file,
                            gallery_sync_interval_s=0.2)

    async def go():
        async with serving(settings) as (_, c):
            for name in ("Tony_Blair", "Laura_Bush"):
                r = await c.post(f"/galleries/g/subjects/{name}/faces", files=photo(name),
                                 headers=h)
                assert r.status_code == 201
            assert gallery_cli(["backup", "--url", url, str(tmp_path / "b.db")]) == 0
            assert (await c.delete("/galleries/g/subjects/Tony_Blair", headers=h)
                    ).status_code == 204
            await c.post("/galleries/g/subjects/Hans_Blix/faces", files=photo("Hans_Blix"),
                         headers=h)
            assert gallery_cli(["restore", "--url", url, str(tmp_path / "b.db")]) == 0
            deadline = time.monotonic() + 10
            while True:
                listing = (await c.get("/galleries/g/subjects", headers=h)).json()
                r = await c.post("/galleries/g/identify", files=photo("Hans_Blix", 2),
                                 data={"top_k": "10"}, headers=h)
                names = [x["subject"] for x in r.json()["candidates"]]
                if names == ["Laura_Bush"]:
                    break
                assert time.monotonic() < deadline, names
                await asyncio.sleep(0.1)
            assert listing["subjects"] == [{"subject": "Laura_Bush", "faces": 1}]
    asyncio.run(go())


def test_a_native_restore_keeps_erasures_through_export_and_apply(tmp_path, store_url,
                                                                  request):
    """pg_dump / pg_restore (or a copy of the SQLite file) bypass our restore: the erasure
    records exported before are applied after, through the usual deletes."""
    v = unit_vectors(3, 8)
    store = open_store(store_url)
    pg = request.getfixturevalue("postgres") if store_url.startswith("postgresql") else None
    try:
        store.add_face("g", "alice", "a" * 32, "m", v[0], None, None)
        store.add_face("g", "bob", "b" * 32, "m", v[1], None, None)
        native = tmp_path / "native.bak"
        if pg is None:
            store.checkpoint()
            shutil.copy(store.path, native)
        else:
            subprocess.run([str(pg.bin / "pg_dump"), "-Fc", "-f", str(native), store_url],
                           check=True, capture_output=True, timeout=60)
        time.sleep(0.01)
        store.delete_subject("g", "alice")
        exported = tmp_path / "erasures.json"
        assert gallery_cli(["erasures", "export", "--url", store_url, str(exported)]) == 0
        assert exported.stat().st_mode & 0o777 == 0o600
        store.close()
        if pg is None:  # the native restore: the old file back
            for suffix in ("-wal", "-shm"):
                Path(f"{store.path}{suffix}").unlink(missing_ok=True)
            shutil.copy(native, store.path)
        else:
            subprocess.run([str(pg.bin / "pg_restore"), "--clean", "--if-exists", "-d",
                            store_url, str(native)], check=True, capture_output=True,
                           timeout=60)
        store = open_store(store_url)
        assert subjects_of(store) == [("g", "alice"), ("g", "bob")]  # alice is back...
        assert gallery_cli(["erasures", "apply", "--url", store_url, str(exported)]) == 0
        assert subjects_of(store) == [("g", "bob")]  # ...and erased again
        assert "alice" not in {c.subject for c in store.changes_since(0)}
        assert {e.kind for e in store.erasures()} >= {"subject"}
    finally:
        store.close()


def test_purge_leaves_a_deleted_vector_in_no_file_of_either_store(tmp_path, store_url,
                                                                   request):
    """SQLite: already true after the delete; PostgreSQL: only after `purge` (VACUUM FULL,
    the WAL switched out with recycling off), run here as a superuser."""
    v = unit_vectors(30, 9)
    store = open_store(store_url)
    if store_url.startswith("sqlite"):
        folder = tmp_path / "store"
    else:
        folder = request.getfixturevalue("postgres").data

    def files_with_it() -> list[str]:
        needle = np.asarray(v[0], "<f4").tobytes()[100:132]
        return [str(f) for f in folder.rglob("*") if f.is_file() and needle in f.read_bytes()]
    try:
        for i, x in enumerate(v):
            store.add_face("g", "erase-me-4d1e" if i == 0 else f"s{i}", f"{i:032x}", "m", x,
                           None, None)
        assert files_with_it()
        store.delete_subject("g", "erase-me-4d1e")
        if store_url.startswith("sqlite"):
            assert files_with_it() == []
        done = store.purge()
        assert done and all("not allowed" not in step for step in done), done
        assert files_with_it() == []
        assert len(subjects_of(store)) == 29
    finally:
        store.close()


# ------------------------------------------------------------------------ freshness
def test_identify_refuses_to_answer_from_a_stale_copy_when_postgresql_is_gone(tmp_path,
                                                                              postgres):
    url = postgres.database()
    keys_file, keys = keys_for(tmp_path)
    h = {"X-API-Key": keys["all"]}
    server = Server(DEFAULT_WEIGHTS, {"detect_workers": 2, "gallery_url": url,
                                      "api_keys_file": str(keys_file),
                                      "gallery_sync_interval_s": 0.5,
                                      "gallery_max_staleness_s": 2},
                    tmp_path / "server.log")
    try:
        server.wait_ready()

        def identify():
            return httpx.post(f"{server.url}/galleries/door/identify",
                              files=photo("Tony_Blair", 2), headers=h, timeout=30)

        def verify_subject():
            return httpx.post(f"{server.url}/galleries/door/subjects/Tony_Blair/verify",
                              files=photo("Tony_Blair", 2), headers=h, timeout=30)
        r = httpx.post(f"{server.url}/galleries/door/subjects/Tony_Blair/faces",
                       files=photo("Tony_Blair"), headers=h, timeout=30)
        assert r.status_code == 201
        time.sleep(1.5)  # several syncs
        assert identify().status_code == 200
        postgres.stop()
        t0 = time.monotonic()
        while (r := identify()).status_code == 200:
            assert time.monotonic() - t0 < 15, "still answering from memory"
            time.sleep(0.2)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_stale", r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert verify_subject().json()["error"]["code"] == "store_stale"
        postgres.start()
        t0 = time.monotonic()
        while identify().status_code != 200:
            assert time.monotonic() - t0 < 30, "no answers after PostgreSQL came back"
            time.sleep(0.3)
        assert verify_subject().status_code == 200
        # the access log of the real server: route templates and key names only
        log = server.log_path.read_text()
        assert "Tony_Blair" not in log and "/galleries/door" not in log
        assert '"key": "all"' in log and keys["all"] not in log
    finally:
        server.stop()


# --------------------------------------------------------------------- idempotent enroll
def test_a_retried_enroll_with_the_same_idempotency_key_stores_nothing_new(tmp_path,
                                                                           store_url):
    keys_file, keys = keys_for(tmp_path)
    h = {"X-API-Key": keys["hr"]}
    settings = settings_for(DEFAULT_WEIGHTS, gallery_url=store_url, api_keys_file=keys_file)

    async def go():
        async with serving(settings) as (_, c):
            url = "/galleries/staff/subjects/Tony_Blair/faces"
            first = await c.post(url, files=photo("Tony_Blair"),
                                 headers={**h, "Idempotency-Key": "k-1"})
            assert first.status_code == 201 and "idempotent-replayed" not in first.headers
            again = await c.post(url, files=photo("Tony_Blair"),
                                 headers={**h, "Idempotency-Key": "k-1"})
            assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
            assert again.json() == first.json()
            # two at once with a new key: one face stored, both get its answer
            both = await asyncio.gather(*[c.post(url, files=photo("Tony_Blair", 2),
                                                 headers={**h, "Idempotency-Key": "k-2"})
                                          for _ in range(2)])
            assert [r.status_code for r in both] == [201, 201]
            assert both[0].json()["face_id"] == both[1].json()["face_id"]
            # the same key for another subject is a conflict, not a silent replay
            r = await c.post("/galleries/staff/subjects/Laura_Bush/faces",
                             files=photo("Laura_Bush"), headers={**h, "Idempotency-Key": "k-1"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
            # without a key, every enroll stores a face
            r = await c.post(url, files=photo("Tony_Blair", 3), headers=h)
            assert r.status_code == 201
            listing = (await c.get("/galleries/staff/subjects", headers=h)).json()
            assert listing["subjects"] == [{"subject": "Tony_Blair", "faces": 3}]
            # the subject erased: its kept answers go with it (their names too); a late retry
            # is refused, not a new enrollment of the erased person
            assert (await c.delete("/galleries/staff/subjects/Tony_Blair", headers=h)
                    ).status_code == 204
            r = await c.post(url, files=photo("Tony_Blair"),
                             headers={**h, "Idempotency-Key": "k-1"})
            assert r.status_code == 409 and "deleted since" in r.json()["error"]["message"]
            r = await c.post(url, files=photo("Tony_Blair"),
                             headers={**h, "Idempotency-Key": "k-3"})
            assert r.status_code == 201
    asyncio.run(go())


def test_idempotency_answers_are_kept_24_hours(store_url):
    store = open_store(store_url)
    try:
        store.add_face("g", "alice", "a" * 32, "m", unit_vectors(1, 3)[0], None, None,
                       idempotency=("d" * 64, '{"face_id": "a"}'))
        assert store.idempotent_answer("g", "d" * 64) == ("alice", '{"face_id": "a"}')
        assert store.idempotent_answer("other", "d" * 64) is None
        store._transaction(lambda run: run("UPDATE idempotency SET created = created - ?",
                                           (IDEMPOTENCY_TTL_S + 1,)))
        assert store.idempotent_answer("g", "d" * 64) is None
        # expired answers are deleted by the next keyed enroll
        store.add_face("g", "bob", "b" * 32, "m", unit_vectors(1, 4)[0], None, None,
                       idempotency=("e" * 64, "{}"))
        assert store._query("SELECT count(*) FROM idempotency")[0][0] == 1
    finally:
        store.close()


# ------------------------------------------------------------- edge cases of erasure
def test_a_grown_matrix_holds_no_copy_of_a_deleted_vector():
    """Growing the search matrix must not leave copies of rows in its spare capacity."""
    from app.gallery.index import GalleryVectors
    v = unit_vectors(70, 11)
    g = GalleryVectors(128)
    for i, x in enumerate(v):
        g.add(f"{i:032x}", f"s{i}", x)  # grows from 64 to 128 rows
    g.remove_subject("s3")
    assert np.asarray(v[3], np.float32).tobytes()[:64] not in g.matrix.tobytes()
    assert f"{3:032x}".encode() not in set(g.ids.tolist())
    assert len(g) == 69 and "s3" not in g.subject_code


def test_deleting_a_subject_of_other_weights_reaches_every_replica_by_its_digest(tmp_path):
    from app.gallery.index import GalleryIndex
    store = open_store(f"sqlite:///{tmp_path}/g.db")
    try:
        idx = GalleryIndex(128, "new-model", digest=store.digest)
        idx.put("g", "alice", "a" * 32, "old-model", unit_vectors(1, 12)[0])  # foreign
        idx.remove_subject("g", store.digest("g", "alice"))  # what the log row carries
        assert idx.gallery("g") is None
    finally:
        store.close()


def test_a_replica_at_the_start_of_the_log_reloads_after_a_restore(tmp_path):
    from app.gallery.service import GalleryService
    from app.metrics import Metrics
    url = f"sqlite:///{tmp_path}/g.db"
    source = open_store(f"sqlite:///{tmp_path}/old.db")
    source.add_face("g", "alice", "a" * 32, "m", unit_vectors(1, 13)[0], None, None)
    source.backup(tmp_path / "b.db")
    source.close()
    replica = GalleryService(SimpleNamespace(metrics=Metrics()), open_store(url))
    replica.load(128, "m")
    assert replica.index.seq == 0 and replica.index.vectors == 0
    assert gallery_cli(["restore", "--url", url, str(tmp_path / "b.db")]) == 0
    replica.sync()
    assert replica.index.vectors == 1 and replica.index.gallery("g").has_subject("alice")
    replica.store.close()


def test_a_new_store_restored_from_a_backup_keeps_the_backups_erasure_history(tmp_path,
                                                                              store_url):
    v = unit_vectors(2, 14)
    old = open_store(f"sqlite:///{tmp_path}/old.db")
    old.add_face("g", "alice", "a" * 32, "m", v[0], None, None)
    old.add_face("g", "bob", "b" * 32, "m", v[1], None, None)
    old.backup(tmp_path / "before.db")  # alice and bob
    time.sleep(0.01)
    old.delete_subject("g", "alice")
    old.backup(tmp_path / "after.db")  # bob, and alice's erasure
    old.close()
    new = open_store(store_url)  # the old store is lost; a new one, another salt
    try:
        assert gallery_cli(["restore", "--url", store_url, str(tmp_path / "after.db")]) == 0
        assert [e.kind for e in new.erasures()] == ["subject"]  # adopted with its salt
        assert gallery_cli(["restore", "--url", store_url, str(tmp_path / "before.db")]) == 0
        assert subjects_of(new) == [("g", "bob")]  # alice stays erased
        assert new.refresh_salt() == open_store(f"sqlite:///{tmp_path}/old.db").salt
    finally:
        new.close()


def test_names_of_subjects_deleted_before_the_upgrade_leave_the_log_when_the_store_opens(
        tmp_path):
    import sqlite3
    path = tmp_path / "g.db"
    store = open_store(f"sqlite:///{path}")
    store.close()
    db = sqlite3.connect(path)  # a log as the former code wrote it: names in every row,
    # and no mark that the names were ever replaced
    db.executescript("DELETE FROM meta WHERE key = 'names_erased'; "
                     "INSERT INTO changes (op, gallery, subject, face_id) VALUES "
                     "('add', 'g', 'old-alice', 'aa'), ('delete_subject', 'g', 'old-alice', "
                     "NULL);")
    db.commit()
    db.close()
    os.chmod(path, 0o644)
    store = open_store(f"sqlite:///{path}")
    try:
        subjects = {c.subject for c in store.changes_since(0)}
        assert "old-alice" not in subjects and store.digest("g", "old-alice") in subjects
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        store.close()
