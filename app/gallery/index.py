"""Exact search over a gallery's faces, in memory: one contiguous float32 matrix per gallery,
one matrix-vector product per query, then the best face of each subject.

Rows are unit embeddings, so the squared Euclidean distance is 2 - 2·cos and the nearest
faces are the largest dot products. Deleting swaps the last row into the hole (O(1), the
matrix stays contiguous); growing doubles the capacity. Faces embedded by another model than
the one loaded are only counted (`foreign`): their vectors cannot be compared with this
model's, and the gallery refuses search until they are re-embedded (app/gallery/service.py).
"""
from __future__ import annotations

import threading
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
    """One gallery's faces. Not thread-safe by itself: `GalleryIndex` holds its lock."""

    def __init__(self, dim: int, capacity: int = 64):
        self.dim = dim
        self.matrix = np.empty((capacity, dim), np.float32)
        self.codes = np.empty(capacity, np.int64)  # subject code of each row
        self.n = 0
        self.face_ids: list[str] = []  # of each row
        self.row_of: dict[str, int] = {}
        self.subject_code: dict[str, int] = {}
        self.subject_names: list[str] = []
        self.faces_of: dict[str, set[str]] = {}  # subject → its face ids (this model's)
        self.foreign: dict[str, str] = {}  # face id → subject, for other models' faces

    def __len__(self) -> int:
        return self.n

    def _code(self, subject: str) -> int:
        code = self.subject_code.get(subject)
        if code is None:
            code = self.subject_code[subject] = len(self.subject_names)
            self.subject_names.append(subject)
        return code

    def add(self, face_id: str, subject: str, vector: np.ndarray) -> None:
        if face_id in self.row_of:  # an update: a re-embedded face
            self.matrix[self.row_of[face_id]] = vector
            return
        self.foreign.pop(face_id, None)
        if self.n == len(self.matrix):
            grown = max(64, 2 * len(self.matrix))
            self.matrix = np.resize(self.matrix, (grown, self.dim))
            self.codes = np.resize(self.codes, grown)
        row = self.n
        self.matrix[row] = vector
        self.codes[row] = self._code(subject)
        self.face_ids.append(face_id)
        self.row_of[face_id] = row
        self.faces_of.setdefault(subject, set()).add(face_id)
        self.n += 1

    def add_foreign(self, face_id: str, subject: str) -> None:
        self.remove(face_id)
        self.foreign[face_id] = subject

    def remove(self, face_id: str) -> None:
        if self.foreign.pop(face_id, None) is not None:
            return
        row = self.row_of.pop(face_id, None)
        if row is None:
            return
        subject = self.subject_names[self.codes[row]]
        faces = self.faces_of[subject]
        faces.discard(face_id)
        if not faces:
            del self.faces_of[subject]
        last = self.n - 1
        if row != last:  # the last row fills the hole
            moved = self.face_ids[last]
            self.matrix[row] = self.matrix[last]
            self.codes[row] = self.codes[last]
            self.face_ids[row] = moved
            self.row_of[moved] = row
        self.face_ids.pop()
        self.n = last

    def remove_subject(self, subject: str) -> None:
        for face_id in list(self.faces_of.get(subject, ())):
            self.remove(face_id)
        for face_id in [f for f, s in self.foreign.items() if s == subject]:
            del self.foreign[face_id]

    def has_subject(self, subject: str) -> bool:
        return subject in self.faces_of or subject in self.foreign.values()

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
        best = cand[np.sort(first)][:top_k]
        return [_hit(self.subject_names[self.codes[r]], self.face_ids[r], scores[r])
                for r in best]

    def nearest_of(self, subject: str, query: np.ndarray) -> Hit | None:
        """The subject's face nearest the query."""
        rows = np.fromiter((self.row_of[f] for f in self.faces_of.get(subject, ())), np.int64)
        if rows.size == 0:
            return None
        scores = self.matrix[rows] @ query
        i = int(np.argmax(scores))
        return _hit(subject, self.face_ids[rows[i]], scores[i])


class GalleryIndex:
    """Every gallery's vectors, with the change-log position they reflect (`seq`)."""

    def __init__(self, dim: int, model_sha256: str):
        self.dim = dim
        self.model_sha256 = model_sha256
        self.galleries: dict[str, GalleryVectors] = {}
        self.seq = 0
        self.lock = threading.RLock()

    def gallery(self, name: str) -> GalleryVectors | None:
        return self.galleries.get(name)

    def put(self, gallery: str, subject: str, face_id: str, model_sha256: str,
            vector: np.ndarray) -> None:
        g = self.galleries.get(gallery)
        if g is None:
            g = self.galleries[gallery] = GalleryVectors(self.dim)
        if model_sha256 == self.model_sha256 and vector.shape == (self.dim,):
            g.add(face_id, subject, vector)
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
        if (g := self.galleries.get(gallery)) is not None:
            g.remove_subject(subject)
            self._drop_if_empty(gallery)

    @property
    def vectors(self) -> int:
        return sum(g.n for g in self.galleries.values())
