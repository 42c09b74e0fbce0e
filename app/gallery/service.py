"""1:N on top of the 1:1 service: enroll faces under (gallery, subject), identify a face
against a gallery, verify a face against one subject, list and delete.

The data path is the one of /embed (decode → detect/align → encode, inside
`Service.embed_images`); then the store (a committed write) and the in-memory index (exact
search). Writes go to the store first and are applied to this replica's index from the
change log right after, so a client reads its own writes on the replica it wrote to; other
replicas apply them when notified (PostgreSQL) or at their next catch-up (app/gallery/store.py).

identify's threshold (app/gallery/threshold.py) holds a false-positive identification rate
at the gallery's size; identify and subject verify answer from memory only while this replica
has read its store recently (`require_fresh`, 503 store_stale), so a deleted person is never
found from a stale copy. Deletions erase (app/gallery/store.py): the replica drops the
subject's vectors and name when it applies the deletion's log row.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.errors import ServiceError
from app.gallery.index import GalleryIndex, GalleryVectors, Hit
from app.gallery.store import Idempotent, Store, StoreError

log = logging.getLogger("faceverify.gallery")
EXPIRE_EVERY_S = 3600.0


@dataclass
class Probe:
    """A query image's face, embedded."""

    vector: np.ndarray  # (d,) float32, unit
    face: object  # model.face.pipeline.AlignedFace
    timings_ms: dict


