"""Where the shipped weights are: the checkout's `weights/` when running from a checkout (or an
editable install), else the copy a built wheel installs as the `model.weights` package data
(pyproject.toml maps the top-level `weights/` folder there)."""
from __future__ import annotations

from pathlib import Path

_MODEL = Path(__file__).resolve().parent
WEIGHTS_DIR = _MODEL / "weights" if (_MODEL / "weights").is_dir() else _MODEL.parent / "weights"
