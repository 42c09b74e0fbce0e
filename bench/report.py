"""Render the tables of docs/benchmarks.md from the raw results of bench.load and bench.peer.

    python -m bench.report [--load bench/results/load.json] [--peer bench/results/peer.json]
                           [--out docs/benchmarks-tables.md]

Prints (or writes) Markdown tables; the prose of docs/benchmarks.md around them is written by
hand from the same numbers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def print_and_save(report: dict, out: Path | None) -> None:
    """A benchmark's JSON report on stdout and, with --out, in that file."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def f(x, nd=1, pct=False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.{nd}f} %" if pct else f"{x:,.{nd}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def errors(e: dict) -> str:
    return ", ".join(f"{v}× {k}" for k, v in sorted(e.items())) or "none"


def load_tables(r: dict) -> str:
    parts = []
    m = r["machine"]
    parts.append("### Machine and run\n\n" + table(["", ""], [
        ["CPU", (f"{m['cpu']} (family/model {m.get('cpu_family_model')}, "
                f"{', '.join(m.get('simd', []))}), {m['cores']} cores")],
        ["memory", f"{m['mem_gib']} GiB"],
        ["Python / torch", (f"{m['python']} / {m['torch']} (CPU; CUDA available: "
                           f"{m['cuda_available']})")],
        ["load average at start (1/5/15 min)", " / ".join(f"{x:.2f}" for x in
                                                         m["loadavg_at_start"])],
        ["started (UTC)", m["utc_start"]], ["wall time", f"{r['wall_s'] / 60:.1f} min"],
        ["model", f"{r['model']['name']} (sha256 {str(r['model']['sha256'])[:12]}…)"],
        ["command", f"`{r['command']}`"]]))
    for route, unit in (("/verify", "pairs/s"), ("/embed", "images/s")):
        rows = []
        for c in r["cells"]:
            if c["route"] != route or not c.get("requests"):
                continue
            lat = c["latency_ms"]
            rows.append([c["batching"], str(c["detect"]).lower(), str(c["concurrency"]),
                         f(c["ok_per_s"])] + ([f(c["images_per_s"])] if route == "/verify" else [])
                        + [f(lat["p50"]), f(lat["p90"]),
                         f(lat["p99"]), f(lat["max"]), f(c.get("batch_size_mean")),
                         str(c["requests"]), errors(c["errors"])])
        parts.append(f"### `{route}` throughput and latency\n\n" + table(
            ["batching", "detect", "clients", unit] + (["images/s"] if route == "/verify" else [])
            + ["p50 ms", "p90 ms", "p99 ms",
             "max ms", "faces/batch", "requests", "errors"], rows))
    s = r["summary"]
    parts.append("### Batching gain (throughput with the default batching ÷ without)\n\n" + table(
        ["route", "detect", "clients", "off /s", "default /s", "gain", "p50 off ms",
         "p50 default ms"],
        [[g["route"], str(g["detect"]).lower(), str(g["concurrency"]), f(g["off_per_s"]),
          f(g["default_per_s"]), f"×{g['gain']:.2f}", f(g["p50_off_ms"]),
          f(g["p50_default_ms"])] for g in s["batching_gain"]]))
    keys = ["read", "decode", "detect", "detect_pool_wait_and_other", "queue", "encode",
            "http_and_client"]
    names = ["read", "decode", "detect+align", "wait for a detect thread", "queue (batcher)",
             "encode", "HTTP + client"]
    rows = []
    for c in r["cells"]:
        if c["route"] == "/verify" and c.get("stage_share"):
            rows.append([c["batching"], str(c["detect"]).lower(), str(c["concurrency"])]
                        + [f(c["stage_share"].get(k), 0, pct=True) for k in keys]
                        + [f(c["latency_ms"]["mean"])])
    parts.append("### Where a `/verify` request's time goes (share of its mean latency)\n\n"
                 + table(["batching", "detect", "clients"] + names + ["mean ms"], rows))
    parts.append("### Serving overhead (same pipeline in-process vs through the server)\n\n"
                 + table(["detect", "clients", "in-process pairs/s", "server pairs/s",
                          "server ÷ in-process", "in-process p50 ms", "server p50 ms",
                          "latency ratio"],
                         [[str(o["detect"]).lower(), str(o["concurrency"]),
                           f(o["inprocess_pairs_s"]), f(o["server_pairs_s"]),
                           f(o["throughput_ratio_server_over_inprocess"], 2),
                           f(o["inprocess_p50_ms"]), f(o["server_p50_ms"]),
                           f(o["latency_ratio_server_over_inprocess"], 2)]
                          for o in s["serving_overhead"]]))
    rows = []
    for b, v in r["servers"].items():
        mem = v.get("rss_mib") or {}
        rows.append([b, f(mem.get("idle"), 0), f(mem.get("peak"), 0), f(mem.get("after"), 0),
                     f((mem.get("after") or 0) - (mem.get("idle") or 0), 0),
                     f(v.get("ready_after_s"))])
    parts.append("### Server memory (resident set, MiB)\n\n" + table(
        ["batching", "idle (ready)", "peak in sweep", "5 s after", "after − idle",
         "ready after s"], rows))
    e = r["encoder"]
    rows = [[f"in-process, batch {b}", f(v), f(e["flops_per_image"] * v / 1e9, 2),
             f(e["efficiency_by_batch"][b], 1, pct=True)]
            for b, v in e["encoder_img_s_by_batch"].items()]
    es = s.get("encoder_in_server")
    if es:
        rows.append([(f"in the server (/verify, detect=false, {es['concurrency']} clients, "
                     f"{es['batch_size_mean']:.1f} faces/batch)"), f(es["img_s"]),
                     f(e["flops_per_image"] * es["img_s"] / 1e9, 2),
                     f(es["efficiency"], 1, pct=True)])
    parts.append(
        f"### Encoder efficiency\n\nFLOPs per aligned face (torch.utils.flop_counter): "
        f"{e['flops_per_image'] / 1e6:.1f} M. Measured fp32 matmul ({e['matmul_n']}², "
        f"{e['torch_threads']} threads): {e['matmul_flop_s'] / 1e9:.1f} GFLOP/s.\n\n"
        + table(["encoder", "images/s", "GFLOP/s", "of matmul FLOP/s"], rows))
    return "\n\n".join(parts)


