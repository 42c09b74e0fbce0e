"""Stand-in encoder for the docker smoke test when weights/faceverify-mfn.* are absent.

A short real training run (a few epochs on 120 LFW photos of 20 people, about half a minute on
2 cores) written as `<out>/faceverify-mfn.safetensors` + its model card, so that the image can
be built and the service can start. Its verdicts mean nothing: the smoke test only checks
verdict correctness when the real default weights are in weights/.

    python deploy/ci/stand_in_weights.py --lfw-dir ../shared/data/lfw --out DIR
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IDENTITIES = [
    "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder",
    "Ariel_Sharon", "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft",
    "Jacques_Chirac", "Serena_Williams", "Vladimir_Putin", "Luiz_Inacio_Lula_da_Silva",
    "Gloria_Macapagal_Arroyo", "Jennifer_Capriati", "Lleyton_Hewitt", "Laura_Bush",
    "Alejandro_Toledo", "Hans_Blix",
]
PER_IDENTITY = 6
ARCH = {"arch": "mobilefacenet", "embedding_dim": 32, "width": 0.25,
        "depth": [1, 1, 1, 1, 1], "final_channels": 64}


def small_lfw(src: Path, root: Path) -> Path:
    images = root / "lfw-deepfunneled"
    for name in IDENTITIES:
        (images / name).mkdir(parents=True)
        for i in range(1, PER_IDENTITY + 1):
            f = f"{name}_{i:04d}.jpg"
            (images / name / f).symlink_to(src / name / f)
    same = [f"{n}\t5\t6" for n in IDENTITIES[:6]]
    diff = [f"{a}\t5\t{b}\t6" for a, b in zip(IDENTITIES[:6], IDENTITIES[6:12])]
    (root / "pairsDevTest.txt").write_text("6\n" + "\n".join(same + diff) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw-dir", type=Path, default=ROOT.parent / "shared" / "data" / "lfw")
    ap.add_argument("--out", type=Path, required=True, help="where the weights and card go")
    args = ap.parse_args(argv)
    src = args.lfw_dir / "lfw-deepfunneled"
    if not src.is_dir():
        print(f"stand_in_weights: LFW not found at {src}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from model.train import main as train

    with tempfile.TemporaryDirectory(prefix="fv-stand-in-") as tmp:
        tmp = Path(tmp)
        lfw = small_lfw(src, tmp / "lfw")
        train(["--data", f"lfw={lfw / 'lfw-deepfunneled'}", "--arch", json.dumps(ARCH),
               "--batch-p", "8", "--batch-k", "4", "--warmup-steps", "5", "--epochs", "4",
               "--seed", "0", "--cache-dir", str(tmp / "cache"), "--run-dir", str(tmp / "runs"),
               "--output-dir", str(args.out), "--eval-pairs", str(lfw / "pairsDevTest.txt"),
               "--no-progress", "--device", "cpu", "--threads", "2",
               "--name", "faceverify-mfn"])
    weights = args.out / "faceverify-mfn.safetensors"
    if not (weights.is_file() and weights.with_suffix(".json").is_file()):
        print(f"stand_in_weights: training wrote no {weights} + card", file=sys.stderr)
        return 1
    print(f"stand_in_weights: wrote {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
