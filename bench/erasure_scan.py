"""Where a deleted face's bytes survive: every file of a PostgreSQL 15 data directory, and of an
SQLite gallery, searched for one enrolled vector after each step of its deletion.

    python -m bench.erasure_scan [--others 200] [--seed 2] [--skip-postgres] [--skip-sqlite]
                                 [--autovacuum-wait-s 30]
                                 [--out bench/results/erasure_scan.json]

One distinctive face (a seeded random float32 unit vector of dim 128, subject
'erase-me-7f3a9c') is enrolled among `--others` other faces through the real store code
(`open_store(url).add_face`, one transaction each, so it shares its pages with others), and
deleted with `delete_subject`. After each step every regular file is read whole and searched
for: the vector's 512 bytes (`np.asarray(v, '<f4').tobytes()`, what the store writes), a
16-byte slice of them (a copy cut by a page or TOAST-chunk boundary still shows), their hex
text (what pg_dump and a logged statement would hold) and the subject name (UTF-8). Each hit is
a file and the number of copies in it; files are grouped by area and, in base/, named by the
relation they belong to (pg_relation_filepath), so "faces" means the heap, "faces_by_subject"
the index, "changes" the change log; in pg_wal/, a segment is marked current, past, or
"recycled, future name", and a copy lying in pages that were written as another segment (a
recycled file keeps its old pages until new WAL overwrites them) says which, from the pages'
xlp_pageaddr.

PostgreSQL (bench.postgres: Debian's binaries, a throwaway cluster, fsync on; read as root).
The store connects as `gallery_owner`, a non-superuser role owning the database and its tables,
as a deployment would; CHECKPOINT, pg_switch_wal() and ALTER SYSTEM run as the superuser.
Scenarios:
- `steps`: autovacuum off on the gallery's tables (ALTER TABLE ... SET (autovacuum_enabled =
  false), for determinism); the target enrolled in the middle; (1) enroll + CHECKPOINT;
  a `pg_dump -Fc` taken here; (2) delete_subject, committed, nothing else; (3) plain VACUUM +
  CHECKPOINT; (4) VACUUM FULL + CHECKPOINT; (5) pg_switch_wal() + CHECKPOINT, twice;
  (6) wal_recycle=off (ALTER SYSTEM + pg_reload_conf) then switch + CHECKPOINT twice;
  (7) switch + CHECKPOINT repeated until no file holds the vector (rounds counted). Then the
  dump is searched (raw, and as pg_restore's SQL), and each erasure statement is tried as the
  non-superuser owner, before and after GRANTs (pg_checkpoint, EXECUTE, ALTER SYSTEM ON
  PARAMETER).
- `target_last`: the same enrollment with the target enrolled last (the lowest tuple of its
  page: nothing is moved over it when VACUUM compacts the page); steps 1-4.
- `autovacuum_on`: the server's defaults except autovacuum_naptime=1s (so it acts within the
  run); waits for autoanalyze, then looks in pg_stats/pg_statistic (ANALYZE keeps ~100
  histogram bounds per column: with --seed 2 the target's bytes rank 50th of 201, an even rank,
  so it is one of them; how many of all the enrolled vectors are there is counted too);
  deletes; runs the store's own `purge()` when the store code has one, as the owner and then
  on a store opened as the superuser; then the recommended sequence as the superuser (wal_recycle off; ANALYZE; VACUUM FULL of the tables and pg_statistic; CHECKPOINT;
  pg_switch_wal() + CHECKPOINT once per segment file in pg_wal, plus one; wal_recycle reset) and
  a last scan of the whole data directory and the server log.

SQLite (`sqlite:///TMPDIR/gallery.db`, the store's own connection `_db` for PRAGMAs):
`store` (the connection as the store leaves it), `secure_delete_off`, `secure_delete_on`
(set on the connection right after opening); for each: enroll, delete_subject, an online
`.backup()` copy taken after the delete, `PRAGMA wal_checkpoint(TRUNCATE)`, then VACUUM +
checkpoint. The files searched are the database, its -wal and -shm, and the backup.

Each step records its wall time (the statements, not the scan) and the scan's. The run takes
about 30 s and little CPU (the autoanalyze wait is most of it). The temporary files are made
under $TMPDIR, so a tmpfs there makes fsync free but changes nothing of what is found.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.report import print_and_save

ROOT = Path(__file__).resolve().parent.parent
DIM = 128
GALLERY = "erasure"
SUBJECT = "erase-me-7f3a9c"
TARGET_FACE = "face-erase-target"
MODEL_SHA = hashlib.sha256(b"bench.erasure_scan").hexdigest()
TABLES = ("faces", "changes", "idempotency")  # those of them the store has are vacuumed


# ---------------------------------------------------------------------------------- scanning
def within(seconds: float, fn: Callable, what: str):
    """fn() in a daemon thread; a TimeoutError when it has not returned in time (a store call
    that hangs, e.g. on its own lock, stops the scenario instead of the whole run)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"{what} did not return within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def delete_target(store) -> int:
    return within(60, lambda: store.delete_subject(GALLERY, SUBJECT),
                  f"store.delete_subject({GALLERY!r}, {SUBJECT!r})")


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def patterns_for(v: np.ndarray) -> dict[str, bytes]:
    raw = np.asarray(v, "<f4").tobytes()
    assert len(raw) == 4 * DIM
    return {"vector": raw, "vector16": raw[256:272], "vector_hex": raw.hex().encode(),
            "subject": SUBJECT.encode()}


