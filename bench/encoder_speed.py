"""Encoder candidates: parameters, FLOPs and CPU speed at their input size (112x112 for the
students, 150x150 for dlib's ResNet), and the CPU runtimes of the default encoder.

    python -m bench.encoder_speed [--threads 1] [--batch 64] [--teacher] [--runtimes [--compile]]
                                  [--out bench/results/encoder_speed.json]

Inference img/s (batch of `--batch`, median of repeats) and training img/s (forward +
backward + AdamW step on a P×K-sized batch) for each candidate, in one run so the ratios
compare like with like. `--teacher` also times the distillation teacher, dlib's ResNet
encoder (`compute_face_descriptor` on a real LFW photo whose 5 landmarks were found
beforehand, so only the encoder is timed; needs the `distill` extra), in the same process and
thread setting, and reports each candidate's single-image speed-up over it. `--runtimes` times
the default weights (weights/faceverify-encoder) per face at batch 1 and 8 in torch eager,
torch channels_last, ONNX Runtime (exported from the module, model/nn/runtime.py) and, with
`--compile`, torch.compile (minutes of compilation), each checked against eager (max L2 over
the embeddings, must be <= 1e-4).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from model.face.preprocess import spec_for_arch
from model.nn.siamese import SiameseEncoder

DEFAULT_WEIGHTS = Path("weights/faceverify-encoder.safetensors")
CANDIDATES = {
    "dlib-resnet (default)": {"arch": "dlib-resnet", "embedding_dim": 128},
    "mfn-0.5-slim": {"arch": "mobilefacenet", "embedding_dim": 128, "width": 0.5,
                               "depth": [2, 1, 3, 1, 1], "final_channels": 256},
    "mobilefacenet-1.0": {"arch": "mobilefacenet", "embedding_dim": 128},
    "mnv3s-1.0": {"arch": "mnv3s", "embedding_dim": 128},
    "iresnet-narrow (student)": {"arch": "iresnet", "embedding_dim": 128},
    "koch (origin)": {"arch": "koch", "embedding_dim": 128},
}
TEACHER_PHOTO = Path("../shared/data/lfw/lfw-deepfunneled/Colin_Powell/Colin_Powell_0001.jpg")


def flops_per_image(model: torch.nn.Module, size: int = 112) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, arch: dict, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    enc = SiameseEncoder(arch)
    size = spec_for_arch(arch).crop_size
    x = torch.randn(batch, 3, size, size)
    enc.eval()
    with torch.inference_mode():
        t_inf = timed(lambda: enc(x), repeats)
        t_one = timed(lambda: enc(x[:1]), repeats * 3)
    enc.train()
    opt = torch.optim.AdamW(enc.parameters(), 1e-3)

    def step():
        opt.zero_grad()
        enc(x).sum().backward()
        opt.step()
    t_train = timed(step, max(2, repeats // 2))
    return {"name": name, "arch": arch, "params_M": sum(p.numel() for p in enc.parameters()) / 1e6,
            "input": size, "mflops": flops_per_image(enc.eval(), size) / 1e6, "infer_img_s": batch / t_inf,
            "single_image_ms": 1000 * t_one, "train_img_s": batch / t_train}


def measure_teacher(repeats: int, photo: Path = TEACHER_PHOTO) -> dict:
    """dlib's face encoder on one face: landmarks found first (untimed), then
    `compute_face_descriptor` (chip extraction + ResNet) timed alone."""
    import dlib
    import numpy as np
    from PIL import Image

    from model.train import teacher
    _, shape_predictor, encoder = teacher._load_dlib()
    image = np.asarray(Image.open(photo).convert("RGB"))
    (top, right, bottom, left), _ = teacher._face_box(image)
    shape = shape_predictor(image, dlib.rectangle(left, top, right, bottom))
    t_one = timed(lambda: encoder.compute_face_descriptor(image, shape, 1), repeats * 3)
    import face_recognition_models as frm
    size_mb = Path(frm.face_recognition_model_location()).stat().st_size / 1e6
    return {"name": "dlib ResNet (teacher)", "model_file_MB": round(size_mb, 1),
            "single_image_ms": 1000 * t_one,
            "note": "dlib_face_recognition_resnet_model_v1 via dlib " + dlib.__version__}


def measure_runtimes(weights: Path, repeats: int, compile_too: bool) -> list[dict]:
    """The default encoder per face in each CPU runtime, batch 1 and 8, in this process."""
    from model.nn.checkpoint import load_encoder
    from model.nn.runtime import OnnxEncoder, max_embedding_error
    enc, _ = load_encoder(weights)
    size = enc.spec.crop_size
    gen = torch.Generator().manual_seed(0)
    x1, x8 = (torch.rand(n, 3, size, size, generator=gen) * 2 - 1 for n in (1, 8))
    rows = []

    def row(name, fn, prepare=lambda x: x, setup_s=0.0):
        with torch.inference_mode():
            a, b = prepare(x1), prepare(x8)
            rows.append({
                "runtime": name, "setup_s": round(setup_s, 1),
                "batch1_ms_per_face": 1000 * timed(lambda: fn(a), repeats * 3),
                "batch8_ms_per_face": 1000 * timed(lambda: fn(b), repeats * 3) / 8,
                "max_l2_vs_eager": max_embedding_error(enc, lambda x: fn(prepare(x)), size)})
        print(f"  {name:16s} batch 1: {rows[-1]['batch1_ms_per_face']:6.2f} ms  batch 8: "
              f"{rows[-1]['batch8_ms_per_face']:6.2f} ms/face  max L2 vs eager "
              f"{rows[-1]['max_l2_vs_eager']:.1e}")

    row("torch eager", enc)
    cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    row("channels_last", cl, lambda x: x.contiguous(memory_format=torch.channels_last))
    t = time.perf_counter()
    ort_enc = OnnxEncoder(enc)
    row("onnxruntime", ort_enc, setup_s=time.perf_counter() - t)
    if compile_too:
        compiled = torch.compile(enc)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(x8), compiled(x1)
        row("torch.compile", compiled, setup_s=time.perf_counter() - t)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="*", help="candidate names to run")
    p.add_argument("--teacher", action="store_true", help="also time dlib's encoder")
    p.add_argument("--runtimes", action="store_true",
                   help="time the default weights in each CPU runtime")
    p.add_argument("--compile", action="store_true", help="with --runtimes: torch.compile too")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(n, a, args.batch, args.repeats) for n, a in CANDIDATES.items()
            if not args.only or n in args.only]
    for r in rows:
        print(f"{r['name']:24s} {r['params_M']:7.2f}M {r['mflops']:8.1f} MFLOPs "
              f"infer {r['infer_img_s']:7.1f} img/s  1-img {r['single_image_ms']:6.1f} ms  "
              f"train {r['train_img_s']:6.1f} img/s")
    teacher_row = None
    if args.teacher:
        teacher_row = measure_teacher(args.repeats)
        print(f"{teacher_row['name']:24s} 1-img {teacher_row['single_image_ms']:6.1f} ms")
        for r in rows:
            r["speedup_vs_teacher"] = teacher_row["single_image_ms"] / r["single_image_ms"]
            print(f"  {r['name']:24s} {r['speedup_vs_teacher']:5.1f}x faster than the teacher")
    runtimes = None
    if args.runtimes:
        print(f"runtimes of {args.weights} ({args.threads} thread(s)):")
        runtimes = measure_runtimes(args.weights, args.repeats, args.compile)
        if teacher_row:
            for r in runtimes:
                r["speedup_vs_teacher"] = teacher_row["single_image_ms"] / r["batch1_ms_per_face"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "batch": args.batch,
                                        "torch": torch.__version__, "rows": rows,
                                        "teacher": teacher_row, "runtimes": runtimes},
                                       indent=2))


if __name__ == "__main__":
    main()
