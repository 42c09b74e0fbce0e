"""Helpers for the service tests: a tiny real encoder, a real uvicorn server in a subprocess,
reference embeddings computed with model/ code, and image builders for bad inputs."""
from __future__ import annotations

import io
import json
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from bench.server import Server
from tests.conftest import ROOT

TINY_ARCH = json.dumps({"arch": "mobilefacenet", "embedding_dim": 32, "width": 0.25,
                        "depth": [1, 1, 1, 1, 1], "final_channels": 64})
DEFAULT_WEIGHTS = ROOT / "weights" / "faceverify-encoder.safetensors"


def train_tiny_encoder(small_lfw: Path, cache_dir: Path, out: Path) -> Path:
    """A short real training run (4 epochs on 120 LFW photos, ~20 s on 2 cores)."""
    from model.train.loop import main
    main(["--data", f"lfw={small_lfw / 'lfw-deepfunneled'}", "--arch", TINY_ARCH,
          "--batch-p", "8", "--batch-k", "4", "--warmup-steps", "5", "--epochs", "4", "--seed", "0",
          "--cache-dir", str(cache_dir), "--run-dir", str(out / "runs"),
          "--output-dir", str(out / "weights"),
          "--eval-pairs", str(small_lfw / "pairsDevTest.txt"), "--no-progress",
          "--device", "cpu", "--name", "tiny"])
    return out / "weights" / "tiny.safetensors"


# ---------------------------------------------------------------------------- the server
def weights_with_spec(src: Path, dst: Path, **changes) -> Path:
    """A copy of `src` whose preprocessing spec has `changes`, with a card that matches it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model.encoder.weights import sha256_of
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    meta["preprocessing"] = json.dumps(json.loads(meta["preprocessing"]) | changes)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    card = json.loads(src.with_suffix(".json").read_text())
    card["weights_sha256"] = sha256_of(dst)
    dst.with_suffix(".json").write_text(json.dumps(card))
    return dst


def crop_size(weights: Path) -> int:
    """The side of the aligned crops these weights take (their preprocessing spec)."""
    from safetensors import safe_open

    from model.face.preprocess import spec_from_metadata
    with safe_open(str(weights), "pt") as f:
        return spec_from_metadata(f.metadata() or {}).crop_size


@contextmanager
def running_server(weights: Path, log_path: Path, timeout: float = 180, **settings):
    """`uvicorn app.main:app` through the benchmarks' harness (bench/server.py), on the CPU
    with 2 torch threads and `settings`, ready (/health/ready 200), stopped at the end."""
    server = Server(weights, {"torch_threads": 2, **settings}, log_path,
                    env={"OMP_NUM_THREADS": "2"})
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------- offline reference
class Reference:
    """Embeddings of LFW photos computed with model/ code only, the way the offline
    evaluator computes them: decode_image → FacePipeline.align → encoder.prepare → encoder.

    A pair's two photos are aligned in one MTCNN call and encoded in one batch, as the
    service does; batching changes the float rounding of MTCNN's landmarks (by ~0.01 px),
    not the result, so boxes are compared with a small tolerance."""

    def __init__(self, weights: Path, pipeline):
        import torch

        from model.face.pipeline import FacePipeline
        from model.nn.checkpoint import load_encoder
        self.encoder, self.card = load_encoder(weights, device="cpu")
        if pipeline.spec != self.encoder.spec:  # these weights align faces their own way
            pipeline = FacePipeline(device="cpu", spec=self.encoder.spec)
        self.pipeline = pipeline
        self.cache: dict[tuple, tuple | None] = {}
        self.torch = torch

    def _embed(self, paths: tuple[Path, ...]):
        from model.face.imageio import decode_image
        from model.face.pipeline import NoFaceError
        if paths not in self.cache:
            try:
                faces = self.pipeline.align([decode_image(p) for p in paths], fallback="raise")
            except NoFaceError:
                self.cache[paths] = None
            else:
                crops = np.stack([f.crop for f in faces])
                with self.torch.inference_mode():
                    emb = self.encoder(self.encoder.prepare(crops)).double()
                self.cache[paths] = (emb, faces)
        return self.cache[paths]

    def face(self, path: Path):
        """(embedding, AlignedFace) of one photo, or None when MTCNN finds no face."""
        out = self._embed((path,))
        return None if out is None else (out[0][0], out[1][0])

    def pair(self, a: Path, b: Path):
        """(distance, [face_a, face_b]) or None when a photo has no face."""
        out = self._embed((a, b))
        if out is None:
            return None
        emb, faces = out
        from model.nn.siamese import pair_distance
        return float(pair_distance(emb[:1], emb[1:])[0]), faces

    def distance(self, a: Path, b: Path) -> float | None:
        out = self.pair(a, b)
        return None if out is None else out[0]


def devtest_pairs(lfw_root: Path, same: int, different: int):
    """The first `same` same-person and `different` different-person pairs of pairsDevTest."""
    from model.evaluate.lfw import read_pairs
    pairs = read_pairs(lfw_root.parent / "pairsDevTest.txt")
    chosen = [p for p in pairs if p.same][:same] + [p for p in pairs if not p.same][:different]
    return [(lfw_root / p.left, lfw_root / p.right, p.same) for p in chosen]


# ------------------------------------------------------------------------- image bytes
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 250, h: int = 250) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)
    arr = np.stack([np.tile(x, (h, 1)), np.tile(x[::-1], (h, 1)), np.full((h, w), 90, np.uint8)],
                   -1)
    return Image.fromarray(arr)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width x height pixels, with a tiny compressed payload
    (a real bomb's pixels would decompress to width*height bytes)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # the first rows only
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sixteen_bit_png(photo: Path) -> bytes:
    grey = np.asarray(Image.open(photo).convert("L")).astype(np.uint16) * 257
    img = Image.fromarray(grey)
    assert img.mode.startswith("I;16")
    return encode(img, "PNG")


def cmyk_jpeg(photo: Path) -> bytes:
    img = Image.open(photo).convert("CMYK")
    return encode(img, "JPEG", quality=95)


def animated_gif(photo: Path) -> bytes:
    face = Image.open(photo).convert("RGB")
    frames = [face, gradient(*face.size), Image.new("RGB", face.size, (0, 0, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)


def exif_rotated_jpeg(photo: Path) -> bytes:
    """The photo stored rotated 90 degrees, with EXIF orientation 6 ("rotate 90 CW to view"):
    upright only if the orientation is applied."""
    img = Image.open(photo).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def two_faces(left: Path, right: Path) -> bytes:
    a = Image.open(left).convert("RGB")
    b = Image.open(right).convert("RGB").resize((160, 160))
    canvas = Image.new("RGB", (a.width + b.width + 20, a.height), (200, 200, 200))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + 20, 45))
    return encode(canvas, "JPEG", quality=95)