def scan(root: Path, patterns: dict[str, bytes], label: Callable[[str], str] = str,
         area: Callable[[str], str] = lambda rel: "files",
         detail: Callable[[str, bytes, bytes], str] | None = None) -> dict:
    """Every regular file under root, read whole: which patterns it holds and how often.
    found[pattern][area] = ["label (copies[; detail])", ...]."""
    t0 = time.perf_counter()
    found: dict[str, dict[str, list[str]]] = {k: {} for k in patterns}
    files = nbytes = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath) / fn
            try:
                if p.is_symlink() or not p.is_file():
                    continue
                data = p.read_bytes()
            except (FileNotFoundError, PermissionError):
                continue  # removed while walking (the server runs)
            files += 1
            nbytes += len(data)
            rel = str(p.relative_to(root))
            for name, pat in patterns.items():
                n = data.count(pat)
                if n:
                    more = detail(rel, data, pat) if detail else ""
                    found[name].setdefault(area(rel), []).append(
                        f"{label(rel)} ({n}{'; ' + more if more else ''})")
    for by_area in found.values():
        for hits in by_area.values():
            hits.sort()
    return {"found": found, "files": files, "mib": round(nbytes / 2**20, 1),
            "scan_s": round(time.perf_counter() - t0, 3)}


def where(found: dict, pattern: str) -> str:
    """One line: the areas and files that hold `pattern`, or 'nowhere'."""
    by_area = found.get(pattern) or {}
    return "; ".join(f"{a}: {', '.join(h)}" for a, h in sorted(by_area.items())) or "nowhere"


# -------------------------------------------------------------------------------- PostgreSQL
WAL_PAGE = 8192


def wal_origin(rel: str, data: bytes, pat: bytes) -> str:
    """For a WAL segment file: which segment each copy was written as, from the xlp_pageaddr
    of the WAL page holding it. A recycled file is renamed, not rewritten: past the point
    where new WAL stops, its pages still carry an older segment's address and contents."""
    m = re.match(r"pg_wal/([0-9A-F]{8})[0-9A-F]{16}$", rel)
    if not m:
        return ""
    seg_size = len(data) or 1
    per_id = 0x1_0000_0000 // seg_size
    origins = []
    at = data.find(pat)
    while at >= 0:
        page = at - at % WAL_PAGE
        addr = int.from_bytes(data[page + 8:page + 16], "little")  # xlp_pageaddr
        segno = addr // seg_size
        origins.append(f"{m.group(1)}{segno // per_id:08X}{segno % per_id:08X}")
        at = data.find(pat, at + 1)
    own = rel.rsplit("/", 1)[1]
    old = sorted({o for o in origins if o != own})
    return f"in pages written as segment {', '.join(old)}" if old else ""


def pg_area(rel: str) -> str:
    return "base" if rel.startswith("base/") else "pg_wal" if rel.startswith("pg_wal/") else "other"


