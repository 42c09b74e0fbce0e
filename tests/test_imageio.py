"""Decoding: every common format and mode becomes upright 8-bit RGB; bad bytes fail clearly."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.face.imageio import (
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageError,
    decode_image,
)
from tests.service_support import encode, gradient


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats_decode_to_rgb(fmt):
    out = decode_image(encode(gradient(40, 30), fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "1", "I;16"])
def test_any_mode_becomes_rgb(mode):
    src = gradient(40, 30)
    if mode == "I;16":
        src = Image.fromarray((np.asarray(src.convert("L")).astype(np.uint16) * 257))
    else:
        src = src.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = decode_image(encode(src, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_sixteen_bit_png_keeps_its_range():
    arr = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG")))
    assert out.min() <= 2 and out.max() >= 250  # scaled, not clipped to white


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_image(encode(img, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_gif_first_frame_is_used():
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = np.asarray(decode_image(data))[5, 5]
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    img = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (30, 40)


@pytest.mark.parametrize("data", [b"", b"hello, this is text renamed to .jpg",
                                  encode(gradient(40, 30), "JPEG")[:200]])
def test_bad_bytes_raise_invalid_image(data):
    with pytest.raises(InvalidImageError):
        decode_image(data)


def test_unsupported_format_is_refused():
    img = gradient(40, 30)
    with pytest.raises(UnsupportedImageError):
        decode_image(encode(img, "PPM"))


def test_decompression_bomb_refused_before_decoding():
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")  # ~400 MP of zeros, tiny file
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb, max_pixels=50_000_000)


def test_pillows_own_bomb_guard_stays_on_behind_ours():
    """With our limit off (trusted local files) or set above Pillow's, Pillow still refuses
    an image of more than twice Image.MAX_IMAGE_PIXELS, as ImageTooLargeError."""
    from PIL import Image as PILImage
    assert PILImage.MAX_IMAGE_PIXELS is not None
    pillows = 2 * PILImage.MAX_IMAGE_PIXELS
    bomb = encode(Image.new("L", (20000, 20000)), "PNG")  # 400 MP > 2 x 89.5 MP
    for limit, said in ((None, pillows), (10**9, pillows), (40_000_000, 40_000_000)):
        with pytest.raises(ImageTooLargeError,
                           match=f"400000000 pixels, more than the limit of {said}$"):
            decode_image(bomb, max_pixels=limit)
