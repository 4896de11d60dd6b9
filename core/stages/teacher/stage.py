"""The teacher stage: a teacher that knows the task before it teaches, and its logits, computed once.

A teacher plugin arrives with a new, random K-class head (or, offline, with random weights
throughout). Before KD the stage trains it on the training split (:mod:`~core.stages.teacher.fit`).
``model.teacher.ensemble=M`` trains M members from seeds ``seed .. seed+M-1`` and averages their
probabilities. The trained teacher is stored under the cache root keyed by its spec
(:mod:`~core.stages.teacher.plan`), so every later run, seed and sweep reuses it; its logits for
each split are cached beside it (:mod:`~core.stages.teacher.passes`). Its val/test scores are logged
to their own MLflow run (tag ``stage=teacher``) and onto every KD run that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from core.data import DataBundle
from core.engine import checkpoint
from core.engine.seeding import isolated_rng, seed_everything
from core.registry import Registry
from core.registry.contracts import Teacher
from core.stages.teacher.ensemble import TeacherEnsemble
from core.stages.teacher.fit import TeacherError, train_and_store
from core.stages.teacher.passes import ensemble_logits, out_of_fold_logits, score_array, scores_from_logits
from core.stages.teacher.plan import TeacherPlan, backbone_key, digest, initial_weights
from core.stages.teacher.targets import OfflineTargets, OnlineTargets


@attrs.define
class PreparedTeacher:
    """A trained teacher ready for KD.

    Args:
        module: the teacher (an ensemble of one or more members), eval mode, on the run's device.
        key: hash of everything that determines the trained teacher.
        path: its stored checkpoint (``teacher.pt``).
        scores: ``teacher_{val,test}_{acc,f1}`` of the (ensemble) teacher.
        logits: per split, the teacher's logits ``[N, K]`` (float32), from the on-disk cache.
        run_id: the MLflow run that trained it (``None`` if it was trained without tracking).
        source: what its weights were loaded from (the teacher's default filled in).
        weights: the digest of its weights before training (the checkpoint's content).
    """

    module: TeacherEnsemble
    name: str
    key: str
    path: Path
    scores: dict[str, float]
    logits: dict[str, np.ndarray]
    run_id: str | None
    source: str
    weights: str

    def targets(self, mode: str, train_waves: Any, device: torch.device) -> OfflineTargets | OnlineTargets:
        if mode == "offline":
            return OfflineTargets(self.logits["train"], device)
        return OnlineTargets(self.module, train_waves, device)


def prepare_teacher(
    cfg: Any,
    registry: Registry,
    data: DataBundle,
    device: torch.device,
    *,
    train: bool = True,
    log_fn: Callable[[str], None] = print,
) -> PreparedTeacher:
    """The trained teacher for this config (``model.teacher.*``) and data: loaded from the cache, or
    trained now. Its random draws (a fresh member's weights, its training) come from
    ``model.teacher.seed`` and leave the caller's random states as they were, so the student of a KD
    run starts exactly as the student-only run does.

    Args:
        train: train (and cache) the teacher when no stored one fits; ``False`` (non-zero DDP
            ranks) only loads what rank 0 stored.
        log_fn: where progress lines go.

    Raises:
        TeacherError: the teacher's head was never trained (``model.teacher.epochs=0`` with no
            trained checkpoint), or its classes differ from the data's.
    """
    plan = TeacherPlan.from_config(cfg, registry)
    with isolated_rng():
        seed_everything(plan.seed)
        return _prepare(plan, registry, data, device, train, log_fn)


def _prepare(
    plan: TeacherPlan,
    registry: Registry,
    data: DataBundle,
    device: torch.device,
    train: bool,
    log_fn: Callable[[str], None],
) -> PreparedTeacher:
    members = [plan.build_member(registry, data.num_classes) for _ in range(plan.ensemble)]
    for m in members:
        check_member(m, plan.name, data.num_classes)
    ensemble = TeacherEnsemble(members)
    source = members[0].source or (f"{plan.checkpoint} (as given)" if plan.checkpoint else "the teacher's default")
    spec = plan.spec(data, weights=initial_weights(members[0]))
    key = digest(spec)
    folder = plan.cache_root / f"{plan.name}-{key}"
    path = folder / "teacher.pt"

    stored = load_stored(path, ensemble, plan.name, log_fn)
    if stored is not None:
        run_id, scores = stored.get("run_id"), dict(stored.get("scores", {}))
        log_fn(f"teacher {plan.name}: reusing the trained teacher {path}")
    elif not train:
        raise TeacherError(f"teacher {plan.name}: no trained teacher at {path} (rank 0 should have made it)")
    else:
        run_id = train_and_store(plan, registry, ensemble, spec, key, folder, data, device, log_fn, source)
        stored = checkpoint.load(path)
        scores = dict(stored["scores"])

    ensemble.to(device).eval()
    if not bool(ensemble.head_trained):
        raise TeacherError(
            f"teacher {plan.name}: its classification head was never trained on this task's classes "
            f"({', '.join(data.class_names)}), and distilling from a random head teaches noise. "
            f"Let the teacher stage fit it (model.teacher.epochs > 0; it is {plan.epochs}) or point "
            f"model.teacher.checkpoint at a teacher trained on these classes"
        )
    bs, backbone = plan.pass_batch_size, backbone_key(spec)
    logits = {
        split: ensemble_logits(ensemble, waves, device, folder, backbone, bs)
        for split, waves in data.splits.items()
        if not (split == "train" and plan.cross_fit)
    }
    if plan.cross_fit:
        logits["train"] = out_of_fold_logits(
            ensemble, data.splits["train"], stored["folds"], device, folder, backbone, bs
        )
    if not scores:  # a stored teacher trained without the stage's scores (e.g. epochs=0 + checkpoint)
        scores = scores_from_logits(logits, data)
    scores.setdefault("teacher_params", sum(p.numel() for p in ensemble.parameters()))
    # How the teacher does on the clips it teaches from: near 1.0 means its soft targets mostly
    # restate the labels (it trained on them); cross-fitted targets show its behaviour on unseen
    # instruments instead.
    scores["teacher_train_acc"] = score_array(logits["train"], data.splits["train"].labels).acc
    return PreparedTeacher(
        module=ensemble,
        name=plan.name,
        key=key,
        path=path,
        scores=scores,
        logits=logits,
        run_id=run_id,
        source=source,
        weights=spec["weights"],
    )


def load_stored(
    path: Path, ensemble: TeacherEnsemble, name: str, log_fn: Callable[[str], None]
) -> dict[str, Any] | None:
    """The stored teacher at ``path`` loaded onto ``ensemble`` (its ``teacher.pt`` as a dict), or
    None when there is none or it does not fit this teacher (said, and trained again)."""
    if not path.is_file():
        return None
    stored = checkpoint.load(path)
    trained, frozen = stored.get("trained"), stored.get("frozen")
    why = (
        "it was written by an earlier version of the stage"
        if not isinstance(trained, dict) or not isinstance(frozen, dict)
        else ensemble.load_trained(trained, str(frozen.get("digest")))
    )
    if why is None:
        return stored
    log_fn(f"teacher {name}: not reusing {path}: {why}; training it again")
    return None


def check_member(member: nn.Module, name: str, num_classes: int) -> None:
    if not isinstance(member, Teacher):
        raise TeacherError(
            f"teacher {name} built a {type(member).__name__}: teacher plugins return a subclass of core.api.Teacher"
        )
    if member.head.out_features != num_classes:
        raise TeacherError(
            f"teacher {name} has {member.head.out_features} outputs but the data has {num_classes} classes"
        )


__all__ = ["PreparedTeacher", "TeacherError", "check_member", "prepare_teacher"]
