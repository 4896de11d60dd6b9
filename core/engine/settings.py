"""What the training loop reads, taken from the ``train`` config group once, at set-up.

The loop functions and the :class:`~core.engine.trainer.Trainer` take a :class:`TrainSettings`, never
the config: a stage that trains with other values (the teacher stage's own epochs, batch size and
learning rate) makes its own settings with :meth:`TrainSettings.from_config` overrides.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class TrainSettings:
    epochs: int
    batch_size: int
    eval_batch_size: int  # unset in the config: 2 x batch_size
    lr: float
    weight_decay: float
    optimizer: str  # adamw | adam | sgd
    scheduler: str  # cosine | none
    amp: bool  # bf16/fp16 autocast, on CUDA only
    amp_dtype: str  # bf16 | fp16
    channels_last: bool
    grad_clip: float | None
    num_workers: int
    seed: int
    max_steps_per_epoch: int | None
    crop: float | None  # training batches: a random window of this fraction of each clip; None = whole clips
    mixup: float  # Beta(mixup, mixup) mixup of training batches; 0 = off
    ema: float = 0.0  # decay of the weights' moving average, updated every step; 0 = off

    @classmethod
    def from_config(cls, train: Any, clip_seconds: float | None = None, **changes: Any) -> TrainSettings:
        """From the ``train`` config group; ``changes`` replace single values (before the eval batch
        size is derived from the batch size). ``clip_seconds`` (``data.clip_seconds``) turns
        ``train.crop_seconds`` into :attr:`crop`."""
        crop = None
        if train.crop_seconds is not None:
            if clip_seconds is None:
                raise ValueError("train.crop_seconds is set: TrainSettings.from_config needs clip_seconds")
            crop = crop_fraction(train.crop_seconds, clip_seconds)
        values = {
            "epochs": int(train.epochs),
            "batch_size": int(train.batch_size),
            "lr": float(train.lr),
            "weight_decay": float(train.weight_decay),
            "optimizer": str(train.optimizer),
            "scheduler": str(train.scheduler),
            "amp": bool(train.amp),
            "amp_dtype": str(train.amp_dtype),
            "channels_last": bool(train.channels_last),
            "grad_clip": float(train.grad_clip) if train.grad_clip else None,
            "num_workers": int(train.num_workers),
            "seed": int(train.seed),
            "max_steps_per_epoch": int(train.max_steps_per_epoch) if train.max_steps_per_epoch else None,
            "crop": crop,
            "mixup": float(train.mixup or 0.0),
            "ema": float(train.ema or 0.0),
            **changes,
        }
        values["eval_batch_size"] = int(train.eval_batch_size or 2 * values["batch_size"])
        return cls(**values)


def crop_fraction(crop_seconds: float | None, clip_seconds: float) -> float | None:
    """A training window of ``crop_seconds`` as :attr:`TrainSettings.crop`, a fraction of the clip
    (``None``: whole clips)."""
    return min(1.0, float(crop_seconds) / float(clip_seconds)) if crop_seconds else None


__all__ = ["TrainSettings", "crop_fraction"]
