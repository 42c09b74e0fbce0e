"""The encoder's forward pass as the batcher calls it: (N, S, S, 3) uint8 crops in, (N, D)
float32 unit embeddings out, numpy at both ends.

Two runners with one interface (runtime, precision, spec, crop_shape, embedding_dim,
onnx_graph, share_cores_with, warm_up, __call__):
- `OnnxRunner` (here; no torch): the int8 graph beside the weights (model/encoder/weights.py
  `find_int8`, whose card names the weights by sha256) in ONNX Runtime on the CPU. This is
  what the CPU service runs by default, and all a torch-free install can run.
- `TorchRunner` (app/torch_runner.py; imports torch): the torch module, on CUDA, or on the
  CPU as torch eager or a float32 graph exported from it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import numpy as np

from model.encoder.onnx_session import CropEncoder
from model.face.preprocess import PreprocessSpec

log = logging.getLogger("faceverify.inference")


def cpu_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxRunner:
    """The int8 graph on the CPU. With more than one thread a batch runs on one thread while
    `contended()` says requests are in the face stage (model/encoder/onnx_session.py)."""

    runtime = "onnxruntime-int8"
    precision = "int8"

    def __init__(self, graph: bytes, spec: PreprocessSpec, threads: int | None = None):
        self.spec = spec
        self._encoder = CropEncoder(graph, spec, threads or cpu_threads())
        self._lock = threading.Lock()  # one forward pass at a time
        out = self._encoder.session.get_outputs()[0].shape
        self._dim = out[-1] if isinstance(out[-1], int) else None

    @property
    def onnx_graph(self) -> bytes:
        return self._encoder.graph

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return self.spec.crop_size, self.spec.crop_size, 3

    @property
    def embedding_dim(self) -> int:
        if self._dim is None:  # a graph with a symbolic output width: ask it
            self._dim = int(self(np.zeros((1, *self.crop_shape), np.uint8)).shape[1])
        return self._dim

    def share_cores_with(self, contended: Callable[[], bool]) -> None:
        self._encoder.contended = contended

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._encoder(crops)

    def warm_up(self, batch_sizes: list[int]) -> None:
        rng = np.random.default_rng(0)
        for n in batch_sizes:
            self(rng.integers(0, 256, (n, *self.crop_shape), dtype=np.uint8))
