"""The encoder runner the batcher calls: same numbers as model/ code; CUDA path when present."""
from __future__ import annotations

import pytest
import torch

from app.inference import EncoderRunner
from model.nn.checkpoint import load_encoder


def crops(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 112, 112, 3), dtype=torch.uint8, generator=g)


def test_cpu_runner_is_the_offline_encoder(tiny_weights):
    encoder, _ = load_encoder(tiny_weights, "cpu")
    runner = EncoderRunner(encoder, torch.device("cpu"), precision="auto", runtime="torch")
    runner.warm_up([1, 2, 4])
    assert runner.precision == "fp32"  # never fp16 on the CPU
    x = crops(5)
    out = runner(x)
    with torch.inference_mode():
        ref = encoder(encoder.prepare(x))
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("precision", ["fp32", "auto", "fp16"])
def test_cuda_runner_matches_the_cpu_within_tolerance(tiny_weights, precision):
    cpu_encoder, _ = load_encoder(tiny_weights, "cpu")
    gpu_encoder, _ = load_encoder(tiny_weights, "cuda")
    runner = EncoderRunner(gpu_encoder, torch.device("cuda"), precision=precision,
                           fp16_tolerance=1e-2)
    runner.warm_up([1, 2, 8])
    if precision == "fp32":
        assert runner.precision == "fp32"
    if precision == "fp16":
        assert runner.precision == "fp16"
    x = crops(8, seed=1)
    out = runner(x)
    with torch.inference_mode():
        ref = cpu_encoder(cpu_encoder.prepare(x))
    assert out.device.type == "cpu" and out.dtype == torch.float32
    tol = 1e-4 if runner.precision == "fp32" else 1e-2
    assert (out - ref).norm(dim=1).max() < tol


# ------------------------------------------------------------------ the CPU runtime
def test_onnxruntime_gives_the_torch_embeddings_within_1e_4():
    pytest.importorskip("onnxruntime")
    from model.nn.runtime import OnnxEncoder, max_embedding_error
    from tests.conftest import ROOT
    encoder, _ = load_encoder(ROOT / "weights" / "faceverify-encoder.safetensors", "cpu")
    assert max_embedding_error(encoder, OnnxEncoder(encoder), 150, batch=5) < 1e-4
    runner = EncoderRunner(encoder, torch.device("cpu"), runtime="onnxruntime")
    assert runner.runtime == "onnxruntime"
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 150, 150, 3), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        ref = encoder(encoder.prepare(x))
    assert (runner(x) - ref).norm(dim=1).max() < 1e-4


def test_a_contended_encoder_runs_on_one_thread_with_the_same_embeddings(tiny_weights):
    """With two threads the ONNX Runtime encoder keeps a one-thread session; while the
    service says its cores are wanted (requests in the face stage) a batch runs there, and
    the embeddings are the same either way."""
    pytest.importorskip("onnxruntime")
    from model.nn.runtime import OnnxEncoder
    encoder, _ = load_encoder(tiny_weights, "cpu")
    ort_encoder = OnnxEncoder(encoder, threads=2)
    assert ort_encoder.lean_session is not ort_encoder.session
    runner = EncoderRunner(encoder, torch.device("cpu"), runtime="onnxruntime")
    busy = [False]
    runner.share_cores_with(lambda: busy[0])
    used = []
    for name in ("session", "lean_session"):
        real = getattr(runner._cpu_forward, name)

        class Recording:  # the real session, noting that it ran
            def __init__(self, inner, name=name):
                self.inner, self.name = inner, name

            def run(self, *args):
                used.append(self.name)
                return self.inner.run(*args)
        setattr(runner._cpu_forward, name, Recording(real))
    x = torch.randint(0, 256, (4, *runner.crop_shape), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(5))
    alone = runner(x)
    busy[0] = True
    shared = runner(x)
    assert used == ["session", "lean_session"]  # (one and the same session on one core)
    assert (alone - shared).norm(dim=1).max() < 1e-5


def test_runtime_torch_is_honoured_and_auto_falls_back_without_onnxruntime(tiny_weights,
                                                                          monkeypatch):
    import sys
    encoder, _ = load_encoder(tiny_weights, "cpu")
    assert EncoderRunner(encoder, torch.device("cpu"), runtime="torch").runtime == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert EncoderRunner(encoder, torch.device("cpu"), runtime="auto").runtime == "torch"
    from model.nn.runtime import RuntimeUnavailable
    with pytest.raises(RuntimeUnavailable, match="onnxruntime"):
        EncoderRunner(encoder, torch.device("cpu"), runtime="onnxruntime")
