"""Evaluate encoders on the LFW protocols: `python -m model.evaluate`.

View 1: threshold chosen on pairsDevTrain, accuracy on pairsDevTest.
identify: LFW as a 1:N test (model.evaluate.lfw.identification_sets): the first photo of each of the
1,680 people with two or more is enrolled, their other 7,484 photos are searched for
(closed-set rank-1 / rank-5), and so are 1,000 photos of one-photo people, who must not match
(open-set DIR and FPIR at the card's thresholds and at FPIR 10 / 1 / 0.1 %). Exact search,
best face per subject (model.evaluate.metrics.rank_subjects, which the service's search equals).
View 2: pairs.txt, 10 folds; the threshold for fold k is chosen on the other folds and
tested on fold k. For identity-disjoint View 2, give one encoder per group of folds
(`--weights-for-folds 1-5=A.safetensors --weights-for-folds 6-10=B.safetensors`): each fold is
scored by the encoder that never saw its identities, and its threshold is chosen on the other
folds *of the same group* (the ones that encoder is also disjoint from).

Images where MTCNN finds no face are aligned with the centred-face fallback (LFW photos are
face-centred) so every pair gets a score; their number is reported.
Outputs a JSON report and a ROC plot; `--write-card` stores the result and the calibrated
threshold in a model card. `--with-teacher` also scores the same pairs, with the same
protocol, by the distillation teacher (dlib's ResNet: Euclidean distance between its raw
vectors, face_recognition's metric; vectors from the teacher store, model/train/teacher.py), so
student and teacher figures sit side by side.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.encoder.weights import card_path, read_card, write_card
from model.evaluate.lfw import Pair, pair_images, parse_folds, read_pairs
from model.evaluate.metrics import accuracy_at, best_threshold, kfold_accuracy, roc_curve, summarize
from model.face.detect import DETECTORS
from model.face.pipeline import FACE_CHOICES
from model.nn.checkpoint import load_encoder
from model.nn.siamese import embed_crops, pair_distance
from model.train.data import load_aligned_folder

log = logging.getLogger("faceverify.evaluate")
DEFAULT_LFW = os.environ.get("FACEVERIFY_LFW_DIR", "../shared/data/lfw")


def disjointness(card: dict | None, pairs_file: str, folds: set[int]) -> bool | None:
    """Did the encoder's training exclude every identity of these folds? None if unknown."""
    excluded = ((card or {}).get("training") or {}).get("excluded")
    if card is None:
        return None
    if not excluded or excluded.get("pairs_file") != Path(pairs_file).name:
        return False
    ex_folds = excluded.get("folds")
    own = ex_folds == "all" or folds.issubset(set(ex_folds))
    init = card["training"].get("init_from")
    if own and init:  # a warm start: the weights it started from must be disjoint too
        return bool(disjointness({"training": init}, pairs_file, folds))
    return own


TEACHER = Path("teacher:dlib")  # stands for the distillation teacher where weights go


def score_pairs_by_teacher(pairs: list[Pair], lfw_dir: Path) -> np.ndarray:
    from model.train import teacher
    images = lfw_dir / "lfw-deepfunneled"
    paths, left, right = pair_images(pairs)
    store, _ = teacher.open_store()
    vectors = teacher.lookup(store, [images / x for x in paths])[:, 0]
    return np.linalg.norm(vectors[left] - vectors[right], axis=1)


class AlignedLfw:
    """LFW's images aligned for each preprocessing spec an evaluation needs (built once per
    spec and cached on disk by model.train.data). `face_choice` (model.face.pipeline.FACE_CHOICES):
    which face of a photo with several counts; LFW's photos are centred on the person the
    pairs name, so "central" by default."""

    def __init__(self, lfw_dir: Path, face_choice: str = "central",
                 detector: str = "auto", **kw: Any):
        self.root = Path(lfw_dir) / "lfw-deepfunneled"
        self.face_choice = face_choice
        self.detector = detector
        self.kw = kw
        self._sets: dict[str, Any] = {}
        self.detectors_used: set[str] = set()  # what "auto" resolved to, per spec

    def __call__(self, spec):
        from model.face.pipeline import detector_for
        self.detectors_used.add(detector_for(spec, self.detector))
        if spec.version not in self._sets:
            self._sets[spec.version] = load_aligned_folder(
                self.root, "lfw", spec=spec, face_choice=self.face_choice,
                detector=self.detector, **self.kw)
        return self._sets[spec.version]


