"""Train the Siamese encoder: `python -m model.train [--config FILE] [flags]`.

Config-driven (model/train/configs/default.yaml, typed and checked by model/train/config.py; every
key has a flag), P×K batches from identity folders, contrastive loss by default, periodic
evaluation on LFW pairs, resumable checkpoints, a wall-clock budget (--max-minutes), knowledge
distillation from dlib's face ResNet on top of the contrastive loss (--distill
cosine|relational; model/train/teacher.py), warm starts from earlier weights (--init-from, identity
exclusions checked), and DDP under `torchrun --nproc-per-node N -m model.train ...` (gloo on
CPU, nccl on CUDA).
Writes weights/<name>.safetensors and its model card.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.encoder.weights import write_card
from model.evaluate.lfw import identities_in, pair_images, parse_folds, read_pairs
from model.evaluate.metrics import summarize
from model.face.detect import resolve_device
from model.face.preprocess import PreprocessSpec, spec_for_arch, spec_from_metadata
from model.nn.checkpoint import load_encoder, save_weights
from model.nn.siamese import SiameseEncoder, embed_crops, pair_distance
from model.train.config import ConfigError, OptimConfig, TrainConfig, load_config
from model.train.data import AlignedImages, PKSampler, augment, load_aligned_folder
from model.train.losses import DistillationLoss, build_loss

log = logging.getLogger("faceverify.train")


# --------------------------------------------------------------------------- configuration
# argparse dest → the config key its flag overrides (the flag is "--" + dest with dashes)
FLAG_KEYS: dict[str, str] = {
    "name": "name", "loss": "loss.name", "margin": "loss.margin", "arch": "arch",
    "epochs": "epochs", "max_minutes": "max_minutes", "lr": "optim.lr",
    "optimizer": "optim.name", "batch_p": "sampler.p", "batch_k": "sampler.k",
    "warmup_steps": "optim.warmup_steps", "seed": "seed", "data": "data.roots",
    "exclude_identities_from": "data.exclude_identities_from",
    "exclude_folds": "data.exclude_folds", "eval_pairs": "eval.pairs",
    "eval_folds": "eval.folds", "eval_every": "eval.every_epochs", "run_dir": "run_dir",
    "output_dir": "output_dir", "distill": "distill.loss", "distill_weight": "distill.weight",
    "teacher_store": "distill.store", "distill_targets": "distill.targets",
    "contrastive_weight": "distill.contrastive_weight", "extra_per_batch": "sampler.extra",
    "init_from": "init_from",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (defaults: model/train/configs/default.yaml)")
    p.add_argument("--name", help="run and weights name")
    p.add_argument("--data", action="append", metavar="NAME=PATH",
                   help="identity-folder dataset (repeatable; replaces the config's roots)")
    p.add_argument("--exclude-identities-from", metavar="PAIRS",
                   help="pairs file whose identities are kept out of training")
    p.add_argument("--exclude-folds", metavar="SPEC",
                   help="only these folds of that file (e.g. 1-5); default all")
    p.add_argument("--loss", choices=["contrastive", "triplet"])
    p.add_argument("--margin", type=float)
    p.add_argument("--arch", help='JSON, e.g. \'{"arch": "mnv3s", "embedding_dim": 128}\'')
    p.add_argument("--distill", choices=["off", "cosine", "relational"],
                   help="distillation loss to the teacher's centred vectors (default: config)")
    p.add_argument("--teacher-store", help="teacher-vector store (default: config distill.store)")
    p.add_argument("--distill-targets", choices=["centred", "whitened"],
                   help="how the teacher's vectors are normalised before matching")
    p.add_argument("--distill-weight", type=float, help="weight of the distillation term")
    p.add_argument("--contrastive-weight", type=float, help="weight of the pair-loss term")
    p.add_argument("--extra-per-batch", type=int,
                   help="images drawn uniformly from the whole set on top of each P×K batch")
    p.add_argument("--init-from", metavar="WEIGHTS",
                   help="start from these weights (their architecture; their training must "
                        "have excluded at least this run's identities)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the LR schedule fits it")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--batch-p", type=int, help="identities per batch (P)")
    p.add_argument("--batch-k", type=int, help="images per identity in a batch (K)")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-pairs", help="pairs file for periodic evaluation ('none' to skip)")
    p.add_argument("--eval-folds", help="folds of the eval pairs to use (e.g. 1-5)")
    p.add_argument("--eval-every", type=int, help="evaluate every N epochs")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--run-dir", help="where checkpoints and logs go (default runs/)")
    p.add_argument("--output-dir", help="where the weights and model card go (default weights/)")
    p.add_argument("--cache-dir", default=None, help="aligned-crop cache (default cache/)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/<name>/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--save-replicas", metavar="DIR",
                   help="each rank also writes its final weights to DIR/rank<N>.safetensors "
                        "(to check that DDP replicas agree)")
    return p.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Config key → value of each flag (None where not given): --arch parsed as JSON, the
    --data NAME=PATH list as a mapping."""
    values = vars(args) | {
        "arch": json.loads(args.arch) if args.arch else None,
        "data": dict(d.split("=", 1) for d in args.data) if args.data else None}
    return {key: values[dest] for dest, key in FLAG_KEYS.items()}


