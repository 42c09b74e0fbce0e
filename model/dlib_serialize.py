"""A reader for dlib's serialization format (dlib/serialize.h), enough for its model files.

We read dlib's `.dat` files ourselves (no dlib at run time) to convert dlib's public-domain
models into our own safetensors. The primitives, as dlib writes them:

- integers: one control byte (the number of magnitude bytes, | 0x80 when negative), then the
  magnitude, little-endian;
- floating point ("portable" form): an int64 mantissa then an int16 exponent, each an integer
  as above; the value is mantissa·2^exponent (dlib/float_details.h; the exponent's extreme
  values stand for inf and NaN);
- strings and std::vector: a size (integer), then the items;
- dnn tensors: a version integer (2), four dimensions (num_samples, k, nr, nc), then the raw
  little-endian float32 values.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class DlibFormatError(ValueError):
    """A dlib model file that is missing, truncated, or not what we expected."""


# float_details: exponents that encode non-finite values (dlib/float_details.h).
_EXP_INF = 32000
_EXP_NINF = 32001
_EXP_NAN = 32002


class DlibReader:
    """Sequential reader over the bytes of one dlib file; every error names that file."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = data
        self.name = name
        self.pos = 0

    @classmethod
    def open(cls, path: str | Path) -> "DlibReader":
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except OSError as exc:
            raise DlibFormatError(f"cannot read dlib model file {path}: {exc}") from exc

    # -- primitives ---------------------------------------------------------------------
    def error(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos} (corrupt or truncated "
                               "dlib model file?)")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"needed {n} more bytes, file has {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.error(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool(self) -> bool:
        return bool(self.take(1)[0])

    def string(self) -> str:
        n = self.int()
        return self.take(n).decode("latin-1")

    def tensor(self) -> np.ndarray:
        """A dnn tensor: (num_samples, k, nr, nc) float32."""
        version = self.int()
        if version != 2:
            raise self.error(f"unsupported tensor version {version}")
        dims = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.error(f"bad tensor dimensions {dims}")
        count = int(np.prod(dims))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    # -- navigation ---------------------------------------------------------------------
    def find_all(self, tag: str) -> list[int]:
        """Offsets just past every serialized string `tag` (its size prefix included), so
        layer records can be read by their version tags without walking every field of the
        network objects around them."""
        raw = tag.encode("latin-1")
        needle = bytes([1, len(raw)]) + raw
        out, start = [], 0
        while (i := self.data.find(needle, start)) >= 0:
            out.append(i + len(needle))
            start = i + 1
        return out

    def seek(self, pos: int) -> "DlibReader":
        self.pos = pos
        return self
