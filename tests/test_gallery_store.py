"""The gallery's parts without the HTTP layer: exact search in memory (against a brute-force
reference), and both stores (SQLite and a real PostgreSQL server) with their change log."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from app.gallery.index import GalleryIndex, GalleryVectors
from app.gallery.store import StoreError, open_store
from app.metrics import Metrics

DIM = 16


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(vectors, subjects, q, k):
    """Best face per subject by full sort: the reference the index must equal."""
    d = np.sqrt(np.maximum(0, 2 - 2 * vectors @ q))
    best = {}
    for i in np.argsort(d, kind="stable"):
        best.setdefault(subjects[i], (subjects[i], i, d[i]))
    return sorted(best.values(), key=lambda t: t[2])[:k]


# ------------------------------------------------------------------------------- the index
def test_search_returns_each_subjects_nearest_face_nearest_first_like_brute_force():
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3000)
    subjects = [f"s{i % 400}" for i in range(3000)]  # many faces per subject
    g = GalleryVectors(DIM)
    for i, (s, v) in enumerate(zip(subjects, vectors)):
        g.add(f"f{i}", s, v)
    for q in unit(rng, 20):
        for k in (1, 5, 100):
            hits = g.search(q, k)
            ref = brute_force(vectors, subjects, q, k)
            assert [h.subject for h in hits] == [s for s, _, _ in ref]
            assert [h.face_id for h in hits] == [f"f{i}" for _, i, _ in ref]
            np.testing.assert_allclose([h.distance for h in hits], [d for *_, d in ref],
                                       atol=1e-5)
            assert all(abs(h.similarity - (1 - h.distance ** 2 / 2)) < 1e-5 for h in hits)


def test_search_equals_the_evaluations_reference_ranking():
    """model.evaluate.protocols's 1:N figures come from model.evaluate.metrics.rank_subjects; the service's
    search must rank exactly as it does."""
    from model.evaluate.metrics import rank_subjects
    rng = np.random.default_rng(7)
    vectors = unit(rng, 2000)
    labels = rng.integers(0, 300, 2000)
    g = GalleryVectors(DIM)
    for i, (label, v) in enumerate(zip(labels, vectors)):
        g.add(f"f{i}", str(label), v)
    probes = unit(rng, 50)
    ranked, distances = rank_subjects(vectors, labels, probes, top_k=7)
    for q, want, d in zip(probes, ranked, distances):
        hits = g.search(q, 7)
        assert [h.subject for h in hits] == [str(x) for x in want]
        np.testing.assert_allclose([h.distance for h in hits], d, atol=1e-5)


def test_search_looks_further_when_one_subject_holds_all_the_nearest_faces():
    rng = np.random.default_rng(1)
    q = unit(rng, 1)[0]
    g = GalleryVectors(DIM)
    for i in range(50):  # 50 near-copies of the query, all one subject
        v = q + 0.01 * unit(rng, 1)[0]
        g.add(f"near{i}", "crowd", v / np.linalg.norm(v))
    g.add("far", "loner", -q)
    hits = g.search(q, 2)
    assert [h.subject for h in hits] == ["crowd", "loner"]
    assert hits[1].distance == pytest.approx(2.0, abs=1e-5)


def test_deletes_keep_the_matrix_dense_and_the_search_exact():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 500)
    g = GalleryVectors(DIM)
    for i, v in enumerate(vectors):
        g.add(f"f{i}", f"s{i % 50}", v)
    removed = set(range(0, 500, 3))
    for i in removed:
        g.remove(f"f{i}")
    g.remove_subject("s7")
    keep = [i for i in range(500) if i not in removed and i % 50 != 7]
    assert len(g) == len(keep) and not g.has_subject("s7")
    q = unit(rng, 1)[0]
    ref = brute_force(vectors[keep], [f"s{i % 50}" for i in keep], q, 10)
    assert [h.face_id for h in g.search(q, 10)] == [f"f{keep[i]}" for _, i, _ in ref]
    assert g.nearest_of("s8", q).face_id == min(
        (f"f{i}" for i in keep if i % 50 == 8), key=lambda f: -vectors[int(f[1:])] @ q)


def test_other_models_faces_are_counted_not_searched():
    idx = GalleryIndex(DIM, "new-model")
    rng = np.random.default_rng(3)
    idx.put("g", "alice", "f1", "new-model", unit(rng, 1)[0])
    idx.put("g", "bob", "f2", "old-model", unit(rng, 1)[0])
    g = idx.gallery("g")
    assert len(g) == 1 and g.foreign == {"f2": "bob"} and g.has_subject("bob")
    idx.put("g", "bob", "f2", "new-model", unit(rng, 1)[0], update=True)  # re-embedded
    assert len(g) == 2 and not g.foreign
    idx.put("g", "bob", "f2", "new-model", unit(rng, 1)[0], update=True)  # and again
    assert len(g) == 2 and not g.foreign
    idx.remove_subject("g", "alice")
    idx.remove_subject("g", "bob")
    assert idx.gallery("g") is None  # an emptied gallery is gone


# ------------------------------------------------------------------------------ the stores
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/gallery.db"
    return request.getfixturevalue("postgres").database()


def test_store_round_trip_change_log_snapshot_and_pagination(store_url):
    rng = np.random.default_rng(4)
    store = open_store(store_url)
    try:
        v = unit(rng, 4)
        for i, subject in enumerate(["bob", "alice", "Zed", "alice"]):
            store.add_face("g", subject, f"{i:032x}", "m1", v[i], None, None)
        store.add_face("other", "alice", "f" * 32, "m1", v[0], b"png", "spec")
        # byte order in both stores (capitals first), so a cursor pages the same everywhere
        assert store.subjects("g", 2, None) == [("Zed", 1), ("alice", 2)]
        assert store.subjects("g", 2, "alice") == [("bob", 1)]
        assert store.subjects("nope", 10, None) == []

        changes = store.changes_since(0)
        assert [c.op for c in changes] == ["add"] * 5
        assert [c.seq for c in changes] == sorted(c.seq for c in changes)
        np.testing.assert_array_equal(changes[0].face.embedding, v[0])
        last = changes[-1].seq

        assert store.delete_subject("g", "alice") == 2
        assert store.delete_subject("g", "alice") == 0  # nothing left: no log row
        assert store.delete_face("g", "bob", f"{0:032x}") is True
        assert store.delete_face("g", "bob", f"{0:032x}") is False
        later = store.changes_since(last)
        # a deleted subject (alice; bob, whose last face went) is named by its digest,
        # everywhere in the log
        assert [(c.op, c.subject) for c in later] == [
            ("delete_subject", store.digest("g", "alice")),
            ("delete_face", store.digest("g", "bob"))]
        assert {c.subject for c in store.changes_since(0) if c.gallery == "g"} == {
            store.digest("g", "alice"), store.digest("g", "bob"), "Zed"}
        # an add whose face was deleted since comes back without its row
        assert store.changes_since(0)[0].face is None

        seq, faces = store.snapshot()
        faces = list(faces)
        assert seq == later[-1].seq
        assert sorted((f.gallery, f.subject) for f in faces) == [("g", "Zed"),
                                                                 ("other", "alice")]
        store.update_embedding("f" * 32, "m2", v[1])
        (crop,) = store.crops(not_model="m1")
        assert (crop.face_id, crop.gallery, crop.model_sha256, crop.crop_png) == \
            ("f" * 32, "other", "m2", b"png")
        assert store.changes_since(seq)[0].op == "update"
    finally:
        store.close()


def test_concurrent_writers_see_their_log_rows_in_commit_order(store_url):
    """Two stores (as two replicas would) write at once; a reader following the log from any
    position sees every row exactly once, in seq order."""
    rng = np.random.default_rng(5)
    a, b = open_store(store_url), open_store(store_url)
    try:
        def write(store, tag):
            for i in range(40):
                store.add_face("g", f"{tag}{i % 5}", f"{tag}{i:031x}", "m", unit(rng, 1)[0],
                               None, None)
        threads = [threading.Thread(target=write, args=(s, t)) for s, t in ((a, "a"), (b, "b"))]
        seen, pos = [], 0
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or a.changes_since(pos):
            for c in a.changes_since(pos):
                assert c.seq > pos
                seen.append(c.face_id)
                pos = c.seq
        for t in threads:
            t.join()
        assert sorted(seen) == sorted([f"a{i:031x}" for i in range(40)] +
                                      [f"b{i:031x}" for i in range(40)])
    finally:
        a.close()
        b.close()


def test_bad_urls_and_unreachable_databases_are_store_errors(tmp_path):
    with pytest.raises(StoreError, match="not supported"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="expected sqlite"):
        open_store("sqlite://relative.db")
    with pytest.raises(StoreError, match="reach"):
        open_store("postgresql://postgres@127.0.0.1:1/postgres")


def test_bulk_adds_are_one_transaction_in_the_log_and_the_snapshot(store_url):
    rng = np.random.default_rng(6)
    store = open_store(store_url)
    try:
        v = unit(rng, 300)
        store.add_faces("big", "m", [(f"s{i % 100}", f"{i:032x}", v[i]) for i in range(300)])
        changes = store.changes_since(0)
        assert len(changes) == 300 and {c.op for c in changes} == {"add"}
        np.testing.assert_array_equal(changes[7].face.embedding, v[7])
        seq, faces = store.snapshot()
        assert seq == changes[-1].seq and len(list(faces)) == 300
        assert store.subjects("big", 1, None) == [("s0", 3)]
    finally:
        store.close()


def test_a_replica_reloads_when_the_store_is_restored_from_an_older_backup(tmp_path):
    """A restored backup rewinds the change log, and writes after it reuse its numbers: the
    watcher sees that the row it applied last is gone or different, and reads it all again."""
    import shutil
    from types import SimpleNamespace

    from app.gallery.service import GalleryService
    rng = np.random.default_rng(8)
    db = tmp_path / "gallery.db"
    writer = open_store(f"sqlite:///{db}")
    writer.add_face("g", "alice", "a" * 32, "m", unit(rng, 1)[0], None, None)
    writer.close()
    shutil.copy(db, tmp_path / "backup.db")  # the backup: alice only

    metrics = Metrics()
    replica = GalleryService(SimpleNamespace(metrics=metrics), open_store(f"sqlite:///{db}"))
    replica.load(DIM, "m")
    writer = open_store(f"sqlite:///{db}")
    writer.add_face("g", "bob", "b" * 32, "m", unit(rng, 1)[0], None, None)
    replica._sync_quietly()
    assert replica.index.gallery("g").has_subject("bob")
    writer.close()

    for suffix in ("", "-wal", "-shm"):  # the restore, while the replica runs
        (tmp_path / f"gallery.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", db)
    writer = open_store(f"sqlite:///{db}")
    writer.add_face("g", "carol", "c" * 32, "m", unit(rng, 1)[0], None, None)  # seq 2 again
    writer.close()
    replica.store.close()
    replica.store = open_store(f"sqlite:///{db}")  # (a new file: a new connection)
    replica._sync_quietly()
    g = replica.index.gallery("g")
    assert g.has_subject("alice") and g.has_subject("carol") and not g.has_subject("bob")


def test_pruning_the_log_keeps_the_newest_rows_and_a_lagging_replica_catches_up(store_url):
    """`prune-log --keep N` deletes all but the newest N log rows (never the last one). An
    up-to-date replica goes on applying new rows; one whose last applied row was pruned
    reloads everything, so it still ends with exactly the store's faces."""
    from types import SimpleNamespace

    from app.gallery.__main__ import main as gallery_cli
    from app.gallery.service import GalleryService
    rng = np.random.default_rng(9)
    writer = open_store(store_url)
    metrics = Metrics()
    current, lagging = (GalleryService(SimpleNamespace(metrics=metrics), open_store(store_url))
                        for _ in range(2))
    try:
        writer.add_face("g", "alice", "a" * 32, "m", unit(rng, 1)[0], None, None)
        lagging.load(DIM, "m")  # alice only
        for i in range(5):
            writer.add_face("g", f"s{i}", f"{i:032x}", "m", unit(rng, 1)[0], None, None)
        writer.delete_subject("g", "alice")
        current.load(DIM, "m")
        before = [c.seq for c in writer.changes_since(0)]
        assert writer.prune_changes(2) == len(before) - 2
        assert [c.seq for c in writer.changes_since(0)] == before[-2:]
        assert writer.prune_changes(0) == 1  # at least the newest row stays
        assert [c.seq for c in writer.changes_since(0)] == before[-1:]
        assert writer.snapshot()[0] == before[-1]

        writer.add_face("g", "zoe", "e" * 32, "m", unit(rng, 1)[0], None, None)
        for replica in (current, lagging):
            replica._sync_quietly()
            g = replica.index.gallery("g")
            assert g.has_subject("zoe") and g.has_subject("s4") and not g.has_subject("alice")
            assert len(g) == 6
        if store_url.startswith("sqlite"):  # the operator's command, on the same store
            assert gallery_cli(["prune-log", "--url", store_url, "--keep", "1"]) == 0
            assert len(writer.changes_since(0)) == 1
    finally:
        writer.close()
        current.store.close()
        lagging.store.close()
