"""Where enrolled faces are kept: SQLite (embedded, the default) or PostgreSQL (shared by
several replicas). `open_store(url)` picks one from `FACEVERIFY_GALLERY_URL`.

Both keep the same two tables:
- `faces`: one row per enrolled face: its gallery, subject, the sha256 of the weights that
  embedded it, the embedding (float32 little-endian bytes), and, only when the operator
  allows it (`FACEVERIFY_GALLERY_STORE_CROPS`), the aligned crop as PNG and the preprocessing
  version it was cut with, which `python -m app.gallery reembed` needs.
- `changes`: an append-only log of every write (`add`, `update`, `delete_face`,
  `delete_subject`), numbered by `seq`; `python -m app.gallery prune-log --keep N` trims
  its old rows (`Store.prune_changes`). A deleted subject's rows no longer carry its name:
  they carry its digest (below).
- `erasures`: what was deleted and when (a subject by its digest, a keyed BLAKE2b of gallery
  and subject under the store's own salt in `meta`; a face by its random id), so that a
  restored backup never brings back people erased after it was taken (`restore_faces`,
  `apply_erasures`).
- `idempotency`: enroll's answers by `Idempotency-Key`, kept 24 h, so a retried enroll stores
  nothing new.
- `meta`: the salt of the digests.

Deletion erases (docs/operations.md, "Erasure"): SQLite runs with `secure_delete=ON` (freed
content is overwritten with zeros) and checkpoints and truncates its WAL after every deleting
write, so a deleted vector's bytes are in none of the store's files; its files are created
mode 0600. PostgreSQL keeps dead tuples until VACUUM and old rows in its WAL: `purge` (and
`python -m app.gallery purge`) removes them from the data directory.

Search never reads the store: each replica keeps the vectors in memory (app/gallery/index.py)
and applies the log from the last `seq` it has seen: at start-up (a snapshot and its `seq`),
after each of its own writes, when PostgreSQL NOTIFYs it (the notification is sent by the
writing transaction, so it arrives at commit), on reconnect, and every `sync_interval_s`
whatever happens (catch-up). Writers are serialised (SQLite has one writer; PostgreSQL takes
a transaction-level advisory lock), so log rows become visible in `seq` order and a reader
that has seen `seq` n never misses a row below it.

Every write is committed before it is acknowledged: SQLite in WAL mode with
`synchronous=FULL`, PostgreSQL with its defaults (`synchronous_commit=on`). A 201 therefore
survives `kill -9` of the server (tests/test_gallery_durability.py).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger("faceverify.gallery")

NOTIFY_CHANNEL = "faceverify_gallery"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")  # a subject digest
IDEMPOTENCY_TTL_S = 24 * 3600  # how long enroll's Idempotency-Key answers are kept
BUSY_TIMEOUT_MS = 30_000  # SQLite: how long a statement waits for another writer
_ADVISORY_LOCK = 0x66616365  # "face": serialises the writers of one PostgreSQL database


class StoreError(RuntimeError):
    """The store cannot be opened or reached."""


@dataclass(frozen=True)
class StoredFace:
    """A face as the index needs it (no crop)."""

    face_id: str
    gallery: str
    subject: str
    model_sha256: str
    embedding: np.ndarray  # (d,) float32


@dataclass(frozen=True)
class Change:
    """One row of the change log; `face` is the face's current row for add/update (None when
    the face was deleted since, which a later log row also says)."""

    seq: int
    op: str  # add | update | delete_face | delete_subject
    gallery: str
    subject: str
    face_id: str | None
    face: StoredFace | None

    @property
    def row(self) -> tuple:
        """What identifies the row at its `seq` (as `Store.change_at` returns it). Not the
        subject: a deleted subject's name is replaced by its digest in its earlier rows."""
        return row_identity(self.op, self.gallery, self.subject, self.face_id)


def row_identity(op: str, gallery: str, subject: str, face_id: str | None) -> tuple:
    """A log row's identity: the face id, or for a subject's deletion the subject's digest
    (which is what that row carries)."""
    return op, gallery, face_id if face_id is not None else subject


@dataclass(frozen=True)
class Erasure:
    """A deletion to re-apply to restored data: a subject (`kind` "subject", `digest` of
    gallery and subject) or one face (`kind` "face", `digest` its id), at `erased` (epoch s)."""

    kind: str
    digest: str
    erased: float

    @classmethod
    def of(cls, row) -> Erasure:
        """From a (kind, digest, erased) row (ERASURE_COLUMNS)."""
        return cls(row[0], row[1], float(row[2]))


@dataclass(frozen=True)
class FaceRow:
    """A stored face, whole (backups and restores)."""

    face_id: str
    gallery: str
    subject: str
    model_sha256: str
    embedding: bytes
    crop_png: bytes | None
    crop_spec: str | None
    created: float  # epoch seconds

    @classmethod
    def of(cls, r) -> FaceRow:
        """From a row of FACE_COLUMNS and the creation time in epoch seconds."""
        return cls(r[0], r[1], r[2], r[3], bytes(r[4]), None if r[5] is None else bytes(r[5]),
                   r[6], float(r[7]))


FACE_COLUMNS = "face_id, gallery, subject, model_sha256, embedding, crop_png, crop_spec"
ERASURE_COLUMNS = "kind, digest, erased"


def subject_digest(salt: bytes, gallery: str, subject: str) -> str:
    """The keyed digest that stands for a subject once its name is erased (64 hex digits).
    Keyed with the store's own salt, so a list of common names cannot be checked against the
    log or the erasure records without the store itself."""
    return hashlib.blake2b(f"{gallery}\0{subject}".encode(), key=salt,
                           digest_size=32).hexdigest()


