"""CNN teachers trained from scratch: registered student networks (the MobileNets) on their own log-mel front end.

Where no pretrained transformer can be fetched (no network, or no licence to use one), the teacher
stage trains one of these on the training split (``model.teacher.freeze=false``), optionally as an
ensemble of seeds (``model.teacher.ensemble``). They are the offline teachers of ``kd_gmnotes``.
A ``checkpoint`` may name a ``torch.save``-d state_dict of the same teacher.

The network is the registered student of the same name (``core.api.build_student``: the teacher
composes it by name, as a config would, instead of importing another plugin) with its K-class layer
replaced by the teacher's ``head``. The front end is the project's :class:`~core.api.LogMelFrontend`
(its SpecAugment runs in training only); its per-mel normalisation is fitted on the training split
by :meth:`prepare`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.api import (
    RANDOM_INIT,
    Component,
    ConfigValueError,
    LogMelFrontend,
    Option,
    Teacher,
    build_student,
    hookimpl,
)
from plugins.teachers.common import (
    check_positive,
    load_state_dict_file,
    pick_checkpoint,
    resolve_weights_file,
    set_trainable,
)

Tensor = torch.Tensor

#: ``model.teacher.options`` of the CNN teachers
OPTIONS = {
    "width_mult": Option(1.0, "channel width multiplier of the network"),
    "bn_momentum": Option(0.1, "BatchNorm momentum"),
    "dropout": Option(0.2, "classifier dropout"),
    "n_mels": Option(128, "mel bins of the teacher's own front end"),
    "hop_ms": Option(10.0, "front-end hop in milliseconds"),
}


class CNNTeacher(Teacher):
    """Log-mel front end -> MobileNet features -> pooled embedding -> ``head``."""

    def __init__(
        self, frontend: LogMelFrontend, net: nn.Module, sample_rate: int, clip_samples: int, num_classes: int
    ) -> None:
        last = net.classifier[-1]
        super().__init__(sample_rate, clip_samples, last.in_features, num_classes)
        net.classifier[-1] = nn.Identity()  # the embedding stops where the K-class layer was
        self.frontend = frontend
        self.net = net.to(memory_format=torch.channels_last)  # 417 vs 638 ms per step of 32 clips on 2 CPU cores

    @property
    def blocks(self) -> nn.Sequential:
        return self.net.features

    @torch.no_grad()
    def prepare(self, train: Any, max_clips: int = 2048) -> None:
        """Per-mel-bin normalisation from (a seeded subset of) the training clips."""
        if self.frontend.is_fitted:
            return
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_clips].tolist()
        device = self.frontend.mean.device
        self.frontend.fit_normalization(train.batch(idx[i : i + 128])[0].to(device) for i in range(0, len(idx), 128))

    def embed(self, wave: Tensor) -> Tensor:
        # A CNN pools over time, so in training it takes the stage's shorter random windows
        # (model.teacher.crop_seconds) as they are; every pass that makes targets sees whole clips.
        if not (self.training and wave.ndim == 2 and wave.shape[-1] < self.clip_samples):
            wave = self.fit_clip(wave)
        feats = self.frontend(wave).contiguous(memory_format=torch.channels_last)
        return self.net(feats)


def build_cnn(
    arch: str,
    num_classes: int,
    checkpoint: str | None = None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
    **options: float,
) -> CNNTeacher:
    """A MobileNet teacher for ``clip_seconds`` clips at ``sample_rate``.

    Args:
        arch: the registered student network it is made of (``mobilenet_v3_large`` ...).
        checkpoint: ``None``/``"none"``: random initialisation, to be trained with ``freeze=false``;
            otherwise a path or URL of a state_dict of this teacher.
        freeze, unfreeze_last_n: see :func:`plugins.teachers.common.set_trainable` (blocks are the
            MobileNet's feature stages).
        options: :data:`OPTIONS` (all of them: the core fills in the defaults).
    """
    name = arch
    opts = check_positive(name, {"clip_seconds": clip_seconds, **options})
    checkpoint = pick_checkpoint(checkpoint, None)
    if checkpoint is None and freeze:
        raise ConfigValueError(
            f"teacher {name} has no pretrained weights (model.teacher.checkpoint is unset), so a frozen "
            f"backbone would stay random: set model.teacher.freeze=false to train it from scratch, or "
            f"point model.teacher.checkpoint at a state_dict of this teacher"
        )
    n_mels, hop_ms = int(opts["n_mels"]), opts["hop_ms"]
    frontend = LogMelFrontend(
        sr=sample_rate,
        n_mels=n_mels,
        hop=max(1, round(sample_rate * hop_ms / 1000)),
        fmax=min(8000.0, sample_rate / 2),
        # SpecAugment masks cover the same share of the input at any resolution: 24 of 128 mel bins
        # and 400 ms (40 frames at the default 10 ms hop), as the student's aug.specaug defaults
        freq_mask=max(1, round(24 * n_mels / 128)),
        time_mask=max(1, round(400 / hop_ms)),
    )
    net = build_student(
        arch,
        num_classes=num_classes,
        width_mult=opts["width_mult"],
        bn_momentum=opts["bn_momentum"],
        dropout=opts["dropout"],
    )
    teacher = CNNTeacher(frontend, net, sample_rate, round(opts["clip_seconds"] * sample_rate), num_classes)
    if checkpoint is not None:
        state = load_state_dict_file(resolve_weights_file(checkpoint, name), checkpoint)
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigValueError(
                f"teacher {name}: checkpoint {checkpoint!r} does not fit this teacher "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); "
                f"check model.teacher.options (width_mult) and the class count"
            )
    teacher.source = checkpoint if checkpoint is not None else RANDOM_INIT
    set_trainable(teacher, list(teacher.blocks), [], freeze, unfreeze_last_n, name)
    if freeze and unfreeze_last_n:
        teacher.net.classifier.requires_grad_(True)  # the hidden classifier layer sits after the blocks
    return teacher


def _factory(arch: str):
    def build(
        num_classes: int,
        checkpoint: str | None = None,
        freeze: bool = True,
        unfreeze_last_n: int = 0,
        sample_rate: int = 16000,
        clip_seconds: float = 4.0,
        **options: float,
    ) -> CNNTeacher:
        return build_cnn(arch, num_classes, checkpoint, freeze, unfreeze_last_n, sample_rate, clip_seconds, **options)

    build.__name__ = f"build_{arch}_teacher"
    return build


@hookimpl
def audiokd_teachers() -> list[Component]:
    return [
        Component(
            "mobilenet_v3_large",
            _factory("mobilenet_v3_large"),
            "MobileNetV3-Large on log-mel, trained from scratch by the teacher stage (offline)",
            OPTIONS,
        ),
        Component(
            "mobilenet_v3_small",
            _factory("mobilenet_v3_small"),
            "MobileNetV3-Small on log-mel, trained from scratch by the teacher stage (offline; "
            "use model.teacher.ensemble for a stronger teacher)",
            OPTIONS,
        ),
    ]


__all__ = ["CNNTeacher", "build_cnn"]
