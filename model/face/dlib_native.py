"""dlib's own compiled shape predictor and face chip, where the dlib package is installed.

model/face/dlib_landmarks.py and model/face/dlib_chip.py are numpy ports of dlib's 5-point shape
predictor and `get_face_chip`, equal to dlib's output point for point and pixel for pixel.
dlib's compiled code gives those same numbers in less time (one LFW photo on one core, both
steps: 3.24 → 1.54 ms, `python -m bench.face_stage`), so the face
pipeline uses it when `dlib` imports (the `dlib-bin` wheel, Boost Software License, a core
dependency where a wheel exists) and the ports otherwise. tests/test_dlib_native.py checks
that both give the same points and the same crops on real photos.

dlib loads a shape predictor only from its own serialisation: the model (from our
safetensors) is written back into dlib's format by `write_dat`, byte for byte the original
.dat, and handed to dlib in memory (the pickle state of `dlib.shape_predictor`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.face.dlib_landmarks import ShapePredictorModel, write_dat


def dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


class NativeDlib:
    """`landmarks_and_chip(pixels, box, size, padding)`: what `ShapePredictor.predict` then
    `dlib_chip.extract_chip` give, computed by dlib. ImportError without dlib."""

    def __init__(self, model: ShapePredictorModel):
        import dlib
        self._dlib = dlib
        predictor = dlib.shape_predictor.__new__(dlib.shape_predictor)
        predictor.__setstate__((write_dat(model),))
        self._predictor = predictor

    def landmarks_and_chip(self, pixels: np.ndarray, box: Sequence[int], size: int,
                           padding: float) -> tuple[np.ndarray, np.ndarray]:
        """pixels: (H, W, 3) uint8 RGB; box: (left, top, right, bottom), inclusive integers.
        Returns the (P, 2) float64 points (x, y) and the (size, size, 3) uint8 chip."""
        dlib = self._dlib
        pixels = np.ascontiguousarray(pixels)
        found = self._predictor(pixels, dlib.rectangle(*(int(v) for v in box)))
        points = np.array([(p.x, p.y) for p in found.parts()], dtype=np.float64)
        return points, dlib.get_face_chip(pixels, found, size, padding)
