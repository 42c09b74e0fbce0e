"""Render a model card (the JSON written beside the weights) as short Markdown."""
from __future__ import annotations

from typing import Any


def _pct(x: Any) -> str:
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "—"


def render_markdown(card: dict[str, Any]) -> str:
    thr = card.get("threshold", {})
    evaluated_with = next((ev.get("detector") for ev in (card.get("evaluation") or {}).values()
                           if isinstance(ev, dict) and ev.get("detector")),
                          (card.get("impostors") or {}).get("detector"))
    preprocessing_line = (
        f"- Preprocessing: {card.get('preprocessing', {}).get('description', '')} "
        f"(version `{card.get('preprocessing', {}).get('version')}`)"
        + (f"; evaluated with the {evaluated_with} detector" if evaluated_with else ""))
    lines = [
        f"# Model card: {card.get('name')} {card.get('version', '')}".rstrip(),
        "",
        f"- Architecture: `{card.get('architecture')}`",
        f"- Embedding: {card.get('embedding_dim')}-d, L2-normalised; distance: {card.get('distance')}",
        preprocessing_line,
        f"- Mirror-image test-time augmentation: "
        f"{'on' if (card.get('inference') or {}).get('flip_tta') else 'off'}",
        f"- Weights: `{card.get('weights_file')}`, sha256 `{card.get('weights_sha256')}`",
        f"- Code commit: `{card.get('code_commit')}`",
        "",
        "## Threshold",
        f"- Verified when distance < **{thr.get('value')}** ({thr.get('method', '')})",
    ]
    for key, label in (("at_far_1e-2", "FAR 1 %"), ("at_far_1e-3", "FAR 0.1 %")):
        if thr.get(key) is not None:
            lines.append(f"- Threshold at {label}: {thr[key]}")
    ev = card.get("evaluation") or {}
    lines += ["", "## Evaluation"]
    if not ev:
        lines.append("Not evaluated yet: run `python -m model.evaluate` (see docs/accuracy.md).")
    for name, res in ev.items():
        if not isinstance(res, dict):
            continue
        acc = res.get("accuracy_mean")
        std = res.get("accuracy_std")
        lines.append(
            f"- **{name}** — {res.get('protocol', '')}: accuracy {_pct(acc)}"
            + (f" ± {100 * std:.2f}" if std is not None else "")
            + f", AUC {res.get('auc', float('nan')):.4f}, TAR@FAR1% {_pct(res.get('tar_at_far_1e-2'))},"
            f" TAR@FAR0.1% {_pct(res.get('tar_at_far_1e-3'))}, EER {_pct(res.get('eer'))}")
    for name, res in ev.items():
        teacher = res.get("teacher_same_pairs") if isinstance(res, dict) else None
        if teacher:
            lines.append(
                f"- face_recognition's recipe (dlib: HOG, its 5-point predictor, its ResNet; the "
                f"distillation teacher) on the same pairs ({name}): accuracy "
                f"{_pct(teacher.get('accuracy_mean'))} ± {100 * teacher.get('accuracy_std', 0):.2f}"
                f", AUC {teacher.get('auc', float('nan')):.4f}, TAR@FAR1% "
                f"{_pct(teacher.get('tar_at_far_1e-2'))}, TAR@FAR0.1% {_pct(teacher.get('tar_at_far_1e-3'))}")
    imp = card.get("impostors") or {}
    if imp.get("table"):
        lines += ["", "## Impostor table (identify's default threshold reads it)", "",
                  (f"{imp.get('set')}; {imp.get('pairs', 0):,} pairs, face choice "
                   f"{imp.get('face_choice')}. `{imp.get('command')}`"), "",
                  "| FAR | distance | pairs below |", "|---|---|---|"]
        lines += [f"| {r['far']:g} | {r['distance']:.4f} | {r['pairs_below']:,} |"
                  for r in imp["table"]]
    pre = card.get("preprocessing") or {}
    if "geometry" in pre:
        lines += ["", "## Preprocessing spec (serving and evaluation read it from this card)"]
        for key in ("version", "crop_size", "detector", "landmarks", "geometry",
                    "padding", "mean", "std"):
            if key in pre:
                label = ("reference detector (the box dlib's landmarks were fitted in)"
                         if key == "detector" else key.replace("_", " "))
                lines.append(f"- {label}: `{pre[key]}`")
    tr = card.get("training") or {}
    lines += ["", "## Training"]
    for key in ("command", "data", "images", "identities", "excluded", "loss", "distill",
                "init_from", "epochs", "steps", "wall_clock_minutes", "device"):
        if key in tr:
            lines.append(f"- {key.replace('_', ' ')}: {tr[key]}")
    source = tr.get("source")
    if source:
        lines += ["", "## Provenance",
                  f"- Source file: `{source.get('file')}` from the Python package "
                  f"`{source.get('package')}`, {source.get('bytes')} bytes, sha256 "
                  f"`{source.get('sha256')}`",
                  f"- Licence: {source.get('licence')}"]
    if tr.get("commands"):
        lines += ["", "## From the source file to these weights", "", "```bash",
                  *tr["commands"], "```"]
    lines.append("")
    return "\n".join(lines)
