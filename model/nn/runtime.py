"""Where the encoder's forward pass runs: torch (eager) or ONNX Runtime on the CPU.

The torch module stays the one definition of the network: the ONNX graph is exported from
it (`torch.onnx.export`) when the service starts, and used only after its embeddings agree
with torch's within `tolerance` on a fixed random batch. On CUDA the runtime is always torch.
Measured choice (docs/benchmarks.md, `python -m bench.encoder_speed --runtimes`): on one CPU
core ONNX Runtime runs dlib's ResNet several times faster than torch eager at batch 1, and
without torch.compile's minute-long warm-up.
"""
from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable

import torch

from model.encoder.onnx_session import GraphEncoder
from model.nn.siamese import SiameseEncoder

log = logging.getLogger("faceverify.runtime")
RUNTIMES = ("auto", "torch", "onnxruntime")


class RuntimeUnavailable(RuntimeError):
    """The requested runtime cannot run this encoder here (not installed, or it disagrees)."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(encoder: SiameseEncoder) -> bytes:
    """The encoder as an ONNX graph: normalised (N, 3, S, S) float32 `x` in, (N, D) unit
    `embedding` out, N free."""
    size = encoder.spec.crop_size
    was_training = encoder.training
    encoder.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.zeros(2, 3, size, size),), buf,
                          input_names=["x"], output_names=["embedding"],
                          dynamic_axes={"x": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    encoder.train(was_training)
    return buf.getvalue()


class OnnxEncoder:
    """An ONNX Runtime session over the exported encoder, for torch tensors: normalised
    (N, 3, S, S) float32 in, (N, D) unit embeddings out. The sessions are
    model.encoder.onnx_session.GraphEncoder's (a second, one-thread one used while
    `contended()`); this adds the export and the tensor conversion."""

    def __init__(self, encoder: SiameseEncoder, threads: int | None = None,
                 graph: bytes | None = None):
        """graph: an ONNX graph of this encoder to run instead of exporting one (the int8
        graph of model/convert/quantize.py)."""
        if not onnxruntime_available():
            raise RuntimeUnavailable("onnxruntime is not installed")
        if graph is None:
            graph = export_onnx(encoder)
        self.ort = GraphEncoder(graph, threads or torch.get_num_threads())
        self.graph = graph  # for the face workers, which run it too (app/faces.py)

    @property
    def contended(self) -> Callable[[], bool] | None:
        return self.ort.contended

    @contended.setter
    def contended(self, contended: Callable[[], bool] | None) -> None:
        self.ort.contended = contended

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.ort(x.detach().cpu().numpy()))

    def lean(self, x: torch.Tensor) -> torch.Tensor:
        """The one-thread session's embeddings (for the parity check)."""
        return torch.from_numpy(self.ort.lean(x.detach().cpu().numpy()))


def max_embedding_error(a: Callable[[torch.Tensor], torch.Tensor],
                        b: Callable[[torch.Tensor], torch.Tensor], size: int,
                        batch: int = 8, seed: int = 0) -> float:
    """Largest L2 distance between two runtimes' embeddings of the same random crops."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    with torch.inference_mode():
        return float((a(x).float() - b(x).float()).norm(dim=1).max())


def choose_runtime(encoder: SiameseEncoder, device: torch.device, requested: str = "auto",
                   tolerance: float = 1e-4
                   ) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(name, forward function on normalised input) for the encoder on `device`.

    auto: ONNX Runtime on the CPU when it is installed and agrees with torch, else torch.
    onnxruntime: the same, but a failure is an error (RuntimeUnavailable).
    (The int8 graph runs without torch: app/inference.py's OnnxRunner.)"""
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; choose from {RUNTIMES}")
    if requested == "torch" or device.type != "cpu":
        if requested == "onnxruntime":
            raise RuntimeUnavailable(f"onnxruntime runs on the CPU only here, not {device}")
        return "torch", encoder
    try:
        ort_encoder = OnnxEncoder(encoder)
        err = max(max_embedding_error(encoder, ort_encoder, encoder.spec.crop_size),
                  max_embedding_error(encoder, ort_encoder.lean, encoder.spec.crop_size))
        if not err <= tolerance:
            raise RuntimeUnavailable(f"ONNX Runtime's embeddings differ from torch's by {err:.2e}"
                                     f" (tolerance {tolerance:g})")
    except Exception as exc:  # export or session failures of any kind: fall back on auto
        if requested == "onnxruntime":
            raise RuntimeUnavailable(f"cannot run the encoder in ONNX Runtime: {exc}") from exc
        log.warning("ONNX Runtime unavailable for this encoder; using torch",
                    extra={"reason": f"{type(exc).__name__}: {exc}"})
        return "torch", encoder
    log.info("encoder runs in ONNX Runtime", extra={"max_embedding_error": err})
    return "onnxruntime", ort_encoder