class PgLab:
    """One throwaway cluster with a database `gallery` owned by the non-superuser role
    `gallery_owner`, the store connected as that role, and superuser connections beside it."""

    def __init__(self, pg, patterns: dict[str, bytes]):
        import psycopg
        self.psycopg = psycopg
        self.pg = pg
        self.patterns = patterns
        with psycopg.connect(pg.url, autocommit=True) as c:
            c.execute("CREATE ROLE gallery_owner LOGIN")
            c.execute("CREATE DATABASE gallery OWNER gallery_owner")
        base = pg.url.rsplit("@", 1)[1].rsplit("/", 1)[0]
        self.owner_url = f"postgresql://gallery_owner@{base}/gallery"
        self.su_url = f"postgresql://postgres@{base}/gallery"
        self.su = psycopg.connect(self.su_url, autocommit=True)
        self.notices: list[str] = []
        self.su.add_notice_handler(self._notice)
        self.store = None
        self.enrolled: list[np.ndarray] = []

    def _notice(self, d) -> None:
        self.notices.append(f"{d.severity}: {d.message_primary}")

    def close(self) -> None:
        if self.store is not None:
            try:
                within(10, self.store.close, "store.close()")
            except TimeoutError:
                pass
        self.su.close()

    def sql(self, *statements: str, as_owner: bool = False) -> list[str]:
        """Run statements (autocommit); each one's text and any WARNING/NOTICE it raised."""
        conn = self.psycopg.connect(self.owner_url, autocommit=True) if as_owner else self.su
        if as_owner:
            conn.add_notice_handler(self._notice)
        done = []
        try:
            for s in statements:
                self.notices.clear()
                conn.execute(s)
                done.append(s + "".join(f"  [{n}]" for n in self.notices))
        finally:
            if as_owner:
                conn.close()
        return done

    def tables(self) -> list[str]:
        have = {r[0] for r in self.su.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        return [t for t in TABLES if t in have]

    def set_wal_recycle(self, on: bool) -> list[str]:
        stmt = "ALTER SYSTEM RESET wal_recycle" if on else "ALTER SYSTEM SET wal_recycle = off"
        done = self.sql(stmt, "SELECT pg_reload_conf()")
        want = "on" if on else "off"
        for _ in range(50):  # the reload reaches the server's processes asynchronously
            with self.psycopg.connect(self.su_url, autocommit=True) as c:
                if c.execute("SHOW wal_recycle").fetchone()[0] == want:
                    break
            time.sleep(0.1)
        time.sleep(0.5)  # and the checkpointer, which acts on it
        return done

    def switch_and_checkpoint(self) -> list[str]:
        return self.sql("SELECT pg_switch_wal()", "CHECKPOINT")

    def labels(self) -> Callable[[str], str]:
        """base/<db>/<filenode>[_fork][.segment] → that plus the relation's name."""
        dboid = self.su.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        names = {}
        for path, name in self.su.execute(
                "SELECT pg_relation_filepath(c.oid), coalesce(o.relname || ' toast', c.relname) "
                "FROM pg_class c LEFT JOIN pg_class o ON o.reltoastrelid = c.oid "
                "WHERE pg_relation_filepath(c.oid) IS NOT NULL").fetchall():
            names[path] = name
        wal_now = self.su.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]

        def label(rel: str) -> str:
            m = re.match(r"(base/\d+/\d+)(_[a-z]+)?(\.\d+)?$", rel)
            if m:
                if not rel.startswith(f"base/{dboid}/"):
                    return rel + " (another database)"
                name = names.get(m.group(1), "no relation now: an old file")
                return f"{rel} {name}{m.group(2) or ''}"
            m = re.match(r"pg_wal/([0-9A-F]{24})$", rel)
            if m:
                seg = m.group(1)
                when = ("current" if seg == wal_now else "recycled, future name"
                        if seg > wal_now else "past")
                return f"{rel} [{when}]"
            return rel
        return label

    def wal_state(self) -> dict:
        segs = [r[0] for r in self.su.execute(
            "SELECT name FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' ORDER BY name"
        ).fetchall()]
        cur = self.su.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        return {"current": cur, "segments": segs}

    def scan(self) -> dict:
        out = scan(self.pg.data, self.patterns, self.labels(), pg_area, wal_origin)
        log = scan(self.pg.dir, self.patterns,
                   area=lambda rel: "server log" if rel == "log" else "skip")
        for name, by_area in log["found"].items():
            if "server log" in by_area:
                out["found"][name]["server log (outside the data directory)"] = \
                    by_area["server log"]
        out["wal"] = self.wal_state()
        return out

    def step(self, steps: list, name: str, body: Callable[[], list[str]], **extra) -> dict:
        t0 = time.perf_counter()
        actions = body()
        wall = time.perf_counter() - t0
        s = {"step": name, "actions": actions, "wall_s": round(wall, 3), **extra}
        s.update(self.scan())
        steps.append(s)
        print(f"  [{name}] {wall:.2f} s; vector: {where(s['found'], 'vector')}; "
              f"subject: {where(s['found'], 'subject')}", file=sys.stderr, flush=True)
        return s

    def enroll(self, others: np.ndarray, target: np.ndarray, position: str) -> list[str]:
        order = [(f"other-{i:03d}", f"face-{i:04d}", others[i]) for i in range(len(others))]
        at = len(order) // 2 if position == "middle" else len(order)
        order.insert(at, (SUBJECT, TARGET_FACE, target))
        self.enrolled = [v for _, _, v in order]
        for subject, face_id, v in order:
            self.store.add_face(GALLERY, subject, face_id, MODEL_SHA, v, None, None)
        what = (f"{len(order)} x store.add_face (one transaction each), the target as number "
                f"{at + 1}")
        return [what]

    def target_place(self) -> dict:
        """The target's tuple: its page, and the tuples on that page (and how many were
        placed after it, i.e. below it in the page)."""
        ctid = self.su.execute("SELECT ctid::text FROM faces WHERE subject = %s",
                               (SUBJECT,)).fetchone()[0]
        page, item = (int(x) for x in ctid.strip("()").split(","))
        items = [int(r[0].strip("()").split(",")[1]) for r in self.su.execute(
            "SELECT ctid::text FROM faces WHERE (ctid::text::point)[0] = %s", (page,)).fetchall()]
        return {"ctid": ctid, "page": page, "tuples_on_page": len(items),
                "tuples_after_it_on_page": sum(i > item for i in items),
                "heap_pages": self.su.execute(
                    "SELECT pg_relation_size('faces') / 8192").fetchone()[0]}


