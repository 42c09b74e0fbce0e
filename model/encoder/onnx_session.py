"""ONNX Runtime sessions for the encoder's graph on the CPU, without torch.

Two users: `model.nn.runtime.OnnxEncoder` (the server process's encoder, behind the batcher) and
the service's face workers (app/faces.py), which encode the face they have just aligned so
that neither a crop nor a forward pass crosses into the server process. A worker imports no
torch (~270 MB less a process), so the normalisation here is the spec's numpy one
(`PreprocessSpec.to_array`, the same float32 arithmetic as `to_tensor`).
"""
from __future__ import annotations

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


class CropEncoder:
    """The encoder's graph as a function of uint8 crops: (N, S, S, 3) uint8 RGB → (N, D)
    float32 unit embeddings (the graph holds the flip-TTA sum and the L2 normalisation)."""

    def __init__(self, graph: bytes, spec: PreprocessSpec, threads: int = 1):
        self.spec = spec
        self.session = cpu_session(graph, threads)
        self._input = self.session.get_inputs()[0].name

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: self.spec.to_array(crops)})[0]
