"""The `faceverify` command.

    faceverify verify A.jpg B.jpg          # the verdict as JSON; exit 0 same, 1 different, 2 error
    faceverify embed IMG...                # one JSON line per image: its face's embedding
    faceverify identify KNOWN_DIR UNKNOWN  # face_recognition's shape: "file,name" per face
    faceverify serve                       # the HTTP service (settings: FACEVERIFY_* variables)

`identify` follows face_recognition's command line: each image in KNOWN_DIR is one person,
named by its file name without the extension (a sub-folder's images are the person the
folder is named after, as in LFW); each face in UNKNOWN (an image or a folder, searched
recursively) is printed as `file,name` for the nearest known face within the threshold, or
`file,unknown_person`; an image with no face prints `file,no_persons_found`. The threshold
is identify's default from the model card's impostor table: the distance at which a
stranger matches someone among N known faces 1 % of the time (docs/accuracy.md), unless
`--tolerance` sets one. Unlike face_recognition, a face matching several known people is
printed once, with the nearest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 — a command line answers every failure the same way
        from faceverify.client import FaceverifyError
        what = f"{exc.code}: {exc.message}" if isinstance(exc, FaceverifyError) else str(exc)
        print(f"faceverify {args.command}: error: {what}", file=sys.stderr)
        return EXIT_ERROR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faceverify", description=(
        "Face verification: compare two photos, embed faces, label folders of photos, or "
        "serve the HTTP API."))
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def encoder_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--weights", type=Path, default=None,
                       help="encoder weights (default: the shipped encoder)")
        q.add_argument("--no-orient", dest="orient", action="store_false",
                       help="take every photo as upright (no search for turned faces)")

    q = sub.add_parser("verify", help="are two photos the same person? (JSON; exit 0 same, "
                                      "1 different, 2 error)")
    q.add_argument("image1", type=Path)
    q.add_argument("image2", type=Path)
    q.add_argument("--threshold", type=float, default=None,
                   help="distance under which the faces are the same person (default: the "
                        "model card's, FAR 0.1 %% on LFW)")
    encoder_options(q)
    q.set_defaults(run=run_verify)

    q = sub.add_parser("embed", help="each image's face as a vector (one JSON line per image)")
    q.add_argument("images", type=Path, nargs="+")
    encoder_options(q)
    q.set_defaults(run=run_embed)

    q = sub.add_parser("identify", help="label the faces in UNKNOWN with the people in "
                                        "KNOWN_DIR (face_recognition's file,name lines)")
    q.add_argument("known", type=Path, help="a folder: NAME.jpg per person, or NAME/*.jpg")
    q.add_argument("unknown", type=Path, help="an image, or a folder searched recursively")
    q.add_argument("--tolerance", type=float, default=None,
                   help="the largest distance that still names someone (default: the "
                        "distance holding strangers' false matches at --fpir)")
    q.add_argument("--fpir", type=float, default=0.01,
                   help="the chance that a stranger is named someone, at this many known "
                        "faces (default 0.01)")
    q.add_argument("--cpus", type=int, default=1,
                   help="worker processes (-1: every core); default 1")
    q.add_argument("--show-distance", action="store_true",
                   help="append the distance to each line")
    q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    encoder_options(q)
    q.set_defaults(run=run_identify)

    q = sub.add_parser("serve", help="the HTTP service (every setting from FACEVERIFY_* "
                                     "variables: docs/api.md)")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--weights", type=Path, default=None,
                   help="sets FACEVERIFY_WEIGHTS (default: the shipped encoder)")
    q.set_defaults(run=run_serve)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("faceverify")
    except PackageNotFoundError:
        return "(not installed)"


def _verifier(args, **kw):
    from faceverify.api import Verifier
    return Verifier(args.weights, orient=args.orient, **kw)


# ------------------------------------------------------------------------------ verify, embed
def run_verify(args) -> int:
    result = _verifier(args).verify(args.image1, args.image2, threshold=args.threshold)
    print(json.dumps(asdict(result)))
    return EXIT_SAME if result.verified else EXIT_DIFFERENT


def run_embed(args) -> int:
    from faceverify.client import FaceverifyError
    verifier = _verifier(args)
    status = 0
    for path in args.images:
        try:
            line = {"file": str(path), "embedding": verifier.embed(path).astype(float).round(6).tolist()}
        except FaceverifyError as exc:
            line, status = {"file": str(path), "error": {"code": exc.code,
                                                         "message": exc.message}}, EXIT_ERROR
        print(json.dumps(line), flush=True)
    return status


# ------------------------------------------------------------------------------ identify
def images_in(root: Path) -> Iterator[Path]:
    """An image, or a folder's images (recursively), in a stable order."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def known_name(path: Path, root: Path) -> str:
    """NAME.jpg directly in the folder is NAME; NAME/anything.jpg is NAME."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


_worker = None  # the Verifier of a --cpus worker process


def _start_worker(weights, orient) -> None:
    global _worker
    from faceverify.api import Verifier
    _worker = Verifier(weights, orient=orient, threads=1)


def _faces_of(path: Path) -> tuple[str, list, str | None]:
    """(path, its faces' embeddings as lists, an error message or None)."""
    from faceverify.client import FaceverifyError
    try:
        _, vectors = _worker.embed_faces(path)
    except FaceverifyError as exc:
        return str(path), [], f"{exc.code}: {exc.message}"
    return str(path), vectors.tolist(), None


def _embedded(paths: list[Path], args, what: str) -> Iterator[tuple[str, list, str | None]]:
    """Every face of every image, in order, in --cpus processes, with a progress bar."""
    from tqdm import tqdm
    cpus = (os.cpu_count() or 1) if args.cpus == -1 else max(1, args.cpus)
    bar = tqdm(total=len(paths), desc=what, unit="img", file=sys.stderr,
               disable=args.no_progress or not sys.stderr.isatty())
    try:
        if cpus == 1:
            _start_worker(args.weights, args.orient)
            for path in paths:
                yield _faces_of(path)
                bar.update()
            return
        from model.train.pool import process_pool
        with process_pool(cpus, _start_worker, (args.weights, args.orient)) as pool:
            for result in pool.map(_faces_of, paths, chunksize=4):
                yield result
                bar.update()
    finally:
        bar.close()


def run_identify(args) -> int:
    import numpy as np
    if not args.known.is_dir():
        raise ValueError(f"{args.known} is not a folder of known people")
    if not args.unknown.exists():
        raise ValueError(f"{args.unknown} does not exist")
    known_paths = list(images_in(args.known))
    names, vectors = [], []
    for file, faces, error in _embedded(known_paths, args, "known"):
        if error or not faces:
            print(f"WARNING: {error or 'no face found'} in {file}: ignoring it",
                  file=sys.stderr)
            continue
        names.append(known_name(Path(file), args.known))
        vectors.append(faces[0])  # the largest face
    if not vectors:
        raise ValueError(f"no faces found in the known people's photos under {args.known}")
    known = np.asarray(vectors, np.float32)
    threshold = args.tolerance if args.tolerance is not None else \
        identify_threshold(args.weights, args.fpir, len(known))
    for file, faces, error in _embedded(list(images_in(args.unknown)), args, "unknown"):
        if error and not error.startswith("no_face"):
            print(f"WARNING: {error} in {file}: ignoring it", file=sys.stderr)
            continue
        if not faces:
            print(f"{file},no_persons_found", flush=True)
            continue
        distances = np.linalg.norm(known[None, :, :] - np.asarray(faces, np.float32)[:, None],
                                   axis=2)
        for row in distances:
            best = int(np.argmin(row))
            name = names[best] if row[best] <= threshold else "unknown_person"
            extra = f",{row[best]:.4f}" if args.show_distance else ""
            print(f"{file},{name}{extra}", flush=True)
    return 0


def identify_threshold(weights: Path | None, fpir: float, known_faces: int) -> float:
    """identify's default threshold (the service's FPIR rule, app/gallery/threshold.py): the
    impostor table's distance at FAR = fpir / known faces; the card's threshold without one."""
    from app.inference import open_encoder
    from model.evaluate.open_set import threshold_for_fpir
    from model.shipped import WEIGHTS_DIR
    card = open_encoder(weights or WEIGHTS_DIR / "faceverify-encoder.safetensors").card
    table = (card.get("impostors") or {}).get("table")
    if not table:
        return float(card["threshold"]["value"])
    return threshold_for_fpir(table, fpir, known_faces).distance


# ------------------------------------------------------------------------------ serve
def run_serve(args) -> int:
    import uvicorn
    if args.weights is not None:
        os.environ["FACEVERIFY_WEIGHTS"] = str(args.weights)
    uvicorn.run("app.main:app", host=args.host, port=args.port, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
