"""Train the Siamese encoder: `python -m model.train [--config FILE] [flags]`.

Config-driven (model/configs/default.yaml; every key has a flag), P×K batches from
identity folders, contrastive loss by default, periodic evaluation on LFW pairs, resumable
checkpoints, a wall-clock budget (--max-minutes), knowledge distillation from dlib's face
ResNet on top of the contrastive loss (--distill cosine|relational; model/teacher.py), warm
starts from earlier weights (--init-from, identity exclusions checked), and DDP under
`torchrun --nproc-per-node N -m model.train ...` (gloo on CPU, nccl on CUDA).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.checkpoint import load_encoder, save_weights, write_card
from model.data import AlignedImages, PKSampler, augment, load_aligned_folder
from model.detect import resolve_device
from model.encoder import SiameseEncoder, embed_crops, pair_distance
from model.lfw import identities_in, pair_images, parse_folds, read_pairs
from model.losses import DistillationLoss, build_loss
from model.metrics import summarize
from model.pipeline import PIPELINE_VERSION, PIXEL_MEAN, PIXEL_STD, crops_to_tensor

log = logging.getLogger("faceverify.train")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


# --------------------------------------------------------------------------- configuration
def load_config(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Default config ← config file ← flags (dotted keys such as 'optim.lr')."""
    import yaml
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path:
        _deep_update(config, yaml.safe_load(Path(path).read_text()) or {})
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def _deep_update(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("roots", "arch"):
            _deep_update(base[k], v)
        else:
            base[k] = v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (defaults: model/configs/default.yaml)")
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
    return {
        "name": args.name, "loss.name": args.loss, "loss.margin": args.margin,
        "arch": json.loads(args.arch) if args.arch else None, "epochs": args.epochs,
        "max_minutes": args.max_minutes, "optim.lr": args.lr, "optim.name": args.optimizer,
        "sampler.p": args.batch_p, "sampler.k": args.batch_k,
        "optim.warmup_steps": args.warmup_steps, "seed": args.seed,
        "data.roots": dict(d.split("=", 1) for d in args.data) if args.data else None,
        "data.exclude_identities_from": args.exclude_identities_from,
        "data.exclude_folds": args.exclude_folds,
        "eval.pairs": args.eval_pairs, "eval.folds": args.eval_folds,
        "eval.every_epochs": args.eval_every, "run_dir": args.run_dir,
        "output_dir": args.output_dir, "distill.loss": args.distill,
        "distill.weight": args.distill_weight, "distill.store": args.teacher_store,
        "distill.targets": args.distill_targets,
        "distill.contrastive_weight": args.contrastive_weight,
        "sampler.extra": args.extra_per_batch, "init_from": args.init_from,
    }


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
def load_training_data(config: dict[str, Any], cache_dir: str | None, progress: bool
                       ) -> tuple[AlignedImages, AlignedImages | None, dict[str, Any]]:
    """Training images (after exclusions) and the full LFW set (for evaluation)."""
    kw = {"progress": progress} | ({"cache_dir": cache_dir} if cache_dir else {})
    parts, lfw = [], None
    for name, root in config["data"]["roots"].items():
        part = load_aligned_folder(root, name, **kw)
        parts.append(part)
        if name == "lfw":
            lfw = part
    data = AlignedImages.concat(parts)
    summary: dict[str, Any] = {"datasets": dict(config["data"]["roots"])}
    excl_file = config["data"].get("exclude_identities_from")
    if excl_file:
        folds = parse_folds(config["data"].get("exclude_folds"))
        excluded = identities_in(read_pairs(excl_file), folds)
        keep = [i for i, ident in enumerate(data.identities) if ident not in excluded]
        summary["excluded"] = {"pairs_file": Path(excl_file).name,
                               "folds": sorted(folds) if folds else "all",
                               "identities": len(excluded), "images": len(data) - len(keep)}
        data = data.subset(keep)
    summary["images"] = len(data)
    summary["identities"] = len(set(data.identities))
    return data, lfw, summary


def distill_enabled(config: dict[str, Any]) -> bool:
    return (config.get("distill") or {}).get("loss") not in (None, False, "off")


def teacher_targets(config: dict[str, Any], data: AlignedImages, ddp: Dist, progress: bool
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, 2, 128) centred unit teacher vectors [original, mirrored] for the training images.

    Looked up in the teacher store (seeded from the precomputed file when one is configured);
    images it lacks go through dlib in a process pool, once, by rank 0. Only training images
    (after exclusions) are looked up, and the centring mean is theirs alone."""
    from model import teacher
    cfg = config["distill"]
    roots = config["data"]["roots"]
    files = []
    for path in data.paths:
        name, rel = path.split("/", 1)
        files.append(Path(roots[name]) / rel)
    keys = [teacher.image_key(f) for f in files]
    seeded = computed = 0
    if ddp.main:
        store, seeded = teacher.open_store(cfg["store"], cfg.get("precomputed"),
                                           cfg.get("precomputed_roots"))
        computed = teacher.compute_missing(store, files, workers=cfg.get("workers", 2),
                                           keys=keys, progress=progress)
    ddp.barrier()
    if not ddp.main:
        store = teacher.TeacherStore(cfg["store"])
    raw = teacher.lookup(store, files, keys=keys)
    targets, mean = teacher.centred_targets(raw)
    kind = cfg.get("targets", "centred")
    if kind == "whitened":
        targets, _ = teacher.whitened_targets(raw)
    elif kind != "centred":
        raise SystemExit(f"distill.targets must be centred or whitened, not {kind!r}")
    summary = {"teacher": teacher.TEACHER_NAME, "loss": cfg["loss"], "weight": cfg["weight"],
               "contrastive_weight": cfg["contrastive_weight"],
               "views": list(teacher.VIEWS), "targets": kind + (
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
    from model.evaluate import disjointness
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


def build_optimizer(params, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg["name"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg["lr"])


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def train(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    ddp = Dist(device)
    device = ddp.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(config["seed"] + ddp.rank)
    progress = ddp.main and not args.no_progress
    run_dir = Path(config["run_dir"]) / config["name"]
    run_dir.mkdir(parents=True, exist_ok=True)

    config["code_commit"] = git_commit()  # the code this run started with
    data, lfw, data_summary = load_training_data(config, args.cache_dir, progress)
    identities = sorted(set(data.identities))
    label_of = {ident: i for i, ident in enumerate(identities)}
    labels = np.array([label_of[i] for i in data.identities])
    sampler = PKSampler(labels, config["sampler"]["p"], config["sampler"]["k"],
                        seed=config["seed"], rank=ddp.rank,
                        extra=config["sampler"].get("extra", 0))
    targets, distill_fn = None, None
    if distill_enabled(config):
        targets, data_summary["distill"] = teacher_targets(config, data, ddp, progress)
        distill_fn = DistillationLoss(config["distill"]["loss"])
    if config.get("init_from") and not (args.resume and (run_dir / "last.pt").exists()):
        init_encoder, data_summary["init_from"] = init_summary(
            config["init_from"], data_summary, config["data"].get("exclude_identities_from"))
        config["arch"] = init_encoder.arch
    evaluator = None
    if ddp.main and config["eval"].get("pairs") not in (None, "none") and lfw is not None:
        evaluator = PairEvaluator(config["eval"]["pairs"], config["eval"].get("folds"), lfw)

    encoder = SiameseEncoder(config["arch"]).to(device)
    if data_summary.get("init_from"):
        encoder.load_state_dict(init_encoder.state_dict())
    model: torch.nn.Module = encoder
    if ddp.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = build_loss(config["loss"]["name"],
                         **{k: v for k, v in config["loss"].items() if k != "name"})
    optimizer = build_optimizer(encoder.parameters(), config["optim"])
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + ddp.rank)

    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "history": []}
    ckpt_path = run_dir / "last.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        encoder.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        state = ck["state"]
        sampler.rng.bit_generator.state = ck["sampler_rng"][ddp.rank]
        gen.set_state(ck["torch_rng"][ddp.rank])
        if ddp.main:
            log.info("resumed from %s at epoch %d step %d", ckpt_path, state["epoch"], state["step"])

    epochs = config["epochs"]
    steps_per_epoch = len(sampler)
    total_steps = epochs * steps_per_epoch
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    budget_s = config["max_minutes"] * 60 if config.get("max_minutes") else None
    if ddp.main:
        log.info("training %s on %d images / %d identities (%d steps/epoch, world %d, %s)",
                 config["name"], len(data), len(identities), steps_per_epoch, ddp.world, device)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))

    def progress_of(step: int, elapsed: float) -> float:
        p = step / total_steps
        if budget_s:
            p = max(p, elapsed / budget_s)
        return ddp.max(p)

    from tqdm import tqdm
    crops = data.crops
    done = False
    started = time.time() - state["elapsed"]
    while state["epoch"] < epochs and not done:
        encoder.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {state['epoch'] + 1}/{epochs}",
                   disable=not progress, unit="step", dynamic_ncols=True)
        t_epoch, seen, loss_sum, steps = time.time(), 0, 0.0, 0
        parts_sum = {"pair": 0.0, "distill": 0.0}
        for batch_idx in sampler:
            frac = progress_of(state["step"], time.time() - started)
            if frac >= 1.0:
                done = True
                break
            factor = lr_factor(frac, state["step"], config["optim"]["warmup_steps"],
                               config["optim"]["schedule"])
            for g in optimizer.param_groups:
                g["lr"] = config["optim"]["lr"] * factor
            order = np.sort(batch_idx)  # sorted reads are kinder to a memory-mapped cache
            x = crops_to_tensor(torch.from_numpy(np.ascontiguousarray(crops[order])))
            y = torch.from_numpy(labels[order]).to(device)
            x, flipped = augment(x, gen, **config["augment"], return_flips=True)
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu"
                                else torch.float16, enabled=use_amp):
                emb = model(x)
            pair_loss = loss_fn(emb.float(), y)
            loss = pair_loss
            if distill_fn is not None:
                # each crop's target is the teacher's vector of the same view (mirrored or not)
                target = targets[torch.from_numpy(order), flipped.long()].to(device)
                distill_loss = distill_fn(emb.float(), target)
                loss = (config["distill"]["contrastive_weight"] * pair_loss
                        + config["distill"]["weight"] * distill_loss)
                parts_sum["distill"] += distill_loss.item()
            parts_sum["pair"] += pair_loss.item()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            seen += len(x)
            loss_sum += loss.item()
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}",
                            img_s=f"{seen * ddp.world / (time.time() - t_epoch):.0f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if args.max_steps and state["step"] >= args.max_steps:
                done = True
                break
        bar.close()
        if not done:
            state["epoch"] += 1  # a full epoch; a budget/step stop leaves a partial one
        state["elapsed"] = time.time() - started
        entry = {"epoch": round(state["step"] / steps_per_epoch, 2), "step": state["step"],
                 "loss": loss_sum / max(steps, 1),
                 "pair_loss": parts_sum["pair"] / max(steps, 1),
                 **({"distill_loss": parts_sum["distill"] / max(steps, 1)} if distill_fn else {}),
                 "images_per_s": seen * ddp.world / max(time.time() - t_epoch, 1e-9),
                 "minutes": state["elapsed"] / 60, "lr": optimizer.param_groups[0]["lr"]}
        last = done or state["epoch"] >= epochs
        if evaluator and (last or state["epoch"] % config["eval"]["every_epochs"] == 0):
            res = evaluator(encoder)
            entry["eval"] = {k: res[k] for k in ("auc", "accuracy_at_best_threshold", "eer",
                                                 "tar_at_far_1e-2", "best_threshold")}
        state["history"].append(entry)
        if ddp.main:
            log.info("epoch %s", json.dumps(entry))
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        if last or state["epoch"] % config["checkpoint_every_epochs"] == 0:
            _save_checkpoint(ckpt_path if ddp.main else None, encoder, optimizer, state,
                             sampler, gen, ddp)
        ddp.barrier()

    ddp.sync_buffers(encoder)
    if args.save_replicas:
        save_weights(encoder, Path(args.save_replicas) / f"rank{ddp.rank}.safetensors")
    result = {"encoder": encoder, "state": state, "data": data_summary, "rank": ddp.rank}
    if ddp.main:
        final_eval = evaluator(encoder) if evaluator else None
        result["weights"] = _write_outputs(config, encoder, state, data_summary, final_eval,
                                           device, args)
    ddp.barrier()
    ddp.close()
    return result


def _save_checkpoint(path, encoder, optimizer, state, sampler, gen, ddp: Dist) -> None:
    """Resumable checkpoint (trusted, our own file): model, optimiser, RNG streams per rank."""
    sampler_states = [sampler.rng.bit_generator.state]
    torch_states = [gen.get_state()]
    if ddp.enabled:
        gathered: list = [None] * ddp.world
        dist.all_gather_object(gathered, (sampler_states[0], torch_states[0]))
        sampler_states = [g[0] for g in gathered]
        torch_states = [g[1] for g in gathered]
    if path is None:
        return
    tmp = Path(path).with_suffix(".tmp")
    torch.save({"model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "state": state, "sampler_rng": sampler_states, "torch_rng": torch_states}, tmp)
    tmp.replace(path)


def _write_outputs(config, encoder, state, data_summary, final_eval, device, args) -> Path:
    out = Path(config["output_dir"]) / f"{config['name']}.safetensors"
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
        "name": config["name"], "version": config.get("version", "0.1.0"),
        "architecture": encoder.arch,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "embedding_dim": encoder.embedding_dim,
        "distance": "euclidean between L2-normalised embeddings (sqrt(2 - 2 cos))",
        "preprocessing": {
            "version": PIPELINE_VERSION,
            "description": "EXIF-upright RGB → MTCNN (facenet-pytorch 2.5.3) largest face, 5 "
                           "landmarks → similarity transform onto the 112x112 5-point template "
                           f"→ (x - {PIXEL_MEAN}) / {PIXEL_STD}",
            "input_size": [112, 112], "channels": "RGB",
        },
        "threshold": threshold,
        "evaluation": {},
        "training": {
            "command": " ".join(["python -m model.train"] + sys.argv[1:]),
            "data": data_summary.get("datasets"), "images": data_summary["images"],
            "identities": data_summary["identities"],
            "excluded": data_summary.get("excluded"),
            "init_from": data_summary.get("init_from"),
            "distill": data_summary.get("distill"),
            "loss": config["loss"], "optimizer": config["optim"], "sampler": config["sampler"],
            "epochs": state["epoch"], "steps": state["step"],
            "wall_clock_minutes": round(state["elapsed"] / 60, 1), "device": str(device),
            "history": state["history"],
            "monitor_eval": final_eval,
        },
        "code_commit": config.get("code_commit") or git_commit(),
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
    config = load_config(args.config, overrides_from(args))
    train(config, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
