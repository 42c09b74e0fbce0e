"""The encoder's files without torch: the weights' model card, checksum and header, and the
int8 graph beside them.

`weights/<name>.safetensors` holds the encoder's tensors and, in its metadata, the
architecture config and the preprocessing spec (model/face/preprocess.py); `<name>.json` is
the model card, whose `weights_sha256` must match the file; `<name>.int8.onnx` is the int8
graph (python -m model.convert.quantize) with its own card `<name>.int8.json`. The CPU
service runs that graph and reads everything else here, so it needs no torch; the torch
network is rebuilt from the same file by model/nn/checkpoint.py.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

from model.face.preprocess import PreprocessSpec, SpecError, spec_from_metadata


class WeightsError(RuntimeError):
    """The weights file is missing, corrupt, truncated or does not match its model card."""


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def json_safe(value: Any) -> Any:
    """Strict JSON: non-finite floats (an uncalibrated -inf threshold, say) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_card(path: str | Path, card: dict[str, Any]) -> None:
    """Write the model card JSON and its Markdown rendering beside the weights."""
    from model.encoder.modelcard import render_markdown
    path = card_path(path)
    card = json_safe(card)
    path.write_text(json.dumps(card, indent=2, sort_keys=False, allow_nan=False) + "\n")
    path.with_suffix(".md").write_text(render_markdown(card))


def read_card(weights_path: str | Path) -> dict[str, Any] | None:
    p = card_path(weights_path)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"model card {p} is not valid JSON: {exc}") from exc


def read_metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` (the architecture, the preprocessing spec), read
    from its header alone: 8 bytes of little-endian length, then that much JSON."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if not 2 <= n <= 100 << 20:
                raise ValueError(f"a header of {n} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
    except (OSError, ValueError, TypeError, struct.error) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file (corrupt or "
                           f"truncated?): {exc}") from exc
    return {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}


def verified_card(path: str | Path, verify_card: bool = True) -> dict[str, Any] | None:
    """The weights' model card, once the file is found to have the sha256 the card records
    (None: no card, or verify_card=False). WeightsError when the file is missing or differs."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    card = read_card(path) if verify_card else None
    if card is not None and card.get("weights_sha256"):
        actual = sha256_of(path)
        if actual != card["weights_sha256"]:
            raise WeightsError(f"{path}: sha256 {actual[:12]}… does not match the model card's "
                               f"{card['weights_sha256'][:12]}… (corrupt or replaced file)")
    return card


def spec_of(path: str | Path, meta: dict[str, str], card: dict[str, Any] | None
            ) -> PreprocessSpec:
    """The preprocessing spec in the weights' metadata, checked against the card's."""
    if "arch" not in meta:
        raise WeightsError(f"{path} has no architecture metadata; not a faceverify encoder")
    try:
        spec = spec_from_metadata(meta)
    except SpecError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    card_spec = (card or {}).get("preprocessing") or {}
    if card_spec.get("version") not in (None, spec.version):
        raise WeightsError(f"{path}: the model card's preprocessing {card_spec.get('version')!r}"
                           f" is not the weights' {spec.version!r}")
    return spec


# -- the int8 graph beside the weights -------------------------------------------------------
def card_of(graph: Path) -> Path:
    """`x.int8.onnx` → `x.int8.json`."""
    return graph.with_suffix(".json")


def int8_graph_for(weights: Path) -> Path:
    """Where the int8 graph of these weights lives: `x.safetensors` → `x.int8.onnx`."""
    return weights.with_suffix(".int8.onnx")


class Int8GraphError(ValueError):
    """An int8 graph beside the weights that does not belong to them (or is corrupt)."""


def find_int8(weights: Path, weights_sha256: str) -> tuple[bytes, dict] | None:
    """The int8 graph beside `weights` and its card, checked: the card names these weights
    (by sha256) and the graph has the sha256 the card records. None when there is none."""
    graph = int8_graph_for(Path(weights))
    if not graph.is_file():
        return None
    card_file = card_of(graph)
    if not card_file.is_file():
        raise Int8GraphError(f"{graph} has no card {card_file.name}")
    card = json.loads(card_file.read_text())
    if card.get("source_weights_sha256") != weights_sha256:
        raise Int8GraphError(f"{graph} was quantised from other weights "
                             f"({str(card.get('source_weights_sha256'))[:12]}…)")
    data = graph.read_bytes()
    if hashlib.sha256(data).hexdigest() != card.get("graph_sha256"):
        raise Int8GraphError(f"{graph} does not have the sha256 its card records")
    return data, card