def flag_sources() -> dict[str, str]:
    """Config key → the flag that sets it, for ConfigError messages."""
    return {key: "flag --" + dest.replace("_", "-") for dest, key in FLAG_KEYS.items()}


# --------------------------------------------------------------------------- distributed
class Dist:
    """Rank/world info; a no-op when not launched by torchrun."""

    def __init__(self, device: torch.device):
        self.enabled = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = device
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def max(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP does this
        at the start of each forward pass, so after the last step the replicas differ in
        them by one update; this makes every replica end identical to the one saved."""
        if self.enabled:
            for buf in module.buffers():
                dist.broadcast(buf, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- data
def training_spec(config: TrainConfig) -> PreprocessSpec:
    """How this run aligns its faces: the warm-start weights' spec, else the architecture's."""
    if config.init_from:
        from safetensors import safe_open
        with safe_open(str(config.init_from), "pt") as f:
            return spec_from_metadata(f.metadata() or {})
    return spec_for_arch(config.arch)


def load_training_data(config: TrainConfig, cache_dir: str | None, progress: bool,
                       spec: PreprocessSpec | None = None
                       ) -> tuple[AlignedImages, AlignedImages | None, dict[str, Any]]:
    """Training images (after exclusions) and the full LFW set (for evaluation), aligned
    as the run's preprocessing spec (default: `training_spec(config)`) says."""
    kw = {"progress": progress, "spec": spec or training_spec(config),
          "face_choice": config.data.face_choice} | (
        {"cache_dir": cache_dir} if cache_dir else {})
    parts, lfw = [], None
    for name, root in config.data.roots.items():
        part = load_aligned_folder(root, name, **kw)
        parts.append(part)
        if name == "lfw":
            lfw = part
    data = AlignedImages.concat(parts)
    summary: dict[str, Any] = {"datasets": dict(config.data.roots)}
    excl_file = config.data.exclude_identities_from
    if excl_file:
        folds = parse_folds(config.data.exclude_folds)
        excluded = identities_in(read_pairs(excl_file), folds)
        keep = [i for i, ident in enumerate(data.identities) if ident not in excluded]
        summary["excluded"] = {"pairs_file": Path(excl_file).name,
                               "folds": sorted(folds) if folds else "all",
                               "identities": len(excluded), "images": len(data) - len(keep)}
        data = data.subset(keep)
    summary["images"] = len(data)
    summary["identities"] = len(set(data.identities))
    return data, lfw, summary


def teacher_targets(config: TrainConfig, data: AlignedImages, ddp: Dist, progress: bool
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, 2, 128) unit teacher vectors [original, mirrored] for the training images, centred
    (or whitened, or left as they are: `distill.targets`).

    Looked up in the teacher store (seeded from the precomputed file when one is configured);
    images it lacks go through dlib in a process pool, once, by rank 0. Only training images
    (after exclusions) are looked up, and the centring mean is theirs alone."""
    from model.train import teacher
    cfg = config.distill
    roots = config.data.roots
    files = []
    for path in data.paths:
        name, rel = path.split("/", 1)
        files.append(Path(roots[name]) / rel)
    keys = [teacher.image_key(f) for f in files]
    seeded = computed = 0
    if ddp.main:
        store, seeded = teacher.open_store(cfg.store, cfg.precomputed, cfg.precomputed_roots)
        computed = teacher.compute_missing(store, files, workers=cfg.workers,
                                           keys=keys, progress=progress)
    ddp.barrier()
    if not ddp.main:
        store = teacher.TeacherStore(cfg.store)
    raw = teacher.lookup(store, files, keys=keys)
    targets, mean = teacher.centred_targets(raw)
    kind = cfg.targets  # centred | whitened | unit (TrainConfig allows no other)
    if kind == "whitened":
        targets, _ = teacher.whitened_targets(raw)
    elif kind == "unit":
        targets = (raw / np.linalg.norm(raw, axis=-1, keepdims=True)).astype(np.float32)
    summary = {"teacher": teacher.TEACHER_NAME, "loss": cfg.loss, "weight": cfg.weight,
               "contrastive_weight": cfg.contrastive_weight,
               "views": list(teacher.VIEWS), "targets": kind + (
                   " (the teacher's vectors, L2-normalised)" if kind == "unit" else
                   " (training-set mean unit vector subtracted"
                   + (", PCA-whitened" if kind == "whitened" else "") + ", renormalised)"),
               "mean_norm": round(float(np.linalg.norm(mean)), 4),
               "images": len(files), "seeded_from_precomputed": seeded,
               "computed_by_teacher": computed}
    return torch.from_numpy(targets), summary


def init_summary(path: str, data_summary: dict[str, Any], excluded_from: str | None
                 ) -> tuple[SiameseEncoder, dict[str, Any]]:
    """Load warm-start weights; refuse them if their training saw identities this run
    excludes (that would break the identity-disjointness of the result)."""
    from model.evaluate.protocols import disjointness
    encoder, card = load_encoder(path)
    training = (card or {}).get("training") or {}
    excluded = data_summary.get("excluded")
    if excluded:
        folds = ({p.fold for p in read_pairs(excluded_from)} if excluded["folds"] == "all"
                 else set(excluded["folds"]))
        if not disjointness(card, excluded["pairs_file"], folds):
            raise SystemExit(f"--init-from {path}: its training did not exclude the identities "
                             f"of {excluded['pairs_file']} folds {excluded['folds']} (see its card)")
    summary = {"weights": Path(path).name, "sha256": (card or {}).get("weights_sha256"),
               "excluded": training.get("excluded"), "images": training.get("images"),
               "loss": training.get("loss"), "distill": training.get("distill"),
               "wall_clock_minutes": training.get("wall_clock_minutes"),
               "init_from": training.get("init_from")}
    return encoder, summary


class PairEvaluator:
    """Scores a pairs file with the current encoder (monitoring during training)."""

    def __init__(self, pairs_file: str, folds: str | None, lfw: AlignedImages):
        fold_set = parse_folds(folds)
        self.pairs = [p for p in read_pairs(pairs_file) if fold_set is None or p.fold in fold_set]
        index = lfw.index()
        paths, left, right = pair_images(self.pairs)
        self.crops = lfw.crops[[index[f"lfw/{x}"] for x in paths]]
        self.left, self.right = torch.from_numpy(left), torch.from_numpy(right)
        self.same = np.array([p.same for p in self.pairs])
        self.name = f"{Path(pairs_file).name}" + (f" folds {folds}" if folds else "")

    def __call__(self, encoder: SiameseEncoder) -> dict[str, Any]:
        emb = embed_crops(encoder, self.crops)
        d = pair_distance(emb[self.left], emb[self.right]).numpy()
        return summarize(d, self.same) | {"pairs_file": self.name}


# --------------------------------------------------------------------------- training
def lr_factor(progress: float, step: int, warmup: int, schedule: str) -> float:
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig
                    ) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@dataclass
class TrainState:
    """Where training stands; saved (as a dict) in every checkpoint, restored by --resume."""
    epoch: int = 0         # full epochs done (a budget/step stop leaves a partial one uncounted)
    step: int = 0
    elapsed: float = 0.0   # training seconds so far, over every session of a resumed run
    history: list[dict[str, Any]] = field(default_factory=list)  # one log entry per epoch


@dataclass
class TrainingRun:
    """What set-up builds in each process; the epochs, evaluation and outputs work on it."""
    config: TrainConfig    # the effective one: with --init-from, `arch` is the weights'
    args: argparse.Namespace
    ddp: Dist
    device: torch.device
    progress: bool         # progress bars (rank 0, unless --no-progress)
    run_dir: Path
    code_commit: str | None  # the code this run started with
    data: AlignedImages
    labels: np.ndarray     # identity number of each training image
    data_summary: dict[str, Any]
    sampler: PKSampler
    encoder: SiameseEncoder
    model: torch.nn.Module  # the encoder, DDP-wrapped when distributed
    loss_fn: torch.nn.Module
    distill_fn: DistillationLoss | None
    targets: torch.Tensor | None  # teacher vectors [image, view] when distilling
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    gen: torch.Generator   # this rank's augmentation stream
    evaluator: PairEvaluator | None  # rank 0 only
    state: TrainState
    total_steps: int       # epochs × steps per epoch, capped by --max-steps
    budget_s: float | None  # --max-minutes, in seconds

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def schedule_progress(self, elapsed: float) -> float:
        """Fraction of the run done: of its steps, or of the wall-clock budget when that is
        further along (so the LR schedule fits --max-minutes). The max over ranks, so that
        every rank stops at the same step (a collective: every rank calls it each step)."""
        p = self.state.step / self.total_steps
        if self.budget_s:
            p = max(p, elapsed / self.budget_s)
        return self.ddp.max(p)


def train(config: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run epochs until the epochs, the budget or --max-steps are spent (evaluating
    and checkpointing as configured), then write the weights and their card."""
    run = set_up(config, args)
    started = time.time() - run.state.elapsed  # a resumed run's clock goes on where it stopped
    stopped = False
    while run.state.epoch < run.config.epochs and not stopped:
        entry, stopped = run_epoch(run, started)
        last = stopped or run.state.epoch >= run.config.epochs
        scores = periodic_evaluation(run, last)
        if scores is not None:
            entry["eval"] = scores
        record_epoch(run, entry, last)
    return finish(run)


# --------------------------------------------------------------------------- set-up
def set_up(config: TrainConfig, args: argparse.Namespace) -> TrainingRun:
    """Device and DDP, training data and sampler, teacher targets, warm start, evaluator,
    encoder, loss and optimiser, then the checkpoint when resuming. The order is part of
    the result: each rank seeds torch first, and the warm-start encoder is built (drawing
    from that stream) before the fresh one."""
    device = resolve_device(args.device)
    ddp = Dist(device)
    device = ddp.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed + ddp.rank)
    progress = ddp.main and not args.no_progress
    run_dir = Path(config.run_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    code_commit = git_commit()

    spec = training_spec(config)
    data, lfw, data_summary = load_training_data(config, args.cache_dir, progress, spec)
    identities = sorted(set(data.identities))
    label_of = {ident: i for i, ident in enumerate(identities)}
    labels = np.array([label_of[i] for i in data.identities])
    sampler = PKSampler(labels, config.sampler.p, config.sampler.k, seed=config.seed,
                        rank=ddp.rank, extra=config.sampler.extra)
    targets, distill_fn = None, None
    if config.distill.enabled:
        targets, data_summary["distill"] = teacher_targets(config, data, ddp, progress)
        distill_fn = DistillationLoss(config.distill.loss)
    init_encoder = None
    if config.init_from and not (args.resume and (run_dir / "last.pt").exists()):
        init_encoder, data_summary["init_from"] = init_summary(
            config.init_from, data_summary, config.data.exclude_identities_from)
        config = config.model_copy(update={"arch": init_encoder.arch})
    evaluator = None
    if ddp.main and config.eval.pairs not in (None, "none") and lfw is not None:
        evaluator = PairEvaluator(config.eval.pairs, config.eval.folds, lfw)

    encoder = SiameseEncoder(config.arch, spec=spec).to(device)
    if init_encoder is not None:
        encoder.load_state_dict(init_encoder.state_dict())
    model: torch.nn.Module = encoder
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None)
    total_steps = config.epochs * len(sampler)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    run = TrainingRun(
        config=config, args=args, ddp=ddp, device=device, progress=progress, run_dir=run_dir,
        code_commit=code_commit, data=data, labels=labels, data_summary=data_summary,
        sampler=sampler, encoder=encoder, model=model,
        loss_fn=build_loss(config.loss.name, **config.loss.model_dump(exclude={"name"})),
        distill_fn=distill_fn, targets=targets,
        optimizer=build_optimizer(encoder.parameters(), config.optim),
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
        gen=torch.Generator().manual_seed(config.seed * 1000 + ddp.rank),
        evaluator=evaluator, state=TrainState(), total_steps=total_steps,
        budget_s=config.max_minutes * 60 if config.max_minutes else None)
    if args.resume and run.ckpt_path.exists():
        _resume(run)
    if ddp.main:
        log.info("training %s on %d images / %d identities (%d steps/epoch, world %d, %s)",
                 config.name, len(data), len(identities), run.steps_per_epoch, ddp.world, device)
        (run_dir / "config.json").write_text(
            json.dumps(config.to_dict() | {"code_commit": code_commit}, indent=2))
    return run


