"""Everything this package registers with audiokd, through the public plugin API only.

* student ``acme_cnn``: a small CNN on the log-mel ``[B, 1, n_mels, frames]`` the core feeds every
  student; its ``channels`` option is declared, so ``model.student.options.channels=32`` is
  checked (and an unknown key refused) before any data work, and shows in the logged config.
* teacher ``acme_wave_teacher``: strided 1-D convolutions straight on the waveform, with no help
  from the project's front end; the teacher stage trains it from scratch
  (``model.teacher.freeze=false``), caches it and its logits, and KD distils it into any student.
* a doctor line: ``python -m core.doctor`` shows that the package is installed.
"""

from __future__ import annotations

import torch
from torch import nn

from core.api import Component, ConfigValueError, HealthCheck, Option, Teacher, hookimpl


class AcmeCNN(nn.Module):
    """Three conv blocks, global pooling, a linear head."""

    def __init__(self, num_classes: int, width_mult: float, bn_momentum: float, channels: int) -> None:
        super().__init__()
        c = max(4, round(channels * width_mult))
        layers: list[nn.Module] = []
        inp = 1
        for out in (c, 2 * c, 4 * c):
            layers += [
                nn.Conv2d(inp, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out, momentum=bn_momentum),
                nn.ReLU(),
            ]
            inp = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(inp, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_acme_cnn(num_classes: int, width_mult: float, bn_momentum: float, channels: int) -> AcmeCNN:
    if channels < 1:
        raise ConfigValueError(f"model.student.options.channels={channels} must be >= 1")
    return AcmeCNN(num_classes, width_mult, bn_momentum, channels)


class WaveTeacher(Teacher):
    """Waveform ``[B, L]`` -> strided 1-D convolutions -> pooled embedding -> ``head``."""

    def __init__(self, num_classes: int, sample_rate: int, clip_seconds: float, width: int) -> None:
        super().__init__(sample_rate, round(clip_seconds * sample_rate), 2 * width, num_classes)
        self.body = nn.Sequential(
            nn.Conv1d(1, width, 400, stride=160),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 5, stride=2),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        return self.body(self.fit_clip(wave)[:, None])


def build_wave_teacher(
    num_classes: int,
    checkpoint: str | None,
    freeze: bool,
    unfreeze_last_n: int,
    sample_rate: int,
    clip_seconds: float,
    width: int,
) -> WaveTeacher:
    if checkpoint not in (None, "none"):
        raise ConfigValueError(
            "teacher acme_wave_teacher has no pretrained weights: leave model.teacher.checkpoint unset"
        )
    if freeze or unfreeze_last_n:
        raise ConfigValueError("teacher acme_wave_teacher trains from scratch: set model.teacher.freeze=false")
    return WaveTeacher(num_classes, sample_rate, clip_seconds, width)


@hookimpl
def audiokd_students() -> list[Component]:
    return [
        Component(
            "acme_cnn",
            build_acme_cnn,
            "ACME's three-block CNN (example plugin package)",
            {"channels": Option(8, "channels of the first block (doubled per block)")},
        )
    ]


@hookimpl
def audiokd_teachers() -> list[Component]:
    return [
        Component(
            "acme_wave_teacher",
            build_wave_teacher,
            "ACME's waveform CNN teacher, trained from scratch (example plugin package)",
            {"width": Option(16, "channels of the first convolution")},
        )
    ]


@hookimpl
def audiokd_doctor() -> list[HealthCheck]:
    return [HealthCheck("acme plugins", True, "student acme_cnn and teacher acme_wave_teacher registered")]