def peer_tables(r: dict) -> str:
    parts = []
    acc = r.get("accuracy")
    if acc:
        rows = []
        for name, a in (("faceverify (identity-disjoint encoders)", acc["faceverify"]),
                        ("face_recognition 1.3 (dlib ResNet)", acc["face_recognition"])):
            if "accuracy_mean" not in a:
                rows.append([name] + ["—"] * 6)
                continue
            nf = a.get("photos_without_face")
            if nf is None:
                nf = sum(g.get("images_without_face", 0) for g in a.get("encoders", []))
            rows.append([name, f"{100 * a['accuracy_mean']:.2f} ± {100 * a['accuracy_std']:.2f} %",
                         f(a["auc"], 4), f(a["tar_at_far_1e-2"], 2, pct=True),
                         f(a["tar_at_far_1e-3"], 2, pct=True), f(a["eer"], 2, pct=True),
                         str(nf)])
        d = acc.get("faceverify_minus_face_recognition")
        if d:
            rows.append(["faceverify − face_recognition",
                         f"{100 * d['accuracy_mean']:+.2f} points", f"{d['auc']:+.4f}",
                         f"{100 * d['tar_at_far_1e-2']:+.2f} points",
                         f"{100 * d['tar_at_far_1e-3']:+.2f} points", "", ""])
        parts.append("### LFW View 2 accuracy (6,000 pairs, 10 folds)\n\n" + table(
            ["", "accuracy ± std", "AUC", "TAR @ FAR 1 %", "TAR @ FAR 0.1 %", "EER",
             "photos with no face found"], rows))
    t = r.get("timing")
    if t:
        ratio = t["face_recognition_over_faceverify"]
        rows = []
        for tool in ("faceverify", "face_recognition"):
            x = t[tool]
            rows.append([tool] + [f(x[k]["ms_per_image_wall"]) for k in
                                  ("full_1core", "full_2core", "encode_1core", "encode_2core")]
                        + [" / ".join(f(x["full_1core"]["stage_ms_mean"][s]) for s in
                                      ("decode", "detect_align", "encode"))])
        rows.append(["face_recognition ÷ faceverify"] + [f"×{ratio[k]:.1f}" for k in
                     ("full_1core", "full_2core", "encode_1core", "encode_2core")] + [""])
        n = t["faceverify"]["full_1core"]["photos"]
        parts.append(f"### Time per image ({n} LFW photos, 250x250, batch 1)\n\n" + table(
            ["", "detect+align+encode, 1 core (ms)", "… 2 cores (ms)", "encode only, 1 core (ms)",
             "… 2 cores (ms)", "1 core: decode / detect+align / encode (ms)"], rows))
    return "\n\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report")
    p.add_argument("--load", type=Path, default=Path("bench/results/load.json"))
    p.add_argument("--peer", type=Path, default=Path("bench/results/peer.json"))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    parts = []
    if args.load.exists():
        parts.append(load_tables(json.loads(args.load.read_text())))
    if args.peer.exists():
        parts.append(peer_tables(json.loads(args.peer.read_text())))
    text = "\n\n".join(parts) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
