"""The Siamese encoder and its weights files."""
from __future__ import annotations

import json

import pytest
import torch

from model.encoder.weights import WeightsError, write_card
from model.nn.backbones import ARCHITECTURES
from model.nn.checkpoint import load_encoder, save_weights
from model.nn.siamese import DEFAULT_ARCH, SiameseEncoder

SMALL = {"arch": "mobilefacenet", "embedding_dim": 64, "width": 0.25, "depth": [1, 1, 1, 1, 1],
         "final_channels": 128}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_gives_unit_embeddings(arch):
    config = SMALL if arch == "mobilefacenet" else {"arch": arch, "embedding_dim": 64}
    enc = SiameseEncoder(config).eval()
    with torch.no_grad():
        out = enc(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_default_is_128_dimensional():
    enc = SiameseEncoder().eval()
    assert DEFAULT_ARCH["embedding_dim"] == 128
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 112, 112)).shape == (2, 128)


def test_both_branches_share_weights():
    enc = SiameseEncoder(SMALL).eval()
    a, b = torch.randn(2, 3, 112, 112), torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        d = enc.forward_pair(a, b)
        d_swapped = enc.forward_pair(b, a)
        d_self = enc.forward_pair(a, a)
    assert torch.allclose(d, d_swapped, atol=1e-5)
    assert torch.allclose(d_self, torch.zeros(2), atol=1e-3)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    enc = SiameseEncoder(SMALL).eval()
    path = tmp_path / "enc.safetensors"
    sha = save_weights(enc, path)
    write_card(path, {"name": "enc", "weights_sha256": sha, "threshold": {"value": 1.0}})
    return enc, path


def test_round_trip_restores_identical_outputs(saved):
    enc, path = saved
    loaded, card = load_encoder(path)
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(enc(x), loaded(x))
    assert card["name"] == "enc"
    assert path.with_suffix(".md").read_text().startswith("# Model card: enc")


def test_truncated_weights_raise_a_clear_error(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_encoder(bad)


def test_garbage_weights_raise_a_clear_error(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError):
        load_encoder(bad)


def test_weights_not_matching_their_card_are_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside a tensor: still parses, but it is not our file
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="does not match the model card"):
        load_encoder(path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_encoder(tmp_path / "nope.safetensors")


def test_card_json_is_valid(saved):
    _, path = saved
    assert json.loads(path.with_suffix(".json").read_text())["weights_sha256"]


def test_flip_tta_makes_embeddings_mirror_invariant_and_comes_from_the_card(saved):
    _, path = saved
    card = json.loads(path.with_suffix(".json").read_text())
    plain, _ = load_encoder(path)
    assert plain.flip_tta is False
    card["inference"] = {"flip_tta": True}
    write_card(path, card)
    tta, _ = load_encoder(path)
    assert tta.flip_tta is True
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(tta(x), tta(x.flip(3)), atol=1e-5)
        assert not torch.allclose(plain(x), plain(x.flip(3)), atol=1e-3)
        expected = torch.nn.functional.normalize(plain.backbone(x) + plain.backbone(x.flip(3)))
        assert torch.allclose(tta(x), expected, atol=1e-5)
