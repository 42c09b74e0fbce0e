"""A reader for dlib's serialization format (dlib/serialize.h), enough for its model files.

We read dlib's `.dat` files ourselves (no dlib at run time) to convert dlib's public-domain
models into our own safetensors: the face ResNet (model/nn/dlib_resnet.py) and the 5-point
shape predictor (model/face/dlib_landmarks.py). The primitives, as dlib writes them:

- integers: one control byte (the number of magnitude bytes, | 0x80 when negative), then the
  magnitude, little-endian;
- floating point ("portable" form, float_details.h): an int64 mantissa then an int16
  exponent, each an integer as above; the value is mantissa·2^exponent, except that the
  exponents 32000 / 32001 / 32002 stand for +inf / -inf / NaN;
- strings, std::vector and dlib::matrix: a size (matrices: rows and columns, negated), then
  the items;
- dnn tensors: a version integer (2), four dimensions (num_samples, k, nr, nc), then the raw
  little-endian float32 values.
Every error is a `DlibFormatError` that names the file and the byte offset.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# dlib's float_details: exponents at or above is_inf are not exponents but special values.
_IS_INF, _IS_NINF = 32000, 32001  # and anything above: NaN


class DlibFormatError(ValueError):
    """A dlib model file that is truncated, corrupt, or not the model we expected."""

    def __init__(self, path: str | Path, problem: str, offset: int | None = None):
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}: not a valid dlib model file: {problem}{where}")
        self.path = str(path)
        self.problem = problem
        self.offset = offset




# ----------------------------------------------------------------------------------------
# Writing: every primitive of the format is an integer (a float is two), so a file is one
# stream of integers, encoded here in bulk.


def float_tokens(values: np.ndarray) -> np.ndarray:
    """float32 values as dlib's float_details writes them: (N, 2) int64 (mantissa, exponent),
    mantissa = frexp(v) * 2^24 (float's 24 digits) with whole zero low bytes shifted off."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    frac, exp = np.frexp(np.where(np.isfinite(v), v, 0))  # inf and NaN: set below
    man = (frac.astype(np.float64) * (1 << 24)).astype(np.int64)
    exp = exp.astype(np.int64) - 24
    for _ in range(8):  # dlib: for (i = 0; i < 8 && (mantissa & 0xFF) == 0; ++i)
        zero = (man & 0xFF) == 0
        if not zero.any():
            break
        man = np.where(zero, man >> 8, man)
        exp = np.where(zero, exp + 8, exp)
    exp = np.where(np.isposinf(v), _IS_INF, exp)
    exp = np.where(np.isneginf(v), _IS_NINF, exp)
    exp = np.where(np.isnan(v), _IS_NINF + 1, exp)
    man = np.where(np.isfinite(v), man, 0)
    return np.stack([man, exp], axis=1)


def encode_integers(tokens: np.ndarray) -> bytes:
    """dlib's pack_int for each integer of `tokens`, concatenated: a control byte (the
    magnitude's byte count, at least 1, | 0x80 when negative), then the magnitude's bytes,
    little-endian."""
    t = np.asarray(tokens, dtype=np.int64).reshape(-1)
    mag = np.abs(t).astype("<u8")
    size = np.ones(len(t), dtype=np.uint8)
    for k in range(1, 8):
        size += (mag >= (1 << (8 * k))).astype(np.uint8)
    rows = np.zeros((len(t), 9), dtype=np.uint8)
    rows[:, 0] = size | np.where(t < 0, 0x80, 0).astype(np.uint8)
    rows[:, 1:] = mag.view(np.uint8).reshape(-1, 8)
    keep = np.arange(9)[None, :] <= size[:, None]
    return rows[keep].tobytes()


class FloatSink:
    """Collects dlib portable floats as (mantissa, exponent) and converts them in bulk."""

    __slots__ = ("exponent", "mantissa")

    def __init__(self):
        self.mantissa: list[int] = []
        self.exponent: list[int] = []

    def array(self) -> np.ndarray:
        """float_details -> float: ldexp((float)mantissa, exponent), as dlib computes it."""
        man = np.array(self.mantissa, dtype=np.int64).astype(np.float32)
        exp = np.array(self.exponent, dtype=np.int64)
        special = exp >= _IS_INF
        with np.errstate(over="ignore", under="ignore"):
            out = np.ldexp(man, np.where(special, 0, exp).astype(np.int32))
        out[exp == _IS_INF] = np.inf
        out[exp == _IS_NINF] = -np.inf
        out[exp > _IS_NINF] = np.nan
        return out.astype(np.float32, copy=False)


class DlibReader:
    """Reads dlib's integer and float encodings from an in-memory file, in order.

    Integers (serialize.h pack_int): one control byte, the byte count (low nibble) with 0x80
    set when negative, then the magnitude little-endian. Floats (float_details): an int64
    mantissa then an int16 exponent, each such an integer; the value is mantissa * 2^exponent.
    """

    def __init__(self, data: bytes, path: str | Path):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, problem: str, offset: int | None = None):
        raise DlibFormatError(self.path, problem, self.pos if offset is None else offset)

    def integer(self, what: str, signed: bool = False, max_bytes: int = 8) -> int:
        data, pos = self.data, self.pos
        if pos >= len(data):
            self.fail(f"file ends where {what} should start")
        ctrl = data[pos]
        # dlib masks the reserved bits: 0x70 for both, and the sign bit too for signed types
        # (unsigned ones keep it, so a "negative" unsigned reads as a too-long integer).
        size = ctrl & 0x0F if signed else ctrl & 0x8F
        if size == 0 or size > max_bytes:
            self.fail(f"bad integer control byte 0x{ctrl:02x} for {what}")
        end = pos + 1 + size
        if end > len(data):
            self.fail(f"file ends inside {what}")
        value = int.from_bytes(data[pos + 1:end], "little")
        self.pos = end
        if signed:
            if value >= 1 << (8 * max_bytes - 1):
                self.fail(f"{what} does not fit its {8 * max_bytes}-bit type", pos)
            if ctrl & 0x80:
                value = -value
        return value

    def count(self, what: str, limit: int) -> int:
        """A std::vector or matrix size, refused when it cannot fit in the rest of the file."""
        n = self.integer(what)
        if n > limit:
            self.fail(f"truncated or corrupt: {what} is {n}, more than the {limit} bytes left")
        return n

    def floats(self, n: int, sink: FloatSink, what: str) -> None:
        """Read n consecutive floats into sink (the hot loop: inlined integer decoding)."""
        data, pos, size_limit = self.data, self.pos, len(self.data)
        man_out, exp_out = sink.mantissa, sink.exponent
        for _ in range(n):
            start = pos
            if pos >= size_limit:
                self.pos = pos
                self.fail(f"file ends inside {what}")
            ctrl = data[pos]
            if ctrl & 0x70:
                # dlib's pre-2013 text encoding of floats: not produced by any current model.
                self.pos = pos
                self.fail(f"{what} uses dlib's old text float encoding (unsupported)")
            size = ctrl & 0x0F
            end = pos + 1 + size
            if size == 0 or end > size_limit:
                self.pos = pos
                self.fail(f"bad or truncated mantissa of {what}")
            man = int.from_bytes(data[pos + 1:end], "little")
            if man >> 63:
                self.fail(f"mantissa of {what} does not fit in 64 bits", pos)
            if ctrl & 0x80:
                man = -man
            pos = end
            if pos >= size_limit:
                self.pos = pos
                self.fail(f"file ends inside {what}")
            ctrl = data[pos]
            size = ctrl & 0x0F
            end = pos + 1 + size
            if size == 0 or size > 2 or end > size_limit:
                self.pos = pos
                self.fail(f"bad or truncated exponent of {what}")
            exp = int.from_bytes(data[pos + 1:end], "little")
            if exp >> 15:
                self.fail(f"exponent of {what} does not fit in 16 bits", start)
            if ctrl & 0x80:
                exp = -exp
            pos = end
            man_out.append(man)
            exp_out.append(exp)
        self.pos = pos

    def float_column(self, sink: FloatSink, what: str) -> int:
        """A dlib::matrix<float,0,1>: rows, columns (negated in the current format), values."""
        start = self.pos
        nr = self.integer(f"{what} rows", signed=True)
        nc = self.integer(f"{what} columns", signed=True)
        nr, nc = abs(nr), abs(nc)
        if nc != 1:
            self.fail(f"{what} has {nc} columns, expected a column vector", start)
        left = len(self.data) - self.pos
        if nr > left:
            self.fail(f"truncated or corrupt: {what} has {nr} rows, more than the {left} bytes "
                      "left", start)
        self.floats(nr, sink, what)
        return nr

    # -- what the dnn model files add ----------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "DlibReader":
        path = Path(path)
        try:
            return cls(path.read_bytes(), path)
        except OSError as exc:
            raise DlibFormatError(path, f"cannot read it ({exc.strerror or exc})") from None

    def float(self, what: str = "a float") -> float:
        sink = FloatSink()
        self.floats(1, sink, what)
        exp = sink.exponent[0]
        if exp >= _IS_INF:
            return math.inf if exp == _IS_INF else -math.inf if exp == _IS_NINF else math.nan
        return math.ldexp(float(sink.mantissa[0]), exp)

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            self.fail(f"file ends inside {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self, what: str = "a string") -> str:
        n = self.count(f"the length of {what}", len(self.data) - self.pos)
        return self.take(n, what).decode("latin-1")

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """A dnn tensor: (num_samples, k, nr, nc) float32."""
        start = self.pos
        version = self.integer(f"the version of {what}", signed=True, max_bytes=4)
        if version != 2:
            self.fail(f"{what} has version {version}, expected 2", start)
        dims = tuple(self.integer(f"a dimension of {what}", signed=True) for _ in range(4))
        if any(d < 0 for d in dims):
            self.fail(f"{what} has dimensions {dims}", start)
        count = int(np.prod(dims))
        raw = self.take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def find_all(self, tag: str) -> list[int]:
        """Offsets just past every serialized string `tag` (size prefix included), so that
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
