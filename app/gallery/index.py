"""Exact search over a gallery's faces, in memory: one contiguous float32 matrix per gallery,
one matrix-vector product per query, then the best face of each subject.

Rows are unit embeddings, so the squared Euclidean distance is 2 - 2·cos and the nearest
faces are the largest dot products. Deleting swaps the last row into the hole (O(1), the
matrix stays contiguous) and zeroes the row it vacated, and a deleted subject's name is
dropped (deleted people leave no vector or name in a replica's memory); growing doubles the
capacity. Faces embedded by another model than
the one loaded are only counted (`foreign`): their vectors cannot be compared with this
model's, and the gallery refuses search until they are re-embedded (app/gallery/service.py).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hit:
    subject: str
    face_id: str
    distance: float  # Euclidean between unit vectors, [0, 2]
    similarity: float  # cosine, 1 - distance² / 2


def _hit(subject: str, face_id: str, score: float) -> Hit:
    score = max(-1.0, min(1.0, float(score)))
    return Hit(subject, face_id, float(np.sqrt(max(0.0, 2.0 - 2.0 * score))), score)


class GalleryVectors:
    """One gallery's faces. Not thread-safe by itself: `GalleryIndex` holds its lock.

    Memory is kept to the arrays (a million faces: 512 MB of vectors, 32 MB of ids, 8 MB of
    subject codes, plus the subject names and their digests, ~200 B a subject): no per-face
    Python object. The rare by-id and
    by-subject operations (delete, subject verify) scan the id or code array (~1 ms a
    million rows)."""

    ID_BYTES = 32  # face ids are uuid4 hex

    def __init__(self, dim: int, capacity: int = 64,
                 digest: Callable[[str], str] | None = None):
        self.dim = dim
        self.digest = digest  # subject → the digest that deletions name it by
        self.subject_by_digest: dict[str, str] = {}
        self.n = 0
        self.matrix = np.zeros((capacity, dim), np.float32)
        self.codes = np.zeros(capacity, np.int64)  # subject code of each row
        self.ids = np.zeros(capacity, f"S{self.ID_BYTES}")  # face id of each row
        self.subject_code: dict[str, int] = {}
        self.subject_names: list[str] = []
        self.faces_per_code = np.zeros(64, np.int64)  # this model's faces of each subject
        self.foreign: dict[str, str] = {}  # face id → subject, for other models' faces

    def __len__(self) -> int:
        return self.n

    def _code(self, subject: str) -> int:
        code = self.subject_code.get(subject)
        if code is None:
            code = self.subject_code[subject] = len(self.subject_names)
            self.subject_names.append(subject)
            if self.digest is not None:
                self.subject_by_digest[self.digest(subject)] = subject
            if code == len(self.faces_per_code):
                self.faces_per_code = np.resize(self.faces_per_code, 2 * code)
            self.faces_per_code[code] = 0
        return code

    def _row(self, face_id: str) -> int | None:
        rows = np.flatnonzero(self.ids[:self.n] == face_id.encode())
        return int(rows[0]) if rows.size else None

    def add(self, face_id: str, subject: str, vector: np.ndarray) -> None:
        """A new face (the change log adds each face once; `update` for a known one)."""
        self.foreign.pop(face_id, None)
        if self.n == len(self.matrix):
            self._grow(max(64, 2 * len(self.matrix)))
        code = self._code(subject)
        self.matrix[self.n] = vector
        self.codes[self.n] = code
        self.ids[self.n] = face_id.encode()
        self.faces_per_code[code] += 1
        self.n += 1

    def _grow(self, capacity: int) -> None:
        """More rows, zero-filled beyond the used ones (np.resize would fill them with copies
        of the rows, deleted ones' included); the old matrix is zeroed before it is freed."""
        matrix = np.zeros((capacity, self.dim), np.float32)
        matrix[:self.n] = self.matrix[:self.n]
        self.matrix.fill(0.0)
        self.matrix = matrix
        codes = np.zeros(capacity, np.int64)
        codes[:self.n] = self.codes[:self.n]
        self.codes = codes
        ids = np.zeros(capacity, self.ids.dtype)
        ids[:self.n] = self.ids[:self.n]
        self.ids = ids

    def update(self, face_id: str, subject: str, vector: np.ndarray) -> None:
        """A re-embedded face: its new vector in place (or added, if it was another model's)."""
        row = None if face_id in self.foreign else self._row(face_id)
        if row is None:
            self.add(face_id, subject, vector)
        else:
            self.matrix[row] = vector

    def add_foreign(self, face_id: str, subject: str) -> None:
        self.remove(face_id)
        self.foreign[face_id] = subject
        if self.digest is not None:  # a deletion names it by its digest too
            self.subject_by_digest[self.digest(subject)] = subject

    def _remove_rows(self, rows: np.ndarray) -> None:
        """Delete rows, filling the holes with the last rows (the matrix stays dense)."""
        for row in sorted(rows.tolist(), reverse=True):
            last = self.n - 1
            self.faces_per_code[self.codes[row]] -= 1
            if row != last:
                self.matrix[row] = self.matrix[last]
                self.codes[row] = self.codes[last]
                self.ids[row] = self.ids[last]
            self.matrix[last] = 0.0  # no copy of a deleted vector stays behind
            self.ids[last] = b""
            self.n = last

    def remove(self, face_id: str) -> None:
        subject = self.foreign.pop(face_id, None)
        if subject is None:
            row = self._row(face_id)
            if row is None:
                return
            subject = self.subject_names[self.codes[row]]
            self._remove_rows(np.array([row]))
        self._forget(subject)

    def remove_subject(self, subject: str) -> None:
        code = self.subject_code.get(subject)
        if code is not None:
            self._remove_rows(np.flatnonzero(self.codes[:self.n] == code))
        for face_id in [f for f, s in self.foreign.items() if s == subject]:
            del self.foreign[face_id]
        self._forget(subject)

    def _forget(self, subject: str) -> None:
        """Drop a subject's name once it has no face left (its code is not reused)."""
        code = self.subject_code.get(subject)
        if (code is not None and self.faces_per_code[code]) or \
                subject in self.foreign.values():
            return
        if code is not None:
            del self.subject_code[subject]
            self.subject_names[code] = ""
        if self.digest is not None:
            self.subject_by_digest.pop(self.digest(subject), None)

    def subject_of_digest(self, digest: str) -> str | None:
        return self.subject_by_digest.get(digest)

    def has_subject(self, subject: str) -> bool:
        code = self.subject_code.get(subject)
        return (code is not None and self.faces_per_code[code] > 0) or \
            subject in self.foreign.values()

    def _hit(self, row: int, score: float) -> Hit:
        return _hit(self.subject_names[self.codes[row]], self.ids[row].decode(), score)

    def search(self, query: np.ndarray, top_k: int) -> list[Hit]:
        """The `top_k` subjects nearest the query, each by its nearest face, nearest first."""
        n = self.n
        if n == 0 or top_k <= 0:
            return []
        scores = self.matrix[:n] @ query
        m = min(n, 4 * top_k)
        while True:
            if m < n:
                cand = np.argpartition(scores, n - m)[n - m:]
            else:
                cand = np.arange(n)
            cand = cand[np.argsort(-scores[cand], kind="stable")]
            # the first (best) row of each subject among the candidates
            _, first = np.unique(self.codes[cand], return_index=True)
            if len(first) >= top_k or m == n:
                break
            m = min(n, 4 * m)  # too few distinct subjects among them: look further
        return [self._hit(r, scores[r]) for r in cand[np.sort(first)][:top_k]]

    def nearest_of(self, subject: str, query: np.ndarray) -> Hit | None:
        """The subject's face nearest the query."""
        code = self.subject_code.get(subject)
        if code is None or not self.faces_per_code[code]:
            return None
        rows = np.flatnonzero(self.codes[:self.n] == code)
        scores = self.matrix[rows] @ query
        i = int(np.argmax(scores))
        return self._hit(int(rows[i]), scores[i])


class GalleryIndex:
    """Every gallery's vectors, with the change-log position they reflect (`seq`)."""

    def __init__(self, dim: int, model_sha256: str,
                 digest: Callable[[str, str], str] | None = None):
        self.dim = dim
        self.model_sha256 = model_sha256
        self.digest = digest  # (gallery, subject) → the store's subject digest
        self.galleries: dict[str, GalleryVectors] = {}
        self.seq = 0
        self.lock = threading.RLock()

    def gallery(self, name: str) -> GalleryVectors | None:
        return self.galleries.get(name)

    def put(self, gallery: str, subject: str, face_id: str, model_sha256: str,
            vector: np.ndarray, update: bool = False) -> None:
        """A face from the store: new (`update` False: each face is added once) or
        re-embedded."""
        g = self.galleries.get(gallery)
        if g is None:
            g = self.galleries[gallery] = GalleryVectors(
                self.dim, digest=None if self.digest is None else
                (lambda subject, _g=gallery: self.digest(_g, subject)))
        if model_sha256 == self.model_sha256 and vector.shape == (self.dim,):
            (g.update if update else g.add)(face_id, subject, vector)
        else:
            g.add_foreign(face_id, subject)

    def _drop_if_empty(self, gallery: str) -> None:
        g = self.galleries.get(gallery)
        if g is not None and not g.n and not g.foreign:
            del self.galleries[gallery]

    def remove_face(self, gallery: str, face_id: str) -> None:
        if (g := self.galleries.get(gallery)) is not None:
            g.remove(face_id)
            self._drop_if_empty(gallery)

    def remove_subject(self, gallery: str, subject: str) -> None:
        """By name, or by the digest a deletion's log row carries."""
        if (g := self.galleries.get(gallery)) is not None:
            g.remove_subject(g.subject_of_digest(subject) or subject)
            self._drop_if_empty(gallery)

    @property
    def vectors(self) -> int:
        return sum(g.n for g in self.galleries.values())
