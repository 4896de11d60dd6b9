"""``task=train`` (and ``task=prune``): one run of the configured student on the configured dataset.

Set-up in the order that keeps mistakes cheap: every component name and option is checked before
any download, render or cache build; then the data, the teacher (KD; trained once and cached), the
model and its inputs; then the :class:`~core.engine.trainer.Trainer` runs, with the KD and pruning
stages plugged in as extensions.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from core.config import as_dict
from core.data import DataBundle, build_dataset, place, prepare_data
from core.engine.checkpoint import CheckpointError
from core.engine.distributed import pick_device, setup_distributed
from core.engine.model import AudioClassifier, build_model, load_weights, model_inputs, normalisation_batches
from core.engine.seeding import seed_everything
from core.engine.settings import TrainSettings
from core.engine.state import TrainState
from core.engine.trainer import Extension, Result, RunInfo, Trainer
from core.errors import TrainingError
from core.registry import Registry
from core.stages.profile import student_costs
from core.stages.prune import PruneRounds, PruneStage, load_student_source
from core.stages.teacher import Distillation, TeacherPlan, prepare_teacher
from core.tracking import PENDING, Tracker, resolve_uri

log = logging.getLogger(__name__)


def run_train(
    cfg: DictConfig,
    registry: Registry,
    run_dir: Path,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Result:
    """Train (or, with ``task=prune``, prune and fine-tune) the configured student; returns the final scores.

    Args:
        parent_run_id: an MLflow run to nest this one under (the comparison's or sweep's parent run).
        tags: more MLflow tags for the run (a sweep job's overrides).
    """
    dist = setup_distributed(cfg.train.device)
    device = pick_device(cfg.train.device, dist.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # config mistakes, and a resume target that cannot be continued, surface before any download,
    # render or cache build
    loss_fn = build_loss(cfg, registry)
    check_components(cfg, registry)
    prune = PruneStage(cfg.prune, cfg.train.epochs, registry) if cfg.task == "prune" else None
    settings = TrainSettings.from_config(
        cfg.train, clip_seconds=cfg.data.clip_seconds, **({"epochs": prune.epochs} if prune else {})
    )
    dataset = build_dataset(cfg, registry)  # its class list, without preparing it
    resume = find_resume(cfg)
    if resume is not None:
        check_resume_compatible(resume, cfg, list(dataset.class_names))

    # data: rank 0 downloads/renders, the others wait and then read the same files
    progress = dist.main and sys.stderr.isatty()
    data = dist.main_first(
        lambda main: prepare_data(cfg, registry, dataset=dataset, prepare=main, progress=main and progress)
    )
    check_class_count(cfg, data)
    if dist.main:
        print("classes:\n" + data.describe())
    teacher = None
    if cfg.model.kd.enabled:  # trained on this task once and cached; rank 0 trains, the others load
        teacher = dist.main_first(
            lambda main: prepare_teacher(
                cfg, registry, data, device, train=main, log_fn=print if dist.main else log.info
            )
        )
    seed_everything(cfg.train.seed)
    model = build_model(cfg, registry, data.num_classes).to(device)
    inputs = dist.main_first(lambda _: model_inputs(model, data.splits, cfg.train.cache_logmel))
    source = None
    if resume is None and prune is not None:  # the trained student to prune, front-end statistics included
        source = load_student_source(
            cfg.prune.source, cfg.model.student, data.class_names, resolve_uri(cfg.tracking.uri)
        )
        load_weights(model, source.state.to_dict(), cfg.train.channels_last)
        if dist.main:
            print(f"pruning {source.described}")
    elif resume is None:
        model.frontend.fit_normalization_logmel(normalisation_batches(inputs["train"], model.frontend, cfg.train.seed))
    inputs = place(inputs, device, cfg.train.data_on_device)  # on a GPU, in its memory while it fits

    clip_samples = data.splits["train"].clip_samples
    extensions: list[Extension] = []
    if teacher is not None:
        extensions.append(Distillation(teacher, cfg.model.kd.mode, data.splits["train"], device))
    if prune is not None:
        extensions.append(PruneRounds(prune, source, data.num_classes, clip_samples))
    run_dir = Path(resume.run_dir) if resume is not None else Path(run_dir)
    tracker = Tracker(
        resolve_uri(cfg.tracking.uri), cfg.tracking.experiment, enabled=dist.main, spool=run_dir / PENDING
    )
    trainer = Trainer(
        model=model,
        loss_fn=loss_fn,
        inputs=inputs,
        settings=settings,
        device=device,
        dist=dist,
        tracker=tracker,
        run=run_info(cfg, data, model, parent_run_id, tags),
        run_dir=run_dir,
        resume=resume,
        extensions=extensions,
        measure_costs=lambda m: student_costs(registry, list(cfg.profilers), m, clip_samples),
    )
    return trainer.run()


def build_loss(cfg: DictConfig, registry: Registry) -> Any:
    """The training loss. With ``model.kd.enabled`` it is ``kd`` (or another loss that takes teacher
    logits, named by ``train.loss``) built with ``model.kd.T`` and ``alpha``; without, a loss that
    needs a teacher is refused."""
    name = cfg.train.loss
    if not cfg.model.kd.enabled:
        loss_fn = registry.build("loss", name)
        if loss_fn.needs_teacher:
            raise TrainingError(
                f"train.loss={name} needs teacher logits: set model.kd.enabled=true and "
                f"model.teacher.name, or use train.loss=ce"
            )
        return loss_fn
    registry.get("teacher", cfg.model.teacher.name)  # an unknown teacher fails now, listing the known ones
    if name == "ce":
        name = "kd"
    loss_fn = registry.build("loss", name, T=cfg.model.kd.T, alpha=cfg.model.kd.alpha)
    if not loss_fn.needs_teacher:
        raise TrainingError(
            f"model.kd.enabled=true but train.loss={name} does not use teacher logits; "
            f"use train.loss=kd (or ce, which becomes kd under KD)"
        )
    return loss_fn


def check_components(cfg: DictConfig, registry: Registry) -> None:
    """Every component the run will build exists and accepts its options (those that declare them),
    before any data work: the student, the MAC counters and, under KD, the teacher."""
    s = cfg.model.student
    registry.options("student", s.arch, s.options, "model.student.options")
    for name in cfg.profilers:
        registry.get("profiler", name)
    if cfg.model.kd.enabled:
        TeacherPlan.from_config(cfg, registry)


def check_class_count(cfg: DictConfig, data: DataBundle) -> None:
    k = data.num_classes
    if cfg.model.student.num_classes is not None and cfg.model.student.num_classes != k:
        raise TrainingError(
            f"model.student.num_classes={cfg.model.student.num_classes} but data.classes gives {k} classes "
            f"({', '.join(data.class_names)}); leave num_classes unset to derive it"
        )


def find_resume(cfg: DictConfig) -> TrainState | None:
    """``train.resume``: a path to ``last.pt`` (or its run folder), or ``auto`` for the newest run of
    this experiment name under ``train.out_dir`` that is not closed (killed mid-epoch, or after its
    last epoch but before its final scores). ``auto`` reads only this experiment's runs (by the
    ``config.yaml`` beside each checkpoint) and skips, with a warning, a checkpoint it cannot read."""
    target = cfg.train.resume
    if target is None:
        return None
    if target != "auto":
        p = Path(target).expanduser()
        if p.is_dir():
            p = p / "checkpoints" / "last.pt"
        if not p.is_file():
            raise TrainingError(f"train.resume={target}: no checkpoint at {p}")
        return TrainState.load(p, source=f"train.resume={target} ({p})")
    candidates = []
    for p in Path(cfg.train.out_dir).glob("**/checkpoints/last.pt"):
        if run_name(p.parent.parent) not in (None, cfg.name):
            continue  # another experiment's run: not even read
        try:
            state = TrainState.load(p)
        except CheckpointError as exc:
            log.warning("train.resume=auto: skipping %s, which cannot be read: %s", p, exc)
            continue
        if not state.closed and state.config.get("name") == cfg.name:
            candidates.append((p.stat().st_mtime, p, state))
    if not candidates:
        log.info("train.resume=auto: no unfinished run of %r under %s; starting fresh", cfg.name, cfg.train.out_dir)
        return None
    return max(candidates, key=lambda c: c[:2])[2]


def run_name(run_dir: Path) -> str | None:
    """The experiment name in a run folder's ``config.yaml`` (None when it has none to read)."""
    try:
        config = OmegaConf.load(run_dir / "config.yaml")
    except Exception:  # noqa: BLE001 - missing or mangled: the checkpoint itself decides
        return None
    return str(config.name) if isinstance(config, DictConfig) and "name" in config else None


