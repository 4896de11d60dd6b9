"""What the teacher stage does and what identifies its result, decided once from the config.

A trained teacher is stored under ``<cache root>/<name>-<key>/`` where ``key`` hashes everything
that determines it (:meth:`TeacherPlan.spec`): the teacher, its weights, its resolved options, the
stage's training settings, the classes and the exact clip sets. Every later run, seed and sweep
with the same spec reuses it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from core.data import DataBundle
from core.engine.settings import TrainSettings, crop_fraction
from core.registry import Registry
from core.registry.contracts import Teacher
from core.tracking import resolve_uri

#: bump when the stage's training changes in a way that invalidates stored teachers
STAGE_VERSION = 2


@attrs.frozen
class TeacherPlan:
    """The teacher stage's settings (``model.teacher.*`` and what it takes from the rest).

    Attributes:
        options: ``model.teacher.options`` checked against the teacher's declared options, defaults
            filled in (``clip_seconds`` apart: the core passes it, default ``data.clip_seconds``).
        settings: the fine-tuning loop's settings (the stage's epochs, learning rate and batch size;
            the run's other ``train.*`` values).
        pass_batch_size: batch size of the logits and embedding passes.
    """

    name: str
    checkpoint: str | None
    freeze: bool
    unfreeze_last_n: int
    options: dict[str, Any]
    clip_seconds: float
    sample_rate: int
    epochs: int
    lr: float
    batch_size: int
    ensemble: int
    seed: int
    cross_fit: bool
    weight_decay: float
    settings: TrainSettings
    pass_batch_size: int
    cache_root: Path
    profilers: list[str]
    tracking_uri: str
    experiment: str
    dataset: str
    log_checkpoints: bool

    @classmethod
    def from_config(cls, cfg: Any, registry: Registry) -> TeacherPlan:
        t = cfg.model.teacher
        given = dict(t.options or {})
        clip_seconds = float(given.pop("clip_seconds", cfg.data.clip_seconds))
        root = (
            Path(t.cache_dir).expanduser().resolve()
            if t.cache_dir
            else Path(cfg.data.root).expanduser().resolve() / ".cache" / "teachers"
        )
        return cls(
            name=t.name,
            checkpoint=t.checkpoint,
            freeze=bool(t.freeze),
            unfreeze_last_n=int(t.unfreeze_last_n),
            options=registry.options(
                "teacher", t.name, given, "model.teacher.options", core_keys={"clip_seconds": cfg.data.clip_seconds}
            ),
            clip_seconds=clip_seconds,
            sample_rate=int(cfg.aug.sr),
            epochs=int(t.epochs),
            lr=float(t.lr),
            batch_size=int(t.batch_size),
            ensemble=int(t.ensemble),
            seed=int(t.seed),
            cross_fit=bool(t.cross_fit),
            weight_decay=float(cfg.train.weight_decay),
            settings=TrainSettings.from_config(
                cfg.train,
                clip_seconds=float(cfg.data.clip_seconds),
                batch_size=int(t.batch_size),
                lr=float(t.lr),
                epochs=int(t.epochs),
                seed=int(t.seed),
                crop=crop_fraction(t.crop_seconds, cfg.data.clip_seconds),
                mixup=float(t.mixup or 0.0),
                ema=0.0,  # train.ema is the student's: the teacher stage keeps its trained weights
            ),
            pass_batch_size=int(cfg.train.eval_batch_size or 64),
            cache_root=root,
            profilers=list(cfg.profilers),
            tracking_uri=resolve_uri(cfg.tracking.uri),
            experiment=cfg.tracking.experiment,
            dataset=cfg.data.dataset,
            log_checkpoints=bool(cfg.tracking.log_checkpoints),
        )

    def build_member(self, registry: Registry, num_classes: int) -> Teacher:
        """One fresh member (its pretrained weights loaded, its head new)."""
        return registry.build(
            "teacher",
            self.name,
            options=self.options,
            where="model.teacher.options",
            num_classes=num_classes,
            checkpoint=self.checkpoint,
            freeze=self.freeze,
            unfreeze_last_n=self.unfreeze_last_n,
            sample_rate=self.sample_rate,
            clip_seconds=self.clip_seconds,
        )

    def spec(self, data: DataBundle, weights: str) -> dict[str, Any]:
        """Everything the trained teacher depends on (hashed into its cache key). ``weights`` is
        the digest of the built teacher's weights before training (:func:`initial_weights`): the
        checkpoint is identified by its content, so a hub id, a URL and a local copy of the same
        file give the same teacher, and a file replaced under the same name gives another."""
        return {
            "version": STAGE_VERSION,
            "name": self.name,
            "weights": weights,
            "freeze": self.freeze,
            "unfreeze_last_n": self.unfreeze_last_n,
            "options": {**self.options, "clip_seconds": self.clip_seconds},
            "sample_rate": self.sample_rate,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "ensemble": self.ensemble,
            "seed": self.seed,
            "cross_fit": self.cross_fit,
            "crop": self.settings.crop,
            # only when on, so the teachers cached before this key existed keep their keys
            **({"mixup": self.settings.mixup} if self.settings.mixup else {}),
            "class_names": list(data.class_names),
            "clips": {split: Path(w.npy_path).name for split, w in data.splits.items()},
        }


#: spec entries that only change how the head (or the unfrozen blocks) is trained
TRAINING_KEYS = ("epochs", "lr", "batch_size", "ensemble", "seed", "cross_fit", "crop", "mixup")


def backbone_key(spec: dict[str, Any]) -> str:
    """What a frozen backbone's embeddings depend on: the spec without its training settings."""
    return digest({k: v for k, v in spec.items() if k not in TRAINING_KEYS})


def initial_weights(member: nn.Module) -> str:
    """Digest of a freshly built member's weights, its new random head left out: the content of
    the checkpoint it loaded (or, for random initialisation, of the seeded draw)."""
    return weights_digest(member, skip=is_head)


def is_head(name: str) -> bool:
    """A member's head entries (``head.*`` and ``head_trained``)."""
    return name.startswith("head.") or name == "head_trained"


def digest(obj: Any) -> str:
    """A short hash of JSON-able data (the spec's cache key)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def structure_hash(module: nn.Module) -> str:
    """The module tree with each layer's settings (``extra_repr``), as a hash: front-end
    parameters that are plain attributes, not tensors, are part of it."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def weights_digest(module: nn.Module, skip: Callable[[str], bool] = lambda _: False) -> str:
    """Hash of every tensor in ``module.state_dict()`` (names, shapes, dtypes and bytes) whose name
    ``skip`` does not reject."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        if skip(name):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:24]


__all__ = [
    "STAGE_VERSION",
    "TeacherPlan",
    "TRAINING_KEYS",
    "backbone_key",
    "digest",
    "initial_weights",
    "is_head",
    "structure_hash",
    "tensor_bytes",
    "weights_digest",
]
