"""The encoder runners the batcher calls: the torch runner gives the model/ code's numbers (CUDA
path when present); the torch-free int8 runner gives the int8 graph's, numpy in and out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.torch_runner import TorchRunner
from model.nn.checkpoint import load_encoder


def crops(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 112, 112, 3), dtype=torch.uint8, generator=g)


def test_cpu_runner_is_the_offline_encoder(tiny_weights):
    encoder, _ = load_encoder(tiny_weights, "cpu")
    runner = TorchRunner(encoder, torch.device("cpu"), precision="auto", runtime="torch")
    runner.warm_up([1, 2, 4])
    assert runner.precision == "fp32"  # never fp16 on the CPU
    x = crops(5)
    out = torch.from_numpy(runner(x.numpy()))
    with torch.inference_mode():
        ref = encoder(encoder.prepare(x))
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("precision", ["fp32", "auto", "fp16"])
def test_cuda_runner_matches_the_cpu_within_tolerance(tiny_weights, precision):
    cpu_encoder, _ = load_encoder(tiny_weights, "cpu")
    gpu_encoder, _ = load_encoder(tiny_weights, "cuda")
    runner = TorchRunner(gpu_encoder, torch.device("cuda"), precision=precision,
                           fp16_tolerance=1e-2)
    runner.warm_up([1, 2, 8])
    if precision == "fp32":
        assert runner.precision == "fp32"
    if precision == "fp16":
        assert runner.precision == "fp16"
    x = crops(8, seed=1)
    out = torch.from_numpy(runner(x.numpy()))
    with torch.inference_mode():
        ref = cpu_encoder(cpu_encoder.prepare(x))
    assert out.dtype == torch.float32
    tol = 1e-4 if runner.precision == "fp32" else 1e-2
    assert (out - ref).norm(dim=1).max() < tol


# ------------------------------------------------------------------ the CPU runtime
def test_onnxruntime_gives_the_torch_embeddings_within_1e_4():
    pytest.importorskip("onnxruntime")
    from model.nn.runtime import OnnxEncoder, max_embedding_error
    from tests.conftest import ROOT
    encoder, _ = load_encoder(ROOT / "weights" / "faceverify-encoder.safetensors", "cpu")
    assert max_embedding_error(encoder, OnnxEncoder(encoder), 150, batch=5) < 1e-4
    runner = TorchRunner(encoder, torch.device("cpu"), runtime="onnxruntime")
    assert runner.runtime == "onnxruntime"
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 150, 150, 3), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        ref = encoder(encoder.prepare(x))
    assert (torch.from_numpy(runner(x.numpy())) - ref).norm(dim=1).max() < 1e-4


def test_a_contended_encoder_runs_on_one_thread_with_the_same_embeddings(tiny_weights):
    """With two threads the ONNX Runtime encoder keeps a one-thread session; while the
    service says its cores are wanted (requests in the face stage) a batch runs there, and
    the embeddings are the same either way."""
    pytest.importorskip("onnxruntime")
    from model.nn.runtime import OnnxEncoder
    encoder, _ = load_encoder(tiny_weights, "cpu")
    ort_encoder = OnnxEncoder(encoder, threads=2)
    assert ort_encoder.ort.lean_session is not ort_encoder.ort.session
    runner = TorchRunner(encoder, torch.device("cpu"), runtime="onnxruntime")
    busy = [False]
    runner.share_cores_with(lambda: busy[0])
    used = []
    for name in ("session", "lean_session"):
        real = getattr(runner._cpu_forward.ort, name)

        class Recording:  # the real session, noting that it ran
            def __init__(self, inner, name=name):
                self.inner, self.name = inner, name

            def run(self, *args):
                used.append(self.name)
                return self.inner.run(*args)
        setattr(runner._cpu_forward.ort, name, Recording(real))
    x = torch.randint(0, 256, (4, *runner.crop_shape), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(5)).numpy()
    alone = runner(x)
    busy[0] = True
    shared = runner(x)
    assert used == ["session", "lean_session"]  # (one and the same session on one core)
    assert np.linalg.norm(alone - shared, axis=1).max() < 1e-5


def test_runtime_torch_is_honoured_and_auto_falls_back_without_onnxruntime(tiny_weights,
                                                                          monkeypatch):
    import sys
    encoder, _ = load_encoder(tiny_weights, "cpu")
    assert TorchRunner(encoder, torch.device("cpu"), runtime="torch").runtime == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert TorchRunner(encoder, torch.device("cpu"), runtime="auto").runtime == "torch"
    from model.nn.runtime import RuntimeUnavailable
    with pytest.raises(RuntimeUnavailable, match="onnxruntime"):
        TorchRunner(encoder, torch.device("cpu"), runtime="onnxruntime")


# ------------------------------------------------------------------ the torch-free runner
def test_the_int8_runner_is_the_int8_graph_without_torch():
    """What the CPU service runs by default: the int8 graph beside the default weights, fed
    uint8 crops in numpy, normalised by the spec's numpy code; the same embeddings as the
    graph run by the torch side, and unit vectors."""
    from app.inference import OnnxRunner
    from model.encoder.weights import find_int8, read_card, read_metadata, spec_of
    from model.nn.runtime import OnnxEncoder
    from tests.conftest import ROOT
    weights = ROOT / "weights" / "faceverify-encoder.safetensors"
    card = read_card(weights)
    graph, _ = find_int8(weights, card["weights_sha256"])
    spec = spec_of(weights, read_metadata(weights), card)
    runner = OnnxRunner(graph, spec, threads=2)
    assert (runner.runtime, runner.precision, runner.embedding_dim) == (
        "onnxruntime-int8", "int8", 128)
    x = np.random.default_rng(7).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    out = runner(x)
    assert out.dtype == np.float32 and out.shape == (3, 128)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)
    encoder, _ = load_encoder(weights, "cpu")
    with torch.inference_mode():
        ref = OnnxEncoder(encoder, graph=graph)(encoder.prepare(torch.from_numpy(x)))
    assert np.abs(out - ref.numpy()).max() < 1e-5