def embed_aligned(encoder, crops: np.ndarray, graph: Path | None = None) -> torch.Tensor:
    """Embeddings of aligned crops by the torch module, or by an ONNX graph of it (the int8
    graph of model/convert/quantize.py, as the service runs it)."""
    if graph is None:
        return embed_crops(encoder, crops)
    from model.nn.runtime import OnnxEncoder
    session = OnnxEncoder(encoder, graph=Path(graph).read_bytes())
    return torch.cat([session(encoder.spec.to_tensor(np.asarray(crops[i:i + 64])))
                      for i in range(0, len(crops), 64)])


def score_pairs(pairs: list[Pair], weights: Path, lfw: AlignedLfw, device: str, flip: bool | None,
                lfw_dir: Path = Path(DEFAULT_LFW), graph: Path | None = None
                ) -> tuple[np.ndarray, dict | None, int, bool]:
    """Distances for pairs under one encoder, how many of their images had no face, and
    whether mirror-image test-time augmentation was used.

    flip: mirror-image test-time augmentation; None → what the encoder's model card says."""
    if weights == TEACHER:
        return score_pairs_by_teacher(pairs, lfw_dir), None, 0, False
    encoder, card = load_encoder(weights, device=device)
    if flip is not None:
        encoder.flip_tta = flip
    aligned = lfw(encoder.spec)
    index = aligned.index()
    paths, left, right = pair_images(pairs)
    rows = [index[f"lfw/{x}"] for x in paths]
    no_face = sum(aligned.methods[r] != "detected" for r in rows)
    emb = embed_aligned(encoder, aligned.crops[rows], graph)
    d = pair_distance(emb[torch.from_numpy(left)], emb[torch.from_numpy(right)])
    return d.numpy(), card, no_face, encoder.flip_tta