class Idempotent(Exception):
    """The answer stored under an `Idempotency-Key` (raised inside `add_face`)."""

    def __init__(self, subject: str, response: str):
        super().__init__(subject)
        self.subject = subject
        self.response = response


@dataclass(frozen=True)
class CropRow:
    """A stored face with its crop, for re-embedding."""

    face_id: str
    gallery: str
    subject: str
    model_sha256: str
    crop_png: bytes | None
    crop_spec: str | None


def vector_bytes(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def vector_of(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def _face(face_id, gallery, subject, sha, emb) -> StoredFace | None:
    if emb is None:
        return None
    return StoredFace(face_id, gallery, subject, sha, vector_of(bytes(emb)))


class Store:
    """What both stores do, written once in `?`-placeholder SQL on two primitives each store
    provides: `_transaction(body)` runs body(run) in one write transaction, where
    run(sql, args) executes a statement and returns its cursor; `_query(sql, args)` returns
    a read's rows. Every method blocks (call it from a thread)."""

    url_kind = "?"
    PAGE = 10_000  # rows per fetch of a snapshot
    BYTE_ORDER = ""  # the collation that sorts names by their bytes (SQLite's default)
    EPOCH = "created"  # faces.created as epoch seconds, in a SELECT
    FROM_EPOCH = "?"  # an epoch-seconds parameter as a faces.created value
    # the time now, as a faces.created value and as epoch seconds: the statement's time, not
    # the transaction's start (a PostgreSQL writer may wait for the lock after it began, and
    # an erasure must be dated after every face it deleted)
    NOW_CREATED = "((julianday('now') - 2440587.5) * 86400.0)"
    NOW_EPOCH = "((julianday('now') - 2440587.5) * 86400.0)"
    _salt: bytes | None = None

    def _transaction(self, body: Callable[[Callable], object]) -> object:
        raise NotImplementedError

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _after_erasure(self) -> None:
        """Called after every committed write that deleted faces (SQLite truncates its WAL)."""

    @staticmethod
    def _log(run: Callable, op: str, gallery: str, subject: str, face_id: str | None) -> None:
        run("INSERT INTO changes (op, gallery, subject, face_id) VALUES (?, ?, ?, ?)",
            (op, gallery, subject, face_id))

    @staticmethod
    def _init_meta(run: Callable) -> None:
        run("INSERT INTO meta (key, value) VALUES ('erasure_salt', ?) "
            "ON CONFLICT (key) DO NOTHING", (secrets.token_hex(32),))

    @property
    def salt(self) -> bytes:
        """The key of the subject digests (made with the store, kept in `meta`)."""
        if self._salt is None:
            rows = self._query("SELECT value FROM meta WHERE key = 'erasure_salt'")
            self._salt = bytes.fromhex(rows[0][0])
        return self._salt

    def refresh_salt(self) -> bytes:
        """Read the salt again (a restore into an empty store adopts the backup's)."""
        self._salt = None
        return self.salt

    def _salt_in(self, run: Callable) -> bytes:
        """The salt as the running transaction sees it (writes name subjects with it)."""
        self._salt = bytes.fromhex(run("SELECT value FROM meta WHERE key = 'erasure_salt'",
                                       ()).fetchone()[0])
        return self._salt

    def digest(self, gallery: str, subject: str) -> str:
        return subject_digest(self.salt, gallery, subject)

    def add_face(self, gallery: str, subject: str, face_id: str, model_sha256: str,
                 embedding: np.ndarray, crop_png: bytes | None, crop_spec: str | None,
                 idempotency: tuple[str, str] | None = None) -> int:
        """Store a face. idempotency: (the key's digest, the answer to keep under it); when
        the gallery already holds that key, nothing is stored and `Idempotent` carries the
        first answer (and its subject, which the caller compares)."""
        def body(run):
            if idempotency is not None:
                run("DELETE FROM idempotency WHERE created < ?",
                    (time.time() - IDEMPOTENCY_TTL_S,))
                row = run("SELECT subject, response FROM idempotency WHERE gallery = ? AND "
                          "key_digest = ?", (gallery, idempotency[0])).fetchone()
                if row is not None:
                    raise Idempotent(row[0], row[1])
            run("INSERT INTO faces (face_id, gallery, subject, model_sha256, embedding, "
                f"crop_png, crop_spec, created) VALUES (?, ?, ?, ?, ?, ?, ?, {self.NOW_CREATED})",
                (face_id, gallery, subject, model_sha256, vector_bytes(embedding), crop_png,
                 crop_spec))
            self._log(run, "add", gallery, subject, face_id)
            if idempotency is not None:
                run("INSERT INTO idempotency (gallery, key_digest, subject, face_id, response, "
                    "created) VALUES (?, ?, ?, ?, ?, ?)",
                    (gallery, idempotency[0], subject, face_id, idempotency[1], time.time()))
            return 1
        return self._transaction(body)

    def idempotent_answer(self, gallery: str, key_digest: str) -> tuple[str, str] | None:
        """(subject, answer) stored under an Idempotency-Key within the last 24 h."""
        rows = self._query("SELECT subject, response FROM idempotency WHERE gallery = ? AND "
                           "key_digest = ? AND created >= ?",
                           (gallery, key_digest, time.time() - IDEMPOTENCY_TTL_S))
        return tuple(rows[0]) if rows else None

    def add_faces(self, gallery: str, model_sha256: str,
                  rows: list[tuple[str, str, np.ndarray]]) -> None:
        """Many (subject, face_id, embedding) in one transaction (imports, benchmarks)."""
        raise NotImplementedError

    def _erase_subject(self, run: Callable, gallery: str, subject: str) -> str:
        """What a subject leaves once its faces are gone: an erasure record, and its name
        replaced by its digest in the change log and in its idempotency answers, which become
        tombstones (a late retry is refused, not a new enrollment)."""
        digest = subject_digest(self._salt_in(run), gallery, subject)
        run(f"INSERT INTO erasures (kind, digest, erased) VALUES ('subject', ?, "
            f"{self.NOW_EPOCH})", (digest,))
        run("UPDATE changes SET subject = ? WHERE gallery = ? AND subject = ?",
            (digest, gallery, subject))
        run("UPDATE idempotency SET subject = ?, response = '' WHERE gallery = ? AND "
            "subject = ?", (digest, gallery, subject))
        return digest

    def delete_subject(self, gallery: str, subject: str) -> int:
        """Delete the subject's faces; their number (0: there was no such subject). The log
        row says which subject by its digest (replicas find it by the same digest)."""
        def body(run):
            n = run("DELETE FROM faces WHERE gallery = ? AND subject = ?",
                    (gallery, subject)).rowcount
            if n:
                digest = self._erase_subject(run, gallery, subject)
                self._log(run, "delete_subject", gallery, digest, None)
            return n
        n = self._transaction(body)
        if n:
            self._after_erasure()
        return n

    def delete_face(self, gallery: str, subject: str, face_id: str) -> bool:
        """Delete one face; when it was the subject's last, the subject is erased too (its
        name leaves the log)."""
        def body(run):
            n = run("DELETE FROM faces WHERE gallery = ? AND subject = ? AND face_id = ?",
                    (gallery, subject, face_id)).rowcount
            if n:
                run(f"INSERT INTO erasures (kind, digest, erased) VALUES ('face', ?, "
                    f"{self.NOW_EPOCH})", (face_id,))
                run("UPDATE idempotency SET response = '' WHERE face_id = ?", (face_id,))
                self._log(run, "delete_face", gallery, subject, face_id)
                if run("SELECT 1 FROM faces WHERE gallery = ? AND subject = ? LIMIT 1",
                       (gallery, subject)).fetchone() is None:
                    self._erase_subject(run, gallery, subject)
            return bool(n)
        deleted = self._transaction(body)
        if deleted:
            self._after_erasure()
        return deleted

    # -- erasure records, backups and restores ----------------------------------------------
    def erasures(self) -> list[Erasure]:
        return [Erasure.of(r) for r in self._query(
            f"SELECT {ERASURE_COLUMNS} FROM erasures ORDER BY erased")]

    @staticmethod
    def erased_filter(salt: bytes, erasures: list[Erasure]) -> Callable[[str, str, str, float],
                                                                        bool]:
        """is_erased(gallery, subject, face_id, created): whether a face from older data was
        deleted since (its subject erased after the face was created, or the face itself)."""
        subjects: dict[str, float] = {}
        faces = set()
        for e in erasures:
            if e.kind == "face":
                faces.add(e.digest)
            else:
                subjects[e.digest] = max(e.erased, subjects.get(e.digest, 0.0))

        def is_erased(gallery: str, subject: str, face_id: str, created: float) -> bool:
            if face_id in faces:
                return True
            erased = subjects.get(subject_digest(salt, gallery, subject))
            return erased is not None and created <= erased
        return is_erased

    def faces_whole(self) -> Iterator[FaceRow]:
        """Every face with all its columns, by face id (erasures apply)."""
        last = ""
        while True:
            rows = self._query(
                f"SELECT {FACE_COLUMNS}, {self.EPOCH} FROM faces WHERE face_id > ? "
                f"ORDER BY face_id LIMIT ?", (last, self.PAGE))
            yield from map(FaceRow.of, rows)
            if len(rows) < self.PAGE:
                return
            last = rows[-1][0]

    def backup(self, out: Path) -> dict:
        """A copy of the store as a new SQLite file (mode 0600): faces, erasure records and
        salt; the change log and idempotency answers are not part of it. Read in one
        consistent snapshot (each store knows how)."""
        raise NotImplementedError

    def restore_faces(self, rows: Iterator[FaceRow], backup_salt: bytes | None = None,
                      backup_erasures: list[Erasure] = ()) -> dict:
        """Replace every face with `rows` (a backup's), minus those erased since by this
        store's erasure records, which stay; the idempotency answers go and the change log
        restarts with one `restore` row, so that every replica reloads at its next sync.

        The backup's own erasure records join this store's when both share a salt; a store
        with neither faces nor erasure records (a new one, after losing the old) adopts the
        backup's salt and records, so that the erasure history travels with the backup. The
        records are read inside the transaction: a deletion committed just before the restore
        is honoured."""
        counts = {"restored": 0, "skipped_erased": 0}

        def body(run):
            salt = self._salt_in(run)
            mine = [Erasure.of(r) for r in run(
                f"SELECT {ERASURE_COLUMNS} FROM erasures", ()).fetchall()]
            empty = not mine and run("SELECT 1 FROM faces LIMIT 1", ()).fetchone() is None
            adopt = backup_salt is not None and (empty or backup_salt == salt)
            if backup_salt is not None and empty and backup_salt != salt:
                run("UPDATE meta SET value = ? WHERE key = 'erasure_salt'", (backup_salt.hex(),))
                salt = self._salt = backup_salt
            known = {(e.kind, e.digest, e.erased) for e in mine}
            if adopt:
                for e in backup_erasures:
                    if (e.kind, e.digest, e.erased) not in known:
                        run("INSERT INTO erasures (kind, digest, erased) VALUES (?, ?, ?)",
                            (e.kind, e.digest, e.erased))
                        mine.append(e)
            counts["erasures_adopted"] = len(mine) - len(known)
            is_erased = self.erased_filter(salt, mine)
            run("DELETE FROM faces", ())
            run("DELETE FROM idempotency", ())
            run("DELETE FROM changes", ())
            for r in rows:
                if is_erased(r.gallery, r.subject, r.face_id, r.created):
                    counts["skipped_erased"] += 1
                    continue
                run(f"INSERT INTO faces ({FACE_COLUMNS}, created) VALUES (?, ?, ?, ?, ?, ?, "
                    f"?, {self.FROM_EPOCH})", (r.face_id, r.gallery, r.subject, r.model_sha256,
                                               r.embedding, r.crop_png, r.crop_spec, r.created))
                counts["restored"] += 1
            self._log(run, "restore", "", "", None)
        self._transaction(body)
        self._after_erasure()
        return counts

    def expire_idempotency(self) -> int:
        """Delete the Idempotency-Key answers older than 24 h (they hold subject names)."""
        return self._transaction(lambda run: run(
            "DELETE FROM idempotency WHERE created < ?",
            (time.time() - IDEMPOTENCY_TTL_S,)).rowcount)

    def _forget_deleted_names(self) -> int:
        """Once per store (a flag in `meta`), for logs written before names were erased:
        replace by its digest every subject name in the change log that no longer has a
        face. Later deletions write digests themselves."""
        def body(run):
            if run("SELECT 1 FROM meta WHERE key = 'names_erased'", ()).fetchone():
                return 0
            run("INSERT INTO meta (key, value) VALUES ('names_erased', '1')", ())
            stale = run("SELECT DISTINCT c.gallery, c.subject FROM changes c WHERE c.op != "
                        "'delete_subject' AND c.op != 'restore' AND NOT EXISTS (SELECT 1 FROM "
                        "faces f WHERE f.gallery = c.gallery AND f.subject = c.subject)",
                        ()).fetchall()
            stale = [(g, n) for g, n in stale if not _HEX64.match(n)]
            if not stale:
                return 0
            salt = self._salt_in(run)
            for gallery, subject in stale:
                run("UPDATE changes SET subject = ? WHERE gallery = ? AND subject = ?",
                    (subject_digest(salt, gallery, subject), gallery, subject))
            return len(stale)
        n = self._transaction(body)
        if n:
            log.info("gallery: %d deleted subject name(s) replaced by digests in the change log",
                     n)
        return n

    def apply_erasures(self, salt: bytes, erasures: list[Erasure]) -> dict:
        """Delete the faces that `erasures` (exported from this store before a native restore:
        pg_restore, a volume snapshot) say were deleted, through the usual deletes (so the log
        and the replicas follow), and keep the records."""
        is_erased = self.erased_filter(salt, erasures)
        doomed = [(r.gallery, r.subject, r.face_id) for r in self.faces_whole()
                  if is_erased(r.gallery, r.subject, r.face_id, r.created)]
        for gallery, subject, face_id in doomed:
            self.delete_face(gallery, subject, face_id)
        if salt == self.salt:  # the records stay meaningful here: keep them
            known = {(e.kind, e.digest, e.erased) for e in self.erasures()}

            def body(run):
                for e in erasures:
                    if (e.kind, e.digest, e.erased) not in known:
                        run("INSERT INTO erasures (kind, digest, erased) VALUES (?, ?, ?)",
                            (e.kind, e.digest, e.erased))
            self._transaction(body)
        return {"deleted": len(doomed)}

    def purge(self) -> list[str]:
        """Remove what deletions leave in the store's files now; what was done, in words."""
        raise NotImplementedError

    def update_embedding(self, face_id: str, model_sha256: str, embedding: np.ndarray) -> None:
        def body(run):
            row = run("SELECT gallery, subject FROM faces WHERE face_id = ?",
                      (face_id,)).fetchone()
            if row:
                run("UPDATE faces SET model_sha256 = ?, embedding = ? WHERE face_id = ?",
                    (model_sha256, vector_bytes(embedding), face_id))
                self._log(run, "update", row[0], row[1], face_id)
        self._transaction(body)

    def subjects(self, gallery: str, limit: int, after: str | None
                 ) -> list[tuple[str, int]]:
        """Up to `limit` (subject, faces) of the gallery, by name, after `after`. Names in
        byte order in both stores: the cursor must compare as the list is sorted."""
        return [tuple(r) for r in self._query(
            f"SELECT subject, count(*) FROM faces WHERE gallery = ? "
            f"AND subject{self.BYTE_ORDER} > ? GROUP BY subject "
            f"ORDER BY subject{self.BYTE_ORDER} LIMIT ?", (gallery, after or "", limit))]

    def snapshot(self) -> tuple[int, Iterator[StoredFace]]:
        """The last `seq`, and every face as of it."""
        raise NotImplementedError

    def changes_since(self, seq: int, limit: int = 10_000, with_row_at_seq: bool = False
                      ) -> list[Change]:
        """The log rows after `seq`, in order; with_row_at_seq: the row at `seq` first, when
        there is one (read in the same statement, so a replica can check that its position
        is still in the log: see GalleryService.sync)."""
        rows = self._query(
            "SELECT c.seq, c.op, c.gallery, c.subject, c.face_id, f.model_sha256, f.embedding "
            "FROM changes c LEFT JOIN faces f ON f.face_id = c.face_id "
            f"WHERE c.seq {'>=' if with_row_at_seq else '>'} ? ORDER BY c.seq LIMIT ?",
            (seq, limit))
        return [Change(s, op, g, subj, fid, _face(fid, g, subj, sha, emb)
                       if op in ("add", "update") else None)
                for s, op, g, subj, fid, sha, emb in rows]

    def change_at(self, seq: int) -> tuple | None:
        """The identity (`row_identity`) of the log row `seq`, None if there is none: a
        replica checks its last applied row is still there (a restored backup rewinds
        the log, and later writes may reuse its numbers)."""
        rows = self._query("SELECT op, gallery, subject, face_id FROM changes WHERE seq = ?",
                           (seq,))
        return row_identity(*rows[0]) if rows else None

    def prune_changes(self, keep: int) -> int:
        """Delete all but the newest `keep` rows (at least 1) of the change log; returns how
        many went. The newest row always stays: a snapshot's `seq` is read from it. A
        replica whose last applied row is pruned reloads everything at its next sync, as
        after a restore (GalleryService.sync), so only a replica more than `keep` writes behind pays
        for it (a reload: ~10 s at 1 M faces)."""
        keep = max(1, int(keep))

        def body(run):
            return run("DELETE FROM changes WHERE seq <= "
                       "(SELECT max(seq) FROM changes) - ?", (keep,)).rowcount
        return self._transaction(body)

    def crops(self, not_model: str) -> list[CropRow]:
        """The faces embedded by another model than `not_model`, with their crops."""
        return [CropRow(*r) for r in self._query(
            "SELECT face_id, gallery, subject, model_sha256, crop_png, crop_spec FROM faces "
            "WHERE model_sha256 != ?", (not_model,))]

    def watch(self, on_change: Callable[[], None], interval_s: float,
              stop: threading.Event) -> None:
        """Call `on_change` whenever other writers may have changed the store, until `stop`
        is set (runs in the caller's thread). The default polls every `interval_s`."""
        while not stop.wait(interval_s):
            on_change()

    def close(self) -> None:
        pass


# The tables of erasure records, idempotent enrolls and the digests' salt, in both dialects
# (epoch seconds as `real`, the database's clock as `now`).
_TRUST_TABLES = """
CREATE INDEX IF NOT EXISTS changes_by_subject ON changes (gallery, subject);
CREATE TABLE IF NOT EXISTS erasures (
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    erased {real} NOT NULL DEFAULT {now}
);
CREATE TABLE IF NOT EXISTS idempotency (
    gallery TEXT NOT NULL,
    key_digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    face_id TEXT NOT NULL,
    response TEXT NOT NULL,
    created {real} NOT NULL,
    PRIMARY KEY (gallery, key_digest)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# --------------------------------------------------------------------------------- SQLite
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    face_id TEXT PRIMARY KEY,
    gallery TEXT NOT NULL,
    subject TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,
    crop_png BLOB,
    crop_spec TEXT,
    created REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    gallery TEXT NOT NULL,
    subject TEXT NOT NULL,
    face_id TEXT
);
""" + _TRUST_TABLES.format(real="REAL", now="((julianday('now') - 2440587.5) * 86400.0)")


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (SQLite gives its -wal and -shm
    files the database file's mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _open_sqlite(path: Path, **kw) -> sqlite3.Connection:
    """A connection with the settings every gallery connection needs: secure_delete on (set
    explicitly: builds differ in their default), so freed content is overwritten with zeros."""
    db = sqlite3.connect(str(path), isolation_level=None, **kw)
    db.execute("PRAGMA secure_delete=ON")
    return db


def _new_backup_file(out: Path) -> sqlite3.Connection:
    """A connection to a new, empty file of mode 0600 (a backup never overwrites a file)."""
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out} exists: a backup is written to a new file")
    create_private(out)
    return _open_sqlite(out)


def write_backup(out: Path, salt: bytes, faces: Iterator[FaceRow],
                 erasures: list[Erasure]) -> dict:
    """A backup file: a new SQLite database of mode 0600 with the gallery schema, holding the
    faces, the erasure records and the salt (any store's `backup` writes this format;
    `read_backup` reads it, or a copy of an SQLite store's own file)."""
    db = _new_backup_file(out)
    try:
        db.executescript(_SQLITE_SCHEMA)
        db.execute("BEGIN")
        db.execute("INSERT INTO meta (key, value) VALUES ('erasure_salt', ?)", (salt.hex(),))
        n = 0
        for r in faces:
            db.execute(f"INSERT INTO faces ({FACE_COLUMNS}, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (r.face_id, r.gallery, r.subject, r.model_sha256, r.embedding,
                        r.crop_png, r.crop_spec, r.created))
            n += 1
        db.executemany("INSERT INTO erasures (kind, digest, erased) VALUES (?, ?, ?)",
                       [(e.kind, e.digest, e.erased) for e in erasures])
        db.execute("COMMIT")
    finally:
        db.close()
    return {"faces": n, "erasures": len(erasures)}


def read_backup(path: Path) -> Iterator[FaceRow]:
    """The faces of a backup file (or of a copy of an SQLite store's file), read-only."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no backup file {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        cur = db.execute(f"SELECT {FACE_COLUMNS}, created FROM faces ORDER BY face_id")
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a gallery backup: {exc}") from None

    def rows():
        try:
            while batch := cur.fetchmany(Store.PAGE):
                yield from map(FaceRow.of, batch)
        finally:
            db.close()
    return rows()


def read_backup_erasures(path: Path) -> tuple[bytes | None, list[Erasure]]:
    """A backup's salt and erasure records (none in a backup made before they existed)."""
    try:
        db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
        try:
            salt = db.execute("SELECT value FROM meta WHERE key = 'erasure_salt'").fetchone()
            rows = db.execute(f"SELECT {ERASURE_COLUMNS} FROM erasures").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None, []
    return (bytes.fromhex(salt[0]) if salt else None), [Erasure.of(r) for r in rows]


class SqliteStore(Store):
    """One SQLite file (WAL, synchronous=FULL, secure_delete); one connection behind a lock.
    After every deleting write the WAL is checkpointed into the file and truncated to zero,
    so the deleted bytes are left in no file (when a reader holds the WAL, the watcher tries
    again at its next poll)."""

    url_kind = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self._checkpoint_due = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            create_private(path)
            self._db = _open_sqlite(path, check_same_thread=False,
                                    timeout=BUSY_TIMEOUT_MS / 1000)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SQLITE_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the gallery database {path}: {exc}") from None
        self._lock = threading.Lock()
        self._transaction(lambda run: self._init_meta(run))
        _ = self.salt  # read once, before any transaction needs it (the lock is not reentrant)
        self._forget_deleted_names()
        for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            try:  # files made before the store created them private
                if f.exists() and f.stat().st_mode & 0o077:
                    os.chmod(f, 0o600)
            except OSError as exc:
                log.warning("gallery: cannot make %s private (mode 0600): %s", f.name, exc)

    def _after_erasure(self) -> None:
        self._checkpoint_due = True
        self.checkpoint()

    def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it to zero bytes; False when a
        reader kept it from completing (it is then tried again by the watcher). It does not
        wait for readers (busy_timeout 0 for the call): a long read elsewhere must not hold
        up this replica's store calls."""
        with self._lock:
            try:
                self._db.execute("PRAGMA busy_timeout=0")
                try:
                    busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            except sqlite3.Error as exc:
                log.warning("gallery: WAL checkpoint failed: %s", exc)
                self._checkpoint_due = True
                return False
            self._checkpoint_due = bool(busy)
        if busy:
            log.warning("gallery: the WAL could not be truncated after a deletion (a reader "
                        "holds it); retrying at the next sync")
        return not busy

    def watch(self, on_change, interval_s, stop):
        while not stop.wait(interval_s):
            if self._checkpoint_due:
                self.checkpoint()
            on_change()

    def purge(self) -> list[str]:
        self.checkpoint()
        with self._lock:
            self._db.execute("VACUUM")
        self.checkpoint()
        return ["WAL checkpointed and truncated",
                "VACUUM (the file rewritten without free pages)"]

    def _transaction(self, body: Callable[[Callable], object]) -> object:
        """body(run) in one write transaction (BEGIN IMMEDIATE: the writer's lock at once);
        a database error (disk full, locked past the timeout) is a StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = body(self._db.execute)
                    self._db.execute("COMMIT")
                    return out
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"gallery database error: {exc}") from None

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"gallery database error: {exc}") from None

    def add_faces(self, gallery, model_sha256, rows):
        def body(run):
            db = self._db
            db.executemany("INSERT INTO faces (face_id, gallery, subject, model_sha256, "
                           "embedding) VALUES (?, ?, ?, ?, ?)",
                           ((f, gallery, s, model_sha256, vector_bytes(v)) for s, f, v in rows))
            db.executemany("INSERT INTO changes (op, gallery, subject, face_id) "
                           "VALUES ('add', ?, ?, ?)", ((gallery, s, f) for s, f, _ in rows))
        self._transaction(body)

    def backup(self, out: Path) -> dict:
        """SQLite's online backup of the whole file (consistent; writers not stopped), minus
        the change log and idempotency answers, into a new file of mode 0600."""
        dst = _new_backup_file(out)
        try:
            with self._lock:
                self._db.backup(dst)
            dst.execute("DELETE FROM changes")
            dst.execute("DELETE FROM idempotency")
            dst.execute("PRAGMA journal_mode=DELETE")
            faces = dst.execute("SELECT count(*) FROM faces").fetchone()[0]
            erasures = dst.execute("SELECT count(*) FROM erasures").fetchone()[0]
            dst.execute("VACUUM")
        finally:
            dst.close()
        return {"faces": faces, "erasures": erasures}

    def snapshot(self):
        # a read transaction on a connection of its own: the snapshot is consistent with its
        # seq, and writers are not held up while it streams
        try:
            db = _open_sqlite(self.path)
            db.execute("BEGIN")
            seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the gallery database {self.path}: {exc}") from None

        def rows():
            try:
                cur = db.execute("SELECT face_id, gallery, subject, model_sha256, embedding "
                                 "FROM faces")
                while batch := cur.fetchmany(self.PAGE):
                    for r in batch:
                        yield _face(*r)
            finally:
                db.execute("COMMIT")
                db.close()
        return seq, rows()

    def close(self):
        with self._lock:
            self._db.close()


# ----------------------------------------------------------------------------- PostgreSQL
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    face_id TEXT PRIMARY KEY,
    gallery TEXT NOT NULL,
    subject TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    embedding BYTEA NOT NULL,
    crop_png BYTEA,
    crop_spec TEXT,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY,
    op TEXT NOT NULL,
    gallery TEXT NOT NULL,
    subject TEXT NOT NULL,
    face_id TEXT
);
""" + _TRUST_TABLES.format(real="DOUBLE PRECISION", now="extract(epoch FROM now())")
# No planner statistics on the columns that hold biometric data or names: ANALYZE would copy
# sampled values (most common values, histogram bounds) into pg_statistic, where a deleted
# face's vector and name outlive it (bench/erasure_scan.py found them there).
_PG_NO_STATISTICS = """
ALTER TABLE faces ALTER COLUMN embedding SET STATISTICS 0,
    ALTER COLUMN crop_png SET STATISTICS 0, ALTER COLUMN subject SET STATISTICS 0;
ALTER TABLE changes ALTER COLUMN subject SET STATISTICS 0;
ALTER TABLE idempotency ALTER COLUMN subject SET STATISTICS 0,
    ALTER COLUMN response SET STATISTICS 0;
"""
# What `purge` runs, measured by bench/erasure_scan.py (docs/operations.md, "Erasure"): a plain
# VACUUM may leave a dead tuple's bytes in its page's free space, VACUUM FULL rewrites the
# tables into new files; ANALYZE then VACUUM FULL pg_statistic drop old samples; the WAL still
# holds the rows, and a recycled WAL file keeps its old pages, so recycling is turned off while
# every segment is switched out and checkpointed away. Needs superuser, or the grants in
# docs/operations.md; a step that is not allowed is reported, not fatal.
_PG_PURGE_BEFORE = ["ALTER SYSTEM SET wal_recycle = off", "SELECT pg_reload_conf()",
                    "ANALYZE faces, changes, idempotency",
                    "VACUUM FULL faces, changes, idempotency",
                    "VACUUM FULL pg_statistic", "CHECKPOINT"]
_PG_PURGE_AFTER = ["ALTER SYSTEM RESET wal_recycle", "SELECT pg_reload_conf()"]


class PostgresStore(Store):
    """PostgreSQL through psycopg 3: one connection for requests (behind a lock, reconnected
    when it breaks) and, while watching, one LISTENing connection."""

    url_kind = "postgresql"
    BYTE_ORDER = ' COLLATE "C"'  # the database's own collation may sort by language
    EPOCH = "extract(epoch FROM created)"
    FROM_EPOCH = "to_timestamp(?)"
    NOW_CREATED = "clock_timestamp()"
    NOW_EPOCH = "extract(epoch FROM clock_timestamp())"

    def __init__(self, url: str, connect_timeout_s: float = 10.0):
        try:
            import psycopg
        except ImportError:
            raise StoreError("FACEVERIFY_GALLERY_URL is a PostgreSQL URL but psycopg is not "
                             "installed (pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn = None
        try:
            with self._lock:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                    conn.execute(_PG_SCHEMA)
                    self._no_statistics(conn)
                    self._init_meta(self._runner(conn))
            _ = self.salt  # read once, before any transaction needs it (the lock is not reentrant)
            self._forget_deleted_names()
        except psycopg.Error as exc:
            raise StoreError(f"cannot reach the gallery database: {_clean(exc)}") from None

    def _no_statistics(self, conn) -> None:
        """`_PG_NO_STATISTICS`, when a column still collects statistics; a user that does not
        own the tables cannot, which is logged, not fatal."""
        collecting = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid IN ('faces'::regclass, "
            "'changes'::regclass, 'idempotency'::regclass) AND attname IN ('embedding', "
            "'crop_png', 'subject', 'response') AND attstattarget IS DISTINCT FROM 0"
        ).fetchone()[0]
        if not collecting:
            return
        try:
            with conn.transaction():
                conn.execute(_PG_NO_STATISTICS)
        except self._psycopg.errors.InsufficientPrivilege:
            log.warning("gallery: cannot turn off planner statistics on the gallery's "
                        "vectors and names (not the tables' owner); ANALYZE copies samples "
                        "of them into pg_statistic (docs/operations.md, \"Erasure\")")

    def _snapshot_connection(self):
        """A connection whose first statement opens a REPEATABLE READ, READ ONLY transaction
        (psycopg begins it; a BEGIN of our own would be a second, ignored one)."""
        conn = self._connect()
        conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        return conn

    def _connect(self, **kw):
        return self._psycopg.connect(self.url, connect_timeout=int(self.connect_timeout_s),
                                     **kw)

    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect(autocommit=True)
        return self._conn

    def _run(self, fn):
        """fn(conn) under the lock, retried once on a fresh connection when the old one broke
        (a database restart); a second failure is a StoreError."""
        psycopg = self._psycopg
        with self._lock:
            for attempt in (1, 2):
                try:
                    return fn(self._connection())
                except psycopg.OperationalError as exc:
                    conn = self._conn
                    broken = conn is None or conn.closed or conn.broken
                    if broken:
                        self._conn = None
                    if not broken or attempt == 2:
                        raise StoreError(f"gallery database unreachable: {_clean(exc)}"
                                         ) from None

    @staticmethod
    def _runner(conn) -> Callable:
        """run(sql, args) on this connection, for the shared `?`-placeholder SQL."""
        return lambda sql, args=(): conn.execute(sql.replace("?", "%s"), args)

    def _locked_transaction(self, body: Callable) -> object:
        """body(conn) in one transaction that holds the writers' lock and notifies the
        other replicas at commit."""
        def tx(conn):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                out = body(conn)
                conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
                return out
        return self._run(tx)

    def _transaction(self, body):
        return self._locked_transaction(lambda conn: body(self._runner(conn)))

    def _query(self, sql, args=()):
        return self._run(lambda conn: self._runner(conn)(sql, args).fetchall())

    def add_faces(self, gallery, model_sha256, rows):
        def body(conn):
            with conn.cursor() as cur:
                with cur.copy("COPY faces (face_id, gallery, subject, model_sha256, embedding) "
                              "FROM STDIN") as copy:
                    for subject, face_id, v in rows:
                        copy.write_row((face_id, gallery, subject, model_sha256,
                                        vector_bytes(v)))
                with cur.copy("COPY changes (op, gallery, subject, face_id) FROM STDIN") as copy:
                    for subject, face_id, _ in rows:
                        copy.write_row(("add", gallery, subject, face_id))
        self._locked_transaction(body)

    def snapshot(self):
        psycopg = self._psycopg
        try:
            conn = self._snapshot_connection()
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the gallery: {_clean(exc)}") from None

        def rows():
            try:
                with conn.cursor(name="faceverify_snapshot") as cur:
                    cur.itersize = self.PAGE
                    cur.execute("SELECT face_id, gallery, subject, model_sha256, embedding "
                                "FROM faces")
                    for r in cur:
                        yield _face(*r)
            finally:
                conn.close()
        return seq, rows()

    def backup(self, out: Path) -> dict:
        """Faces, erasure records and salt read in one REPEATABLE READ transaction."""
        psycopg = self._psycopg
        try:
            conn = self._snapshot_connection()
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the gallery: {_clean(exc)}") from None
        try:
            erasures = [Erasure.of(r) for r in conn.execute(
                f"SELECT {ERASURE_COLUMNS} FROM erasures ORDER BY erased").fetchall()]

            def faces():
                with conn.cursor(name="faceverify_backup") as cur:
                    cur.itersize = self.PAGE
                    cur.execute(f"SELECT {FACE_COLUMNS}, {self.EPOCH} FROM faces")
                    yield from map(FaceRow.of, cur)
            return write_backup(out, self.salt, faces(), erasures)
        except psycopg.Error as exc:
            raise StoreError(f"cannot read the gallery: {_clean(exc)}") from None
        finally:
            conn.close()

    def purge(self) -> list[str]:
        """The erasure sequence (`_PG_PURGE_BEFORE`, a WAL switch and CHECKPOINT per segment
        file plus one, `_PG_PURGE_AFTER`); each step's outcome."""
        psycopg = self._psycopg
        done: list[str] = []

        def step(conn, sql: str, quiet: bool = False) -> bool:
            try:
                conn.execute(sql)
                if not quiet:
                    done.append(f"{sql}: done")
                return True
            except psycopg.errors.InsufficientPrivilege as exc:
                done.append(f"{sql}: not allowed for this user ({_clean(exc)})")
                return False
        try:
            with self._connect(autocommit=True) as conn:
                try:
                    self._purge_wal(conn, step, done)
                finally:  # never leave WAL recycling off
                    for sql in _PG_PURGE_AFTER:
                        step(conn, sql)
        except psycopg.Error as exc:
            raise StoreError(f"gallery database unreachable: {_clean(exc)}") from None
        return list(dict.fromkeys(done))

    def _purge_wal(self, conn, step: Callable, done: list[str]) -> None:
        """The steps before WAL recycling is turned back on."""
        psycopg = self._psycopg
        for sql in _PG_PURGE_BEFORE:
            step(conn, sql)
        try:
            segments = conn.execute("SELECT count(*) FROM pg_ls_waldir() WHERE name ~ "
                                    "'^[0-9A-F]{24}$'").fetchone()[0]
        except psycopg.errors.InsufficientPrivilege:
            segments = 8  # cannot list them: a few rounds
        rounds = 0
        for _ in range(int(segments) + 1):
            if not (step(conn, "SELECT pg_switch_wal()", quiet=True)
                    and step(conn, "CHECKPOINT", quiet=True)):
                break
            rounds += 1
        done.append(f"WAL switched and checkpointed {rounds} time(s) "
                    f"({segments} segment file(s))")

    def watch(self, on_change, interval_s, stop):
        """LISTEN for the writers' notifications; catch up at every (re)connect and every
        `interval_s` even without one (a notification sent while disconnected is lost)."""
        psycopg = self._psycopg
        backoff = 0.5
        while not stop.is_set():
            try:
                with self._connect(autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff = 0.5
                    on_change()
                    due = time.monotonic() + interval_s
                    while not stop.is_set():
                        notified = False
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            notified = True
                        if notified or time.monotonic() >= due:
                            on_change()
                            due = time.monotonic() + interval_s
            except psycopg.Error as exc:
                log.warning("gallery: listening connection lost (%s); reconnecting",
                            _clean(exc), extra={"event": "gallery_listen_lost"})
            except StoreError as exc:
                log.warning("gallery: catch-up failed (%s)", exc)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def close(self):
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _clean(exc: Exception) -> str:
    """A database error's first line, without the connection string's password."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_store(url: str) -> Store:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or
    `postgresql://user:password@host:port/database` (also `postgres://`)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.lower().startswith("sqlite:///") else ""
        if not path:
            raise StoreError(f"gallery URL {url!r}: expected sqlite:///path/to/file.db")
        return SqliteStore(Path(path))
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise StoreError(f"gallery URL scheme {scheme or '(none)'!r} is not supported: use "
                     "sqlite:///path or postgresql://…")
