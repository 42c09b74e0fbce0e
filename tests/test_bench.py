"""The benchmark scripts (bench/): the load generator's bookkeeping, a real short sweep
against a real server, the peer harness's worker pool, and the report tables."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import closed_loop, load, load_report, peer, peer_worker, report, server


# ------------------------------------------------------------------------- load generator
def test_closed_loop_counts_only_the_measured_window_and_groups_errors():
    calls = []

    async def send(item):
        calls.append(item)
        await asyncio.sleep(0.01)
        if item == "bad":
            return 422, "no_face_detected", None
        return 200, None, {"read": 1.0, "decode": 1.0, "detect": 2.0, "queue": 1.0,
                           "encode": 3.0, "total": 9.0, "batch_size": 2}

    res = asyncio.run(closed_loop.closed_loop(send, ["a", "b", "bad"], concurrency=3,
                                              duration=0.3, warmup=0.1, max_requests=10_000))
    assert res["requests"] < len(calls)  # warm-up requests were sent but not counted
    assert res["ok"] + sum(res["errors"].values()) == res["requests"]
    assert set(res["errors"]) == {"422 no_face_detected"}
    assert 0.25 < res["window_s"] < 0.6
    lat = res["latency_ms"]
    assert 9 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert res["stage_ms"]["detect_pool_wait_and_other"] == pytest.approx(1.0)
    shares = res["stage_share"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert res["batch_size_mean"] == 2


def test_closed_loop_stops_at_max_requests():
    async def send(item):
        await asyncio.sleep(0.001)
        return 200, None, None

    res = asyncio.run(closed_loop.closed_loop(send, [1], concurrency=2, duration=30, warmup=0,
                                       max_requests=20))
    assert 20 <= res["requests"] <= 21
    assert res["window_s"] < 5


def _cell(route, batching, detect, c, per_s):
    return {"route": route, "batching": batching, "detect": detect, "concurrency": c,
            "ok_per_s": per_s, "pairs_per_s": per_s, "images_per_s": 2 * per_s,
            "latency_ms": {"p50": 1000 * c / per_s}}


def test_summary_batching_gain_and_overhead():
    result = {"cells": [_cell("/verify", "off", True, 4, 10.0),
                        _cell("/verify", "default", True, 4, 15.0)],
              "inprocess": [{"detect": True, "concurrency": 4, "ok_per_s": 20.0,
                             "latency_ms": {"p50": 100.0}}],
              "servers": {}}
    s = load_report.summarize(result)
    assert s["batching_gain"] == [pytest.approx({
        "route": "/verify", "detect": True, "concurrency": 4, "off_per_s": 10.0,
        "default_per_s": 15.0, "gain": 1.5, "p50_off_ms": 400.0,
        "p50_default_ms": 1000 * 4 / 15})]
    o = s["serving_overhead"][0]
    assert o["throughput_ratio_server_over_inprocess"] == pytest.approx(0.75)
    assert s["best_verify"]["true"]["batching"] == "default"


def test_rss_of_this_process():
    import os
    assert server.rss_mib(os.getpid()) > 1


@pytest.mark.slow
def test_short_real_sweep(tiny_weights, small_lfw, cache_dir, tmp_path):
    """Two batching settings x detect true/false x 2 clients, for a second each, against a
    real uvicorn: every cell answers, the servers stop, the results and plots are written."""
    out = tmp_path / "load.json"
    assert load.main(["--weights", str(tiny_weights), "--lfw-dir", str(small_lfw),
                      "--cache-dir", str(cache_dir), "--pairs", "8", "--concurrency", "2",
                      "--duration", "1", "--embed-duration", "0.5", "--warmup", "0.2",
                      "--inprocess-concurrency", "2", "--out", str(out),
                      "--plots", str(tmp_path), "--log-dir", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert len(r["cells"]) == 2 * 2 * 2  # batching x detect x route
    for c in r["cells"]:
        assert c["requests"] > 0 and c["ok"] > 0, c
        assert set(c["errors"]) <= {"422 no_face_detected"}
    off = [c for c in r["cells"] if c["batching"] == "off"]
    assert all(c["batch_size_mean"] <= 2 for c in off)
    for v in r["servers"].values():
        assert v["rss_mib"]["idle"] > 50 and v["rss_mib"]["peak"] >= v["rss_mib"]["idle"]
        assert v["exit_code"] is not None  # stopped
    assert len(r["inprocess"]) == 2
    assert 0 < r["encoder"]["efficiency_by_batch"]["1"] < 1
    assert (tmp_path / "bench_throughput.png").stat().st_size > 0
    assert (tmp_path / "bench_latency.png").stat().st_size > 0
    assert "### `/verify` throughput and latency" in report.load_tables(r)


# ------------------------------------------------------------------------------- the peer
def test_peer_worker_face_choice_and_centre_box():
    assert peer_worker.centre_box(250, 250) == (70, 180, 180, 70)
    assert peer_worker.centre_box(500, 500) == (140, 360, 360, 140)
    small_centre, big_corner = (100, 150, 150, 100), (0, 120, 120, 0)
    locs = [small_centre, big_corner]
    assert peer_worker.choose(locs, 250, 250, "largest") == big_corner
    assert peer_worker.choose(locs, 250, 250, "centre") == small_centre


FAKE_WORKER = """
import sys, time, numpy as np
a = sys.argv
lst, out = a[a.index('--images') + 1], a[a.index('--out') + 1]
rels = open(lst).read().split()
print('ready', flush=True); sys.stdin.readline()
s = time.time()
idx = np.array([int(r.split('_')[1]) for r in rels])
np.savez(out, emb=np.stack([idx, idx]).T.astype(np.float32), faces_found=idx % 2,
         times=np.ones((len(rels), 3)) * idx[:, None], start=s, end=time.time())