class GalleryService:
    def __init__(self, service, store: Store, *, store_crops: bool = False,
                 sync_interval_s: float = 5.0, max_staleness_s: float | None = None):
        self.service = service  # app.service.Service: embedding, thresholds, model
        self.store = store
        self.store_crops = store_crops
        self.sync_interval_s = sync_interval_s
        self.max_staleness_s = max_staleness_s or 3 * sync_interval_s
        self.synced_at = time.monotonic()  # the last read of the store's log that succeeded
        service.metrics.gallery_sync_age.set_function(lambda: self.staleness_s)
        self.index: GalleryIndex | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._last_change: tuple | None = None  # the log row at index.seq, as applied
        self._expired_at = float("-inf")  # when old idempotency answers were last deleted

    # -- life cycle ------------------------------------------------------------------------
    def load(self, dim: int, model_sha256: str) -> None:
        """Read every face into memory (blocking; at start-up, before ready, and when the
        store was restored from a backup under a running server)."""
        t0 = time.perf_counter()
        self.store.refresh_salt()  # a restore into an empty store may have adopted another
        index = GalleryIndex(dim, model_sha256, digest=self.store.digest)
        synced_at = time.monotonic()
        seq, faces = self.store.snapshot()
        for f in faces:
            index.put(f.gallery, f.subject, f.face_id, f.model_sha256, f.embedding)
        index.seq = seq
        with self._sync_lock:
            self.index = index
            self._last_change = self.store.change_at(seq) if seq else None
            self.synced_at = synced_at
        self.sync(reload_when_lost=False)  # lost again already: the next catch-up reloads
        foreign = sum(len(g.foreign) for g in index.galleries.values())
        log.info("gallery loaded", extra={
            "store": self.store.url_kind, "galleries": len(index.galleries),
            "vectors": index.vectors, "other_model_faces": foreign, "seq": index.seq,
            "load_ms": round((time.perf_counter() - t0) * 1000, 1)})
        if foreign:
            log.warning("gallery: %d face(s) were embedded by other weights; identify refuses "
                        "their galleries until `python -m app.gallery reembed`", foreign)

    def start(self) -> None:
        self._watcher = threading.Thread(
            target=self.store.watch, args=(self._sync_quietly, self.sync_interval_s, self._stop),
            name="gallery-sync", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.store.close()

    def sync(self, reload_when_lost: bool = True) -> int:
        """Apply the change log from the index's position; the number of changes applied.

        Each read also returns the row at the position: when it is gone or different, rows
        this replica has not applied may be gone too (the log was pruned past it, or the
        store restored from an older backup, after which later writes reuse its numbers),
        so the replica reads everything again (`load`)."""
        applied = 0
        with self._sync_lock:
            while True:
                seq = self.index.seq
                read_at = time.monotonic()
                changes = self.store.changes_since(seq, with_row_at_seq=bool(seq))
                if seq:
                    head = changes[0] if changes else None
                    if head is None or head.seq != seq or head.row != self._last_change:
                        break  # the position is lost
                    changes = changes[1:]
                if not changes:
                    self.synced_at = read_at
                    return applied
                if any(c.op == "restore" for c in changes):
                    break  # the store's faces were replaced (app.gallery restore)
                with self.index.lock:
                    for c in changes:
                        if c.op in ("add", "update") and c.face is not None:
                            f = c.face
                            self.index.put(f.gallery, f.subject, f.face_id, f.model_sha256,
                                           f.embedding, update=c.op == "update")
                        elif c.op == "delete_face":
                            self.index.remove_face(c.gallery, c.face_id)
                        elif c.op == "delete_subject":  # c.subject: the subject's digest
                            self.index.remove_subject(c.gallery, c.subject)
                        self.index.seq = c.seq
                        self._last_change = c.row
                applied += len(changes)
                self.service.metrics.gallery_vectors.set(self.index.vectors)
        log.warning("gallery: the store's change log no longer holds the row this replica "
                    "applied last, or says the store was restored; reloading")
        if reload_when_lost:
            self.load(self.index.dim, self.index.model_sha256)
        return applied

    def _sync_quietly(self) -> None:
        """The watcher's catch-up (`sync`, which reloads when its position is lost), and once
        an hour the expiry of old Idempotency-Key answers (they hold subject names)."""
        try:
            self.sync()
            if time.monotonic() - self._expired_at > EXPIRE_EVERY_S:
                self._expired_at = time.monotonic()
                self.store.expire_idempotency()
        except StoreError as exc:
            log.warning("gallery: catch-up failed: %s", exc)

    # -- helpers -----------------------------------------------------------------------------
    async def _store(self, fn, *args):
        """A store call in a thread; an unreachable store is 503 for the client."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            log.error("gallery store error: %s", exc)
            raise ServiceError("store_unavailable",
                               headers={"Retry-After": str(self.service.settings.retry_after_s)}
                               ) from None

    async def _write(self, fn, *args):
        out = await self._store(fn, *args)
        await self._store(self.sync)  # read-your-writes on this replica
        return out

    async def probe(self, image: bytes, detect: bool, keep_crop: bool = False) -> Probe:
        out = await self.service.embed(image, detect, keep_crop)
        return Probe(out.embeddings[0].astype(np.float32), out.faces[0],
                     out.timings_ms)

    @property
    def staleness_s(self) -> float:
        """Seconds since this replica last read the store's change log successfully."""
        return time.monotonic() - self.synced_at

    def require_fresh(self) -> None:
        """Identify and subject verify answer from memory: only while this replica has heard
        from its store recently, else a deleted person could still be found (503 store_stale)."""
        age = self.staleness_s
        if age > self.max_staleness_s:
            raise ServiceError(
                "store_stale",
                f"this replica has not reached its gallery store for {age:.0f} s (more than "
                f"{self.max_staleness_s:g} s): its copy may hold deleted faces; retry later",
                headers={"Retry-After": str(max(self.service.settings.retry_after_s,
                                                 round(self.sync_interval_s)))})

    def _searchable(self, gallery: str) -> GalleryVectors:
        g = self.index.gallery(gallery)
        if g is None:
            raise ServiceError("not_found", f"no gallery {gallery!r}")
        if g.foreign:
            raise ServiceError(
                "model_mismatch",
                f"gallery {gallery!r} holds {len(g.foreign)} face(s) embedded by other weights "
                f"than the loaded ones ({self.index.model_sha256[:12]}…); their vectors cannot "
                "be compared with this model's. Run `python -m app.gallery reembed` (needs "
                "stored crops), or delete and re-enroll those subjects")
        return g

    # -- operations ------------------------------------------------------------------------
    async def enroll(self, gallery: str, subject: str, image: bytes, detect: bool = True,
                     idempotency_key: str | None = None,
                     answer: Callable[[str, Probe], dict] | None = None
                     ) -> tuple[dict, bool]:
        """Embed and store a face: (the answer `answer(face_id, probe)` built, replayed).
        With an Idempotency-Key the answer is stored with the face in one transaction, and a
        retry gets it back (replayed True) without storing anything; the key is checked
        before the image's work too, so a retry costs nothing."""
        answer = answer or (lambda face_id, p: {"face_id": face_id})
        idem = None
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogateescape")
                                    ).hexdigest()
            stored = await self._store(self.store.idempotent_answer, gallery, digest)
            if stored is not None:
                await self._store(self.sync)  # the face may have been stored by another replica
                return self._replay(subject, *stored), True
        p = await self.probe(image, detect, keep_crop=self.store_crops)
        face_id = uuid.uuid4().hex
        body = answer(face_id, p)
        if idempotency_key is not None:
            idem = (digest, json.dumps(body))
        crop_png = crop_spec = None
        if self.store_crops:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(p.face.crop), "RGB").save(buf, format="PNG")
            crop_png = buf.getvalue()
            crop_spec = self.service.runner.encoder.spec.version
        try:
            await self._write(self.store.add_face, gallery, subject, face_id,
                              self.index.model_sha256, p.vector, crop_png, crop_spec, idem)
        except Idempotent as first:  # a concurrent request with the same key won
            await self._store(self.sync)
            return self._replay(subject, first.subject, first.response), True
        self.service.metrics.gallery_writes.labels(op="enroll").inc()
        return body, False

    @staticmethod
    def _replay(subject: str, first_subject: str, response: str) -> dict:
        if not response:  # the tombstone of an answer whose face was deleted since
            raise ServiceError("idempotency_conflict", "the enrollment made with this "
                               "Idempotency-Key was deleted since; use a new key to enroll "
                               "again", field="Idempotency-Key")
        if first_subject != subject:
            raise ServiceError("idempotency_conflict", "Idempotency-Key was already used to "
                               "enroll another subject in this gallery within 24 h",
                               field="Idempotency-Key")
        return json.loads(response)

    async def identify(self, gallery: str, image: bytes, top_k: int, detect: bool = True
                       ) -> tuple[list[Hit], Probe, float]:
        self.require_fresh()
        self._searchable(gallery)  # before the image's work: a 404 costs nothing
        p = await self.probe(image, detect)
        self.require_fresh()  # the image's work may have outlasted the store

        def search():
            with self.index.lock:
                t0 = time.perf_counter()
                hits = self._searchable(gallery).search(p.vector, top_k)
                return hits, time.perf_counter() - t0
        hits, seconds = await asyncio.to_thread(search)
        self.service.metrics.gallery_search.observe(seconds)
        return hits, p, seconds

    async def nearest(self, gallery: str, subject: str, image: bytes, detect: bool = True
                      ) -> tuple[Hit, Probe]:
        self.require_fresh()
        self._subject_or_404(gallery, subject)
        p = await self.probe(image, detect)
        self.require_fresh()
        with self.index.lock:
            hit = self._searchable(gallery).nearest_of(subject, p.vector)
        if hit is None:  # deleted meanwhile, or only other models' faces
            self._subject_or_404(gallery, subject)
            raise ServiceError("model_mismatch", f"subject {subject!r} has no face embedded "
                               "by the loaded weights; run `python -m app.gallery reembed`")
        return hit, p

    def faces_in(self, gallery: str) -> int:
        """The gallery's searchable faces (404 and 409 as identify answers them)."""
        self.require_fresh()
        with self.index.lock:
            return len(self._searchable(gallery))

    def _subject_or_404(self, gallery: str, subject: str) -> None:
        g = self.index.gallery(gallery)
        if g is None:
            raise ServiceError("not_found", f"no gallery {gallery!r}")
        if not g.has_subject(subject):
            raise ServiceError("not_found", f"no subject {subject!r} in gallery {gallery!r}")

    async def subjects(self, gallery: str, limit: int, cursor: str | None
                       ) -> tuple[list[tuple[str, int]], str | None]:
        rows = await self._store(self.store.subjects, gallery, limit + 1, cursor)
        if not rows and cursor is None:
            raise ServiceError("not_found", f"no gallery {gallery!r}")
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1][0] if more else None)

    async def delete_subject(self, gallery: str, subject: str) -> None:
        if not await self._write(self.store.delete_subject, gallery, subject):
            raise ServiceError("not_found", f"no subject {subject!r} in gallery {gallery!r}")
        self.service.metrics.gallery_writes.labels(op="delete_subject").inc()

    async def delete_face(self, gallery: str, subject: str, face_id: str) -> None:
        if not await self._write(self.store.delete_face, gallery, subject, face_id):
            raise ServiceError("not_found", f"no face {face_id!r} of subject {subject!r} in "
                               f"gallery {gallery!r}")
        self.service.metrics.gallery_writes.labels(op="delete_face").inc()
