"""The training engine: one readable loop for every student/loss the registries provide.

``fit()`` reads like the recipe: prepare data, build the model, restore or start, then for each
epoch train, evaluate, checkpoint and log; finally score the best checkpoint on the test split.
Runs unchanged under ``torchrun`` (DDP): every rank trains its shard, rank 0 logs and saves.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from core import checkpoint as ckpt
from core.data import DataBundle, prepare_data
from core.errors import UserError
from core.features import LogMelFrontend, LogMelSet, WaveAugment, build_logmel_cache
from core.metrics import Scores, plot_confusion, score, score_predictions
from core.progress import StageProgress
from core.pruning import PruneStage, load_student_source
from core.registry import Registry
from core.structure import describe, rebuild
from core.teaching import prepare_teacher
from core.tracking import PENDING, Tracker, flatten, resolve_uri
from core.waveforms import WaveformSet

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (bad resume target, non-finite loss, ...)."""


class AudioClassifier(nn.Module):
    """Waveform in, logits out: waveform augmentation -> log-mel front end -> network."""

    def __init__(self, frontend: LogMelFrontend, net: nn.Module, wave_aug: WaveAugment | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.wave_aug = wave_aug
        self.frontend = frontend
        self.net = net
        self.channels_last = channels_last

    def augment_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """The waveform augmentation (training mode only; identity when none is on)."""
        if self.wave_aug is not None and self.training:
            return self.wave_aug(wave)
        return wave

    def features(self, wave: torch.Tensor | None = None, *, logmel: torch.Tensor | None = None,
                 augment: bool = True) -> torch.Tensor:
        """Network input from waveforms ``[B, L]``, or from cached log-mel ``[B, n_mels, T]``
        (a :class:`~core.features.LogMelSet` batch; only valid with no waveform augmentation).
        ``augment=False``: ``wave`` was already augmented (online KD shows it to the teacher too)."""
        if logmel is None:
            if augment:
                wave = self.augment_wave(wave)
            logmel = self.frontend.log_mel(wave)
        feats = self.frontend.post(logmel)
        if self.channels_last:
            feats = feats.contiguous(memory_format=torch.channels_last)
        return feats

    def forward(self, wave: torch.Tensor | None = None, *, logmel: torch.Tensor | None = None,
                augment: bool = True) -> torch.Tensor:
        return self.net(self.features(wave, logmel=logmel, augment=augment))


@attrs.define
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def same_weights(self, model: nn.Module) -> list[str]:
        """Every rank's :func:`weights_sha256` of ``model``'s parameters (rank order); raises if they
        differ, i.e. the replicas drifted apart (a collective skipped on one rank, a rank-local change).

        Buffers (BatchNorm running statistics) are first copied from rank 0: DDP does the same at the
        start of every training forward, so after the last step each rank still holds the statistics
        of its own last batch; rank 0's are the ones checkpointed."""
        mine = weights_sha256(dict(model.named_parameters()))
        if self.world == 1:
            return [mine]
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
        every: list[str] = [""] * self.world
        dist.all_gather_object(every, mine)
        if len(set(every)) > 1:
            raise TrainingError(f"DDP replicas ended with different weights (sha256 per rank: {every}); "
                                f"the checkpoint holds rank 0's")
        return every

    def main_first(self, fn: Callable[[bool], T]) -> T:
        """Run ``fn(is_main)`` on rank 0, then on the other ranks once it is done, so work that
        writes shared files (downloads, renders, caches) happens once and the rest reads it."""
        if self.main:
            result = fn(True)
        self.barrier()
        if not self.main:
            result = fn(False)
        return result


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names and exact tensor bytes (dtype and shape included)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@attrs.define
class Result:
    run_id: str | None
    run_dir: Path
    best_epoch: int
    metrics: dict[str, float]
    tracking_uri: str
    run_url: str


# ----------------------------------------------------------------------------------------------
# set-up helpers


def setup_distributed(device_kind: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        # Rank 0 may prepare data and train the teacher (minutes to an hour on a big set) while the
        # other ranks wait at a barrier; the default 30-minute collective timeout would kill them.
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=4))
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"train.device={name} but torch.cuda.is_available() is False; use device=auto or cpu")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise TrainingError(f"train.device={name!r} is not valid; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)


def build_scheduler(cfg: DictConfig, opt: torch.optim.Optimizer, total_steps: int):
    if cfg.train.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    warmup = max(1, int(0.05 * total_steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, d: Dist,
                  max_steps: int | None = None) -> list[list[int]]:
    """This rank's shuffled batches for one epoch, a pure function of (seed, epoch).

    Deriving the order from the epoch number (not from a running generator) makes a resumed run
    see exactly the batches the uninterrupted run would have seen.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = len(order) // d.world  # equal shard sizes keep DDP's collectives in step
    order = order[d.rank * per_rank:(d.rank + 1) * per_rank]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < 2:  # BatchNorm cannot train on a batch of one
        batches.pop()
    return batches[:max_steps] if max_steps else batches


class _Batches(torch.utils.data.Dataset):
    """Index lists -> (inputs, labels) batches, so DataLoader workers prefetch from the memmap."""

    def __init__(self, waves: "Inputs", batches: list[list[int]]) -> None:
        self.waves, self.batch_list = waves, batches

    def __len__(self) -> int:
        return len(self.batch_list)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.waves.batch(self.batch_list[i])


def iterate(waves: "Inputs", batches: list[list[int]], num_workers: int,
            pin: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if num_workers <= 0:
        for b in batches:
            yield waves.batch(b)
        return
    loader = torch.utils.data.DataLoader(
        _Batches(waves, batches), batch_size=None, shuffle=False, num_workers=num_workers,
        pin_memory=pin, prefetch_factor=2,
    )
    yield from loader


# ----------------------------------------------------------------------------------------------
# the loop


def autocast(cfg: DictConfig, device: torch.device):
    """bf16 (or fp16) autocast on CUDA; on CPU full precision (bf16 measured 4x slower here)."""
    if cfg.train.amp and device.type == "cuda":
        dtype = torch.bfloat16 if cfg.train.amp_dtype == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


Inputs = WaveformSet | LogMelSet  # what a split is fed from: cached waveforms or cached log-mel


def train_one_epoch(model: nn.Module, loss_fn: Any, waves: Inputs, batches: list[list[int]],
                    opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler | None,
                    cfg: DictConfig, device: torch.device, epoch: int,
                    teacher: Any = None, progress: StageProgress | None = None) -> dict[str, float]:
    """One pass over ``batches``. ``teacher`` (KD) maps a batch's clip indices to teacher logits:
    a cached table (offline) or the teacher itself (online, fed the same augmented waveform).
    ``progress`` advances by one per step."""
    model.train()
    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    sums: dict[str, float] = {}
    seen, preds, targets = 0, [], []
    loader = iterate(waves, batches, cfg.train.num_workers, device.type == "cuda")
    for step, (idx, (x, target)) in enumerate(zip(batches, loader)):
        x = x.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        inputs: dict[str, Any] = {waves.input_kind: x}
        teacher_logits = None
        if teacher is not None and teacher.online and waves.input_kind == "wave":
            x = base.augment_wave(x)  # teacher and student hear the same augmented clip
            teacher_logits = teacher(idx, x)
            inputs = {"wave": x, "augment": False}
        elif teacher is not None:
            teacher_logits = teacher(idx)
        with autocast(cfg, device):
            logits = model(**inputs)
        terms = (loss_fn(logits.float(), target) if teacher_logits is None
                 else loss_fn(logits.float(), target, teacher_logits))
        loss = terms["total"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                f"the last good checkpoint is kept. Lower train.lr or set train.grad_clip."
            )
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        if progress is not None:
            progress.update(advance=1)
        n = target.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        seen += n
        preds.append(logits.detach().argmax(1).cpu())
        targets.append(target.cpu())
    s = score_predictions(torch.cat(preds), torch.cat(targets), logits.shape[1], sums["total"] / seen)
    out = {"train_loss": s.loss, "train_acc": s.acc, "train_f1": s.f1}
    out.update({f"train_loss_{k}": v / seen for k, v in sums.items() if k != "total"})
    return out


def epoch_progress(label: str, steps: int, enabled: bool) -> StageProgress:
    """A bar with ETA over an epoch's steps on a terminal; elsewhere a log line every 30 s of a long
    epoch (the epoch's own summary line follows it, so no closing line)."""
    return StageProgress(label, total=steps, noun="steps", enabled=enabled, log_every_s=30.0, logger=log,
                         final_line=False)


@torch.inference_mode()
def evaluate(model: nn.Module, waves: Inputs, cfg: DictConfig, device: torch.device) -> Scores:
    """Score every clip of a split (argmax decision; loss is plain CE whatever the training loss)."""
    model.eval()
    bs = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    logits, targets = [], []
    idx = list(range(len(waves)))
    for wave, target in iterate(waves, [idx[i:i + bs] for i in range(0, len(idx), bs)], 0, False):
        with autocast(cfg, device):
            out = model(**{waves.input_kind: wave.to(device)})
        logits.append(out.float().cpu())
        targets.append(target)
    logits_t, target_t = torch.cat(logits), torch.cat(targets)
    return score(logits_t, target_t, F.cross_entropy(logits_t, target_t).item())


def find_resume(cfg: DictConfig) -> Path | None:
    """``train.resume``: a path to ``last.pt`` (or its run folder), or ``auto`` for the newest
    unfinished run of this experiment name under ``train.out_dir``."""
    target = cfg.train.resume
    if target is None:
        return None
    if target != "auto":
        p = Path(target).expanduser()
        if p.is_dir():
            p = p / "checkpoints" / "last.pt"
        if not p.is_file():
            raise TrainingError(f"train.resume={target}: no checkpoint at {p}")
        return p
    candidates = []
    for p in Path(cfg.train.out_dir).glob("**/checkpoints/last.pt"):
        state = ckpt.load(p)
        if not state.get("finished") and state.get("config", {}).get("name") == cfg.name:
            candidates.append((p.stat().st_mtime, p))
    if not candidates:
        log.info("train.resume=auto: no unfinished run of %r under %s; starting fresh", cfg.name, cfg.train.out_dir)
        return None
    return max(candidates)[1]


def fit(cfg: DictConfig, registry: Registry, run_dir: Path, parent_run_id: str | None = None,
        tags: dict[str, str] | None = None) -> Result:
    """Train the configured student on the configured dataset; returns the final scores.

    Args:
        parent_run_id: an MLflow run to nest this one under (the comparison's or sweep's parent run).
        tags: more MLflow tags for the run (a sweep job's overrides).
    """
    device_kind = "cuda" if cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu"
    d = setup_distributed(device_kind)
    device = pick_device(cfg.train.device, d.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    progress = d.main and sys.stderr.isatty()
    # config mistakes surface before any download, render or cache build
    loss_fn = build_loss(cfg, registry)
    build_model(cfg, registry, max(2, len(cfg.data.classes)))  # name and options, before the data
    seed_everything(cfg.train.seed)  # that trial build drew initial weights
    for name in cfg.profilers:
        registry.get("profiler", name)
    if cfg.model.kd.enabled:
        registry.get("teacher", cfg.model.teacher.name)
    kd = cfg.model.kd.enabled
    prune = PruneStage(cfg, registry) if cfg.task == "prune" else None
    epochs = prune.epochs if prune else cfg.train.epochs

    # --- data: rank 0 downloads/renders, the others wait and then read the same files ---------
    data = d.main_first(lambda main: prepare_data(cfg, registry, prepare=main, progress=main and progress))
    k = data.num_classes
    if cfg.model.student.num_classes is not None and cfg.model.student.num_classes != k:
        raise TrainingError(
            f"model.student.num_classes={cfg.model.student.num_classes} but data.classes gives {k} classes "
            f"({', '.join(data.class_names)}); leave num_classes unset to derive it"
        )
    if d.main:
        print("classes:\n" + data.describe())

    # --- teacher (KD): trained on this task once and cached; rank 0 trains, the others load ----
    teacher = None
    if kd:
        teacher = d.main_first(lambda main: prepare_teacher(cfg, registry, data, device, train=main,
                                                             log_fn=print if d.main else log.info))
        seed_everything(cfg.train.seed)  # the student starts exactly as the student-only run does

    # --- model ---------------------------------------------------------------------------------
    resume_path = find_resume(cfg)
    state = ckpt.load(resume_path) if resume_path else None
    if state is not None:
        _check_resume_compatible(state, cfg, data)
        run_dir = Path(state["run_dir"])
    model = build_model(cfg, registry, k).to(device)
    inputs = d.main_first(lambda _: model_inputs(cfg, model, data))  # rank 0 builds the log-mel caches
    source = None
    if state is not None:
        load_weights(model, state, cfg.train.channels_last)
    elif prune is not None:  # the trained student to prune, its front-end statistics included
        source = load_student_source(cfg.prune.source, cfg, data.class_names, resolve_uri(cfg.tracking.uri))
        load_weights(model, source, cfg.train.channels_last)
        if d.main:
            print(f"pruning {source['source']}")
    else:
        model.frontend.fit_normalization_logmel(_stats_batches(inputs["train"], model.frontend, cfg))

    train_set = inputs["train"]
    steps = len(epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, d,
                              cfg.train.max_steps_per_epoch))
    if steps == 0:
        raise TrainingError(f"the training split has {len(train_set)} clips: too few for one batch")
    use_scaler = cfg.train.amp and device.type == "cuda" and cfg.train.amp_dtype == "fp16"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def optimize(phase_epochs: int):
        """The network to train (DDP-wrapped under torchrun), its optimizer and LR schedule; made
        again after each prune round, since pruning replaces the parameter tensors."""
        wrapped: nn.Module = model
        if d.world > 1:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        o = build_optimizer(cfg, model.parameters())
        return wrapped, o, build_scheduler(cfg, o, steps * phase_epochs)

    rounds_done = state.get("prune_rounds", 0) if state is not None else 0
    phase_epochs = prune.phase_epochs(rounds_done) if prune and rounds_done else epochs
    train_model, opt, sched = optimize(phase_epochs)

    start_epoch, best_epoch, best_f1, run_id = 0, -1, -1.0, None
    prune_scores: dict[str, float] = dict(state.get("prune_scores", {})) if state is not None else {}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, best_epoch, best_f1, run_id = (
            state["epoch"] + 1, state["best_epoch"], state["best_f1"], state["run_id"])
        if d.main:
            print(f"resuming {resume_path} at epoch {start_epoch + 1}/{epochs}")

    # --- tracking ------------------------------------------------------------------------------
    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment, enabled=d.main,
                      spool=run_dir / PENDING)
    run_id = tracker.start(run_name=cfg.tracking.run_name or cfg.name, run_id=run_id)
    ckpt_dir = run_dir / "checkpoints"
    if parent_run_id:
        tracker.set_tags({"mlflow.parentRunId": parent_run_id})
    if tags:
        tracker.set_tags(tags)
    costs = profile_student(cfg, registry, model, data.splits["train"]) if d.main else {}
    if d.main and state is None:
        _log_run_inputs(tracker, cfg, data, model, run_dir, costs)
        if teacher is not None:
            _log_teacher(tracker, cfg, teacher)
        if prune is not None:
            tracker.log_params({"prune_source_resolved": source["source"]})
            tracker.set_tags({"stage": "prune", "pruner": cfg.prune.method})
    targets = teacher.targets(cfg.model.kd.mode, data.splits["train"], device) if teacher is not None else None
    example = network_input(cfg, model, data.splits["train"].clip_samples)

    def prune_round(epoch: int) -> None:
        """Score, prune one round, score again; the costs and scores go to MLflow."""
        nonlocal costs, rounds_done
        if rounds_done == 0 and d.main:
            before = {**_scores(model, inputs, cfg, device, "before_prune"),
                      **{f"before_prune_{k}": v for k, v in costs.items()}}
            prune_scores.update(before)
            tracker.log_metrics(before, step=0)
        calibrate = None
        if getattr(prune.pruner, "needs_gradients", False):
            calibrate = _calibrator(model, train_set, cfg, device, cfg.prune.calib_batches)
        prune.apply(model.net, rounds_done, example, k, calibrate=calibrate)
        if cfg.train.channels_last:
            model.net.to(memory_format=torch.channels_last)
        if cfg.prune.recalibrate_bn:
            recalibrate_batchnorm(model, train_set, cfg, device, cfg.prune.recalibrate_bn)
        rounds_done += 1
        if d.main:
            costs = profile_student(cfg, registry, model, data.splits["train"])
            after = _scores(model, inputs, cfg, device, "after_prune")
            prune_scores.update(after)
            tracker.log_metrics({**after, **costs, "prune_round": rounds_done}, step=epoch)
            print(f"prune round {rounds_done}/{prune.steps} ({cfg.prune.method}): params "
                  f"{costs.get('student_params', 0) / 1e6:.3f} M, MACs "
                  f"{_first_macs(costs) / 1e6:.1f} M; val acc {after['after_prune_val_acc']:.3f}, "
                  f"test acc {after['after_prune_test_acc']:.3f}", flush=True)

    # --- epochs --------------------------------------------------------------------------------
    base_state = {"config": OmegaConf.to_container(cfg, resolve=True), "class_map": data.class_map(),
                  "class_names": data.class_names, "run_id": run_id, "run_dir": str(run_dir)}
    try:
        for epoch in range(start_epoch, epochs):
            if prune is not None and rounds_done < prune.rounds_due(epoch):
                prune_round(epoch)
                train_model, opt, sched = optimize(prune.phase_epochs(rounds_done))
                best_f1, best_epoch = -1.0, -1  # the best checkpoint comes from the last round's network
            t0 = time.perf_counter()
            batches = epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, epoch, d,
                                    cfg.train.max_steps_per_epoch)
            with epoch_progress(f"epoch {epoch + 1}/{epochs}", len(batches), d.main) as bar:
                train_metrics = train_one_epoch(train_model, loss_fn, train_set, batches, opt, sched,
                                                scaler, cfg, device, epoch, teacher=targets, progress=bar)
            train_time = time.perf_counter() - t0
            val = evaluate(model, inputs["valid"], cfg, device)
            improved = val.f1 > best_f1
            if improved:
                best_f1, best_epoch = val.f1, epoch
            if d.main:
                metrics = {**train_metrics, **val.as_metrics("val"), "lr": sched.get_last_lr()[0],
                           "epoch_time_s": train_time,
                           "train_samples_per_s": sum(map(len, batches)) * d.world / train_time}
                tracker.log_metrics(metrics, step=epoch + 1)
                _log_confusion(tracker, val, data.class_names, f"val epoch {epoch + 1}",
                               run_dir / "plots" / f"confusion_val_epoch{epoch + 1:03d}.png")
                state_now = {**base_state, "model": model.state_dict(), "structure": describe(model.net),
                             "prune_rounds": rounds_done, "prune_scores": prune_scores,
                             "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                             "epoch": epoch, "best_epoch": best_epoch, "best_f1": best_f1,
                             "rng": ckpt.rng_state(), "finished": epoch + 1 == epochs,
                             "metrics": metrics}
                if improved:
                    ckpt.save(state_now, ckpt_dir / "best.pt")
                ckpt.save(state_now, ckpt_dir / "last.pt")
                if cfg.tracking.log_checkpoints:
                    tracker.log_artifact(ckpt_dir / "last.pt", "checkpoints")
                    if improved:
                        tracker.log_artifact(ckpt_dir / "best.pt", "checkpoints")
                print(f"epoch {epoch + 1}/{epochs}  loss {train_metrics['train_loss']:.4f}  "
                      f"train_acc {train_metrics['train_acc']:.3f}  val_acc {val.acc:.3f}  "
                      f"val_f1 {val.f1:.3f}  ({train_time:.1f} s, "
                      f"{metrics['train_samples_per_s']:.1f} samples/s)", flush=True)
        if d.world > 1:
            replicas = d.same_weights(model)
            if d.main:
                tracker.set_tags({"ddp_world_size": d.world, "ddp_weights_sha256": json.dumps(replicas)})
    except BaseException:
        tracker.end("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
        raise

    # --- final scores with the best checkpoint ----------------------------------------------------
    d.barrier()
    best = ckpt.load(ckpt_dir / "best.pt") if (ckpt_dir / "best.pt").is_file() else None
    if best is not None:
        load_weights(model, best, cfg.train.channels_last)
        best_epoch = best["epoch"]
    final: dict[str, float] = {}
    if d.main:
        val = evaluate(model, inputs["valid"], cfg, device)
        test = evaluate(model, inputs["test"], cfg, device)
        final = {**{f"best_{k}": v for k, v in val.as_metrics("val").items()},
                 **test.as_metrics("test", data.class_names), "best_epoch": best_epoch + 1}
        tracker.log_metrics(final, step=epochs)
        final.update(costs)
        final.update(prune_scores)
        if teacher is not None:
            final.update(teacher.scores)
        _log_confusion(tracker, test, data.class_names, "test (best checkpoint)",
                       run_dir / "plots" / "confusion_test.png")
        tracker.end("FINISHED")
    if d.world > 1:
        dist.destroy_process_group()
    return Result(run_id=run_id, run_dir=run_dir, best_epoch=best_epoch + 1, metrics=final,
                  tracking_uri=tracker.uri, run_url=tracker.run_url())


def load_weights(model: AudioClassifier, state: dict[str, Any], channels_last: bool = False) -> None:
    """Load a checkpoint's weights; a pruned network is first reshaped to the checkpoint's layout."""
    if state.get("structure"):
        rebuild(model.net, state["structure"], state["model"], prefix="net.")
        if channels_last:
            model.net.to(memory_format=torch.channels_last)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ckpt.CheckpointError(
            f"the checkpoint does not fit this model ({first[1].strip() if len(first) > 1 else first[0]}): it was "
            f"saved from another architecture, class count or front end (aug.n_mels); use the same "
            f"model.student.*, data.classes and aug.* as the run that wrote it") from exc


def _scores(model: AudioClassifier, inputs: dict[str, Inputs], cfg: DictConfig, device: torch.device,
            prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, name in (("valid", "val"), ("test", "test")):
        s = evaluate(model, inputs[split], cfg, device)
        out.update({f"{prefix}_{name}_acc": s.acc, f"{prefix}_{name}_f1": s.f1})
    return out


def _first_macs(costs: dict[str, float]) -> float:
    return next((v for k, v in costs.items() if k.startswith("student_macs_")), 0.0)


@torch.no_grad()
def recalibrate_batchnorm(model: AudioClassifier, train_set: Inputs, cfg: DictConfig, device: torch.device,
                          n_batches: int) -> None:
    """Re-estimate every BatchNorm's running mean/var as the exact average over ``n_batches``
    training batches (momentum ``None``), the rest of the model in eval mode (no SpecAugment, no
    dropout). Pruning changes the channels feeding each BatchNorm, so its stored statistics no
    longer describe its input; torch.optim never touches them."""
    norms = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for idx in epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, Dist(), n_batches):
            x, _ = train_set.batch(idx)
            model(**{train_set.input_kind: x.to(device)})
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def _calibrator(model: AudioClassifier, train_set: Inputs, cfg: DictConfig, device: torch.device,
                n_batches: int) -> Callable[[nn.Module], None]:
    """Accumulates CE gradients of ``n_batches`` training batches (eval-mode BatchNorm, so the
    running statistics are not disturbed) for gradient-based channel importance."""
    def calibrate(net: nn.Module) -> None:
        was_training = model.training
        model.eval()
        batches = epoch_batches(len(train_set), cfg.train.batch_size, cfg.train.seed, 0, Dist(), n_batches)
        for idx in batches:
            x, target = train_set.batch(idx)
            logits = model(**{train_set.input_kind: x.to(device)})
            F.cross_entropy(logits.float(), target.to(device)).backward()
        model.train(was_training)
    return calibrate


def build_loss(cfg: DictConfig, registry: Registry) -> Any:
    """The training loss. With ``model.kd.enabled`` it is ``kd`` (or another loss that takes teacher
    logits, named by ``train.loss``) built with ``model.kd.T`` and ``alpha``; without, a loss that
    needs a teacher is refused."""
    name = cfg.train.loss
    if not cfg.model.kd.enabled:
        loss_fn = registry.build("loss", name)
        if getattr(loss_fn, "needs_teacher", False):
            raise TrainingError(f"train.loss={name} needs teacher logits: set model.kd.enabled=true and "
                                f"model.teacher.name, or use train.loss=ce")
        return loss_fn
    registry.get("teacher", cfg.model.teacher.name)  # an unknown teacher fails now, listing the known ones
    if name == "ce":
        name = "kd"
    loss_fn = registry.build("loss", name, T=cfg.model.kd.T, alpha=cfg.model.kd.alpha)
    if not getattr(loss_fn, "needs_teacher", False):
        raise TrainingError(f"model.kd.enabled=true but train.loss={name} does not use teacher logits; "
                            f"use train.loss=kd (or ce, which becomes kd under KD)")
    return loss_fn


def _log_teacher(tracker: Tracker, cfg: DictConfig, teacher: Any) -> None:
    """What the KD run learned from: the teacher's identity and its own scores, beside the student's."""
    t = cfg.model.teacher
    tracker.log_params({"teacher_key": teacher.key, "teacher_path": str(teacher.path),
                        "teacher_run_id": teacher.run_id or ""})
    tracker.log_metrics({k: v for k, v in teacher.scores.items() if k.startswith("teacher_")}, step=0)
    tracker.set_tags({"stage": "kd", "teacher": t.name, "kd_mode": cfg.model.kd.mode})


def build_model(cfg: DictConfig, registry: Registry, num_classes: int) -> AudioClassifier:
    s = cfg.model.student
    options = OmegaConf.to_container(s.options, resolve=True) or {}
    net = registry.build("student", s.arch, num_classes=num_classes, width_mult=s.width_mult,
                         bn_momentum=s.bn_momentum, **options)
    frontend = LogMelFrontend.from_config(cfg.aug)
    wave_aug = WaveAugment.from_config(cfg.aug)
    model = AudioClassifier(frontend, net, wave_aug, channels_last=cfg.train.channels_last)
    if cfg.train.channels_last:
        model.net.to(memory_format=torch.channels_last)
    return model


def model_inputs(cfg: DictConfig, model: AudioClassifier, data: DataBundle) -> dict[str, Inputs]:
    """What each split is fed from. With ``train.cache_logmel`` the log-mel of every clip is
    computed once and cached; training still reads waveforms when a waveform augmentation is on
    (it must run before the log-mel), evaluation never augments and always reads the cache."""
    if not cfg.train.cache_logmel:
        return dict(data.splits)
    wave_aug_on = model.wave_aug is not None and bool(model.wave_aug.enabled)
    return {split: waves if (split == "train" and wave_aug_on) else build_logmel_cache(waves, model.frontend)
            for split, waves in data.splits.items()}


def _stats_batches(train: Inputs, frontend: LogMelFrontend, cfg: DictConfig,
                   max_clips: int = 2048) -> Iterator[torch.Tensor]:
    """Training-split log-mel for the normalisation statistics (a seeded subset of <= max_clips)."""
    g = torch.Generator().manual_seed(cfg.train.seed)
    idx = torch.randperm(len(train), generator=g)[:max_clips].tolist()
    for i in range(0, len(idx), 256):
        x = train.batch(idx[i:i + 256])[0]
        yield x if train.input_kind == "logmel" else frontend.log_mel(x.to(frontend.mean.device))


def _check_resume_compatible(state: dict[str, Any], cfg: DictConfig, data: DataBundle) -> None:
    old = state["config"]
    if state["class_names"] != data.class_names:
        raise TrainingError(f"cannot resume: the checkpoint's classes {state['class_names']} differ from "
                            f"this run's {data.class_names}")
    if bool(old["model"]["kd"]["enabled"]) != bool(cfg.model.kd.enabled):
        raise TrainingError(f"cannot resume: the checkpoint was trained with model.kd.enabled="
                            f"{old['model']['kd']['enabled']}, the config has {cfg.model.kd.enabled}")
    for key in ("arch", "width_mult"):
        if old["model"]["student"][key] != cfg.model.student[key]:
            raise TrainingError(f"cannot resume: checkpoint has model.student.{key}="
                                f"{old['model']['student'][key]}, config has {cfg.model.student[key]}")
    if state.get("finished"):
        raise TrainingError("cannot resume: that run already finished all its epochs "
                            "(raise train.epochs only in a new run)")


def network_input(cfg: DictConfig, model: AudioClassifier, clip_samples: int) -> torch.Tensor:
    """A zero ``[1, 1, n_mels, frames]`` network input for one clip (profiling, graph tracing)."""
    frames = model.frontend.num_frames(clip_samples)
    return torch.zeros(1, 1, cfg.aug.n_mels, frames, device=model.frontend.mean.device)


def profile_student(cfg: DictConfig, registry: Registry, model: AudioClassifier,
                    train: WaveformSet) -> dict[str, float]:
    """Params and MACs of the student network (front end excluded) for one training input
    ``[1, 1, n_mels, frames]``, from each profiler in ``cfg.profilers``."""
    example = network_input(cfg, model, train.clip_samples)
    metrics: dict[str, float] = {}
    for name in cfg.profilers:
        profiler = registry.build("profiler", name)
        if not hasattr(profiler, "profile"):
            raise TrainingError(f"profilers: {name!r} does not count params/MACs (it has no profile()); list only "
                                f"MAC counters there (thop, flop_counter). Latency is export.latency_profiler")
        p = profiler.profile(model.net, example)
        metrics.update({"student_params": p.params, f"student_macs_{name}": p.macs})
    return metrics


def _log_run_inputs(tracker: Tracker, cfg: DictConfig, data: DataBundle, model: AudioClassifier,
                    run_dir: Path, costs: dict[str, float]) -> None:
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params.update({"num_classes": data.num_classes,
                   "class_names": json.dumps(data.class_names),
                   "n_train": len(data.splits["train"]), "n_valid": len(data.splits["valid"]),
                   "n_test": len(data.splits["test"])})
    if cfg.task != "prune":  # a pruned run's size changes as it prunes: see the student_params metric
        params["student_params"] = sum(p.numel() for p in model.net.parameters())
    tracker.log_params(params)
    tracker.log_metrics(costs, step=0)
    tracker.set_tags({"stage": "student", "dataset": cfg.data.dataset, "student": cfg.model.student.arch})
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "class_map.json").write_text(json.dumps(data.class_map(), indent=2))
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.log_artifact(run_dir / "class_map.json")
    skipped = {s: len(w.skipped) for s, w in data.splits.items()}
    tracker.log_metrics({f"skipped_clips_{s}": n for s, n in skipped.items()}, step=0)


def _log_confusion(tracker: Tracker, scores: Scores, names: list[str], title: str, path: Path) -> None:
    tracker.log_artifact(plot_confusion(scores, names, title, path), "confusion")
