"""Training CLI: a short real run learns, resumes, and DDP replicas stay identical."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from model.nn.checkpoint import load_encoder
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
    from model.train.loop import main
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
    from model.train.loop import main
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
           "--nproc-per-node", "2", "-m", "model.train.loop",
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


def test_distillation_run_pulls_the_student_towards_the_teacher(small_lfw, small_aligned,
                                                               cache_dir, tmp_path):
    """Same data, seed and steps, with and without the teacher: with it, the student's pair
    similarities sit much closer to the teacher's (centred) ones, and the card says how."""
    import numpy as np

    from model.nn.siamese import embed_crops
    from model.train import teacher
    from model.train.loop import main
    from tests.test_teacher import precomputed_or_skip
    precomputed_or_skip()
    store = tmp_path / "teacher.npz"
    common = ["--epochs", "12", "--eval-pairs", "none", "--extra-per-batch", "8", "--lr", "0.01",
              "--teacher-store", str(store), "--seed", "2"]
    main(train_args(small_lfw, cache_dir, tmp_path, "--name", "kd", *common,
                    "--distill", "relational", "--distill-weight", "10",
                    "--contrastive-weight", "0"))
    main(train_args(small_lfw, cache_dir, tmp_path, "--name", "plain", *common))

    files = [small_lfw / "lfw-deepfunneled" / p.split("/", 1)[1] for p in small_aligned.paths]
    targets, _ = teacher.centred_targets(teacher.lookup(teacher.TeacherStore(store), files)[:, 0])
    upper = np.triu_indices(len(files), 1)
    teacher_sim = (targets @ targets.T)[upper]

    def relation_error(name: str) -> float:
        """Mean squared gap between the student's and the teacher's pair similarities."""
        encoder, _ = load_encoder(tmp_path / f"weights/{name}.safetensors")
        emb = embed_crops(encoder, small_aligned.crops).numpy()
        return float((((emb @ emb.T)[upper] - teacher_sim) ** 2).mean())

    kd, plain = relation_error("kd"), relation_error("plain")
    assert kd < 0.6 * plain, (kd, plain)
    _, card = load_encoder(tmp_path / "weights/kd.safetensors")
    recipe = card["training"]["distill"]
    assert recipe["loss"] == "relational" and recipe["images"] == 120
    assert recipe["seeded_from_precomputed"] > 0 and recipe["computed_by_teacher"] == 0
    assert 0.5 < recipe["mean_norm"] < 1  # the shared direction that centring removed
    history = [json.loads(x) for x in (tmp_path / "runs/kd/log.jsonl").read_text().splitlines()]
    assert all("distill_loss" in h and "pair_loss" in h for h in history)


def test_warm_start_only_from_weights_that_never_saw_the_excluded_identities(
        small_lfw, small_aligned, cache_dir, tmp_path):
    from model.evaluate.protocols import disjointness
    from model.train.loop import main
    pairs = str(small_lfw / "pairs.txt")
    common = ["--eval-pairs", "none", "--epochs", "1", "--batch-p", "4",
              "--exclude-identities-from", pairs]
    main(train_args(small_lfw, cache_dir, tmp_path, "--name", "base", *common,
                    "--exclude-folds", "1-2"))
    base = str(tmp_path / "weights/base.safetensors")
    main(train_args(small_lfw, cache_dir, tmp_path, "--name", "warm", *common,
                    "--exclude-folds", "1", "--init-from", base))
    _, card = load_encoder(tmp_path / "weights/warm.safetensors")
    assert card["training"]["init_from"]["weights"] == "base.safetensors"
    assert disjointness(card, pairs, {1}) is True
    # the warm-started weights inherit the base's knowledge: fold 2 is not disjoint for "warm"
    assert disjointness(card, pairs, {2}) is False
    with pytest.raises(SystemExit, match="did not exclude"):
        main(train_args(small_lfw, cache_dir, tmp_path, "--name", "leaky", *common,
                        "--exclude-folds", "3", "--init-from", base))


