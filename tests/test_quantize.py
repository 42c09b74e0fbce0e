"""The int8 encoder graph (model/convert/quantize.py): made from real weights with real calibration
faces, close to the float32 embeddings, refused when it does not belong to the weights, and
served when it is beside them (FACEVERIFY_INT8)."""
from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch

from model.convert.quantize import main as quantize_main
from model.encoder.weights import Int8GraphError, find_int8, int8_graph_for, sha256_of
from model.nn.checkpoint import load_encoder

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def int8_weights(tiny_weights, small_lfw, tmp_path_factory):
    """The tiny encoder's weights and card in a folder of their own, with their int8 graph
    (calibrated on 24 of the small LFW set's faces)."""
    folder = tmp_path_factory.mktemp("int8")
    weights = folder / tiny_weights.name
    shutil.copy(tiny_weights, weights)
    shutil.copy(tiny_weights.with_suffix(".json"), weights.with_suffix(".json"))
    assert quantize_main(["--weights", str(weights), "--calibration-dir",
                          str(small_lfw / "lfw-deepfunneled"), "--samples", "24"]) == 0
    return weights


def test_the_int8_graph_embeds_like_the_float32_encoder(int8_weights, small_aligned):
    from model.nn.runtime import OnnxEncoder
    encoder, card = load_encoder(int8_weights)
    graph, int8_card = find_int8(int8_weights, card["weights_sha256"])
    assert int8_card["source_weights_sha256"] == card["weights_sha256"]
    assert int8_card["graph_sha256"] == sha256_of(int8_graph_for(int8_weights))
    crops = np.asarray(small_aligned.crops[:40])
    x = encoder.spec.to_tensor(crops)
    with torch.inference_mode():
        fp32 = encoder(x)
    int8 = OnnxEncoder(encoder, graph=graph)(x)
    assert int8.shape == fp32.shape
    assert torch.allclose(int8.norm(dim=1), torch.ones(len(int8)), atol=1e-3)
    moved = (int8 - fp32).norm(dim=1)
    assert float(moved.median()) < 0.1, moved  # a wrong graph would be ~1.4 away


def test_an_int8_graph_of_other_weights_or_altered_is_refused(int8_weights, tmp_path):
    _, card = load_encoder(int8_weights)
    assert find_int8(tmp_path / "none.safetensors", "x") is None
    with pytest.raises(Int8GraphError, match="other weights"):
        find_int8(int8_weights, "0" * 64)
    altered = tmp_path / int8_weights.name
    shutil.copy(int8_weights, altered)
    graph = int8_graph_for(int8_weights)
    shutil.copy(graph.with_suffix(".json"), int8_graph_for(altered).with_suffix(".json"))
    int8_graph_for(altered).write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(Int8GraphError, match="sha256"):
        find_int8(altered, card["weights_sha256"])


def test_the_service_runs_the_int8_graph_beside_its_weights(int8_weights, tmp_path):
    from tests.test_api import serving, settings_for
    int8_card = json.loads(int8_graph_for(int8_weights).with_suffix(".json").read_text())

    async def ready(**kw):
        async with serving(settings_for(int8_weights, gallery_enabled=False, **kw)) as (_, c):
            return (await c.get("/health/ready")).json()

    on = asyncio.run(ready())
    assert on["precision"] == "int8" and on["model"]["sha256"] == int8_card["graph_sha256"]
    assert on["model"]["version"].endswith("+int8")
    off = asyncio.run(ready(int8="off"))
    assert off["precision"] == "fp32" and off["model"]["sha256"] != int8_card["graph_sha256"]


def test_int8_on_without_a_graph_does_not_start(tiny_weights):
    from app.config import Settings
    from app.metrics import Metrics
    from app.service import Service, StartupError
    svc = Service(Settings(weights=tiny_weights, device="cpu", int8="on",
                           gallery_enabled=False), Metrics())
    with pytest.raises(StartupError, match="int8"):
        svc.load()
