"""bench.load's results as the tables and plots of docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _cell(result: dict, route: str, batching: str, detect: bool, c: int) -> dict | None:
    return next((x for x in result["cells"] if x["route"] == route and x["batching"] == batching
                 and x["detect"] == detect and x["concurrency"] == c), None)


def summarize(result: dict) -> dict:
    s: dict = {"batching_gain": [], "serving_overhead": []}
    for route in ("/verify", "/embed"):
        for detect in (True, False):
            for c in sorted({x["concurrency"] for x in result["cells"]}):
                on, off = (_cell(result, route, b, detect, c) for b in ("default", "off"))
                if on and off and off.get("ok_per_s"):
                    s["batching_gain"].append({
                        "route": route, "detect": detect, "concurrency": c,
                        "off_per_s": off["ok_per_s"], "default_per_s": on["ok_per_s"],
                        "gain": on["ok_per_s"] / off["ok_per_s"],
                        "p50_off_ms": off["latency_ms"]["p50"],
                        "p50_default_ms": on["latency_ms"]["p50"]})
    for ip in result.get("inprocess", []):
        srv = _cell(result, "/verify", "default", ip["detect"], ip["concurrency"])
        if srv and ip.get("ok_per_s") and srv.get("ok_per_s"):
            s["serving_overhead"].append({
                "detect": ip["detect"], "concurrency": ip["concurrency"],
                "inprocess_pairs_s": ip["ok_per_s"], "server_pairs_s": srv["ok_per_s"],
                "throughput_ratio_server_over_inprocess": srv["ok_per_s"] / ip["ok_per_s"],
                "inprocess_p50_ms": ip["latency_ms"]["p50"],
                "server_p50_ms": srv["latency_ms"]["p50"],
                "latency_ratio_server_over_inprocess":
                    srv["latency_ms"]["p50"] / ip["latency_ms"]["p50"]})
    best = {}
    for detect in (True, False):
        cells = [x for x in result["cells"] if x["route"] == "/verify" and x["detect"] == detect
                 and x.get("ok_per_s")]
        if cells:
            b = max(cells, key=lambda x: x["ok_per_s"])
            best[str(detect).lower()] = {k: b[k] for k in ("batching", "concurrency",
                                                           "pairs_per_s", "images_per_s")}
    s["best_verify"] = best
    enc = result.get("encoder")
    if enc:
        srv = [x for x in result["cells"] if x["batching"] == "default" and not x["detect"]
               and x["route"] == "/verify" and x.get("encoder_img_s_in_server")]
        if srv:
            top = max(srv, key=lambda x: x["concurrency"])
            s["encoder_in_server"] = {
                "concurrency": top["concurrency"], "batch_size_mean": top["batch_size_mean"],
                "img_s": top["encoder_img_s_in_server"],
                "efficiency": enc["flops_per_image"] * top["encoder_img_s_in_server"]
                / enc["matmul_flop_s"]}
    s["memory_mib"] = {k: v.get("rss_mib") for k, v in result["servers"].items()}
    return s


def plot(result: dict, folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    conc = sorted({x["concurrency"] for x in result["cells"]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, route, unit in ((axes[0], "/verify", "pairs/s"), (axes[1], "/embed", "images/s")):
        for batching, ls in (("default", "-"), ("off", "--")):
            for detect, color in ((True, "tab:blue"), (False, "tab:orange")):
                ys = [(_cell(result, route, batching, detect, c) or {}).get("ok_per_s")
                      for c in conc]
                if any(y for y in ys):
                    ax.plot(conc, [y or np.nan for y in ys], ls, marker="o", color=color,
                            label=f"batching {batching}, detect={str(detect).lower()}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(f"{route} throughput (CPU)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "bench_throughput.png")
    plt.close(fig)

    bins = np.asarray(result["latency_hist_bins_ms"])
    centres = np.sqrt(bins[:-1] * bins[1:])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    for ax, detect in zip(axes, (True, False)):
        for c, color in zip(conc, plt.cm.viridis(np.linspace(0, 0.9, len(conc)))):
            for batching, ls in (("default", "-"), ("off", "--")):
                x = _cell(result, "/verify", batching, detect, c)
                if not x or not x.get("latency_hist"):
                    continue
                h = np.asarray(x["latency_hist"], float)
                cdf = np.cumsum(h) / max(h.sum(), 1)
                ax.plot(centres, cdf, ls, color=color, label=f"c={c}, batching {batching}")
        ax.set_xscale("log")
        used = [i for x in result["cells"] if x["route"] == "/verify"
                for i, n in enumerate(x.get("latency_hist", [])) if n]
        if used:
            ax.set_xlim(bins[max(min(used) - 2, 0)], bins[min(max(used) + 3, len(bins) - 1)])
        ax.set_xlabel("/verify latency (ms)")
        ax.set_title(f"detect={str(detect).lower()}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("share of requests answered within")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "bench_latency.png")
    plt.close(fig)