# ---------------------------------------------------------------------------- the typed config
CONFIGS = sorted((ROOT / "model" / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("snippet, key", [
    ("optim: {lrr: 1}\n", "optim.lrr"),
    ("epochss: 3\n", "epochss"),
    ("distill:\n  loss: relational\n  wieght: 2\n", "distill.wieght"),
])
def test_an_unknown_key_in_a_config_file_is_rejected_naming_it_and_the_file(tmp_path, snippet,
                                                                           key):
    from model.train.config import ConfigError, load_config
    path = tmp_path / "foo.yaml"
    path.write_text(snippet)
    where = re.escape(str(path))
    with pytest.raises(ConfigError, match=rf"unknown key '{key}' in {where}; known: "):
        load_config(path, {})


def test_the_cli_stops_on_an_unknown_key_before_training(tmp_path):
    from model.train.loop import main
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(SystemExit, match=r"unknown key 'optim.lrr' in \S*typo.yaml; known: name"):
        main(["--config", str(path), "--run-dir", str(tmp_path / "runs"),
              "--data", f"none={tmp_path / 'none'}"])
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit, match=r"'arch' in flag --arch: .*dictionary"):
        main(["--arch", "[1, 2]", "--run-dir", str(tmp_path / "runs"),
              "--data", f"none={tmp_path / 'none'}"])
    assert not (tmp_path / "runs").exists()


def test_a_wrong_value_or_an_unknown_override_names_its_key():
    from model.train.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' in override 'optim.lrr'"):
        load_config(None, {"optim.lrr": 0.1})
    with pytest.raises(ConfigError, match=r"'sampler.p' in override 'sampler.p': .*integer"):
        load_config(None, {"sampler.p": "many"})
    with pytest.raises(ConfigError, match=r"'optim.schedule' .*'cosine' or 'constant'"):
        load_config(None, {"optim.schedule": "linear"})


def test_flags_override_the_file_and_land_in_the_typed_config():
    from model.train.config import TrainConfig, load_config
    from model.train.loop import overrides_from, parse_args
    args = parse_args(["--config", str(ROOT / "model/train/configs/distill.yaml"), "--lr", "0.01",
                       "--batch-p", "8", "--extra-per-batch", "3", "--data", "mine=/data/faces",
                       "--arch", TINY_ARCH, "--eval-folds", "1-5", "--name", "typed"])
    config = load_config(args.config, overrides_from(args))
    assert isinstance(config, TrainConfig)
    assert config.optim.lr == 0.01 and config.sampler.p == 8 and config.sampler.extra == 3
    assert config.data.roots == {"mine": "/data/faces"}  # --data replaces the roots
    assert config.arch == json.loads(TINY_ARCH)          # --arch replaces the whole mapping
    assert config.eval.folds == "1-5" and config.name == "typed"
    assert config.distill.loss == "relational" and config.distill.enabled  # from the file
    assert config.sampler.k == 4 and config.optim.name == "adamw"         # from default.yaml
    assert config.to_dict()["optim"]["lr"] == 0.01


def test_the_config_classes_defaults_are_default_yaml():
    """TrainConfig() and model/train/configs/default.yaml describe the same recipe."""
    from model.train.config import TrainConfig, load_config
    assert load_config(None, {}) == TrainConfig()
    assert not TrainConfig().distill.enabled


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_the_shipped_configs_load_and_keep_every_value_they_set(path):
    import yaml

    from model.train.config import TrainConfig, load_config
    config = load_config(path, {})
    plain = config.to_dict()
    json.dumps(plain)  # what config.json and the model card get
    assert TrainConfig.model_validate(plain) == config

    def check(written: dict, loaded: dict, where: str) -> None:
        for key, value in written.items():
            if isinstance(value, dict) and key not in ("arch", "roots"):
                check(value, loaded[key], f"{where}{key}.")
            else:
                assert loaded[key] == value, f"{path.name}: {where}{key}"
    check(yaml.safe_load(path.read_text()), plain, "")


def test_fine_tuning_the_converted_dlib_network_keeps_its_spec_and_provenance(
        small_lfw, cache_dir, tmp_path):
    """--init-from the shipped conversion with the fine-tune recipe: the run aligns its data
    as dlib's chips (the init weights' spec), distils to the teacher's own unit vectors, and
    its card proves identity-disjointness through the conversion's card."""
    import torch

    from model.evaluate.protocols import disjointness
    from model.face.preprocess import DLIB_CHIP150
    from model.train.loop import main
    from tests.test_teacher import precomputed_or_skip
    precomputed_or_skip()
    pairs = str(small_lfw / "pairs.txt")
    init = ROOT / "weights" / "faceverify-encoder.safetensors"
    main(train_args(small_lfw, cache_dir, tmp_path, "--config",
                    str(ROOT / "model/train/configs/finetune-dlib.yaml"), "--name", "ft",
                    "--init-from", str(init), "--max-steps", "2", "--batch-p", "4",
                    "--extra-per-batch", "4", "--lr", "0.00002", "--eval-pairs", "none",
                    "--teacher-store", str(tmp_path / "teacher.npz"),
                    "--exclude-identities-from", pairs, "--exclude-folds", "1"))
    tuned, card = load_encoder(tmp_path / "weights/ft.safetensors")
    base, _ = load_encoder(init)
    assert tuned.spec == DLIB_CHIP150 and card["preprocessing"]["geometry"] == "dlib-chip"
    assert card["training"]["distill"]["targets"].startswith("unit")
    assert card["training"]["init_from"]["weights"] == init.name
    assert disjointness(card, pairs, {1}) is True
    from model.train.data import load_aligned_folder
    chips = load_aligned_folder(small_lfw / "lfw-deepfunneled", "lfw", cache_dir=cache_dir,
                                spec=DLIB_CHIP150, progress=False).crops[:16]  # the run's cache
    x = base.prepare(chips)
    with torch.inference_mode():
        moved = (tuned(x) - base(x)).norm(dim=1)
    # a low learning rate: it moved, a little (Adam's first steps move every weight by ~lr)
    assert 0 < float(moved.max()) and float(moved.median()) < 0.15