def check_resume_compatible(state: TrainState, cfg: DictConfig, class_names: list[str]) -> None:
    old = state.config
    if state.class_names != class_names:
        raise TrainingError(
            f"cannot resume: the checkpoint's classes {state.class_names} differ from this run's {class_names}"
        )
    if bool(old["model"]["kd"]["enabled"]) != bool(cfg.model.kd.enabled):
        raise TrainingError(
            f"cannot resume: the checkpoint was trained with model.kd.enabled="
            f"{old['model']['kd']['enabled']}, the config has {cfg.model.kd.enabled}"
        )
    for key in ("arch", "width_mult"):
        if old["model"]["student"][key] != cfg.model.student[key]:
            raise TrainingError(
                f"cannot resume: checkpoint has model.student.{key}="
                f"{old['model']['student'][key]}, config has {cfg.model.student[key]}"
            )
    if state.closed:
        raise TrainingError(
            f"cannot resume: that run is complete (all {old['train']['epochs']} epochs, final scores logged to "
            f"MLflow run {state.run_id}); raise train.epochs only in a new run"
        )


def run_info(
    cfg: DictConfig, data: DataBundle, model: AudioClassifier, parent_run_id: str | None, tags: dict[str, str] | None
) -> RunInfo:
    """What the run logs about itself: the config, the data's classes and sizes, its tags."""
    params: dict[str, Any] = {
        "num_classes": data.num_classes,
        "class_names": json.dumps(data.class_names),
        **{f"n_{split}": len(waves) for split, waves in data.splits.items()},
    }
    if cfg.task != "prune":  # a pruned run's size changes as it prunes: see the student_params metric
        params["student_params"] = sum(p.numel() for p in model.net.parameters())
    start_tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return RunInfo(
        name=cfg.tracking.run_name or cfg.name,
        config=as_dict(cfg),
        class_names=data.class_names,
        class_map=data.class_map(),
        params=params,
        tags={"stage": "student", "dataset": cfg.data.dataset, "student": cfg.model.student.arch},
        metrics={f"skipped_clips_{s}": len(w.skipped) for s, w in data.splits.items()},
        files={
            "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
            "class_map.json": json.dumps(data.class_map(), indent=2),
        },
        start_tags={**start_tags, **(tags or {})},
        log_checkpoints=bool(cfg.tracking.log_checkpoints),
    )


__all__ = ["build_loss", "check_components", "find_resume", "run_train"]
