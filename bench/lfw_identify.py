"""LFW as a 1:N identification test, through the service's own parts.

    python -m bench.lfw_identify [--weights weights/faceverify-encoder.safetensors]
                                 [--face-choice largest] [--out bench/results/lfw_identify.json]

Protocol (model.lfw.identification_sets): the gallery is the first photo of each of the
1,680 people with two or more photos; the mated probes are their other 7,484 photos; the
non-mated probes are one photo each of 1,000 people with a single photo (a seeded sample),
who must not match anyone. The faces are the service's: the shared face pipeline (YuNet,
dlib-style alignment, the face choice the service uses by default), embedded by the service's
encoder runtime (app.inference.EncoderRunner) and searched by the service's exact search
(app.gallery.index.GalleryVectors, best face per subject).

Reported: closed-set rank-1 and rank-5 accuracy of the mated probes; open-set DIR (right
person at rank 1 and within the threshold) and FPIR (a non-mated probe matches someone) at
the service's default identify threshold (the card's FAR 0.1 % one), at /verify's, and at the
thresholds that hold FPIR to 10 %, 1 % and 0.1 %; search time at this gallery's size.
LFW's people are not in the encoder's training data (its author's word; docs/accuracy.md),
so the figures are identity-disjoint.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import print_and_save
from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS


def embed(runner, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [runner(torch.from_numpy(np.ascontiguousarray(crops[i:i + batch]))).numpy()
           for i in range(0, len(crops), batch)]
    return np.concatenate(out).astype(np.float32)


def identification_report(gallery: np.ndarray, gallery_people: list[str],
                          mated: np.ndarray, mated_people: list[str], non_mated: np.ndarray,
                          thresholds: dict[str, float], top_k: int = 5) -> dict:
    """Search every probe in a gallery of `gallery` vectors and score the answers."""
    from app.gallery.index import GalleryVectors
    from model.metrics import open_set_identification, threshold_at_fpir
    g = GalleryVectors(gallery.shape[1], capacity=len(gallery))
    for i, (person, v) in enumerate(zip(gallery_people, gallery)):
        g.add(f"{i:032x}", person, v)
    seconds = []

    def search(v):
        t0 = time.perf_counter()
        hits = g.search(v, top_k)
        seconds.append(time.perf_counter() - t0)
        return hits

    mated_hits = [search(v) for v in mated]
    non_hits = [search(v) for v in non_mated]
    rank1 = np.array([h[0].subject == p for h, p in zip(mated_hits, mated_people)])
    rank5 = np.array([p in [x.subject for x in h[:5]] for h, p in zip(mated_hits, mated_people)])
    mated_d = np.array([h[0].distance for h in mated_hits])
    non_d = np.array([h[0].distance for h in non_hits])
    at = {name: open_set_identification(rank1, mated_d, non_d, t)
          for name, t in thresholds.items()}
    for fpir in (0.1, 0.01, 0.001):
        at[f"fpir_{fpir:g}"] = open_set_identification(rank1, mated_d, non_d,
                                                       threshold_at_fpir(non_d, fpir))
    return {"gallery_size": len(gallery), "mated_probes": len(mated),
            "non_mated_probes": len(non_mated), "rank1": float(rank1.mean()),
            "rank5": float(rank5.mean()), "open_set": at,
            "search_ms_p50": float(np.median(seconds) * 1000),
            "non_mated_rank1_distance_p50": float(np.median(non_d)),
            "mated_rank1_distance_p50": float(np.median(mated_d))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--face-choice", default="largest", choices=["largest", "central"],
                   help="which face of a photo with several (the service's default: largest)")
    p.add_argument("--non-mated", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from app.inference import EncoderRunner
    from model.checkpoint import load_encoder
    from model.evaluate import AlignedLfw
    from model.lfw import identification_sets, identity_of
    t0 = time.perf_counter()
    sets = identification_sets(args.lfw_dir / "lfw-deepfunneled", args.non_mated, args.seed)
    encoder, card = load_encoder(args.weights)
    lfw = AlignedLfw(args.lfw_dir, face_choice=args.face_choice)
    aligned = lfw(encoder.spec)
    index = aligned.index()
    runner = EncoderRunner(encoder, torch.device("cpu"))

    def vectors(paths):
        rows = [index[f"lfw/{x}"] for x in paths]
        return embed(runner, aligned.crops[rows]), sum(aligned.methods[r] != "detected"
                                                       for r in rows)
    gallery, nf_g = vectors(sets.gallery)
    mated, nf_m = vectors(sets.mated)
    non_mated, nf_n = vectors(sets.non_mated)
    th = card["threshold"]
    report = identification_report(
        gallery, [identity_of(x) for x in sets.gallery], mated,
        [identity_of(x) for x in sets.mated], non_mated,
        {"identify_default_far_1e-3": th["at_far_1e-3"], "verify_threshold": th["value"]})
    report = {
        "protocol": "LFW 1:N: gallery = first photo of the 1,680 people with >= 2 photos; "
                    "mated probes = their other photos; non-mated = one photo each of "
                    f"{len(sets.non_mated)} one-photo people (seed {args.seed})",
        "identity_disjoint": True, "weights": str(args.weights),
        "weights_sha256": card["weights_sha256"], "face_choice": args.face_choice,
        "detector": sorted(lfw.detectors_used), "runtime": runner.runtime,
        "no_face_images": {"gallery": nf_g, "mated": nf_m, "non_mated": nf_n},
        **report, "seconds": round(time.perf_counter() - t0, 1)}
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