def pg_open_store(lab: PgLab, autovacuum: bool) -> list[str]:
    from app.gallery.store import open_store
    lab.store = open_store(lab.owner_url)
    done = [f"open_store({lab.owner_url!r}) as the non-superuser owner"]
    if not autovacuum:
        done += lab.sql(*(f"ALTER TABLE {t} SET (autovacuum_enabled = false, "
                          f"toast.autovacuum_enabled = false)" for t in lab.tables()),
                        as_owner=True)
    return done


def pg_dump_check(lab: PgLab, dump: Path, patterns: dict[str, bytes]) -> dict:
    """Search a custom-format dump: the file as it is, and pg_restore's SQL of it."""
    raw = dump.read_bytes()
    sql = subprocess.run([str(lab.pg.bin / "pg_restore"), "-f", "-", str(dump)], check=True,
                         capture_output=True, timeout=120).stdout
    return {"file": dump.name, "bytes": len(raw),
            "in_file_as_is": {k: raw.count(p) for k, p in patterns.items()},
            "in_pg_restore_sql": {k: sql.count(p) for k, p in patterns.items()},
            "note": "-Fc compresses its data (zlib): the file as it is shows nothing, "
                    "pg_restore -f - turns it back into COPY text where the vector is hex"}


def pg_privileges(lab: PgLab) -> dict:
    """Each erasure statement as the non-superuser owner: before and after GRANTs."""
    stmts = ["ALTER TABLE faces SET (autovacuum_enabled = false)", "VACUUM faces",
             "VACUUM FULL faces", "ANALYZE faces", "VACUUM FULL pg_statistic", "CHECKPOINT",
             "SELECT pg_switch_wal()", "ALTER SYSTEM SET wal_recycle = off",
             "SELECT pg_reload_conf()", "SELECT count(*) FROM pg_ls_waldir()"]

    def attempt() -> dict:
        out = {}
        with lab.psycopg.connect(lab.owner_url, autocommit=True) as c:
            notes: list[str] = []
            c.add_notice_handler(lambda d: notes.append(f"{d.severity}: {d.message_primary}"))
            for s in stmts:
                notes.clear()
                try:
                    c.execute(s)
                    out[s] = "ok" + ("" if not notes else " BUT " + " | ".join(notes))
                except lab.psycopg.Error as exc:
                    out[s] = f"ERROR: {str(exc).strip().splitlines()[0]}"
        return out

    before = attempt()
    grants = ["GRANT pg_checkpoint TO gallery_owner",
              "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO gallery_owner",
              "GRANT EXECUTE ON FUNCTION pg_reload_conf() TO gallery_owner",
              "GRANT ALTER SYSTEM ON PARAMETER wal_recycle TO gallery_owner",
              "GRANT pg_monitor TO gallery_owner"]
    lab.sql(*grants)
    after = attempt()
    lab.sql("ALTER SYSTEM RESET wal_recycle", "SELECT pg_reload_conf()")
    for g in grants:
        lab.sql(g.replace("GRANT", "REVOKE", 1).replace(" TO ", " FROM "))
    return {"role": "gallery_owner: LOGIN, not superuser, owns the database and the tables",
            "as_owner": before, "grants": grants, "as_owner_after_grants": after}


