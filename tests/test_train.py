"""Training CLI: a short real run learns, resumes, and DDP replicas stay identical."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from model.checkpoint import load_encoder
from tests.conftest import ROOT

TINY_ARCH = json.dumps({"arch": "mobilefacenet", "embedding_dim": 32, "width": 0.25,
                        "depth": [1, 1, 1, 1, 1], "final_channels": 64})


def train_args(small_lfw, cache_dir, tmp_path, *extra):
    return ["--data", f"lfw={small_lfw / 'lfw-deepfunneled'}", "--arch", TINY_ARCH,
            "--batch-p", "8", "--batch-k", "4", "--warmup-steps", "5", "--lr", "0.003", "--cache-dir", str(cache_dir),
            "--run-dir", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "weights"),
            "--eval-pairs", str(small_lfw / "pairsDevTest.txt"), "--no-progress",
            "--device", "cpu", *extra]


def test_short_training_run_lowers_the_loss_and_writes_weights(small_lfw, small_aligned,
                                                               cache_dir, tmp_path):
    from model.train import main
    main(train_args(small_lfw, cache_dir, tmp_path, "--name", "tiny", "--epochs", "16",
                    "--eval-every", "8", "--seed", "1"))
    history = [json.loads(line) for line in (tmp_path / "runs/tiny/log.jsonl").read_text().splitlines()]
    assert len(history) == 16
    first = sum(h["loss"] for h in history[:4]) / 4
    last = sum(h["loss"] for h in history[-4:]) / 4
    assert last < 0.85 * first, (first, last)
    assert "eval" in history[7] and "eval" in history[-1]
    weights = tmp_path / "weights/tiny.safetensors"
    encoder, card = load_encoder(weights)
    assert card["embedding_dim"] == 32 and card["threshold"]["value"] > 0
    assert card["training"]["images"] == 120 and card["training"]["epochs"] == 16
    assert (tmp_path / "weights/tiny.md").exists()


def test_training_resumes_from_its_checkpoint(small_lfw, small_aligned, cache_dir, tmp_path):
    from model.train import main
    args = train_args(small_lfw, cache_dir, tmp_path, "--name", "resume", "--eval-pairs", "none")
    main(args + ["--epochs", "2"])
    main(args + ["--epochs", "4", "--resume"])
    lines = (tmp_path / "runs/resume/log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]
    _, card = load_encoder(tmp_path / "weights/resume.safetensors")
    assert card["training"]["steps"] == 4 * 3


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(small_lfw, small_aligned, cache_dir,
                                                          tmp_path):
    replicas = tmp_path / "replicas"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "model.train",
           *train_args(small_lfw, cache_dir, tmp_path, "--name", "ddp", "--max-steps", "4",
                       "--eval-pairs", "none", "--threads", "1"),
           "--save-replicas", str(replicas)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = load_file(str(replicas / "rank0.safetensors"))
    b = load_file(str(replicas / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert (tmp_path / "weights/ddp.safetensors").exists()  # only rank 0 writes the weights
