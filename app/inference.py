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

import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------ opening the encoder
class EncoderError(RuntimeError):
    """The encoder cannot run as asked (weights missing or altered, no runtime for them)."""


def torch_installed() -> bool:
    """Is torch installed (the `gpu` or `train` extra)? Asked without importing it."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or half-imported torch
        return False


def nvidia_driver_loaded() -> bool:
    """Is an NVIDIA driver loaded (so CUDA may be there)? Asked without importing torch."""
    return Path("/proc/driver/nvidia/version").exists()


def serving_device(wanted: str) -> str:
    """The device a `device` setting means, found without importing torch where possible:
    `auto` is the CPU when torch is not installed or no NVIDIA driver is loaded; CUDA devices
    need torch (the `gpu` extra) and must be visible."""
    if wanted == "auto":
        if not torch_installed() or not nvidia_driver_loaded():
            return "cpu"
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        raise EncoderError(f"device {wanted!r} needs torch: pip install 'faceverify[gpu]'"
                           ) from None
    device = torch.device(wanted)
    if not torch.cuda.is_available():
        raise EncoderError(f"device {wanted!r} requested but CUDA is not available")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise EncoderError(f"device {wanted!r} requested but only "
                           f"{torch.cuda.device_count()} GPU(s) are visible")
    return str(device)


@dataclass
class OpenedEncoder:
    runner: OnnxRunner | Any  # or app.torch_runner.TorchRunner
    card: dict[str, Any]  # the weights' card; with the int8 graph's thresholds when it runs
    spec: PreprocessSpec
    # what made the embeddings (gallery vectors are tagged with its sha256): the int8
    # graph's identity when it runs, else the weights'
    model_ref: dict[str, str]


def open_encoder(weights: Path, device: str = "cpu", *, int8: str = "auto",
                 runtime: str = "auto", precision: str = "auto", fp16_tolerance: float = 1e-3,
                 threads: int = 0) -> OpenedEncoder:
    """The encoder as the service runs it, for the service, the Python API and the CLI.

    The weights are checked against their model card (sha256) and their preprocessing spec
    read from the file's header. On the CPU the int8 graph beside them runs when `int8`
    allows (auto: when there is one; on: required; off: never) and `runtime` is not torch;
    that path imports no torch. Otherwise the torch module runs (TorchRunner). EncoderError
    says why the encoder cannot run."""
    from model.encoder.weights import WeightsError, read_metadata, spec_of, verified_card
    weights = Path(weights)
    try:
        card = verified_card(weights)
        spec = spec_of(weights, read_metadata(weights), card)
    except WeightsError as exc:
        raise EncoderError(f"cannot load the weights: {exc}") from None
    if card is None or not card.get("weights_sha256"):
        raise EncoderError(f"model card {weights.with_suffix('.json')} is missing or has "
                           "no weights_sha256; the service only serves weights it can verify")
    found = _int8_graph(weights, card, device, int8, runtime)
    if found is not None:  # the graph's own card: thresholds calibrated on its embeddings
        graph_card = found[1]
        card = {**card, "int8": graph_card, "threshold": graph_card.get("threshold")
                or card.get("threshold"), "impostors": graph_card.get("impostors")}
    made_by = found[1] if found is not None else card
    model_ref = {"name": str(card.get("name", weights.stem)),
                 "version": str(made_by.get("version", "")),
                 "sha256": str(made_by.get("graph_sha256") or card["weights_sha256"])}
    try:
        runner = (OnnxRunner(found[0], spec, threads or cpu_threads()) if found is not None
                  else _torch_runner(weights, device, runtime, precision, fp16_tolerance,
                                     threads))
    except EncoderError:
        raise
    except RuntimeError as exc:  # runtime=onnxruntime that cannot run here
        raise EncoderError(f"cannot start the encoder runtime: {exc}") from None
    return OpenedEncoder(runner, card, spec, model_ref)


def _int8_graph(weights: Path, card: dict, device: str, int8: str, runtime: str
                ) -> tuple[bytes, dict] | None:
    """The int8 graph beside the weights and its card, as `int8` says (None: float32)."""
    from model.encoder.weights import find_int8
    if int8 == "off" or device != "cpu" or runtime == "torch":
        if int8 == "on":
            raise EncoderError("int8=on needs the encoder on the CPU in ONNX Runtime")
        return None
    try:
        found = find_int8(weights, card["weights_sha256"])
    except (OSError, ValueError) as exc:
        if int8 == "on":
            raise EncoderError(f"cannot use the int8 graph: {exc}") from None
        log.warning("int8 graph not used: %s; running float32", exc)
        return None
    if found is None and int8 == "on":
        raise EncoderError(f"int8=on but there is no {weights.with_suffix('.int8.onnx')}"
                           " (python -m model.convert.quantize)")
    return found


def _torch_runner(weights: Path, device: str, runtime: str, precision: str,
                  fp16_tolerance: float, threads: int):
    """The torch module behind the batcher (CUDA; or the CPU without the int8 graph)."""
    try:
        import torch

        from app.torch_runner import TorchRunner
        from model.nn.checkpoint import load_encoder
    except ImportError as exc:
        raise EncoderError(
            f"no int8 graph to run without torch ({exc.name} is not installed): install "
            f"'faceverify[gpu]' for the torch encoder, or put the int8 graph "
            f"{weights.with_suffix('.int8.onnx').name} beside the weights "
            "(python -m model.convert.quantize)") from None
    from model.encoder.weights import WeightsError
    if threads:
        torch.set_num_threads(threads)
    try:
        encoder, _ = load_encoder(weights, device=device)
    except WeightsError as exc:
        raise EncoderError(f"cannot load the weights: {exc}") from None
    return TorchRunner(encoder, torch.device(device), precision, fp16_tolerance, runtime)
