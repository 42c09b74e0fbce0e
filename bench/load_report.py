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


def median_of_runs(results: list[dict]) -> dict:
    """Several runs of the same `bench.load` command as one result: each cell is the run
    whose throughput is that cell's median over the runs (its latencies, stage times and
    errors come with it, so a cell's figures are one run's, never a mix), with every run's
    throughput kept in `runs_ok_per_s`. On a shared machine a burst of someone else's work
    spoils the cells it overlaps in one run; the median of three sets them aside."""
    if not results:
        raise ValueError("no runs to merge")

    def key(x: dict) -> tuple:
        return (x.get("batching"), x["route"], x["detect"], x["concurrency"])

    def pick(cells: list[dict]) -> dict:
        ranked = sorted(cells, key=lambda x: x.get("ok_per_s") or 0.0)
        cell = dict(ranked[(len(ranked) - 1) // 2])  # the lower middle for an even count
        cell["runs_ok_per_s"] = [x.get("ok_per_s") for x in cells]
        return cell

    merged = {k: v for k, v in results[0].items() if k not in ("cells", "inprocess", "summary")}
    merged["runs"] = [{"command": r.get("command"), "utc_start": r["machine"].get("utc_start"),
                       "loadavg_at_start": r["machine"].get("loadavg_at_start"),
                       "wall_s": r.get("wall_s")} for r in results]
    merged["merge"] = ("each cell: the run with the median throughput of that cell over "
                       f"{len(results)} runs (bench.load_report --median)")
    merged["wall_s"] = sum(r.get("wall_s") or 0 for r in results)
    for field in ("cells", "inprocess"):
        groups: dict[tuple, list[dict]] = {}
        for r in results:
            for x in r.get(field) or []:
                groups.setdefault(key(x), []).append(x)
        if groups:
            merged[field] = [pick(cells) for cells in groups.values()]
    merged["servers"] = {name: {**srv, "runs_rss_mib": [r["servers"].get(name, {}).get("rss_mib")
                                                         for r in results]}
                         for name, srv in results[0]["servers"].items()}
    merged["summary"] = summarize(merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m bench.load_report", description=(
        "Merge several runs of the same `python -m bench.load` command (each cell: the run "
        "with its median throughput) and draw the plots from the merged result."))
    p.add_argument("--median", type=Path, nargs="+", required=True, metavar="RUN_JSON",
                   help="bench.load results of the same command")
    p.add_argument("--out", type=Path, required=True, help="the merged result (JSON)")
    p.add_argument("--plots", default="docs",
                   help="folder for bench_throughput.png and bench_latency.png; '' = none")
    args = p.parse_args(argv)
    runs = [json.loads(f.read_text()) for f in args.median]
    # the same cells measured the same way (the order of --batching may differ: alternating
    # it balances what a server's place in the run costs)
    settings = {json.dumps({k: v for k, v in r["settings"].items()}, sort_keys=True)
                for r in runs}
    cells = {json.dumps(sorted((x["batching"], x["route"], x["detect"], x["concurrency"])
                               for x in r["cells"])) for r in runs}
    if len(settings) > 1 or len(cells) > 1:
        raise SystemExit("the runs measured different cells or settings: "
                         f"{sorted(settings)}")
    merged = median_of_runs(runs)
    merged["runs_files"] = [str(f) for f in args.median]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=1) + "\n")
    if args.plots:
        plot(merged, Path(args.plots))
    print(json.dumps(merged["summary"].get("best_verify"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
