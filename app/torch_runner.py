"""The torch encoder's forward pass as the batcher calls it: uint8 crops in, unit embeddings
out, numpy at both ends (the interface of app/inference.py's `OnnxRunner`). The service uses
it when the encoder runs on CUDA, or on the CPU without the int8 graph (FACEVERIFY_INT8=off,
FACEVERIFY_RUNTIME=torch, weights without a graph); it needs the `gpu` or `train` extra.

Preprocessing is the encoder's own spec (`encoder.prepare`, model/face/preprocess.py), the same
normalisation training and evaluation use; the crop size comes from it too. On the CPU the
forward pass runs in torch or in ONNX Runtime (model/nn/runtime.py, chosen at start-up by the
`runtime` setting, with a parity check). On CUDA the uint8 batch is copied from pinned memory
with a non-blocking copy (4x fewer bytes than float32), normalised on the device, and run in
half precision when the warm-up check shows fp16 embeddings stay within tolerance of fp32.
"""
from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from model.nn.siamese import SiameseEncoder

log = logging.getLogger("faceverify.inference")


class TorchRunner:
    def __init__(self, encoder: SiameseEncoder, device: torch.device, precision: str = "auto",
                 fp16_tolerance: float = 1e-3, runtime: str = "auto"):
        from model.nn.runtime import choose_runtime
        self.encoder = encoder.eval()
        self.device = device
        # The CPU forward pass: torch, or ONNX Runtime over a graph exported from the module.
        self.runtime, self._cpu_forward = choose_runtime(self.encoder, device, runtime)
        self.cuda = device.type == "cuda"
        self.requested_precision = precision
        self.fp16_tolerance = fp16_tolerance
        self.dtype = torch.float32
        self._fp16_model: SiameseEncoder | None = None
        self._lock = threading.Lock()  # one forward pass at a time on this encoder

    def share_cores_with(self, contended) -> None:
        """`contended()`: are the CPU cores wanted by other work right now? The ONNX Runtime
        encoder then runs its batch on one thread (model/nn/runtime.py: OnnxEncoder)."""
        if hasattr(self._cpu_forward, "contended"):
            self._cpu_forward.contended = contended

    @property
    def onnx_graph(self) -> bytes | None:
        """The ONNX graph the CPU forward pass runs (int8 or exported), None under torch."""
        return getattr(self._cpu_forward, "graph", None)

    @property
    def precision(self) -> str:
        return "fp16" if self.dtype == torch.float16 else "fp32"

    @property
    def spec(self):
        return self.encoder.spec

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        size = self.encoder.spec.crop_size
        return size, size, 3

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 → (N, D) float32 unit embeddings."""
        with self._lock, torch.inference_mode():
            return self._forward(torch.from_numpy(np.ascontiguousarray(crops)),
                                 self.dtype).numpy()

    def _forward(self, crops: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.cuda:
            x = crops.pin_memory().to(self.device, non_blocking=True)
            x = self.encoder.prepare(x)
            model = self._fp16_model if dtype == torch.float16 else self.encoder
            emb = model(x.to(dtype))
            emb = torch.nn.functional.normalize(emb.float(), dim=1)
            return emb.cpu()
        return self._cpu_forward(self.encoder.prepare(crops)).float()

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run the encoder at the given batch sizes; choose fp16 on CUDA where it holds."""
        gen = torch.Generator().manual_seed(0)

        def random_crops(n: int) -> torch.Tensor:
            return torch.randint(0, 256, (n, *self.crop_shape), dtype=torch.uint8, generator=gen)

        with self._lock, torch.inference_mode():
            for n in batch_sizes:
                self._forward(random_crops(n), torch.float32)
            if not self.cuda or self.requested_precision == "fp32":
                return
            import copy
            self._fp16_model = copy.deepcopy(self.encoder).half().eval()
            crops = random_crops(max(batch_sizes))
            ref = self._forward(crops, torch.float32)
            half = self._forward(crops, torch.float16)
            err = float((ref - half).norm(dim=1).max())
            if self.requested_precision == "fp16" or err <= self.fp16_tolerance:
                self.dtype = torch.float16
                log.info("encoder runs in fp16", extra={"fp16_max_distance_error": err})
            else:
                self._fp16_model = None
                log.warning("fp16 embeddings drift from fp32; staying in fp32",
                            extra={"fp16_max_distance_error": err,
                                   "tolerance": self.fp16_tolerance})
            for n in batch_sizes:
                self._forward(random_crops(n), self.dtype)
            torch.cuda.synchronize(self.device)
