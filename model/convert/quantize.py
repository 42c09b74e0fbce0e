"""The encoder as an int8 ONNX graph for the CPU: `python -m model.convert.quantize`.

    python -m model.convert.quantize --weights weights/faceverify-encoder.safetensors \\
        --calibration-dir ../shared/data/celeba-extra --out weights/faceverify-encoder.int8.onnx

The torch module is exported to ONNX (model.nn.runtime.export_onnx, as the service does at
start-up), then quantised statically by ONNX Runtime's own tool: weights to int8 per output
channel, activations to uint8 with ranges calibrated (min/max) on aligned faces of a set
that is not LFW (celeba-extra, a seeded sample, aligned by the shared face pipeline), in QDQ
form. On the reference machine's CPU (AVX-512 VNNI) ONNX Runtime then runs dlib's ResNet
~2.4x faster per face (docs/architecture.md); LFW View 2 moves by 0.05 points
(docs/accuracy.md). A card beside the graph (`.int8.json`) records the source weights'
sha256, the graph's, the calibration and the commands; `python -m model.evaluate
--graph … --write-card …` adds its evaluation and thresholds, which the service then uses.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model.encoder.weights import card_of, int8_graph_for, sha256_of
from model.nn.checkpoint import load_encoder

DEFAULT_CALIBRATION = Path("../shared/data/celeba-extra")


def calibration_crops(root: Path, spec, samples: int, seed: int) -> tuple[np.ndarray, int]:
    """A seeded sample of aligned faces from an identity-folder set; (crops, set size)."""
    from model.train.data import load_aligned_folder
    aligned = load_aligned_folder(root, "calibration", spec=spec, face_choice="largest",
                                  progress=False)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(aligned.crops), size=min(samples, len(aligned.crops)),
                              replace=False))
    return np.asarray(aligned.crops[rows]), len(aligned.crops)


METHODS = ("minmax", "percentile", "entropy")


def quantize(encoder, calibration: np.ndarray, method: str = "percentile", batch: int = 16
             ) -> bytes:
    """The int8 QDQ graph of `encoder`, its activation ranges from `calibration` crops."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model.nn.runtime import export_onnx
    x = encoder.spec.to_tensor(calibration).numpy()

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):  # whole batches only: the percentile collector stacks them
            if self.i + batch > len(x):
                return None
            self.i += batch
            return {"x": x[self.i - batch:self.i]}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(export_onnx(encoder))
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "percentile": CalibrationMethod.Percentile,
                                          "entropy": CalibrationMethod.Entropy}[method])
        return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.convert.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--calibration-dir", type=Path, default=DEFAULT_CALIBRATION,
                   help="identity folders of face photos, not LFW (default: celeba-extra)")
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=METHODS, default="percentile",
                   help="how activation ranges are calibrated (onnxruntime.quantization)")
    p.add_argument("--out", type=Path, help="default: beside the weights, .int8.onnx")
    args = p.parse_args(argv)
    import onnxruntime

    out = args.out or int8_graph_for(args.weights)
    encoder, card = load_encoder(args.weights)
    crops, set_size = calibration_crops(args.calibration_dir, encoder.spec, args.samples,
                                        args.seed)
    out.write_bytes(quantize(encoder, crops, args.method))
    source = dict(card or {})
    int8_card = {
        "name": source.get("name", args.weights.stem),
        "version": f"{source.get('version', '')}+int8",
        "format": "ONNX, QDQ int8 (weights int8 per channel, activations uint8 per tensor)",
        "graph_file": out.name, "graph_sha256": sha256_of(out),
        "source_weights": args.weights.name, "source_weights_sha256": sha256_of(args.weights),
        "embedding_dim": source.get("embedding_dim"),
        "preprocessing": source.get("preprocessing"),
        "distance": source.get("distance"),
        "quantization": {"tool": "onnxruntime.quantization.quantize_static",
                         "onnxruntime": onnxruntime.__version__,
                         "calibration_method": args.method, "per_channel": True},
        "calibration": {"set": str(args.calibration_dir.name), "set_images": set_size,
                        "samples": len(crops), "seed": args.seed,
                        "note": "not LFW: the evaluation's people are never seen"},
        "commands": [
            "python -m model.convert.quantize --weights " + str(args.weights)
            + f" --calibration-dir {args.calibration_dir} --samples {args.samples}"
            + f" --seed {args.seed} --method {args.method} --out {out}",
            "python -m model.evaluate --protocol view2 --weights " + str(args.weights)
            + f" --graph {out} --face-choice central --flip off --write-card "
            + str(card_of(out)),
        ],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card_of(out).write_text(json.dumps(int8_card, indent=2) + "\n")
    print(json.dumps({"graph": str(out), "bytes": out.stat().st_size,
                      "graph_sha256": int8_card["graph_sha256"],
                      "calibration_samples": len(crops)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
