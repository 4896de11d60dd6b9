"""The teacher stage: a teacher that knows the task before it teaches, and its logits, computed once.

A teacher plugin arrives with a new, random K-class head (or, offline, with random weights
throughout). Before KD the stage trains it on the training split:

* frozen backbone (``model.teacher.freeze=true``, ``unfreeze_last_n=0``): backbone embeddings of
  every clip are computed once and cached, and only the head is fitted on them (seconds);
* otherwise the usual loop fine-tunes (or, for a CNN teacher without weights, trains) it.

``model.teacher.ensemble=M`` trains M members from seeds ``seed .. seed+M-1`` and averages their
probabilities. The trained teacher is stored under ``<data.root>/.cache/teachers/`` keyed by
everything that determines it (teacher name, weights, options, training settings, the exact clip
sets and classes), so every later run, seed and sweep reuses it. Its logits for each split are
cached beside it keyed by (teacher weights, teacher front end, clip set). Its val/test scores
are logged to their own MLflow run (tag ``stage=teacher``) and onto every KD run that uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from core import checkpoint as ckpt
from core.errors import UserError
from core.fsutil import atomic_path
from core.progress import StageProgress
from core.metrics import Scores, score
from core.registry import Registry
from core.teacher import Teacher, TeacherEnsemble
from core.tracking import PENDING, Tracker, flatten, resolve_uri

log = logging.getLogger(__name__)

STAGE_VERSION = 1  # bump when the stage's training changes in a way that invalidates stored teachers


class TeacherError(UserError, RuntimeError):
    """The teacher cannot teach: untrained head, wrong classes, unusable settings."""


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
    """

    module: nn.Module
    name: str
    key: str
    path: Path
    scores: dict[str, float]
    logits: dict[str, np.ndarray]
    run_id: str | None

    def targets(self, mode: str, train_waves: Any, device: torch.device) -> "OfflineTargets | OnlineTargets":
        if mode == "offline":
            return OfflineTargets(self.logits["train"], device)
        return OnlineTargets(self.module, train_waves, device)


