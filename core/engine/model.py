"""The model a run trains: waveform augmentation -> log-mel front end -> the student network."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from core.audio.augment import WaveAugment
from core.audio.frontend import LogMelFrontend
from core.data import Inputs, WaveformSet, build_logmel_cache
from core.engine.checkpoint import CheckpointError
from core.engine.structure import rebuild
from core.registry import Registry


class AudioClassifier(nn.Module):
    """Waveform in, logits out: waveform augmentation -> log-mel front end -> network."""

    def __init__(
        self, frontend: LogMelFrontend, net: nn.Module, wave_aug: WaveAugment | None = None, channels_last: bool = False
    ) -> None:
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

    def features(
        self, wave: torch.Tensor | None = None, *, logmel: torch.Tensor | None = None, augment: bool = True
    ) -> torch.Tensor:
        """Network input from waveforms ``[B, L]``, or from cached log-mel ``[B, n_mels, T]``
        (a :class:`~core.data.LogMelSet` batch; only valid with no waveform augmentation).
        ``augment=False``: ``wave`` was already augmented (online KD shows it to the teacher too)."""
        if logmel is None:
            assert wave is not None
            if augment:
                wave = self.augment_wave(wave)
            logmel = self.frontend.log_mel(wave)
        feats = self.frontend.post(logmel)
        if self.channels_last:
            feats = feats.contiguous(memory_format=torch.channels_last)
        return feats

    def forward(
        self, wave: torch.Tensor | None = None, *, logmel: torch.Tensor | None = None, augment: bool = True
    ) -> torch.Tensor:
        return self.net(self.features(wave, logmel=logmel, augment=augment))

    @property
    def uses_waveform_aug(self) -> bool:
        return self.wave_aug is not None and bool(self.wave_aug.enabled)


def to_channels_last(module: nn.Module) -> None:
    """Every 4-D weight of ``module`` in channels-last layout (417 vs 638 ms per MobileNetV3 step of
    32 clips on 2 CPU cores)."""
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it


def student_network(cfg: Any, registry: Registry, num_classes: int) -> nn.Module:
    """The student plugin's network of the config (``model.student.*``) for ``num_classes``
    classes, with fresh weights: log-mel in, logits out."""
    s = cfg.model.student
    return registry.build(
        "student",
        s.arch,
        options=s.options,
        where="model.student.options",
        num_classes=num_classes,
        width_mult=s.width_mult,
        bn_momentum=s.bn_momentum,
    )


def build_model(cfg: Any, registry: Registry, num_classes: int) -> AudioClassifier:
    """The student of the config (``model.student.*``, ``aug.*``, ``train.channels_last``) for
    ``num_classes`` classes, with fresh weights."""
    model = AudioClassifier(
        LogMelFrontend.from_config(cfg.aug),
        student_network(cfg, registry, num_classes),
        WaveAugment.from_config(cfg.aug),
        channels_last=cfg.train.channels_last,
    )
    if cfg.train.channels_last:
        to_channels_last(model.net)
    return model


def load_weights(model: AudioClassifier, state: Mapping[str, Any], channels_last: bool = False) -> None:
    """Load a checkpoint's weights (``state["model"]``); a pruned network is first reshaped to the
    checkpoint's layout (``state["structure"]``)."""
    if state.get("structure"):
        rebuild(model.net, state["structure"], state["model"], prefix="net.")
        if channels_last:
            to_channels_last(model.net)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"the checkpoint does not fit this model ({first[1].strip() if len(first) > 1 else first[0]}): it was "
            f"saved from another architecture, class count or front end (aug.n_mels); use the same "
            f"model.student.*, data.classes and aug.* as the run that wrote it"
        ) from exc


def model_inputs(model: AudioClassifier, splits: Mapping[str, WaveformSet], cache_logmel: bool) -> dict[str, Inputs]:
    """What each split is fed from. With ``cache_logmel`` the log-mel of every clip is computed once
    and cached; training still reads waveforms when a waveform augmentation is on (it must run
    before the log-mel), evaluation never augments and always reads the cache."""
    if not cache_logmel:
        return dict(splits)
    return {
        split: waves if (split == "train" and model.uses_waveform_aug) else build_logmel_cache(waves, model.frontend)
        for split, waves in splits.items()
    }


def normalisation_batches(
    train: Inputs, frontend: LogMelFrontend, seed: int, max_clips: int = 2048
) -> Iterator[torch.Tensor]:
    """Training-split log-mel for the front end's normalisation statistics (a seeded subset of
    <= ``max_clips`` clips)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:max_clips].tolist()
    for i in range(0, len(idx), 256):
        x = train.batch(idx[i : i + 256])[0]
        yield x if train.input_kind == "logmel" else frontend.log_mel(x.to(frontend.mean.device))


def network_input(model: AudioClassifier, clip_samples: int) -> torch.Tensor:
    """A zero ``[1, 1, n_mels, frames]`` network input for one clip (profiling, graph tracing)."""
    frames = model.frontend.num_frames(clip_samples)
    return torch.zeros(1, 1, model.frontend.n_mels, frames, device=model.frontend.mean.device)


__all__ = [
    "AudioClassifier",
    "build_model",
    "load_weights",
    "model_inputs",
    "network_input",
    "normalisation_batches",
    "student_network",
    "to_channels_last",
]