def _resume(run: TrainingRun) -> None:
    """Continue from last.pt: weights, optimiser, state and this rank's RNG streams."""
    ck = torch.load(run.ckpt_path, map_location="cpu", weights_only=False)
    run.encoder.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    run.state = TrainState(**ck["state"])
    run.sampler.rng.bit_generator.state = ck["sampler_rng"][run.ddp.rank]
    run.gen.set_state(ck["torch_rng"][run.ddp.rank])
    if run.ddp.main:
        log.info("resumed from %s at epoch %d step %d", run.ckpt_path, run.state.epoch,
                 run.state.step)


# --------------------------------------------------------------------------- one epoch
def run_epoch(run: TrainingRun, started: float) -> tuple[dict[str, Any], bool]:
    """The steps of one epoch, or of its part until the schedule ends (--max-minutes) or
    --max-steps is reached. Returns the epoch's log entry (mean losses, throughput, LR) and
    whether training stops here. `started`: when the run's clock started (time.time())."""
    from tqdm import tqdm
    state, world = run.state, run.ddp.world
    run.encoder.train()
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {state.epoch + 1}/{run.config.epochs}",
               disable=not run.progress, unit="step", dynamic_ncols=True)
    t_epoch, seen, steps, stopped = time.time(), 0, 0, False
    sums = {"loss": 0.0, "pair": 0.0, "distill": 0.0}
    for batch_idx in run.sampler:
        frac = run.schedule_progress(time.time() - started)
        if frac >= 1.0:
            stopped = True
            break
        loss, pair_loss, distill_loss = train_step(run, batch_idx, frac)
        sums["loss"] += loss
        sums["pair"] += pair_loss
        if distill_loss is not None:
            sums["distill"] += distill_loss
        seen += len(batch_idx)
        steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}",
                        img_s=f"{seen * world / (time.time() - t_epoch):.0f}",
                        lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if run.args.max_steps and state.step >= run.args.max_steps:
            stopped = True
            break
    bar.close()
    if not stopped:
        state.epoch += 1  # a full epoch; a budget/step stop leaves a partial one
    state.elapsed = time.time() - started
    n = max(steps, 1)
    entry = {"epoch": round(state.step / run.steps_per_epoch, 2), "step": state.step,
             "loss": sums["loss"] / n, "pair_loss": sums["pair"] / n,
             **({"distill_loss": sums["distill"] / n} if run.distill_fn else {}),
             "images_per_s": seen * world / max(time.time() - t_epoch, 1e-9),
             "minutes": state.elapsed / 60, "lr": run.optimizer.param_groups[0]["lr"]}
    return entry, stopped


