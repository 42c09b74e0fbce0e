"""Where enrolled faces are kept: SQLite (embedded, the default) or PostgreSQL (shared by
several replicas). `open_store(url)` picks one from `FACEVERIFY_GALLERY_URL`.

Both keep the same two tables:
- `faces`: one row per enrolled face: its gallery, subject, the sha256 of the weights that
  embedded it, the embedding (float32 little-endian bytes), and, only when the operator
  allows it (`FACEVERIFY_GALLERY_STORE_CROPS`), the aligned crop as PNG and the preprocessing
  version it was cut with, which `python -m app.gallery reembed` needs.
- `changes`: an append-only log of every write (`add`, `update`, `delete_face`,
  `delete_subject`), numbered by `seq`; `python -m app.gallery prune-log --keep N` trims
  its old rows (`Store.prune_changes`).

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

import logging
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
        """What identifies the row at its `seq` (as `Store.change_at` returns it)."""
        return self.op, self.gallery, self.subject, self.face_id


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

    def _transaction(self, body: Callable[[Callable], object]) -> object:
        raise NotImplementedError

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    @staticmethod
    def _log(run: Callable, op: str, gallery: str, subject: str, face_id: str | None) -> None:
        run("INSERT INTO changes (op, gallery, subject, face_id) VALUES (?, ?, ?, ?)",
            (op, gallery, subject, face_id))

    def add_face(self, gallery: str, subject: str, face_id: str, model_sha256: str,
                 embedding: np.ndarray, crop_png: bytes | None, crop_spec: str | None) -> int:
        def body(run):
            run("INSERT INTO faces (face_id, gallery, subject, model_sha256, embedding, "
                "crop_png, crop_spec) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (face_id, gallery, subject, model_sha256, vector_bytes(embedding), crop_png,
                 crop_spec))
            self._log(run, "add", gallery, subject, face_id)
            return 1
        return self._transaction(body)

    def add_faces(self, gallery: str, model_sha256: str,
                  rows: list[tuple[str, str, np.ndarray]]) -> None:
        """Many (subject, face_id, embedding) in one transaction (imports, benchmarks)."""
        raise NotImplementedError

    def delete_subject(self, gallery: str, subject: str) -> int:
        """Delete the subject's faces; their number (0: there was no such subject)."""
        def body(run):
            n = run("DELETE FROM faces WHERE gallery = ? AND subject = ?",
                    (gallery, subject)).rowcount
            if n:
                self._log(run, "delete_subject", gallery, subject, None)
            return n
        return self._transaction(body)

    def delete_face(self, gallery: str, subject: str, face_id: str) -> bool:
        def body(run):
            n = run("DELETE FROM faces WHERE gallery = ? AND subject = ? AND face_id = ?",
                    (gallery, subject, face_id)).rowcount
            if n:
                self._log(run, "delete_face", gallery, subject, face_id)
            return bool(n)
        return self._transaction(body)

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
        """(op, gallery, subject, face_id) of the log row `seq`, None if there is none: a
        replica checks its last applied row is still there (a restored backup rewinds
        the log, and later writes may reuse its numbers)."""
        rows = self._query("SELECT op, gallery, subject, face_id FROM changes WHERE seq = ?",
                           (seq,))
        return tuple(rows[0]) if rows else None

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
"""


class SqliteStore(Store):
    """One SQLite file (WAL, synchronous=FULL); one connection behind a lock."""

    url_kind = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SQLITE_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the gallery database {path}: {exc}") from None
        self._lock = threading.Lock()

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

    def snapshot(self):
        # a read transaction on a connection of its own: the snapshot is consistent with its
        # seq, and writers are not held up while it streams
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None)
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
"""


class PostgresStore(Store):
    """PostgreSQL through psycopg 3: one connection for requests (behind a lock, reconnected
    when it breaks) and, while watching, one LISTENing connection."""

    url_kind = "postgresql"
    BYTE_ORDER = ' COLLATE "C"'  # the database's own collation may sort by language

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
        except psycopg.Error as exc:
            raise StoreError(f"cannot reach the gallery database: {_clean(exc)}") from None

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
            conn = self._connect()
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
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