"""


def test_run_pool_keeps_the_photo_order(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_WORKER)
    rels = [f"p_{i}" for i in range(7)]
    res = peer.run_pool(lambda lst, out, core: [sys.executable, str(script), "--images",
                                                str(lst), "--out", str(out)],
                        rels, [0, 1], tmp_path, "t")
    assert res["emb"][:, 0].tolist() == list(range(7))
    assert res["faces_found"].tolist() == [i % 2 for i in range(7)]
    assert res["wall_s"] >= 0


def test_faceverify_timing_worker(tiny_weights, lfw_images, tmp_path):
    """The faceverify side of the per-image timing, on 4 real photos, 1 and 2 workers."""
    rels = ["Colin_Powell/Colin_Powell_0001.jpg", "Tony_Blair/Tony_Blair_0001.jpg",
            "Laura_Bush/Laura_Bush_0001.jpg", "Hans_Blix/Hans_Blix_0001.jpg"]
    for mode in ("full", "encode"):
        for cores in ([0], [0, 1]):
            r = peer.run_pool(peer.faceverify_cmd(tiny_weights, lfw_images, mode), rels, cores,
                              tmp_path, f"fv-{mode}-{len(cores)}")
            assert (r["times"][:, 2] > 0).all()
            if mode == "full":
                assert (r["times"][:, 1] > 0).all() and (r["faces_found"] >= 1).all()


def test_teacher_crosscheck(tmp_path):
    teacher = tmp_path / "t.npz"
    emb = np.random.default_rng(0).normal(size=(3, 2, 128)).astype(np.float32)
    np.savez(teacher, names=np.array(["lfw/a/a_0001.jpg", "lfw/b/b_0001.jpg", "lfw/c/c.jpg"]),
             emb=emb, faces_found=np.array([1, 2, 0]), detected=np.array([True, True, False]))
    ours = emb[:, 0].copy()
    ours[2] += 0.5
    r = peer.teacher_crosscheck(teacher, ["a/a_0001.jpg", "b/b_0001.jpg", "c/c.jpg"], ours,
                                np.array([1, 2, 0]))
    assert r["compared"] == 2  # b had two faces: the face choice may differ, not compared
    assert r["within_1e-4"] == 1
    assert r["max_distance"] == pytest.approx(0.5 * np.sqrt(128), rel=1e-5)


def test_peer_tables_render():
    acc = {"accuracy_mean": 0.99, "accuracy_std": 0.004, "auc": 0.998,
           "tar_at_far_1e-2": 0.98, "tar_at_far_1e-3": 0.9, "eer": 0.01,
           "photos_without_face": 3}
    timing = {k: {"ms_per_image_wall": 10.0, "photos": 4,
                  "stage_ms_mean": {"decode": 1, "detect_align": 5, "encode": 4}}
              for k in ("full_1core", "full_2core", "encode_1core", "encode_2core")}
    text = report.peer_tables({
        "accuracy": {"face_recognition": acc, "faceverify": dict(acc),
                     "faceverify_minus_face_recognition": {
                         "accuracy_mean": 0, "auc": 0, "tar_at_far_1e-2": 0,
                         "tar_at_far_1e-3": 0}},
        "timing": {"faceverify": timing, "face_recognition": timing,
                   "face_recognition_over_faceverify": {k: 1.0 for k in timing}}})
    assert "99.00 ± 0.40 %" in text and "×1.0" in text


def test_peer_installed_matches_teacher_when_present(lfw_images):
    """With .peer/ installed: our face_recognition run reproduces the precomputed teacher
    vector of a one-face photo exactly."""
    py = Path(peer.ROOT / ".peer/bin/python")
    if not py.exists() or not peer.DEFAULT_TEACHER.exists():
        pytest.skip("face_recognition peer venv (.peer/) or the teacher file is absent")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        rels = ["Colin_Powell/Colin_Powell_0001.jpg"]
        r = peer.run_pool(peer.peer_cmd(str(py), lfw_images, "full", "largest"), rels, [0],
                          Path(tmp), "peer")
    check = peer.teacher_crosscheck(peer.DEFAULT_TEACHER, rels, r["emb"], r["faces_found"])
    assert check["compared"] == 1 and check["within_1e-4"] == 1


WRK_OUTPUT = """Running 12s test @ http://127.0.0.1:41234
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   290.11ms   45.20ms 392.83ms   70.00%
    Req/Sec   219.50     30.00   300.00     80.00%
  Latency Distribution
     50%  287.72ms
     75%  310.00ms
     90%  350.10ms
     99%  392.83ms
  2638 requests in 12.01s, 1.02MB read
  Socket errors: connect 0, read 0, write 0, timeout 2
  Non-2xx or 3xx responses: 2092
Requests/sec:    219.65
Transfer/sec:     86.99KB
"""


def test_wrk_report_is_parsed_into_rates_and_percentiles():
    from bench.wrk_load import parse_wrk
    r = parse_wrk(WRK_OUTPUT)
    assert r["requests"] == 2638 and r["non_2xx"] == 2092 and r["requests_per_s"] == 219.65
    assert r["latency_ms"] == {"p50": 287.72, "p75": 310.0, "p90": 350.1, "p99": 392.83}
    assert r["socket_errors"].endswith("timeout 2")


def test_wrk_bodies_are_multipart_forms_the_service_parses(tiny_weights, tmp_path):
    """The bodies bench.wrk_load sends are what a real server accepts as a /verify form."""
    import httpx

    from bench.wrk_load import BOUNDARY, multipart
    from tests.conftest import lfw_photo
    from tests.service_support import running_server
    a, b = lfw_photo("Colin_Powell", 1).read_bytes(), lfw_photo("Colin_Powell", 2).read_bytes()
    with running_server(tiny_weights, tmp_path / "server.log") as srv:
        r = httpx.post(srv.url + "/verify", content=multipart({"image1": a, "image2": b}),
                       headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                       timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["faces_found"] >= 1
