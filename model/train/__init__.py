"""Offline training (torch): `python -m model.train --config model/train/configs/X.yaml`.
One file per concern, after insightface's arcface_torch: the typed config (config), the
identity-folder datasets and aligned-crop caches (data), the losses (losses), dlib's teacher
vectors for distillation (teacher), spawned worker pools (pool) and the loop itself (loop)."""