class OfflineTargets:
    """Teacher logits of the training clips, looked up by clip index (computed once, cached on disk)."""

    online = False

    def __init__(self, logits: np.ndarray, device: torch.device) -> None:
        self.table = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(device)

    def __call__(self, indices: list[int], wave: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[torch.as_tensor(indices, device=self.table.device)]


class OnlineTargets:
    """The teacher run on the student's batch every step: on ``wave`` when the loop passes the
    (augmented) waveform the student sees, else on the clean clips of ``indices``."""

    online = True

    def __init__(self, module: nn.Module, train_waves: Any, device: torch.device) -> None:
        self.module, self.waves, self.device = module, train_waves, device

    @torch.no_grad()  # not inference_mode: its tensors may not enter the student's autograd graph
    def __call__(self, indices: list[int], wave: torch.Tensor | None = None) -> torch.Tensor:
        if wave is None:
            wave = self.waves.batch(indices)[0].to(self.device)
        return self.module(wave).float()


# ----------------------------------------------------------------------------------------------
# identity of a trained teacher


def checkpoint_identity(checkpoint: str | None) -> str:
    """What ``model.teacher.checkpoint`` refers to: a local file or folder by path, size and
    modification time (a replaced file changes it), anything else (hub id, URL) by its text."""
    if checkpoint is None:
        return "default"
    p = Path(str(checkpoint)).expanduser()
    if p.exists():
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        stats = [(str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
                 for f in files]
        return f"{p.resolve()}|{stats}"
    return str(checkpoint)


def teacher_options(cfg: DictConfig, clip_seconds: float) -> dict[str, Any]:
    """``model.teacher.options`` with ``clip_seconds`` defaulting to ``data.clip_seconds``."""
    options = OmegaConf.to_container(cfg.model.teacher.options, resolve=True) or {}
    options.setdefault("clip_seconds", clip_seconds)
    return options


def teacher_spec(cfg: DictConfig, data: Any) -> dict[str, Any]:
    """Everything the trained teacher depends on (hashed into its cache key)."""
    t = cfg.model.teacher
    return {
        "version": STAGE_VERSION,
        "name": t.name,
        "checkpoint": checkpoint_identity(t.checkpoint),
        "freeze": bool(t.freeze),
        "unfreeze_last_n": int(t.unfreeze_last_n),
        "options": teacher_options(cfg, cfg.data.clip_seconds),
        "sample_rate": int(cfg.aug.sr),
        "epochs": int(t.epochs), "lr": float(t.lr), "batch_size": int(t.batch_size),
        "ensemble": int(t.ensemble), "seed": int(t.seed), "cross_fit": bool(t.cross_fit),
        "class_names": list(data.class_names),
        "clips": {split: Path(w.npy_path).name for split, w in data.splits.items()},
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """Hash of every tensor in ``module.state_dict()`` (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:24]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def cache_root(cfg: DictConfig) -> Path:
    if cfg.model.teacher.cache_dir:
        return Path(cfg.model.teacher.cache_dir).expanduser().resolve()
    return Path(cfg.data.root).expanduser().resolve() / ".cache" / "teachers"


# ----------------------------------------------------------------------------------------------
# the stage


def build_member(cfg: DictConfig, registry: Registry, num_classes: int) -> nn.Module:
    t = cfg.model.teacher
    return registry.build("teacher", t.name, num_classes=num_classes, checkpoint=t.checkpoint,
                          freeze=bool(t.freeze), unfreeze_last_n=int(t.unfreeze_last_n),
                          sample_rate=int(cfg.aug.sr), **teacher_options(cfg, cfg.data.clip_seconds))


def prepare_teacher(cfg: DictConfig, registry: Registry, data: Any, device: torch.device, *,
                    train: bool = True, log_fn: Callable[[str], None] = print) -> PreparedTeacher:
    """The trained teacher for this config and data: loaded from the cache, or trained now.

    Args:
        train: train (and cache) the teacher when no stored one fits; ``False`` (non-zero DDP
            ranks) only loads what rank 0 stored.
        log_fn: where progress lines go.

    Raises:
        TeacherError: the teacher's head was never trained (``model.teacher.epochs=0`` with no
            trained checkpoint), or its classes differ from the data's.
    """
    t = cfg.model.teacher
    spec = teacher_spec(cfg, data)
    key = _digest(spec)
    folder = cache_root(cfg) / f"{t.name}-{key}"
    path = folder / "teacher.pt"
    members = [build_member(cfg, registry, data.num_classes) for _ in range(int(t.ensemble))]
    for m in members:
        _check_member(m, t.name, data.num_classes)
    ensemble = TeacherEnsemble(members)

    stored = ckpt.load(path) if path.is_file() else None
    if stored is not None:
        ensemble.load_state_dict(stored["state_dict"])
        run_id, scores = stored.get("run_id"), dict(stored.get("scores", {}))
        log_fn(f"teacher {t.name}: reusing the trained teacher {path}")
    elif not train:
        raise TeacherError(f"teacher {t.name}: no trained teacher at {path} (rank 0 should have made it)")
    else:
        run_id = _train_and_store(cfg, registry, ensemble, spec, key, folder, data, device, log_fn)
        stored = ckpt.load(path)
        scores = dict(stored["scores"])

    ensemble.to(device).eval()
    if not bool(ensemble.head_trained):
        raise TeacherError(
            f"teacher {t.name}: its classification head was never trained on this task's classes "
            f"({', '.join(data.class_names)}), and distilling from a random head teaches noise. "
            f"Let the teacher stage fit it (model.teacher.epochs > 0; it is {t.epochs}) or point "
            f"model.teacher.checkpoint at a teacher trained on these classes")
    bs = cfg.train.eval_batch_size or 64
    logits = {split: ensemble_logits(ensemble, waves, device, folder, bs) for split, waves in data.splits.items()
              if not (split == "train" and t.cross_fit)}
    if t.cross_fit:
        logits["train"] = out_of_fold_logits(ensemble, data.splits["train"], stored["folds"], device, folder, bs)
    if not scores:  # a stored teacher trained without the stage's scores (e.g. epochs=0 + checkpoint)
        scores = _scores_from_logits(logits, data)
    scores.setdefault("teacher_params", sum(p.numel() for p in ensemble.parameters()))
    # How the teacher does on the clips it teaches from: near 1.0 means its soft targets mostly
    # restate the labels (it trained on them); cross-fitted targets show its behaviour on unseen
    # instruments instead.
    scores["teacher_train_acc"] = _score_array(logits["train"], data.splits["train"].labels).acc
    return PreparedTeacher(module=ensemble, name=t.name, key=key, path=path, scores=scores,
                           logits=logits, run_id=run_id)


def _check_member(member: nn.Module, name: str, num_classes: int) -> None:
    for attr in ("sample_rate", "head_trained"):
        if not hasattr(member, attr):
            raise TeacherError(f"teacher {name} ({type(member).__name__}) lacks .{attr}: teacher plugins "
                               f"subclass core.teacher.Teacher")
    probe = getattr(member, "head", None)
    if isinstance(probe, nn.Linear) and probe.out_features != num_classes:
        raise TeacherError(f"teacher {name} has {probe.out_features} outputs but the data has {num_classes} classes")


def _scores_from_logits(logits: dict[str, np.ndarray], data: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, prefix in (("valid", "teacher_val"), ("test", "teacher_test")):
        s = _score_array(logits[split], data.splits[split].labels)
        out.update({f"{prefix}_acc": s.acc, f"{prefix}_f1": s.f1})
    return out


def _score_array(logits: np.ndarray, labels: np.ndarray) -> Scores:
    lt, yt = torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(np.asarray(labels))
    return score(lt, yt, F.cross_entropy(lt, yt).item())


def _train_and_store(cfg: DictConfig, registry: Registry, ensemble: TeacherEnsemble, spec: dict[str, Any],
                     key: str, folder: Path, data: Any, device: torch.device,
                     log_fn: Callable[[str], None]) -> str | None:
    """Train every member, score the ensemble, store ``teacher.pt``, log a teacher MLflow run."""
    from core import train as loop  # the loop's pieces (a module import: core.train imports this one)

    t = cfg.model.teacher
    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment, spool=folder / PENDING)
    run_id = tracker.start(run_name=f"teacher-{t.name}")
    tracker.set_tags({"stage": "teacher", "teacher": t.name, "dataset": cfg.data.dataset, "teacher_key": key})
    tracker.log_params({**flatten({"teacher": {k: v for k, v in spec.items() if k != "clips"}}),
                        **{f"teacher.clips.{s}": n for s, n in spec["clips"].items()}})
    started = time.perf_counter()
    folds = instrument_folds(data.splits["train"].paths, len(ensemble.members), int(t.seed))
    try:
        for m, member in enumerate(ensemble.members):
            loop.seed_everything(int(t.seed) + m)
            member.to(device)
            if hasattr(member, "prepare"):
                member.prepare(data.splits["train"])
            if int(t.epochs) > 0:
                fit = _fit_head_on_embeddings if _head_only(member) else _finetune
                keep = np.flatnonzero(folds != m) if t.cross_fit else np.arange(len(folds))
                fit(cfg, member, data, keep, device, folder, spec, m, tracker, log_fn, loop)
                member.head_trained.fill_(True)
        ensemble.to(device).eval()
        bs = cfg.train.eval_batch_size or 64
        scores = _scores_from_logits({split: ensemble_logits(ensemble, data.splits[split], device, folder, bs)
                                      for split in ("valid", "test")}, data)
        if len(ensemble.members) > 1:  # the members' own scores, from the logits cached just above
            for m, member in enumerate(ensemble.members):
                for split, prefix in (("valid", "best_val"), ("test", "test")):
                    s = _score_array(teacher_logits(member, data.splits[split], device, folder, bs),
                                     data.splits[split].labels)
                    scores.update({f"teacher_m{m}_{prefix}_acc": s.acc, f"teacher_m{m}_{prefix}_f1": s.f1})
        scores["teacher_train_time_s"] = time.perf_counter() - started
        scores.update(_costs(cfg, registry, ensemble, data.splits["train"].clip_samples, device))
        tracker.log_metrics({k.removeprefix("teacher_"): v for k, v in scores.items()}, step=max(1, int(t.epochs)))
        state = {"state_dict": ensemble.state_dict(), "spec": spec, "scores": scores, "run_id": run_id,
                 "class_names": list(data.class_names), "members": len(ensemble.members),
                 "folds": torch.from_numpy(folds)}
        folder.mkdir(parents=True, exist_ok=True)
        ckpt.save(state, folder / "teacher.pt")
        (folder / "spec.json").write_text(json.dumps(spec, indent=2, default=str))
        if cfg.tracking.log_checkpoints and (folder / "teacher.pt").stat().st_size <= 200e6:
            tracker.log_artifact(folder / "teacher.pt", "checkpoints")
        log_fn(f"teacher {t.name}: val acc {scores['teacher_val_acc']:.3f} macro-F1 {scores['teacher_val_f1']:.3f}, "
               f"test acc {scores['teacher_test_acc']:.3f} macro-F1 {scores['teacher_test_f1']:.3f} "
               f"({scores['teacher_train_time_s']:.0f} s); stored {folder / 'teacher.pt'}")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return run_id


def _costs(cfg: DictConfig, registry: Registry, teacher: nn.Module, clip_samples: int,
           device: torch.device) -> dict[str, float]:
    """Params and per-clip MACs of the whole teacher (every member, front end included) from each
    profiler in ``cfg.profilers``; a profiler that cannot count this teacher is skipped with a warning."""
    out: dict[str, float] = {"teacher_params": sum(p.numel() for p in teacher.parameters())}
    example = torch.zeros(1, clip_samples, device=device)
    for tool in cfg.profilers:
        try:
            out[f"teacher_macs_{tool}"] = registry.build("profiler", tool).profile(teacher, example).macs
        except Exception as err:  # noqa: BLE001 - third-party teachers may defeat a counter
            log.warning("profiler %s could not count teacher %s: %s", tool, cfg.model.teacher.name, err)
    return out


def _head_only(member: nn.Module) -> bool:
    return isinstance(member, Teacher) and member.head_only()


def _finetune(cfg: DictConfig, member: nn.Module, data: Any, keep: np.ndarray, device: torch.device,
              folder: Path, spec: dict[str, Any], m: int, tracker: Tracker, log_fn: Callable[[str], None],
              loop: Any) -> None:
    """Train the member's trainable parameters with the usual loop (CE, cosine schedule) on the
    training clips ``keep``, keeping the epoch with the best validation macro-F1."""
    t = cfg.model.teacher
    tcfg = copy.deepcopy(cfg)
    tcfg.train.batch_size, tcfg.train.lr, tcfg.train.epochs = int(t.batch_size), float(t.lr), int(t.epochs)
    tcfg.train.max_steps_per_epoch = cfg.train.max_steps_per_epoch
    params = [p for p in member.parameters() if p.requires_grad]
    if not params:
        raise TeacherError(f"teacher {t.name}: nothing to train (every parameter is frozen)")
    train = data.splits["train"]
    d = loop.Dist()
    def batches_for(epoch: int) -> list[list[int]]:
        order = loop.epoch_batches(len(keep), int(t.batch_size), int(t.seed) + m, epoch, d,
                                   cfg.train.max_steps_per_epoch)
        return [keep[b].tolist() for b in order]

    steps = len(batches_for(0))
    opt = loop.build_optimizer(tcfg, params)
    sched = loop.build_scheduler(tcfg, opt, steps * int(t.epochs))
    ce = lambda logits, target, *_: {"total": F.cross_entropy(logits, target)}  # noqa: E731
    best_f1, best_state = -1.0, None
    for epoch in range(int(t.epochs)):
        t0 = time.perf_counter()
        batches = batches_for(epoch)
        with loop.epoch_progress(f"teacher member {m + 1} epoch {epoch + 1}/{t.epochs}", len(batches), True) as bar:
            metrics = loop.train_one_epoch(member, ce, train, batches, opt, sched, None, tcfg, device, epoch,
                                           progress=bar)
        val = loop.evaluate(member, data.splits["valid"], tcfg, device)
        if val.f1 > best_f1:
            best_f1, best_state = val.f1, {k: v.detach().clone() for k, v in member.state_dict().items()}
        tracker.log_metrics({f"m{m}_train_loss": metrics["train_loss"], f"m{m}_train_acc": metrics["train_acc"],
                             f"m{m}_val_acc": val.acc, f"m{m}_val_f1": val.f1}, step=epoch + 1)
        log_fn(f"teacher {t.name} member {m + 1}/{t.ensemble} epoch {epoch + 1}/{t.epochs}  "
               f"loss {metrics['train_loss']:.4f}  train_acc {metrics['train_acc']:.3f}  val_acc {val.acc:.3f}  "
               f"val_f1 {val.f1:.3f}  ({time.perf_counter() - t0:.1f} s)")
    member.load_state_dict(best_state)


def _fit_head_on_embeddings(cfg: DictConfig, member: Teacher, data: Any, keep: np.ndarray, device: torch.device,
                            folder: Path, spec: dict[str, Any], m: int, tracker: Tracker,
                            log_fn: Callable[[str], None], loop: Any) -> None:
    """Frozen backbone: embed every clip once (cached), then fit only ``head`` on the embeddings."""
    t = cfg.model.teacher
    # The embeddings depend on the backbone and its input only, not on how the head is trained.
    backbone = {k: v for k, v in spec.items() if k not in ("epochs", "lr", "batch_size", "ensemble", "seed")}
    emb = {split: embeddings(member, data.splits[split], device, folder.parent, _digest(backbone))
           for split in ("train", "valid")}
    x_train = torch.from_numpy(emb["train"][keep]).to(device)
    y_train = torch.from_numpy(data.splits["train"].labels[keep]).to(device)
    x_val = torch.from_numpy(emb["valid"]).to(device)
    y_val = torch.from_numpy(data.splits["valid"].labels)
    head = member.head
    opt = torch.optim.AdamW(head.parameters(), lr=float(t.lr), weight_decay=cfg.train.weight_decay)
    g = torch.Generator().manual_seed(int(t.seed) + m)
    bs = int(t.batch_size)
    best_f1, best_state = -1.0, None
    for epoch in range(int(t.epochs)):
        head.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs].to(device)
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
        tracker.log_metrics({f"m{m}_train_loss": total / len(order), f"m{m}_val_acc": val.acc,
                             f"m{m}_val_f1": val.f1}, step=epoch + 1)
    head.load_state_dict(best_state)
    log_fn(f"teacher {t.name} member {m + 1}/{t.ensemble}: head fitted on cached embeddings "
           f"({t.epochs} epochs), best val macro-F1 {best_f1:.3f}")


# ----------------------------------------------------------------------------------------------
# cached passes over a split


def _run_logits(module: nn.Module, waves: Any, device: torch.device, batch_size: int,
                fn: Callable[[torch.Tensor], torch.Tensor] | None = None, label: str = "teacher logits") -> np.ndarray:
    module.eval()
    fn = fn or module
    out = []
    with torch.inference_mode(), StageProgress(label, total=len(waves), noun="clips", logger=log) as progress:
        for start in range(0, len(waves), batch_size):
            wave, _ = waves.batch(range(start, min(len(waves), start + batch_size)))
            out.append(fn(wave.to(device)).float().cpu().numpy())
            progress.update(advance=wave.shape[0])
    return np.concatenate(out).astype(np.float32)


def _cached_array(path: Path, rows: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``np.load(path)`` when it holds ``rows`` rows, else compute and store it atomically."""
    if path.is_file():
        try:
            arr = np.load(path)
            if arr.shape[0] == rows:
                return arr
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable cache %s (%s); recomputing", path, err)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, arr)
    return arr


def teacher_logits(module: nn.Module, waves: Any, device: torch.device, folder: Path,
                   batch_size: int = 64) -> np.ndarray:
    """The teacher's logits for every clip of ``waves``, cached in ``folder`` under a name that
    hashes the teacher's weights, its structure and front-end settings (``repr``), and the clip set."""
    ident = f"{weights_digest(module)}|{_structure(module)}|{Path(waves.npy_path).name}"
    path = folder / f"logits-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.npy"
    return _cached_array(path, len(waves), lambda: _run_logits(module, waves, device, batch_size))


def instrument_folds(paths: list[str], folds: int, seed: int) -> np.ndarray:
    """A fold index per clip, whole instruments per fold (seeded). Clips follow NSynth's naming,
    ``<instrument>-<pitch>-<velocity>.wav`` (GMNotes too), so the instrument is the name without
    its last two fields; a name without them is its own group."""
    groups = [Path(p).stem.rsplit("-", 2)[0] for p in paths]
    names = sorted(set(groups))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {names[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def ensemble_logits(ensemble: TeacherEnsemble, waves: Any, device: torch.device, folder: Path,
                    batch_size: int = 64) -> np.ndarray:
    """The ensemble's logits (:meth:`TeacherEnsemble.forward`'s log of the mean member probability),
    combined from each member's cached logits, so member scores and cross-fitting reuse them."""
    per = [teacher_logits(m, waves, device, folder, batch_size) for m in ensemble.members]
    if len(per) == 1:
        return per[0]
    logp = torch.from_numpy(np.stack(per)).log_softmax(-1)
    return (torch.logsumexp(logp, dim=0) - math.log(len(per))).numpy()


def out_of_fold_logits(ensemble: TeacherEnsemble, waves: Any, folds: Any, device: torch.device, folder: Path,
                       batch_size: int = 64) -> np.ndarray:
    """Each clip's logits from the member trained without its fold (member m held out fold m)."""
    folds = np.asarray(folds)
    out = None
    for m, member in enumerate(ensemble.members):
        rows = np.flatnonzero(folds == m)
        mine = teacher_logits(member, waves, device, folder, batch_size)
        out = np.empty_like(mine) if out is None else out
        out[rows] = mine[rows]
    return out


def embeddings(member: Teacher, waves: Any, device: torch.device, folder: Path, backbone_key: str,
               batch_size: int = 64) -> np.ndarray:
    """``member.embed`` of every clip, cached by (backbone weights, front end, clip set)."""
    state = {k: v for k, v in member.state_dict().items() if not k.startswith("head.") and k != "head_trained"}
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(_tensor_bytes(tensor))
    ident = f"{backbone_key}|{h.hexdigest()}|{_structure(member)}|{Path(waves.npy_path).name}"
    path = folder / "embeddings" / f"emb-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.npy"
    return _cached_array(path, len(waves), lambda: _run_logits(member, waves, device, batch_size, member.embed,
                                                                 "teacher embeddings"))


def _structure(module: nn.Module) -> str:
    """The module tree with each layer's settings (``extra_repr``), as a hash: front-end
    parameters that are plain attributes, not tensors, are part of it."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


__all__ = ["OfflineTargets", "OnlineTargets", "PreparedTeacher", "TeacherError", "checkpoint_identity",
           "embeddings", "prepare_teacher", "teacher_logits", "teacher_spec", "weights_digest"]
