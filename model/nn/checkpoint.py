"""Weights files (safetensors, never pickle) and their model cards.

`weights/<name>.safetensors` holds the encoder's tensors and, in its metadata, the
architecture config and the preprocessing spec (model/face/preprocess.py), so the file alone
rebuilds the encoder and says how to align faces for it; weights whose spec this code cannot
reproduce are refused.
`weights/<name>.json` is the model card; its `weights_sha256` must match the file.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from model.face.preprocess import SpecError, spec_from_metadata
from model.nn.siamese import SiameseEncoder


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


def save_weights(encoder: SiameseEncoder, path: str | Path) -> str:
    """Write the encoder's tensors (deterministically: same weights, same bytes); returns the
    file's sha256."""
    from model.formats.safetensors_io import write_safetensors
    state = {k: v.detach().cpu().contiguous().numpy() for k, v in encoder.state_dict().items()}
    meta = {"arch": json.dumps(encoder.arch), "pipeline_version": encoder.spec.version,
            "preprocessing": encoder.spec.to_json(), "format": "faceverify-encoder-v1"}
    return sha256_of(write_safetensors(path, state, meta))


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


def load_encoder(path: str | Path, device: str | torch.device = "cpu",
                 verify_card: bool = True) -> tuple[SiameseEncoder, dict[str, Any] | None]:
    """Rebuild the encoder from a weights file; check the card's sha256 when there is a card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    card = read_card(path) if verify_card else None
    if card is not None and card.get("weights_sha256"):
        actual = sha256_of(path)
        if actual != card["weights_sha256"]:
            raise WeightsError(f"{path}: sha256 {actual[:12]}… does not match the model card's "
                               f"{card['weights_sha256'][:12]}… (corrupt or replaced file)")
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file (corrupt or "
                           f"truncated?): {exc}") from exc
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
    flip_tta = bool(((card or {}).get("inference") or {}).get("flip_tta", False))
    encoder = SiameseEncoder(json.loads(meta["arch"]), flip_tta=flip_tta, spec=spec)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its declared architecture: {exc}") from exc
    return encoder.to(device).eval(), card