def pg_steps(rec: dict, Postgres, patterns, others, target, keep: Path) -> None:
    with Postgres() as pg:
        lab = PgLab(pg, patterns)
        try:
            steps: list = []
            rec["steps"] = steps
            setup = pg_open_store(lab, autovacuum=False)
            lab.step(steps, "1 enroll + CHECKPOINT",
                     lambda: setup + lab.enroll(others, target, "middle") + lab.sql("CHECKPOINT"))
            steps[-1]["target"] = lab.target_place()
            dump = keep / "gallery_before_delete.dump"
            t0 = time.perf_counter()
            subprocess.run([str(pg.bin / "pg_dump"), "-Fc", "-f", str(dump), "-d", lab.su_url],
                           check=True, capture_output=True, timeout=120)
            dump_s = time.perf_counter() - t0
            lab.step(steps, "2 delete_subject (committed)",
                     lambda: [f"store.delete_subject -> {delete_target(lab.store)}"])
            tables = ", ".join(lab.tables())
            lab.step(steps, "3 VACUUM + CHECKPOINT",
                     lambda: lab.sql(f"VACUUM {tables}", as_owner=True) + lab.sql("CHECKPOINT"))
            lab.step(steps, "4 VACUUM FULL + CHECKPOINT",
                     lambda: lab.sql(f"VACUUM FULL {tables}", as_owner=True)
                     + lab.sql("CHECKPOINT"))
            lab.step(steps, "5 (pg_switch_wal + CHECKPOINT) x2",
                     lambda: lab.switch_and_checkpoint() + lab.switch_and_checkpoint())
            lab.step(steps, "6 wal_recycle=off, then (pg_switch_wal + CHECKPOINT) x2",
                     lambda: lab.set_wal_recycle(False) + lab.switch_and_checkpoint()
                     + lab.switch_and_checkpoint())

            def until_clean() -> list[str]:
                done = []
                for i in range(1, 21):
                    done += lab.switch_and_checkpoint()
                    f = scan(pg.data, {"vector16": patterns["vector16"]})["found"]["vector16"]
                    if not f:
                        return done + [f"no file holds the vector after {i} more round(s)"]
                return done + ["still found after 20 rounds"]
            lab.step(steps, "7 (pg_switch_wal + CHECKPOINT) until no file holds the vector",
                     until_clean)
            lab.set_wal_recycle(True)
            dump_check = pg_dump_check(lab, dump, patterns)
            dump_check["pg_dump_s"] = round(dump_s, 3)
            privileges = pg_privileges(lab)
            rec["autovacuum"] = ("off on the gallery's tables (ALTER TABLE ... SET "
                                 "(autovacuum_enabled = false, toast.autovacuum_enabled = "
                                 "false))")
            rec["pg_dump_before_delete"] = dump_check
            rec["privileges"] = privileges
        finally:
            lab.close()


def pg_target_last(rec: dict, Postgres, patterns, others, target) -> None:
    with Postgres() as pg:
        lab = PgLab(pg, patterns)
        try:
            steps: list = []
            rec["steps"] = steps
            setup = pg_open_store(lab, autovacuum=False)
            lab.step(steps, "1 enroll (target last) + CHECKPOINT",
                     lambda: setup + lab.enroll(others, target, "last") + lab.sql("CHECKPOINT"))
            steps[-1]["target"] = lab.target_place()
            lab.step(steps, "2 delete_subject (committed)",
                     lambda: [f"delete_subject -> {delete_target(lab.store)}"])
            tables = ", ".join(lab.tables())
            lab.step(steps, "3 VACUUM + CHECKPOINT",
                     lambda: lab.sql(f"VACUUM {tables}", as_owner=True) + lab.sql("CHECKPOINT"))
            lab.step(steps, "4 VACUUM FULL + CHECKPOINT",
                     lambda: lab.sql(f"VACUUM FULL {tables}", as_owner=True)
                     + lab.sql("CHECKPOINT"))
            rec["autovacuum"] = "off on the gallery's tables"
        finally:
            lab.close()


def recommended_sequence(lab: PgLab) -> list[str]:
    """What removes a deleted row's bytes from every file of the data directory (superuser)."""
    tables = ", ".join(lab.tables())
    done = lab.set_wal_recycle(False)
    done += lab.sql(f"ANALYZE {tables}", f"VACUUM FULL {tables}, pg_statistic", "CHECKPOINT")
    n = lab.su.execute("SELECT count(*) FROM pg_ls_waldir() "
                       "WHERE name ~ '^[0-9A-F]{24}$'").fetchone()[0]
    for _ in range(n + 1):
        done += lab.switch_and_checkpoint()
    done.append(f"(pg_switch_wal + CHECKPOINT) x {n + 1}: once per segment file in pg_wal "
                f"({n}) plus one")
    done += lab.set_wal_recycle(True)
    return done


