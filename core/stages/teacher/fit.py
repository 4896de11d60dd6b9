"""Training the teacher on the task before it teaches: every member, scored, stored, logged.

* frozen backbone (``model.teacher.freeze=true``, ``unfreeze_last_n=0``): the backbone embeds every
  clip once (cached) and only the head is fitted on the embeddings (seconds);
* otherwise the engine's loop fine-tunes (or, for a CNN teacher without weights, trains) it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import DataBundle
from core.engine import checkpoint
from core.engine.distributed import Dist
from core.engine.loop import epoch_batches, epoch_progress, evaluate, train_one_epoch
from core.engine.metrics import score
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.seeding import seed_everything
from core.errors import UserError
from core.registry import Registry
from core.registry.contracts import Teacher
from core.stages.teacher.ensemble import TeacherEnsemble
from core.stages.teacher.passes import (
    embeddings,
    ensemble_logits,
    group_folds,
    member_logits,
    score_array,
    scores_from_logits,
)
from core.stages.teacher.plan import TeacherPlan, backbone_key
from core.tracking import PENDING, Tracker, flatten

log = logging.getLogger(__name__)

#: a stored teacher larger than this is kept on disk but not uploaded to MLflow
MAX_ARTIFACT_BYTES = 200e6


class TeacherError(UserError, RuntimeError):
    """The teacher cannot teach: untrained head, wrong classes, unusable settings."""


@attrs.frozen
class Fitting:
    """What fitting any member needs: the plan, the data, the device, where the stage caches (the
    teacher's folder), the spec it is keyed by, the teacher run's tracker and where lines go."""

    plan: TeacherPlan
    data: DataBundle
    device: torch.device
    folder: Path
    spec: dict[str, Any]
    tracker: Tracker
    log_fn: Callable[[str], None]


def train_and_store(
    plan: TeacherPlan,
    registry: Registry,
    ensemble: TeacherEnsemble,
    spec: dict[str, Any],
    key: str,
    folder: Path,
    data: DataBundle,
    device: torch.device,
    log_fn: Callable[[str], None],
    source: str,
) -> str | None:
    """Train every member, score the ensemble, store ``teacher.pt`` (what was trained, not the
    frozen backbone), log a teacher MLflow run. ``source``: what the weights were loaded from."""
    tracker = Tracker(plan.tracking_uri, plan.experiment, spool=folder / PENDING)
    run_id = tracker.start(run_name=f"teacher-{plan.name}")
    tracker.set_tags({"stage": "teacher", "teacher": plan.name, "dataset": plan.dataset, "teacher_key": key})
    tracker.log_params(
        {
            **flatten({"teacher": {k: v for k, v in spec.items() if k != "clips"}}),
            **{f"teacher.clips.{s}": n for s, n in spec["clips"].items()},
            "teacher.source": source,
        }
    )
    started = time.perf_counter()
    folds = group_folds(data.groups["train"], len(ensemble.members), plan.seed)
    bs, backbone = plan.pass_batch_size, backbone_key(spec)
    try:
        for m, member in enumerate(ensemble.teachers):
            seed_everything(plan.seed + m)
            member.to(device)
            member.prepare(data.splits["train"])
            if plan.epochs > 0:
                fit = fit_head_on_embeddings if head_only(member) else finetune
                keep = np.flatnonzero(folds != m) if plan.cross_fit else np.arange(len(folds))
                fit(Fitting(plan, data, device, folder, spec, tracker, log_fn), member, keep, m)
                member.head_trained.fill_(True)
        ensemble.to(device).eval()
        scores = scores_from_logits(
            {
                split: ensemble_logits(ensemble, data.splits[split], device, folder, backbone, bs)
                for split in ("valid", "test")
            },
            data,
        )
        if len(ensemble.members) > 1:  # the members' own scores, from the logits cached just above
            for m, member in enumerate(ensemble.teachers):
                for split, prefix in (("valid", "best_val"), ("test", "test")):
                    logits = member_logits(member, data.splits[split], device, folder, backbone, bs)
                    s = score_array(logits, data.splits[split].labels)
                    scores.update({f"teacher_m{m}_{prefix}_acc": s.acc, f"teacher_m{m}_{prefix}_f1": s.f1})
        scores["teacher_train_time_s"] = time.perf_counter() - started
        scores.update(teacher_costs(plan, registry, ensemble, data.splits["train"].clip_samples, device))
        tracker.log_metrics({k.removeprefix("teacher_"): v for k, v in scores.items()}, step=max(1, plan.epochs))
        state = {
            "trained": ensemble.trained_state(),
            "frozen": {"digest": ensemble.frozen_digest(), "source": source, "weights": spec["weights"]},
            "spec": spec,
            "scores": scores,
            "run_id": run_id,
            "class_names": list(data.class_names),
            "members": len(ensemble.members),
            "folds": torch.from_numpy(folds),
        }
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save(state, folder / "teacher.pt")
        (folder / "spec.json").write_text(json.dumps(spec, indent=2, default=str))
        if plan.log_checkpoints and (folder / "teacher.pt").stat().st_size <= MAX_ARTIFACT_BYTES:
            tracker.log_artifact(folder / "teacher.pt", "checkpoints")
        log_fn(
            f"teacher {plan.name}: val acc {scores['teacher_val_acc']:.3f} macro-F1 {scores['teacher_val_f1']:.3f}, "
            f"test acc {scores['teacher_test_acc']:.3f} macro-F1 {scores['teacher_test_f1']:.3f} "
            f"({scores['teacher_train_time_s']:.0f} s); stored {folder / 'teacher.pt'}"
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id


def teacher_costs(
    plan: TeacherPlan, registry: Registry, teacher: nn.Module, clip_samples: int, device: torch.device
) -> dict[str, float]:
    """Params and per-clip MACs of the whole teacher (every member, front end included) from each
    MAC counter in ``profilers``; a counter that cannot count this teacher is skipped with a warning."""
    out: dict[str, float] = {"teacher_params": sum(p.numel() for p in teacher.parameters())}
    example = torch.zeros(1, clip_samples, device=device)
    for tool in plan.profilers:
        try:
            out[f"teacher_macs_{tool}"] = registry.build("profiler", tool).profile(teacher, example).macs
        except Exception as err:  # noqa: BLE001 - third-party teachers may defeat a counter
            log.warning("profiler %s could not count teacher %s: %s", tool, plan.name, err)
    return out


def head_only(member: Teacher) -> bool:
    return member.head_only()


def finetune(fitting: Fitting, member: Teacher, keep: np.ndarray, m: int) -> None:
    """Train member ``m``'s trainable parameters with the engine's loop (CE, the stage's settings) on
    the training clips ``keep``, keeping the epoch with the best validation macro-F1."""
    plan, data, device, tracker = fitting.plan, fitting.data, fitting.device, fitting.tracker
    params = [p for p in member.parameters() if p.requires_grad]
    if not params:
        raise TeacherError(f"teacher {plan.name}: nothing to train (every parameter is frozen)")
    s = attrs.evolve(plan.settings, seed=plan.seed + m)  # member m's batch order and crops
    train = data.splits["train"]

    def batches_for(epoch: int) -> list[list[int]]:
        order = epoch_batches(len(keep), s.batch_size, s.seed, epoch, Dist(), s.max_steps_per_epoch)
        return [keep[b].tolist() for b in order]

    opt = build_optimizer(s, params)
    sched = build_scheduler(s, opt, len(batches_for(0)) * s.epochs)
    ce = lambda logits, target, *_: {"total": F.cross_entropy(logits, target)}  # noqa: E731
    best_f1, best_state = -1.0, None
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        batches = batches_for(epoch)
        with epoch_progress(f"teacher member {m + 1} epoch {epoch + 1}/{s.epochs}", len(batches), True) as bar:
            metrics = train_one_epoch(member, ce, train, batches, opt, sched, None, s, device, epoch, progress=bar)
        val = evaluate(member, data.splits["valid"], s, device)
        if val.f1 > best_f1:
            best_f1, best_state = val.f1, {k: v.detach().clone() for k, v in member.state_dict().items()}
        tracker.log_metrics(
            {
                f"m{m}_train_loss": metrics["train_loss"],
                f"m{m}_train_acc": metrics["train_acc"],
                f"m{m}_val_acc": val.acc,
                f"m{m}_val_f1": val.f1,
            },
            step=epoch + 1,
        )
        fitting.log_fn(
            f"teacher {plan.name} member {m + 1}/{plan.ensemble} epoch {epoch + 1}/{s.epochs}  "
            f"loss {metrics['train_loss']:.4f}  train_acc {metrics['train_acc']:.3f}  val_acc {val.acc:.3f}  "
            f"val_f1 {val.f1:.3f}  ({time.perf_counter() - t0:.1f} s)"
        )
    assert best_state is not None
    member.load_state_dict(best_state)


def fit_head_on_embeddings(fitting: Fitting, member: Teacher, keep: np.ndarray, m: int) -> None:
    """Frozen backbone: embed every clip once (cached), then fit only ``head`` on the embeddings."""
    plan, data, device, tracker = fitting.plan, fitting.data, fitting.device, fitting.tracker
    given = [k for k, v in (("crop_seconds", plan.settings.crop), ("mixup", plan.settings.mixup)) if v]
    if given:  # they change the input, and the head learns from the whole clips' cached embeddings
        raise TeacherError(
            f"model.teacher.{given[0]} changes the teacher's training input, but teacher {plan.name} only "
            f"fits its head on the cached embeddings of whole clips: set model.teacher.freeze=false or "
            f"unfreeze_last_n > 0 to train blocks on it, or leave model.teacher.{given[0]} null"
        )
    # The embeddings depend on the backbone and its input only, not on how the head is trained.
    backbone = backbone_key(fitting.spec)
    emb = {
        split: embeddings(member, data.splits[split], device, fitting.folder.parent, backbone, plan.pass_batch_size)
        for split in ("train", "valid")
    }
    x_train = torch.from_numpy(emb["train"][keep]).to(device)
    y_train = torch.from_numpy(data.splits["train"].labels[keep]).to(device)
    x_val = torch.from_numpy(emb["valid"]).to(device)
    y_val = torch.from_numpy(data.splits["valid"].labels)
    head = member.head
    opt = torch.optim.AdamW(head.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    g = torch.Generator().manual_seed(plan.seed + m)
    best_f1, best_state = -1.0, None
    for epoch in range(plan.epochs):
        head.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(order), plan.batch_size):
            idx = order[i : i + plan.batch_size].to(device)
            loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            val_logits = head(x_val).float().cpu()
        val = score(val_logits, y_val, F.cross_entropy(val_logits, y_val).item())
        if val.f1 > best_f1:
            best_f1, best_state = val.f1, {k: v.detach().clone() for k, v in head.state_dict().items()}
        tracker.log_metrics(
            {f"m{m}_train_loss": total / len(order), f"m{m}_val_acc": val.acc, f"m{m}_val_f1": val.f1}, step=epoch + 1
        )
    assert best_state is not None
    head.load_state_dict(best_state)
    fitting.log_fn(
        f"teacher {plan.name} member {m + 1}/{plan.ensemble}: head fitted on cached embeddings "
        f"({plan.epochs} epochs), best val macro-F1 {best_f1:.3f}"
    )


__all__ = ["TeacherError", "finetune", "fit_head_on_embeddings", "head_only", "teacher_costs", "train_and_store"]
