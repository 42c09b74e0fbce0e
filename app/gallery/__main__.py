"""The operator's gallery commands, on the store a server would open (FACEVERIFY_* settings).

    python -m app.gallery stats     # faces per model, and how many can be re-embedded
    python -m app.gallery reembed   # re-embed other models' faces with the loaded weights
    python -m app.gallery prune-log [--keep 100000]   # trim the change log's old rows
    python -m app.gallery backup OUT.db   # a consistent copy (a new SQLite file, mode 0600)
    python -m app.gallery restore BACKUP.db   # the backup's faces, minus those erased since
    python -m app.gallery erasures export FILE   # before a native restore (pg_restore, ...)
    python -m app.gallery erasures apply FILE    # after it: erased people stay erased
    python -m app.gallery purge     # remove what deletions leave in the store's files now

`backup` writes faces, erasure records and the digests' salt, from SQLite or PostgreSQL
alike, into a new SQLite file; `restore` reads one (or a copy of an SQLite store's own file)
into the store FACEVERIFY_GALLERY_URL names, whichever kind it is. It keeps the current
store's erasure records and skips every face they say was deleted after the backup was
taken: restoring a backup never brings back a person erased since. Running replicas notice
the restore (the change log restarts) and reload by themselves. See docs/operations.md,
"Erasure" and "Backups and restore".

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
import functools
import io
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import Settings
from app.gallery.store import (
    Erasure,
    StoreError,
    open_store,
    read_backup,
    read_backup_erasures,
)


def _encoder(weights: Path, device: str, int8: str):
    """The encoder as the service would run it (app.inference.open_encoder: the int8 graph
    beside the weights under the same FACEVERIFY_INT8 rule, else float32): (embed crops →
    vectors, the sha256 its vectors are tagged with, its preprocessing spec)."""
    from app.inference import EncoderError, open_encoder
    try:
        encoder = open_encoder(weights, device, int8=int8)
    except EncoderError as exc:
        raise SystemExit(str(exc)) from None
    return encoder.runner, encoder.model_ref["sha256"], encoder.spec


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


def export_erasures(store, out: Path) -> dict:
    """The store's erasure records and salt as JSON (mode 0600: the salt keys the digests)."""
    records = store.erasures()
    doc = {"salt": store.salt.hex(), "erasures": [
        {"kind": e.kind, "digest": e.digest, "erased": e.erased} for e in records]}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return {"erasures": len(records)}


def apply_erasures(store, path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    records = [Erasure.of((e["kind"], e["digest"], e["erased"])) for e in doc["erasures"]]
    return store.apply_erasures(bytes.fromhex(doc["salt"]), records)


STORE_ONLY = {"prune-log", "backup", "restore", "erasures", "purge"}  # no encoder needed


def store_command(store, args) -> dict:
    if args.command == "prune-log":
        return {"pruned": store.prune_changes(args.keep), "kept": args.keep}
    if args.command == "backup":
        return {"backup": str(args.path), **store.backup(args.path)}
    if args.command == "restore":
        salt, erasures = read_backup_erasures(args.path)
        return store.restore_faces(read_backup(args.path), salt, erasures)
    if args.command == "purge":
        return {"done": store.purge()}
    if args.action == "export":
        return export_erasures(store, args.path)
    return apply_erasures(store, args.path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.gallery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", help="the store (default: FACEVERIFY_GALLERY_URL or its "
                                   "default)")
    sub = p.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[url])
    for name in ("stats", "reembed"):
        c = add(name)
        c.add_argument("--weights", type=Path, help="the weights to embed with (default: "
                       "FACEVERIFY_WEIGHTS or its default)")
        c.add_argument("--device", default="cpu")
        c.add_argument("--delete-unembeddable", action="store_true",
                       help="reembed: delete the faces that have no usable crop (their "
                            "subjects must be re-enrolled from photos)")
    c = add("prune-log")
    c.add_argument("--keep", type=int, default=100_000,
                   help="the newest rows kept (a replica further behind reloads everything "
                        "once)")
    add("backup").add_argument("path", type=Path, help="a new file")
    add("restore").add_argument("path", type=Path, help="a file made by backup")
    c = add("erasures")
    c.add_argument("action", choices=["export", "apply"])
    c.add_argument("path", type=Path)
    add("purge")
    args = p.parse_args(argv)
    settings = Settings()
    try:
        store = open_store(args.url or settings.gallery_url)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command in STORE_ONLY:
        try:
            print(json.dumps(store_command(store, args)))
        except (StoreError, OSError, ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