def pg_stats_hold(lab: PgLab) -> dict:
    """What the planner's statistics hold: the target (by SQL, in pg_stats), and how many of
    all the enrolled vectors are in pg_statistic's files (its heap and TOAST), which says
    whether the target's absence is luck (ANALYZE keeps ~100 histogram bounds per column)."""
    hexv = lab.patterns["vector_hex"].decode()
    rows = lab.su.execute(
        "SELECT tablename, attname, coalesce(most_common_vals::text, '') || "
        "coalesce(histogram_bounds::text, '') FROM pg_stats WHERE schemaname = 'public'"
    ).fetchall()
    files = [lab.pg.data / r[0] for r in lab.su.execute(
        "SELECT pg_relation_filepath(oid) FROM pg_class WHERE oid = 'pg_statistic'::regclass "
        "OR oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'pg_statistic'::regclass)"
    ).fetchall()]
    blob = b"".join(f.read_bytes() for f in files if f.exists())
    slices = [np.asarray(v, "<f4").tobytes()[256:272] for v in lab.enrolled]
    return {"vector_in_pg_stats": sorted(f"{t}.{a}" for t, a, s in rows if hexv in s),
            "subject_in_pg_stats": sorted(f"{t}.{a}" for t, a, s in rows if SUBJECT in s),
            "enrolled_vectors_in_pg_statistic_files":
                f"{sum(sl in blob for sl in slices)} of {len(slices)}"}


def pg_autovacuum_on(rec: dict, Postgres, patterns, others, target, wait_s: float) -> None:
    with Postgres() as pg:
        lab = PgLab(pg, patterns)
        try:
            steps: list = []
            rec["steps"] = steps
            lab.sql("ALTER SYSTEM SET autovacuum_naptime = '1s'", "SELECT pg_reload_conf()")
            setup = pg_open_store(lab, autovacuum=True)
            lab.step(steps, "1 enroll + CHECKPOINT",
                     lambda: setup + lab.enroll(others, target, "middle") + lab.sql("CHECKPOINT"))
            steps[-1]["target"] = lab.target_place()

            def wait_autoanalyze() -> list[str]:
                t0 = time.monotonic()
                while time.monotonic() - t0 < wait_s:
                    row = lab.su.execute("SELECT last_autoanalyze, last_autovacuum FROM "
                                         "pg_stat_user_tables WHERE relname = 'faces'").fetchone()
                    if row[0] is not None:
                        what = (f"autoanalyze of faces after {time.monotonic() - t0:.1f} s "
                                f"(last_autovacuum: {row[1]})")
                        return [what, *lab.sql("CHECKPOINT")]
                    time.sleep(0.5)
                return [f"no autoanalyze of faces within {wait_s} s"] + lab.sql("CHECKPOINT")
            lab.step(steps, "1b autovacuum's autoanalyze + CHECKPOINT", wait_autoanalyze)
            steps[-1]["pg_stats"] = pg_stats_hold(lab)

            def delete_and_wait() -> list[str]:
                n = delete_target(lab.store)
                time.sleep(5)
                row = lab.su.execute(
                    "SELECT n_dead_tup, last_autovacuum, last_autoanalyze FROM "
                    "pg_stat_user_tables WHERE relname = 'faces'").fetchone()
                waited = (f"waited 5 s with autovacuum on: faces n_dead_tup={row[0]}, "
                          f"last_autovacuum={row[1]}, last_autoanalyze={row[2]}")
                return [f"delete_subject -> {n}", waited, *lab.sql("CHECKPOINT")]
            lab.step(steps, "2 delete_subject, 5 s of autovacuum, CHECKPOINT", delete_and_wait)
            steps[-1]["pg_stats"] = pg_stats_hold(lab)

            def store_purge() -> list[str]:
                try:
                    return [f"store.purge() as the owner: {x}" for x in lab.store.purge()]
                except NotImplementedError:
                    return ["store.purge() is not implemented in this store code"]
                except AttributeError:
                    return ["this store code has no purge()"]
            lab.step(steps, "3 the store's own purge() (as the owner)", store_purge)

            def store_purge_as_superuser() -> list[str]:
                from app.gallery.store import open_store
                su_store = open_store(lab.su_url)
                try:
                    return [f"store.purge() as the superuser: {x}" for x in su_store.purge()]
                except (NotImplementedError, AttributeError):
                    return ["this store code has no purge()"]
                finally:
                    su_store.close()
            lab.step(steps, "3b the store's own purge() (as the superuser)",
                     store_purge_as_superuser)
            steps[-1]["pg_stats"] = pg_stats_hold(lab)
            lab.step(steps, "4 recommended sequence (superuser)",
                     lambda: recommended_sequence(lab))
            steps[-1]["pg_stats"] = pg_stats_hold(lab)
            rec["autovacuum"] = ("on (server defaults), autovacuum_naptime=1s so that it acts "
                                 "within the run")
        finally:
            lab.close()


