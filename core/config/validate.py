"""Checks the schema's types cannot express: choices, ranges and combinations of keys.

:func:`validate` runs on the composed config before anything else (no download, render or training
happens first); each failure is one :class:`~core.errors.ConfigValueError` naming the key and what
is valid.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigValueError

SPLITS = ("train", "valid", "test")

CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("train", "profile", "compare", "prune", "export", "pareto", "evaluate"),
    "prune.importance": ("l1", "l2", "taylor"),
    "prune.scope": ("uniform", "global"),
    "train.optimizer": ("adamw", "adam", "sgd"),
    "train.scheduler": ("cosine", "none"),
    "train.amp_dtype": ("bf16", "fp16"),
    "model.kd.mode": ("offline", "online"),
}


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: choices and ranges."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    positive = [
        "train.epochs",
        "train.batch_size",
        "train.lr",
        "aug.sr",
        "aug.n_fft",
        "aug.hop",
        "aug.n_mels",
        "model.student.width_mult",
        "data.max_total_size_mb",
        "data.clip_seconds",
    ]
    for key in positive:
        value = OmegaConf.select(cfg, key)
        if value is None or not value > 0 or not math.isfinite(value):  # NaN fails every comparison
            raise ConfigValueError(f"{key}={value!r} must be a finite number > 0")
    if not cfg.train.weight_decay >= 0 or not math.isfinite(cfg.train.weight_decay):
        raise ConfigValueError(f"train.weight_decay={cfg.train.weight_decay!r} must be a finite number >= 0")
    for key, low in (
        ("train.num_workers", 0),
        ("train.threads", 1),
        ("train.eval_batch_size", 1),
        ("train.max_steps_per_epoch", 1),
        ("data.max_per_class", 1),
    ):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < low:
            nullable = "" if key == "train.num_workers" else " or null"
            raise ConfigValueError(f"{key}={value} must be >= {low}{nullable}")
    if cfg.train.grad_clip is not None and not cfg.train.grad_clip > 0:
        raise ConfigValueError(f"train.grad_clip={cfg.train.grad_clip!r} must be > 0 or null")
    _validate_audio(cfg)
    if cfg.task == "compare" and not cfg.compare.seeds:
        raise ConfigValueError("compare.seeds is empty: give at least one seed, e.g. compare.seeds=[0,1,2]")
    if cfg.task == "compare" and {"kd", "pruned_kd"} & set(cfg.compare.arms) and not cfg.model.teacher.name:
        raise ConfigValueError("task=compare trains student-only and KD runs: set model.teacher.name")
    _validate_prune(cfg)
    _validate_evaluate(cfg)
    t = cfg.model.teacher
    if t.epochs < 0:
        raise ConfigValueError(f"model.teacher.epochs={t.epochs} must be >= 0")
    if t.lr <= 0:
        raise ConfigValueError(f"model.teacher.lr={t.lr} must be > 0")
    if t.batch_size < 2:
        raise ConfigValueError(f"model.teacher.batch_size={t.batch_size} must be >= 2 (BatchNorm)")
    if t.ensemble < 1:
        raise ConfigValueError(f"model.teacher.ensemble={t.ensemble} must be >= 1")
    if t.cross_fit and t.ensemble < 2:
        raise ConfigValueError(
            f"model.teacher.cross_fit=true needs model.teacher.ensemble >= 2 (one member "
            f"per fold), got ensemble={t.ensemble}"
        )
    if t.cross_fit and cfg.model.kd.mode == "online":
        raise ConfigValueError(
            "model.teacher.cross_fit=true gives each training clip the logits of the member "
            "that did not train on it, which is an offline table: use model.kd.mode=offline"
        )
    if cfg.model.kd.enabled and not t.name:
        raise ConfigValueError(
            "model.kd.enabled=true needs a teacher: set model.teacher.name "
            "(python -m core.list shows the registered teachers)"
        )
    if not 0.0 <= cfg.model.kd.alpha <= 1.0:
        raise ConfigValueError(f"model.kd.alpha={cfg.model.kd.alpha} must be within [0, 1]")
    if cfg.model.kd.T <= 0:
        raise ConfigValueError(f"model.kd.T={cfg.model.kd.T} must be > 0")
    if not cfg.aug.fmin < cfg.aug.fmax <= cfg.aug.sr / 2:
        raise ConfigValueError(
            f"need aug.fmin < aug.fmax <= aug.sr/2, got fmin={cfg.aug.fmin}, fmax={cfg.aug.fmax}, sr={cfg.aug.sr}"
        )
    for name in ("eq", "noise", "gain", "rir", "codec"):
        p = cfg.aug[name].p
        if not 0.0 <= p <= 1.0:
            raise ConfigValueError(f"aug.{name}.p={p} must be within [0, 1]")
    if not cfg.aug.eq.max_db >= 0 or cfg.aug.eq.bands < 1:  # NaN fails too
        raise ConfigValueError(
            f"aug.eq.max_db={cfg.aug.eq.max_db} must be >= 0 (dB) and aug.eq.bands={cfg.aug.eq.bands} >= 1"
        )


ARMS = ("student", "kd", "pruned", "pruned_kd")


def _validate_prune(cfg: DictConfig) -> None:
    p, e = cfg.prune, cfg.export
    if not 0.0 < p.ratio < 1.0:
        raise ConfigValueError(f"prune.ratio={p.ratio} must be within (0, 1): the fraction of channels removed")
    if p.steps < 1:
        raise ConfigValueError(f"prune.steps={p.steps} must be >= 1")
    if p.round_to is not None and p.round_to < 1:
        raise ConfigValueError(f"prune.round_to={p.round_to} must be >= 1 or null")
    if p.epochs is not None and p.epochs < p.steps:
        raise ConfigValueError(
            f"prune.epochs={p.epochs} must be >= prune.steps={p.steps} (each prune round is "
            f"followed by at least one fine-tune epoch)"
        )
    if p.recalibrate_bn < 0:
        raise ConfigValueError(f"prune.recalibrate_bn={p.recalibrate_bn} must be >= 0 (0 = off)")
    if p.calib_batches < 1:
        raise ConfigValueError(f"prune.calib_batches={p.calib_batches} must be >= 1")
    if cfg.task == "prune" and not p.source:
        raise ConfigValueError(
            "task=prune needs prune.source: a student checkpoint (.pt), its run folder "
            "(outputs/<name>/<time>) or an MLflow run id"
        )
    if cfg.task == "prune" and p.epochs is None and cfg.train.epochs < p.steps:
        raise ConfigValueError(f"train.epochs={cfg.train.epochs} must be >= prune.steps={p.steps}")
    for arm in cfg.compare.arms:
        if arm not in ARMS:
            raise ConfigValueError(f"compare.arms: unknown arm {arm!r}; choose from: {', '.join(ARMS)}")
    for pruned, source in (("pruned_kd", "kd"), ("pruned", "student")):
        if pruned in cfg.compare.arms and source not in cfg.compare.arms and not cfg.compare.baseline:
            raise ConfigValueError(
                f"compare.arms: {pruned} prunes the {source} arm's student: add {source} to compare.arms, or "
                f"set compare.baseline to a comparison that trained it"
            )
    if cfg.task == "export" and not e.sources:
        raise ConfigValueError(
            "task=export needs export.sources: student checkpoints (.pt), run folders or "
            "MLflow run ids, e.g. export.sources=[outputs/demo/<time>/kd-seed0]"
        )
    for key in ("parity_clips", "latency_runs", "latency_threads", "opset"):
        if e[key] < 1:
            raise ConfigValueError(f"export.{key}={e[key]} must be >= 1")
    if e.latency_warmup < 0 or e.tolerance <= 0:
        raise ConfigValueError("export.latency_warmup must be >= 0 and export.tolerance > 0")
    for w in cfg.pareto.widths:
        if w <= 0:
            raise ConfigValueError(f"pareto.widths: {w} must be > 0")
    for r in cfg.pareto.ratios:
        if not 0.0 < r < 1.0:
            raise ConfigValueError(f"pareto.ratios: {r} must be within (0, 1)")
    if cfg.task in ("pareto",) and not cfg.model.teacher.name and any(cfg.pareto.kd):
        raise ConfigValueError("pareto.kd includes true: set model.teacher.name")


def _validate_audio(cfg: DictConfig) -> None:
    """The front end must be able to analyse a clip: a window no longer than the clip (its centred
    frames are reflect-padded by half a window, which needs that many samples), and a hop no longer
    than the window (a longer hop skips audio between frames: aug.hop=100000 left one frame per clip)."""
    a = cfg.aug
    window = a.win_length if a.win_length is not None else a.n_fft
    clip = round(cfg.data.clip_seconds * a.sr)
    if a.win_length is not None and not 0 < a.win_length <= a.n_fft:
        raise ConfigValueError(f"aug.win_length={a.win_length} must be within [1, aug.n_fft={a.n_fft}] or null")
    if a.hop > window:
        raise ConfigValueError(
            f"aug.hop={a.hop} is longer than the analysis window ({window} samples: aug.win_length "
            f"or aug.n_fft), so audio between frames would never be seen: use aug.hop <= {window}"
        )
    if clip <= a.n_fft // 2:
        raise ConfigValueError(
            f"data.clip_seconds={cfg.data.clip_seconds} gives {clip} samples at aug.sr={a.sr}, too "
            f"short for the front end's {a.n_fft}-point frames: need more than {a.n_fft // 2} "
            f"samples (data.clip_seconds > {a.n_fft / 2 / a.sr:g})"
        )
    for key in ("train.crop_seconds", "model.teacher.crop_seconds"):
        crop = OmegaConf.select(cfg, key)
        if crop is not None and not (a.n_fft / 2 / a.sr < crop <= cfg.data.clip_seconds):  # NaN fails too
            raise ConfigValueError(
                f"{key}={crop!r} must be within ({a.n_fft / 2 / a.sr:g}, data.clip_seconds={cfg.data.clip_seconds}] "
                f"seconds (a window of each training clip), or null for whole clips"
            )
    ema = cfg.train.ema
    if ema is not None and not 0 < ema < 1:  # NaN fails too
        raise ConfigValueError(
            f"train.ema={ema!r} must be within (0, 1) (the EMA decay per step; 0.995 averages ~the last "
            f"200 steps) or null (off)"
        )
    for key in ("train.mixup", "model.teacher.mixup"):
        alpha = OmegaConf.select(cfg, key)
        if alpha is not None and not alpha >= 0:  # NaN fails too
            raise ConfigValueError(f"{key}={alpha!r} must be >= 0 (Beta(a, a) mixup; 0.3 is typical) or null (off)")


def _validate_evaluate(cfg: DictConfig) -> None:
    ev = cfg.evaluate
    unknown = [s for s in ev.splits if s not in SPLITS]
    if not ev.splits or unknown:
        raise ConfigValueError(f"evaluate.splits={list(ev.splits)}: give one or more of {', '.join(SPLITS)}")
    if cfg.task == "evaluate" and not ev.source:
        raise ConfigValueError(
            "task=evaluate needs evaluate.source: a student checkpoint (.pt), its run folder "
            "(outputs/<name>/<time>) or an MLflow run id"
        )


__all__ = ["ARMS", "CHOICES", "SPLITS", "validate"]