def train_step(run: TrainingRun, batch_idx: np.ndarray, frac: float
               ) -> tuple[float, float, float | None]:
    """One optimiser step on one batch, at schedule position `frac` (0..1).
    Returns (loss, pair loss, distillation loss or None)."""
    optim, device = run.config.optim, run.device
    factor = lr_factor(frac, run.state.step, optim.warmup_steps, optim.schedule)
    for g in run.optimizer.param_groups:
        g["lr"] = optim.lr * factor
    crops = run.data.crops
    order = np.sort(batch_idx)  # sorted reads are kinder to a memory-mapped cache
    x = run.encoder.prepare(torch.from_numpy(np.ascontiguousarray(crops[order])))
    y = torch.from_numpy(run.labels[order]).to(device)
    x, flipped = augment(x, run.gen, **run.config.augment.model_dump(), return_flips=True)
    x = x.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu"
                        else torch.float16, enabled=device.type == "cuda"):
        emb = run.model(x)
    pair_loss = run.loss_fn(emb.float(), y)
    loss, distill_value = pair_loss, None
    if run.distill_fn is not None:
        # each crop's target is the teacher's vector of the same view (mirrored or not)
        target = run.targets[torch.from_numpy(order), flipped.long()].to(device)
        distill_loss = run.distill_fn(emb.float(), target)
        loss = (run.config.distill.contrastive_weight * pair_loss
                + run.config.distill.weight * distill_loss)
        distill_value = distill_loss.item()
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.state.step += 1
    return loss.item(), pair_loss.item(), distill_value