# ------------------------------------------------------------------------------------ SQLite
def sqlite_area(rel: str) -> str:
    for suffix in ("-wal", "-shm"):
        if rel.endswith(suffix):
            return suffix
    return "backup copy" if rel.startswith("backup") else "main file"


def sqlite_variant(out: dict, variant: str, patterns, others, target, tmp: Path) -> None:
    from app.gallery.store import open_store
    d = tmp / f"sqlite-{variant}"
    d.mkdir()
    store = open_store(f"sqlite:///{d}/gallery.db")
    db = store._db  # the store's own connection: PRAGMAs for the experiment
    out["secure_delete_as_opened"] = db.execute("PRAGMA secure_delete").fetchone()[0]
    if variant != "store":
        db.execute(f"PRAGMA secure_delete={'ON' if variant == 'secure_delete_on' else 'OFF'}")
    out["secure_delete_used"] = db.execute("PRAGMA secure_delete").fetchone()[0]
    steps: list = []
    out["steps"] = steps

    def step(name: str, body: Callable[[], list[str]]) -> None:
        t0 = time.perf_counter()
        actions = body()
        wall = time.perf_counter() - t0
        s = {"step": name, "actions": actions, "wall_s": round(wall, 3)}
        s.update(scan(d, patterns, area=sqlite_area))
        s["sizes"] = {p.name: p.stat().st_size for p in sorted(d.iterdir())}
        steps.append(s)
        print(f"  [sqlite {variant}: {name}] vector: {where(s['found'], 'vector')}; subject: "
              f"{where(s['found'], 'subject')}", file=sys.stderr, flush=True)

    def enroll() -> list[str]:
        order = [(f"other-{i:03d}", f"face-{i:04d}", others[i]) for i in range(len(others))]
        order.insert(len(order) // 2, (SUBJECT, TARGET_FACE, target))
        for subject, face_id, v in order:
            store.add_face(GALLERY, subject, face_id, MODEL_SHA, v, None, None)
        return [f"{len(order)} x store.add_face"]

    def backup() -> list[str]:
        dst = sqlite3.connect(str(d / "backup_after_delete.db"))
        with store._lock:
            db.backup(dst)
        dst.close()
        return ["store._db.backup(sqlite3.connect('backup_after_delete.db'))"]

    def pragma(*stmts: str) -> list[str]:
        with store._lock:
            return [f"{s} -> {db.execute(s).fetchall()}" for s in stmts]

    try:
        step("1 enroll", enroll)
        step("2 delete_subject (committed)",
             lambda: [f"store.delete_subject -> {delete_target(store)}"])
        step("3 .backup() copy after the delete", backup)
        step("4 PRAGMA wal_checkpoint(TRUNCATE)", lambda: pragma("PRAGMA wal_checkpoint(TRUNCATE)"))
        step("5 VACUUM + wal_checkpoint(TRUNCATE)",
             lambda: pragma("VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        try:
            within(10, store.close, "store.close()")
        except TimeoutError:
            pass


# ---------------------------------------------------------------------------------- summary
def summary(result: dict) -> dict:
    """Step → where the vector (any of its forms) and the subject name were found."""
    out = {}
    for store, scenarios in (("postgresql", result.get("postgresql", {})),
                             ("sqlite", result.get("sqlite", {}))):
        for name, sc in scenarios.items():
            if not isinstance(sc, dict) or "steps" not in sc:
                continue
            out[f"{store}/{name}"] = [
                {"step": s["step"], "wall_s": s["wall_s"],
                 "vector512": where(s["found"], "vector"),
                 "vector16": where(s["found"], "vector16"),
                 "vector_hex": where(s["found"], "vector_hex"),
                 "subject": where(s["found"], "subject")} for s in sc["steps"]]
    return out


def histogram_ranks(n: int, target: int = 100) -> set[int]:
    """The sorted positions ANALYZE takes as histogram bounds from n distinct values all in
    its sample (compute_scalar_stats, default_statistics_target 100)."""
    bounds = min(n, target + 1)
    if bounds < 2:
        return set(range(n))
    delta, deltafrac = divmod(n - 1, bounds - 1)
    pos = posfrac = 0
    out = set()
    for _ in range(bounds):
        out.add(pos)
        pos += delta
        posfrac += deltafrac
        if posfrac >= bounds - 1:
            pos += 1
            posfrac -= bounds - 1
    return out


def guarded(rec: dict, fn: Callable[[], None]) -> None:
    """Run a scenario that fills `rec`; an exception is recorded in it (the steps done so far
    stay) and the run goes on with the next scenario."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded, reported
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=4)
        print(f"  ERROR: {rec['error']}", file=sys.stderr, flush=True)


def code_version() -> dict:
    src = ROOT / "app/gallery/store.py"
    info = {"store_py_sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    try:
        info["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                                          capture_output=True, text=True).stdout.strip()
        info["store_py_differs_from_head"] = bool(subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "app/gallery/store.py"],
            check=False, cwd=ROOT).returncode)
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--others", type=int, default=200, help="faces enrolled around the target")
    ap.add_argument("--seed", type=int, default=2,
                    help="2: the target's bytes rank 50th of the 201, an even rank, so ANALYZE "
                         "puts it on a histogram bound (pg_statistic)")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--autovacuum-wait-s", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    target = unit_vectors(rng, 1)[0]
    others = unit_vectors(rng, args.others)
    patterns = patterns_for(target)
    ranked = sorted(np.asarray(v, "<f4").tobytes() for v in [target, *others])
    rank = ranked.index(patterns["vector"])
    t_start = time.perf_counter()
    result: dict = {
        "what": "files holding a deleted face's vector (512 bytes, a 16-byte slice, its hex) "
                "or its subject name, after each step of its deletion",
        "target": {"subject": SUBJECT, "face_id": TARGET_FACE, "seed": args.seed,
                   "others": args.others, "vector16_slice": "bytes 256..271",
                   "rank_of_its_bytes_among_enrolled": rank,
                   "on_an_analyze_histogram_bound": rank in histogram_ranks(len(ranked))},
        "code": code_version(),
        "environment": {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                        "sqlite_secure_delete_build_default": sqlite3.connect(":memory:")
                        .execute("PRAGMA secure_delete").fetchone()[0],
                        "as_root": os.geteuid() == 0},
    }
    with tempfile.TemporaryDirectory(prefix="erasure-scan-") as tmp:
        tmp = Path(tmp)
        if not args.skip_sqlite:
            result["sqlite"] = {}
            for v in ("store", "secure_delete_off", "secure_delete_on"):
                rec = result["sqlite"][v] = {}
                guarded(rec, lambda rec=rec, v=v: sqlite_variant(rec, v, patterns, others,
                                                                 target, tmp))
        if not args.skip_postgres:
            from bench.postgres import NoPostgres, Postgres
            try:
                with Postgres() as pg:
                    import psycopg
                    with psycopg.connect(pg.url) as c:
                        result["environment"]["postgresql"] = c.execute(
                            "SHOW server_version").fetchone()[0]
                        result["environment"]["postgresql_defaults"] = dict(c.execute(
                            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_recycle',"
                            " 'wal_init_zero', 'min_wal_size', 'max_wal_size', "
                            "'full_page_writes', 'wal_compression', 'wal_level', "
                            "'archive_mode', 'autovacuum', 'wal_segment_size')").fetchall())
                result["postgresql"] = {}
                for name, run in (
                        ("steps", lambda r: pg_steps(r, Postgres, patterns, others, target,
                                                     tmp)),
                        ("target_last", lambda r: pg_target_last(r, Postgres, patterns, others,
                                                                 target)),
                        ("autovacuum_on", lambda r: pg_autovacuum_on(
                            r, Postgres, patterns, others, target, args.autovacuum_wait_s))):
                    print(f"postgresql/{name}", file=sys.stderr, flush=True)
                    rec = result["postgresql"][name] = {}
                    guarded(rec, lambda rec=rec, run=run: run(rec))
            except NoPostgres as exc:
                result["postgresql"] = {"skipped": str(exc)}
    result["summary"] = summary(result)
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    print_and_save(result, args.out)
    return result


if __name__ == "__main__":
    main()
