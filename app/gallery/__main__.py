"""The operator's gallery commands, on the store a server would open (FACEVERIFY_* settings).

    python -m app.gallery stats     # faces per model, and how many can be re-embedded
    python -m app.gallery reembed   # re-embed other models' faces with the loaded weights
    python -m app.gallery prune-log [--keep 100000]   # trim the change log's old rows

`reembed` is what a service started with new weights asks for: their identify answers 409
model_mismatch on a gallery that still holds vectors from the old weights. It needs the
aligned crops, which are stored only with FACEVERIFY_GALLERY_STORE_CROPS=true, and only crops
cut by the new encoder's own preprocessing can be reused (same crop size and alignment);
other faces must be re-enrolled from their photos, or dropped with --delete-unembeddable.
Running servers pick the new vectors up from the change log, like any other write. The
vectors are made as the server would make them (the int8 graph beside the weights, under the
same FACEVERIFY_INT8 rule) and tagged with what made them.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import Settings
from app.gallery.store import open_store


def _encoder(weights: Path, device: str, int8: str):
    """The encoder as the service would run it (float32, or the int8 graph beside the
    weights under the same FACEVERIFY_INT8 rule): (embed crops → vectors, the sha256 its
    vectors are tagged with, its preprocessing spec)."""
    from model.checkpoint import load_encoder
    from model.encoder import embed_crops
    from model.quantize import find_int8
    encoder, card = load_encoder(weights, device=device)
    if card is None or not card.get("weights_sha256"):
        raise SystemExit(f"{weights}: no model card with a weights_sha256 beside it")
    found = find_int8(weights, card["weights_sha256"]) \
        if int8 != "off" and device == "cpu" else None
    if found is None:
        if int8 == "on":
            raise SystemExit(f"int8=on but no int8 graph beside {weights}")
        return (lambda crops: embed_crops(encoder, crops).numpy()), card["weights_sha256"], \
            encoder.spec
    from model.runtime import OnnxEncoder
    session = OnnxEncoder(encoder, graph=found[0])
    return (lambda crops: session(encoder.spec.to_tensor(crops)).numpy()), \
        found[1]["graph_sha256"], encoder.spec


def stats(store, model_sha256: str, spec: str) -> dict:
    rows = store.crops(not_model=model_sha256)
    return {"other_model_faces": len(rows),
            "by_model": dict(Counter(r.model_sha256[:12] for r in rows)),
            "reembeddable": sum(r.crop_png is not None and r.crop_spec == spec for r in rows)}


def reembed(store, embed, spec, model_sha256: str, batch_size: int = 64,
            delete_unembeddable: bool = False) -> dict:
    """Re-embed every face of another model whose stored crop this encoder can read."""
    rows = store.crops(not_model=model_sha256)
    usable = [r for r in rows if r.crop_png is not None and r.crop_spec == spec.version]
    unusable = [r for r in rows if r not in usable]
    size = spec.crop_size
    for i in range(0, len(usable), batch_size):
        chunk = usable[i:i + batch_size]
        crops = np.stack([np.asarray(Image.open(io.BytesIO(r.crop_png)).convert("RGB")
                                     .resize((size, size))) for r in chunk])
        for r, v in zip(chunk, embed(crops)):
            store.update_embedding(r.face_id, model_sha256, v)
    deleted = 0
    if delete_unembeddable:
        for r in unusable:
            deleted += store.delete_face(r.gallery, r.subject, r.face_id)
    return {"reembedded": len(usable), "unembeddable": len(unusable) - deleted,
            "deleted": deleted}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.gallery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["stats", "reembed", "prune-log"])
    p.add_argument("--url", help="the store (default: FACEVERIFY_GALLERY_URL or its default)")
    p.add_argument("--weights", type=Path,
                   help="the weights to embed with (default: FACEVERIFY_WEIGHTS or its default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--delete-unembeddable", action="store_true",
                   help="reembed: delete the faces that have no usable crop (their subjects "
                        "must be re-enrolled from photos)")
    p.add_argument("--keep", type=int, default=100_000,
                   help="prune-log: the newest rows kept (a replica further behind reloads "
                        "everything once)")
    args = p.parse_args(argv)
    settings = Settings()
    store = open_store(args.url or settings.gallery_url)
    if args.command == "prune-log":  # no encoder needed
        try:
            print(json.dumps({"pruned": store.prune_changes(args.keep), "kept": args.keep}))
        finally:
            store.close()
        return 0
    embed, sha, spec = _encoder(args.weights or settings.weights, args.device, settings.int8)
    try:
        if args.command == "stats":
            out = stats(store, sha, spec.version)
        else:
            out = reembed(store, embed, spec, sha, delete_unembeddable=args.delete_unembeddable)
    finally:
        store.close()
    print(json.dumps({"model_sha256": sha, **out}))
    return 1 if out.get("unembeddable") else 0


if __name__ == "__main__":
    sys.exit(main())