def evaluate_view2(lfw_dir: Path, groups: dict[str, Path], lfw, device: str, flip: bool,
                   graph: Path | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    pairs_file = lfw_dir / "pairs.txt"
    pairs = read_pairs(pairs_file)
    all_folds = sorted({p.fold for p in pairs})
    d = np.full(len(pairs), np.nan)
    same = np.array([p.same for p in pairs])
    fold_of = np.array([p.fold for p in pairs])
    group_reports, fold_results = [], []
    for spec, weights in groups.items():
        folds = parse_folds(spec) or set(all_folds)
        sel = np.isin(fold_of, sorted(folds))
        dist_g, card, no_face, flip_used = score_pairs(
            [p for p, s in zip(pairs, sel) if s], weights, lfw, device, flip, lfw_dir, graph)
        d[sel] = dist_g
        results = kfold_accuracy(dist_g, same[sel], fold_of[sel])
        fold_results += results
        group_reports.append({
            "folds": sorted(folds), "weights": str(weights),
            "weights_sha256": (card or {}).get("weights_sha256"),
            "identity_disjoint": disjointness(card, str(pairs_file), folds),
            "images_without_face": int(no_face), "flip_tta": flip_used,
            "accuracy_mean": float(np.mean([r.accuracy for r in results])),
            **summarize(dist_g, same[sel])})
    if np.isnan(d).any():
        missing = sorted(set(fold_of[np.isnan(d)].tolist()))
        raise SystemExit(f"folds {missing} have no encoder; give --weights-for-folds for them")
    fold_results.sort(key=lambda r: r.fold)
    accs = np.array([r.accuracy for r in fold_results])
    report = {
        "protocol": "LFW View 2 (pairs.txt, 10 folds; threshold chosen on the other folds "
                    "scored by the same encoder)",
        "identity_disjoint": all(g["identity_disjoint"] for g in group_reports),
        "flip_tta": all(g["flip_tta"] for g in group_reports),
        "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
        "folds": [{"fold": r.fold, "threshold": r.threshold, "accuracy": r.accuracy}
                  for r in fold_results],
        "threshold_mean": float(np.mean([r.threshold for r in fold_results])),
        "encoders": group_reports,
        **{k: v for k, v in summarize(d, same).items()},
    }
    return report, d, same


def evaluate_view1(lfw_dir: Path, weights: Path, lfw, device: str, flip: bool
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    dev_train = read_pairs(lfw_dir / "pairsDevTrain.txt")
    dev_test = read_pairs(lfw_dir / "pairsDevTest.txt")
    d_train, card, _, _ = score_pairs(dev_train, weights, lfw, device, flip, lfw_dir)
    d_test, _, no_face, flip_used = score_pairs(dev_test, weights, lfw, device, flip, lfw_dir)
    same_train = np.array([p.same for p in dev_train])
    same_test = np.array([p.same for p in dev_test])
    t = best_threshold(d_train, same_train)
    report = {
        "protocol": "LFW View 1 (threshold chosen on pairsDevTrain, tested on pairsDevTest)",
        "identity_disjoint": disjointness(card, "pairsDevTest.txt", {1}),
        "weights": str(weights), "weights_sha256": (card or {}).get("weights_sha256"),
        "threshold": t, "accuracy_mean": accuracy_at(d_test, same_test, t),
        "accuracy_std": None, "images_without_face": int(no_face), "flip_tta": flip_used,
        **summarize(d_test, same_test),
    }
    return report, d_test, same_test


def evaluate_identify(lfw_dir: Path, weights: Path, lfw: AlignedLfw, device: str,
                      flip: bool | None, non_mated: int = 1000, seed: int = 0,
                      graph: Path | None = None, fpir: float = 0.01) -> dict[str, Any]:
    from model.evaluate.lfw import identification_sets, identity_of
    from model.evaluate.metrics import identification_summary, rank_subjects
    sets = identification_sets(Path(lfw_dir) / "lfw-deepfunneled", non_mated, seed)
    emb_all, all_paths, _, card, distances_card, encoder, _ = embed_lfw(weights, lfw, device,
                                                                        flip, graph)
    at = {p: i for i, p in enumerate(all_paths)}
    paths = sets.gallery + sets.mated + sets.non_mated
    rows = [at[x] for x in paths]
    emb = emb_all[rows]
    aligned = lfw(encoder.spec)
    people = {identity_of(x): i for i, x in enumerate(sets.gallery)}
    g = len(sets.gallery)
    truth = np.array([people.get(identity_of(x), -1) for x in paths[g:]])
    ranked, distances = rank_subjects(emb[:g], np.arange(g), emb[g:], top_k=5)
    th = (distances_card or {}).get("threshold") or {}
    thresholds = {k: th[c] for k, c in (("identify_default_far_1e-3", "at_far_1e-3"),
                                         ("verify_threshold", "value")) if c in th}
    report = {"protocol": "lfw_identify", "gallery": g,
              "definition": "gallery: first photo of each person with >= 2 photos; mated "
                            "probes: their other photos; non-mated: one photo each of "
                            f"{len(sets.non_mated)} one-photo people (seed {seed})",
              "weights": str(weights), "weights_sha256": (card or {}).get("weights_sha256"),
              "identity_disjoint": disjointness(card, str(Path(lfw_dir) / "pairs.txt"),
                                                set(range(1, 11))),
              "flip_tta": encoder.flip_tta,
              "no_face": int(sum(aligned.methods[aligned.index()[f"lfw/{x}"]] != "detected"
                                 for x in paths)),
              **identification_summary(ranked, distances, truth, thresholds)}
    table = ((distances_card or {}).get("impostors") or {}).get("table")
    if table:
        report["default_threshold"] = open_set_at_fpir(emb_all, all_paths, table, fpir,
                                                       seed=seed)
    else:
        log.warning("the model card has no impostor table (python -m model.evaluate "
                    "--protocol impostors --write-card …): identify's FPIR rule not measured")
    return report


def embed_lfw(weights: Path, lfw: AlignedLfw, device: str, flip: bool | None,
              graph: Path | None = None):
    """Every LFW photo embedded: (embeddings (n, d), relative paths, identities, the card of
    the weights, the card that describes these embeddings' distances — the graph's when a
    graph embeds them —, the encoder, the number without a detected face)."""
    encoder, card = load_encoder(weights, device=device)
    if flip is not None:
        encoder.flip_tta = flip
    aligned = lfw(encoder.spec)
    emb = embed_aligned(encoder, aligned.crops, graph).numpy().astype(np.float32)
    distances_card = card if graph is None else json.loads(card_path(graph).read_text())
    paths = [p.split("/", 1)[1] for p in aligned.paths]
    no_face = sum(m != "detected" for m in aligned.methods)
    return emb, paths, list(aligned.identities), card, distances_card, encoder, no_face


def evaluate_impostors(lfw_dir: Path, weights: Path, lfw: AlignedLfw, device: str,
                       flip: bool | None, graph: Path | None = None) -> dict[str, Any]:
    """The impostor table (model/evaluate/open_set.py) over every cross-identity pair of LFW."""
    from model.evaluate.open_set import impostor_table
    emb, paths, identities, card, _, encoder, no_face = embed_lfw(weights, lfw, device, flip,
                                                                  graph)
    labels = np.unique(identities, return_inverse=True)[1]
    t0 = time.perf_counter()
    table = impostor_table(emb, labels)
    return {"protocol": "impostors",
            "set": f"LFW deep-funneled: every cross-identity pair of its {len(paths):,} photos "
                   f"({labels.max() + 1:,} people)",
            "pairs": table["pairs"], "table": table["rows"],
            "photos": len(paths), "no_face": int(no_face),
            "weights": str(weights), "weights_sha256": (card or {}).get("weights_sha256"),
            "identity_disjoint": disjointness(card, str(Path(lfw_dir) / "pairs.txt"),
                                              set(range(1, 11))),
            "flip_tta": encoder.flip_tta, "seconds": round(time.perf_counter() - t0, 1)}


def open_set_at_fpir(emb: np.ndarray, paths: list[str], table: list[dict], fpir: float,
                     sizes: tuple[int | None, ...] = (10, 100, 1000, None), seed: int = 0
                     ) -> dict[str, Any]:
    """Identify's default rule (threshold at FAR = fpir / N from the impostor table) on
    seeded sub-galleries of LFW, and the two choices around it, measured:

    - sizes: the first photo of each of N people with >= 2 photos (seeded choice; None: all
      1,680) enrolled; their other photos mated; non-mated: every one-photo person (4,069)
      plus the first photo of each two-photo-or-more person left out;
    - N as faces or as subjects, on a gallery of 3 faces per subject (people with >= 4
      photos);
    - the ratio test (nearest subject's distance over the second's), whose threshold is set
      at this FPIR on one size and then applied to the others: does it hold FPIR as N moves?"""
    from model.evaluate.lfw import identity_of
    from model.evaluate.metrics import rank_subjects, threshold_at_fpir
    from model.evaluate.open_set import threshold_for_fpir
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_person.setdefault(identity_of(p), []).append(i)
    several = sorted(n for n, rows in by_person.items() if len(rows) >= 2)
    single = [rows[0] for n, rows in sorted(by_person.items()) if len(rows) == 1]

    def search(gallery_rows, labels, probe_rows):
        ranked, d = rank_subjects(emb[gallery_rows], labels, emb[probe_rows], top_k=2)
        return ranked, d

    out: dict[str, Any] = {"fpir_target": fpir, "rule": "threshold = impostor table distance "
                           "at FAR = fpir_target / N (N: enrolled faces), interpolated in "
                           "log FAR (model.evaluate.open_set.threshold_for_fpir)", "sizes": []}
    ratio_rho = None
    for size in sizes:
        chosen = sorted(rng.choice(len(several), size=size, replace=False)) \
            if size is not None and size < len(several) else range(len(several))
        people = [several[i] for i in chosen]
        left_out = sorted(set(several) - set(people))
        gallery_rows = [by_person[n][0] for n in people]
        mated_rows = [r for n in people for r in by_person[n][1:]]
        truth = np.array([i for i, n in enumerate(people) for _ in by_person[n][1:]])
        non_rows = single + [by_person[n][0] for n in left_out]
        labels = np.arange(len(people))
        m_ranked, m_d = search(gallery_rows, labels, mated_rows)
        _, n_d = search(gallery_rows, labels, non_rows)
        th = threshold_for_fpir(table, fpir, len(gallery_rows))
        correct = m_ranked[:, 0] == truth
        row = {"people": len(people), "faces": len(gallery_rows), "mated_probes": len(mated_rows),
               "non_mated_probes": len(non_rows), "threshold": round(th.distance, 4),
               "far": th.far, "floored": th.floored,
               "fpir": float(np.mean(n_d[:, 0] < th.distance)),
               "dir": float(np.mean(correct & (m_d[:, 0] < th.distance))),
               "rank1": float(correct.mean())}
        # the best a distance threshold can do at this FPIR here (set on these very
        # non-mated probes), and the ratio test's
        oracle = threshold_at_fpir(n_d[:, 0], fpir)
        row["oracle_distance"] = {"threshold": round(oracle, 4),
                                  "dir": float(np.mean(correct & (m_d[:, 0] < oracle)))}
        if len(people) >= 2:
            m_r, n_r = m_d[:, 0] / m_d[:, 1], n_d[:, 0] / n_d[:, 1]
            rho = threshold_at_fpir(n_r, fpir)
            row["oracle_ratio"] = {"threshold": round(rho, 4),
                                   "dir": float(np.mean(correct & (m_r < rho)))}
            if ratio_rho is None and len(people) >= 100:
                ratio_rho = rho  # calibrated on the first size of 100 or more
            if ratio_rho is not None:
                row["ratio_at_100_people_threshold"] = {
                    "threshold": round(ratio_rho, 4),
                    "fpir": float(np.mean(n_r < ratio_rho)),
                    "dir": float(np.mean(correct & (m_r < ratio_rho)))}
        out["sizes"].append(row)

    # N = faces or N = subjects, with several faces per subject
    multi = sorted(n for n, rows in by_person.items() if len(rows) >= 4)
    g_rows = [r for n in multi for r in by_person[n][:3]]
    g_labels = np.array([i for i, n in enumerate(multi) for _ in range(3)])
    mated_rows = [r for n in multi for r in by_person[n][3:]]
    truth = np.array([i for i, n in enumerate(multi) for _ in by_person[n][3:]])
    non_rows = single + [by_person[n][0] for n in several if n not in set(multi)]
    m_ranked, m_d = rank_subjects(emb[g_rows], g_labels, emb[mated_rows], top_k=1)
    _, n_d = rank_subjects(emb[g_rows], g_labels, emb[non_rows], top_k=1)
    correct = m_ranked[:, 0] == truth
    choice = {"people": len(multi), "faces": len(g_rows), "non_mated_probes": len(non_rows),
              "mated_probes": len(mated_rows)}
    for name, n in (("n_faces", len(g_rows)), ("n_subjects", len(multi))):
        th = threshold_for_fpir(table, fpir, n)
        choice[name] = {"n": n, "threshold": round(th.distance, 4),
                        "fpir": float(np.mean(n_d[:, 0] < th.distance)),
                        "dir": float(np.mean(correct & (m_d[:, 0] < th.distance)))}
    out["faces_or_subjects"] = choice
    return out


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for label, (d, same) in curves.items():
        far, tar, _ = roc_curve(d, same)
        ax.plot(np.clip(far, 1e-4, 1), tar, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def update_card(card_file: Path, key: str, report: dict[str, Any]) -> None:
    """Store an evaluation in a model card and calibrate its threshold from it."""
    weights = card_file.with_suffix(".safetensors")
    card = read_card(weights)
    if card is None:
        raise SystemExit(f"no model card at {card_file}")
    card.setdefault("evaluation", {})[key] = {
        k: report[k] for k in ("protocol", "identity_disjoint", "flip_tta", "face_choice", "detector",
                               "accuracy_mean",
                               "accuracy_std",
                               "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "pairs")
        if k in report} | {"encoders": [
            {k: g[k] for k in ("folds", "weights", "weights_sha256", "identity_disjoint")}
            for g in report.get("encoders", [])]}
    if report.get("teacher"):
        card["evaluation"][key]["teacher_same_pairs"] = {
            k: report["teacher"][k] for k in ("accuracy_mean", "accuracy_std", "auc", "eer",
                                              "tar_at_far_1e-2", "tar_at_far_1e-3", "note")
            if k in report["teacher"]}
    if "graph_file" in card and report.get("graph", {}).get("sha256") != card["graph_sha256"]:
        raise SystemExit(f"{card_file} describes {card['graph_file']}, not the graph evaluated")
    thr = report.get("threshold_mean", report.get("threshold"))
    # The threshold holds for embeddings made the way the evaluation made them.
    card["inference"] = {"flip_tta": bool(report["flip_tta"])}
    card["threshold"] = {
        "value": round(float(thr), 4),
        "method": f"mean of the per-fold accuracy-maximising thresholds of {key} " + (
            "(identity-disjoint encoders of the same recipe)"
            if len(report.get("encoders", [])) > 1 else "(this encoder, each fold's "
            "threshold chosen on the other folds)"),
        "at_far_1e-2": report["threshold_at_far_1e-2"],
        "at_far_1e-3": report["threshold_at_far_1e-3"],
    }
    if "graph_file" in card:  # an int8 graph's card (model/convert/quantize.py): JSON only
        card_file.write_text(json.dumps(card, indent=2) + "\n")
    else:
        write_card(weights, card)


def write_impostors(card_file: Path, report: dict[str, Any]) -> None:
    """Store the impostor table in a model card (the float32 card, or an int8 graph's: each
    runs with its own distances), with the set, the face choice and the command."""
    card = json.loads(card_file.read_text()) if card_file.exists() else None
    if card is None:
        raise SystemExit(f"no model card at {card_file}")
    if "graph_file" in card and report.get("graph", {}).get("sha256") != card["graph_sha256"]:
        raise SystemExit(f"{card_file} describes {card['graph_file']}, not the graph evaluated")
    if "graph_file" not in card and report.get("graph"):
        raise SystemExit(f"{card_file} is the float32 card; a graph's table goes into its own")
    card["impostors"] = {k: report[k] for k in (
        "set", "pairs", "face_choice", "detector", "flip_tta", "no_face", "identity_disjoint",
        "command", "table") if k in report}
    if "graph_file" in card:  # an int8 graph's card (model/convert/quantize.py): JSON only
        card_file.write_text(json.dumps(card, indent=2) + "\n")
    else:
        write_card(card_file.with_suffix(".safetensors"), card)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=["view1", "view2", "identify", "impostors"],
                   default="view2",
                   help="view1, view2: verification accuracy; identify: LFW as a 1:N test, "
                        "with identify's default threshold rule at seeded gallery sizes; "
                        "impostors: the FAR -> distance table over every cross-identity pair "
                        "of LFW, which --write-card stores in the card (identify's default "
                        "threshold is read from it)")
    p.add_argument("--fpir", type=float, default=0.01,
                   help="identify: the FPIR target of the default threshold rule")
    p.add_argument("--weights", type=Path, help="one encoder for every fold")
    p.add_argument("--weights-for-folds", action="append", default=[], metavar="FOLDS=PATH",
                   help="View 2: the encoder that scores these folds (repeatable)")
    p.add_argument("--lfw-dir", type=Path, default=Path(DEFAULT_LFW),
                   help="folder with lfw-deepfunneled/ and the pairs files")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--face-choice", choices=FACE_CHOICES, default="central",
                   help="which face of a photo with several counts: central (LFW's photos are "
                        "centred on the person the pairs name; face_recognition's reference "
                        "figure uses it) or largest (the service's default)")
    p.add_argument("--detector", choices=["auto", *sorted(DETECTORS)], default="auto",
                   help="the face detector (model/face/detect.py); auto: as the encoder's "
                        "preprocessing needs (model.face.pipeline.detector_for)")
    p.add_argument("--flip", choices=["on", "off", "card"], default="card",
                   help="mirror-image test-time augmentation: on, off, or as each model card "
                        "says (default); --write-card records the choice in the card")
    p.add_argument("--graph", type=Path,
                   help="embed with this ONNX graph of the weights (the int8 graph of "
                        "model.convert.quantize) instead of the torch module; its card is the one "
                        "--write-card should name")
    p.add_argument("--out", type=Path, help="JSON report path")
    p.add_argument("--roc", type=Path, help="ROC plot PNG path")
    p.add_argument("--label", default="faceverify", help="name in the ROC legend")
    p.add_argument("--write-card", type=Path, help="store the result in this model card")
    p.add_argument("--with-teacher", action="store_true",
                   help="also score the same pairs by the distillation teacher (needs the "
                        "`distill` extra, or its vectors in the teacher store)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    kw = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    flip = {"on": True, "off": False, "card": None}[args.flip]
    lfw = AlignedLfw(args.lfw_dir, face_choice=args.face_choice, detector=args.detector, **kw)
    if args.protocol == "impostors":
        if not args.weights or args.with_teacher or args.roc:
            raise SystemExit("impostors takes --weights (and --graph, --write-card), no "
                             "--with-teacher or --roc")
        report = evaluate_impostors(args.lfw_dir, args.weights, lfw, args.device, flip,
                                    graph=args.graph)
        report["face_choice"] = args.face_choice
        report["detector"] = ", ".join(sorted(lfw.detectors_used)) or args.detector
        report["command"] = "python -m model.evaluate " + " ".join(
            argv if argv is not None else sys.argv[1:])
        if args.graph:
            from model.encoder.weights import sha256_of
            report["graph"] = {"file": str(args.graph), "sha256": sha256_of(args.graph)}
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        if args.write_card:
            write_impostors(card_path(args.write_card), report)
        log.info("impostors: %d pairs, %s", report["pairs"], ", ".join(
            f"FAR {r['far']:g} -> {r['distance']:.4f}" for r in report["table"][::3]))
        return 0
    if args.protocol == "identify":
        if not args.weights or args.with_teacher or args.roc or args.write_card:
            raise SystemExit("identify takes --weights, and no --with-teacher, --roc or "
                             "--write-card")
        report = evaluate_identify(args.lfw_dir, args.weights, lfw, args.device, flip,
                                   graph=args.graph, fpir=args.fpir)
        report["face_choice"] = args.face_choice
        report["detector"] = ", ".join(sorted(lfw.detectors_used)) or args.detector
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        log.info("lfw_identify: rank-1 %.2f%%, rank-5 %.2f%%, identity-disjoint: %s",
                 100 * report["rank1"], 100 * report["rank5"], report["identity_disjoint"])
        return 0
    if args.protocol == "view2":
        groups = {k: Path(v) for k, v in (s.split("=", 1) for s in args.weights_for_folds)}
        if args.weights:
            groups = {"1-10": args.weights}
        if not groups:
            raise SystemExit("give --weights or --weights-for-folds")
        report, d, same = evaluate_view2(args.lfw_dir, groups, lfw, args.device, flip,
                                         graph=args.graph)
        key = "lfw_view2"
    else:
        if not args.weights:
            raise SystemExit("View 1 needs --weights")
        report, d, same = evaluate_view1(args.lfw_dir, args.weights, lfw, args.device, flip)
        key = "lfw_view1"
    report["face_choice"] = args.face_choice
    report["detector"] = ", ".join(sorted(lfw.detectors_used)) or args.detector
    if args.graph:
        from model.encoder.weights import sha256_of
        report["graph"] = {"file": str(args.graph), "sha256": sha256_of(args.graph)}
    curves = {f"{args.label} (AUC {report['auc']:.3f})": (d, same)}
    if args.with_teacher:
        if args.protocol == "view2":
            teacher_report, td, tsame = evaluate_view2(args.lfw_dir, {"1-10": TEACHER}, lfw,
                                                       args.device, False)
        else:
            teacher_report, td, tsame = evaluate_view1(args.lfw_dir, TEACHER, lfw, args.device,
                                                       False)
        teacher_report["identity_disjoint"] = None  # trained elsewhere; no card to prove it
        teacher_report["note"] = ("dlib_face_recognition_resnet_model_v1 (face_recognition's "
                                  "encoder), raw vectors, Euclidean distance; trained by its "
                                  "author on ~3 M faces of 7,485 people chosen to avoid LFW")
        report["teacher"] = teacher_report
        curves[f"teacher: dlib ResNet (AUC {teacher_report['auc']:.3f})"] = (td, tsame)
        log.info("teacher on the same pairs: accuracy %.2f%%, AUC %.4f, TAR@FAR1%% %.2f%%",
                 100 * teacher_report["accuracy_mean"], teacher_report["auc"],
                 100 * teacher_report["tar_at_far_1e-2"])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.roc:
        plot_roc(curves, args.roc)
    if args.write_card:
        update_card(card_path(args.write_card), key, report)
    acc = report["accuracy_mean"]
    std = report.get("accuracy_std")
    log.info("%s: accuracy %.2f%%%s, AUC %.4f, TAR@FAR1%% %.2f%%, identity-disjoint: %s",
             key, 100 * acc, f" ± {100 * std:.2f}" if std is not None else "", report["auc"],
             100 * report["tar_at_far_1e-2"], report["identity_disjoint"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