def record_epoch(run: TrainingRun, entry: dict[str, Any], last: bool) -> None:
    """Append the epoch's entry to the history and log.jsonl; checkpoint when due (every
    rank takes part: the checkpoint gathers each rank's RNG state)."""
    run.state.history.append(entry)
    if run.ddp.main:
        log.info("epoch %s", json.dumps(entry))
        with open(run.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
    if last or run.state.epoch % run.config.checkpoint_every_epochs == 0:
        _save_checkpoint(run)
    run.ddp.barrier()


def _save_checkpoint(run: TrainingRun) -> None:
    """Resumable checkpoint (trusted, our own file): model, optimiser, RNG streams per rank.
    Called on every rank; rank 0 writes it."""
    ddp = run.ddp
    sampler_states = [run.sampler.rng.bit_generator.state]
    torch_states = [run.gen.get_state()]
    if ddp.enabled:
        gathered: list = [None] * ddp.world
        dist.all_gather_object(gathered, (sampler_states[0], torch_states[0]))
        sampler_states = [g[0] for g in gathered]
        torch_states = [g[1] for g in gathered]
    if not ddp.main:
        return
    tmp = run.ckpt_path.with_suffix(".tmp")
    torch.save({"model": run.encoder.state_dict(), "optimizer": run.optimizer.state_dict(),
                "state": asdict(run.state), "sampler_rng": sampler_states,
                "torch_rng": torch_states}, tmp)
    tmp.replace(run.ckpt_path)


# --------------------------------------------------------------------------- evaluation
# the monitor's figures kept in each evaluated epoch's log entry
MONITORED = ("auc", "accuracy_at_best_threshold", "eer", "tar_at_far_1e-2", "best_threshold")


def periodic_evaluation(run: TrainingRun, last: bool) -> dict[str, Any] | None:
    """The monitor's headline figures every eval.every_epochs full epochs and after the last
    epoch; None when not due or without an evaluator (ranks > 0, eval.pairs none)."""
    if run.evaluator is None or not (last or run.state.epoch % run.config.eval.every_epochs == 0):
        return None
    scores = run.evaluator(run.encoder)
    return {k: scores[k] for k in MONITORED}


def final_evaluation(run: TrainingRun) -> dict[str, Any] | None:
    """Every figure of the monitor on the final encoder (its threshold goes in the card)."""
    return run.evaluator(run.encoder) if run.evaluator else None


# --------------------------------------------------------------------------- outputs
def finish(run: TrainingRun) -> dict[str, Any]:
    """Make the replicas identical, then (rank 0) evaluate and write the weights and card."""
    ddp = run.ddp
    ddp.sync_buffers(run.encoder)
    if run.args.save_replicas:
        save_weights(run.encoder, Path(run.args.save_replicas) / f"rank{ddp.rank}.safetensors")
    result = {"encoder": run.encoder, "state": asdict(run.state), "data": run.data_summary,
              "rank": ddp.rank}
    if ddp.main:
        result["weights"] = _write_outputs(run, final_evaluation(run))
    ddp.barrier()
    ddp.close()
    return result


def _write_outputs(run: TrainingRun, final_eval: dict[str, Any] | None) -> Path:
    config, encoder, state, data_summary = run.config, run.encoder, run.state, run.data_summary
    out = Path(config.output_dir) / f"{config.name}.safetensors"
    sha = save_weights(encoder, out)
    threshold: dict[str, Any] = {"value": None, "method": "not calibrated"}
    if final_eval:
        threshold = {
            "value": round(final_eval["best_threshold"], 4),
            "method": f"best accuracy on {final_eval['pairs_file']} at the end of training "
                      "(provisional; `python -m model.evaluate --write-card` replaces it with "
                      "the identity-disjoint View 2 calibration)",
            "at_far_1e-2": final_eval["threshold_at_far_1e-2"],
            "at_far_1e-3": final_eval["threshold_at_far_1e-3"],
        }
    card = {
        "name": config.name, "version": config.version,
        "architecture": encoder.arch,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "embedding_dim": encoder.embedding_dim,
        "distance": "euclidean between L2-normalised embeddings (sqrt(2 - 2 cos))",
        "preprocessing": encoder.spec.to_dict(),
        "threshold": threshold,
        "evaluation": {},
        "training": {
            "command": " ".join(["python -m model.train"] + sys.argv[1:]),
            "data": data_summary.get("datasets"), "images": data_summary["images"],
            "identities": data_summary["identities"],
            "excluded": data_summary.get("excluded"),
            "init_from": data_summary.get("init_from"),
            "distill": data_summary.get("distill"),
            "loss": config.loss.model_dump(), "optimizer": config.optim.model_dump(),
            "sampler": config.sampler.model_dump(),
            "epochs": state.epoch, "steps": state.step,
            "wall_clock_minutes": round(state.elapsed / 60, 1), "device": str(run.device),
            "history": state.history,
            "monitor_eval": final_eval,
        },
        "code_commit": run.code_commit or git_commit(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights_file": out.name, "weights_sha256": sha,
    }
    write_card(out, card)
    log.info("wrote %s (sha256 %s…) and its model card", out, sha[:12])
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    args = parse_args(argv)
    try:
        config = load_config(args.config, overrides_from(args), sources=flag_sources())
    except ConfigError as exc:
        raise SystemExit(f"ConfigError: {exc}") from None
    train(config, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
