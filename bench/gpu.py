"""The GPU checks, as one prepared script (run it when a GPU is lent; ~5 minutes).

    python -m bench.gpu [--device cuda] [--out bench/results/gpu.json]
                        [--load-duration 10] [--skip-load]

1. Encoder throughput by batch size in fp32 / fp16 / bf16 (CUDA-synchronised timing, median
   of repeats), peak GPU memory of each, and how far fp16/bf16 embeddings drift from fp32
   (largest Euclidean distance between unit embeddings of the same random batch).
2. End-to-end /verify and /embed through the real server on the CUDA path (bench.load with
   --device cuda, default batching, detect true/false, 1/16/64 clients) with the server's GPU
   memory from nvidia-smi; its results go to bench/results/load_gpu.json.
On a machine without CUDA it says so and exits 2 (use --device cpu for a dry run of part 1).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.load import machine
from bench.server import DEFAULT_WEIGHTS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def encoder_sweep(weights: Path, device: str, batches: list[int], repeats: int) -> list[dict]:
    import copy

    from model.nn.checkpoint import load_encoder
    base, _ = load_encoder(weights, device=device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    rows = []
    gen = torch.Generator().manual_seed(0)
    size = base.spec.crop_size
    ref_x = torch.randn(64, 3, size, size, generator=gen).to(device)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(base(ref_x).float(), dim=1)
        for name, dtype in DTYPES.items():
            model = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
            drift = float((torch.nn.functional.normalize(model(ref_x.to(dtype)).float(), dim=1)
                           - ref).norm(dim=1).max())
            for b in batches:
                x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                model(x)
                sync()
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    model(x)
                    sync()
                    times.append(time.perf_counter() - t)
                med = statistics.median(times)
                rows.append({"dtype": name, "batch": b, "img_s": b / med, "ms_per_batch": 1000 * med,
                             "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20
                             if cuda else None, "max_drift_vs_fp32": drift})
                print(f"  {name} batch {b:4d}: {b / med:9.0f} img/s  {1000 * med:7.2f} ms",
                      flush=True)
            del model
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128, 512])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--load-duration", type=float, default=10)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured", file=sys.stderr)
        return 2
    result = {"machine": machine(), "device": args.device, "weights": str(args.weights)}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(args.device)
    result["encoder"] = encoder_sweep(args.weights, args.device, args.batches, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.skip_load:
        from bench import load
        load.main(["--weights", str(args.weights), "--device", args.device,
                   "--batching", "default", "--concurrency", "1", "16", "64",
                   "--duration", str(args.load_duration), "--embed-duration",
                   str(args.load_duration / 2), "--inprocess-concurrency", "16",
                   "--out", str(args.out.with_name("load_gpu.json")), "--plots", ""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
