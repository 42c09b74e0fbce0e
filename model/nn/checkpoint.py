"""The torch encoder from and to its weights file (safetensors, never pickle); the card, the
checksum and the header are read by model/encoder/weights.py, which needs no torch.

`weights/<name>.safetensors` holds the encoder's tensors and, in its metadata, the
architecture config and the preprocessing spec (model/face/preprocess.py), so the file alone
rebuilds the encoder and says how to align faces for it; weights whose spec this code cannot
reproduce are refused.
`weights/<name>.json` is the model card; its `weights_sha256` must match the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model.encoder.weights import WeightsError, sha256_of, spec_of, verified_card
from model.nn.siamese import SiameseEncoder


def save_weights(encoder: SiameseEncoder, path: str | Path) -> str:
    """Write the encoder's tensors (deterministically: same weights, same bytes); returns the
    file's sha256."""
    from model.formats.safetensors_io import write_safetensors
    state = {k: v.detach().cpu().contiguous().numpy() for k, v in encoder.state_dict().items()}
    meta = {"arch": json.dumps(encoder.arch), "pipeline_version": encoder.spec.version,
            "preprocessing": encoder.spec.to_json(), "format": "faceverify-encoder-v1"}
    return sha256_of(write_safetensors(path, state, meta))


def load_encoder(path: str | Path, device: str | torch.device = "cpu",
                 verify_card: bool = True) -> tuple[SiameseEncoder, dict[str, Any] | None]:
    """Rebuild the encoder from a weights file; check the card's sha256 when there is a card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    card = verified_card(path, verify_card)
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file (corrupt or "
                           f"truncated?): {exc}") from exc
    spec = spec_of(path, meta, card)
    flip_tta = bool(((card or {}).get("inference") or {}).get("flip_tta", False))
    encoder = SiameseEncoder(json.loads(meta["arch"]), flip_tta=flip_tta, spec=spec)
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit its declared architecture: {exc}") from exc
    return encoder.to(device).eval(), card
