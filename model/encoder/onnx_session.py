"""ONNX Runtime sessions for the encoder's graph on the CPU, without torch.

Three users: the CPU service's encoder behind the batcher (app/inference.py, `CropEncoder`
with a second, one-thread session), the service's face workers (app/faces.py, which encode
the face they have just aligned so that neither a crop nor a forward pass crosses into the
server process), and the torch side's runtime choice (model/nn/runtime.py, which wraps
`GraphEncoder` for torch tensors). None imports torch (~270 MB less a process), so the
normalisation here is the spec's numpy one (`PreprocessSpec.to_array`, the same float32
arithmetic as `to_tensor`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model.face.preprocess import PreprocessSpec


def cpu_session(graph: bytes, threads: int = 1):
    """An `onnxruntime.InferenceSession` over `graph` on the CPU with `threads` intra-op
    threads, one inter-op thread, full graph optimisation and no busy-waiting between runs:
    ORT's pool threads otherwise spin after each batch, taking the cores the face stage needs
    (bench.load, 16 clients on two cores: 35.7 pairs/s with two spinning threads, 56.2 with
    one thread). ImportError when onnxruntime is not installed."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class GraphEncoder:
    """The encoder's graph: normalised (N, 3, S, S) float32 in, (N, D) float32 unit embeddings
    out (the graph holds the flip-TTA sum and the L2 normalisation).

    With more than one thread it keeps a second, one-thread session over the same graph, and
    a batch runs there while `contended()` says the cores are wanted elsewhere (the service:
    while requests are in its face stage). A lone request then gets both cores, and under
    load the encoder stops competing with the detect threads (bench.wrk_load, 16 clients on
    two cores: 53.7 pairs/s with two encoder threads, 59.1 with one; one client: 22.4 ms
    against 26.3 ms p50).
    """

    def __init__(self, graph: bytes, threads: int = 1):
        self.graph = graph  # for the face workers, which run it too (app/faces.py)
        self.threads = max(1, threads)
        self.session = cpu_session(graph, self.threads)
        self.lean_session = cpu_session(graph, 1) if self.threads > 1 else self.session
        self._input = self.session.get_inputs()[0].name
        self.contended: Callable[[], bool] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        lean = self.contended is not None and self.contended()
        return self._run(self.lean_session if lean else self.session, x)

    def lean(self, x: np.ndarray) -> np.ndarray:
        """The one-thread session's embeddings (for parity checks)."""
        return self._run(self.lean_session, x)

    def _run(self, session, x: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(x, dtype=np.float32)
        return session.run(None, {self._input: arr})[0]


class CropEncoder(GraphEncoder):
    """The encoder's graph as a function of uint8 crops: (N, S, S, 3) uint8 RGB → (N, D)
    float32 unit embeddings, normalised as `spec` says."""

    def __init__(self, graph: bytes, spec: PreprocessSpec, threads: int = 1):
        super().__init__(graph, threads)
        self.spec = spec

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return super().__call__(self.spec.to_array(crops))
