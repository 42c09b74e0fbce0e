"""A deterministic safetensors writer: the same tensors and metadata always give the same bytes.

safetensors' own writer orders the metadata differently from run to run, so two conversions
of the same source file would differ in their sha256. Converted weights are checked against
the committed ones by hash (model cards record it), so we write the format ourselves: an
8-byte little-endian header length, the JSON header (tensors widest dtype first, then by name;
metadata as given), padded with spaces to 8 bytes, then the raw little-endian tensor data.
The safetensors library reads these files as usual.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"<f4": "F32", "<i2": "I16", "<i4": "I32", "<i8": "I64", "|u1": "U8"}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> Path:
    """Write `tensors` (numpy arrays of the dtypes above) and string `metadata` to `path`,
    atomically (a temporary file, then a rename)."""
    path = Path(path)
    arrays = {}
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        arrays[name] = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if arrays[name].dtype.str not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} is not one this writer handles")
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset, blobs = 0, []
    # Widest dtypes first, so every tensor starts aligned to its item size.
    for name in sorted(arrays, key=lambda k: (-arrays[k].itemsize, k)):
        a = arrays[name]
        header[name] = {"dtype": _DTYPES[a.dtype.str], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.writelines(blobs)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
