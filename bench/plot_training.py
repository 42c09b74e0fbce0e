"""Training curves from model cards: loss and monitoring AUC against wall-clock minutes.

    python -m bench.plot_training weights/faceverify-encoder.json weights/eval/fold-a.json \
        weights/eval/fold-b.json --out docs/training_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cards", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for path in args.cards:
        card = json.loads(path.read_text())
        hist = card["training"]["history"]
        label = card["name"]
        ax_loss.plot([h["minutes"] for h in hist], [h["loss"] for h in hist], label=label)
        ev = [h for h in hist if "eval" in h]
        monitor = (card["training"].get("monitor_eval") or {}).get("pairs_file", "")
        ax_auc.plot([h["minutes"] for h in ev], [h["eval"]["auc"] for h in ev], marker="o",
                    label=f"{label} ({monitor})")
    ax_loss.set(xlabel="minutes", ylabel="training loss (total of its terms)", title="loss")
    ax_auc.set(xlabel="minutes", ylabel="ROC AUC", title="monitoring pairs")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
