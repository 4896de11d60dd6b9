"""The teacher contract: what every teacher plugin provides and the teacher stage relies on.

A teacher maps a waveform batch ``[B, L]`` at the data's sample rate to ``[B, K]`` logits through
its own front end. ``embed`` stops before ``head`` so the teacher stage can cache embeddings of a
frozen backbone and fit only the head. ``head_trained`` (a buffer, so it travels with the
``state_dict``) records that the head was fitted to the project's classes: distilling from a
random head teaches noise, and the engine refuses it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from core.config import ConfigValueError
from core.waveforms import fit_length

Tensor = torch.Tensor

#: ``model.teacher.checkpoint`` value that asks for random initialisation (timing, profiling, tests);
#: ``null`` means the teacher's default weights.
RANDOM_INIT = "none"


class Teacher(nn.Module):
    """Waveform ``[B, L]`` at ``sample_rate`` -> logits ``[B, num_classes]``.

    Subclasses implement :meth:`embed` (front end + backbone + pooling, ``[B, feature_dim]``),
    starting with :meth:`fit_clip`: every clip is zero-padded or cropped to ``clip_samples``, so
    the front end always yields the frame count the model was built for. ``head`` is a new
    ``nn.Linear(feature_dim, num_classes)``.
    """

    head: nn.Linear

    def __init__(self, sample_rate: int, clip_samples: int, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if feature_dim <= 0:
            raise ConfigValueError(f"teacher feature dimension must be > 0, got {feature_dim}")
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("head_trained", torch.tensor(False))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def fit_clip(self, wave: Tensor) -> Tensor:
        if wave.ndim != 2 or not wave.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float waveform batch [B, L], "
                             f"got {tuple(wave.shape)} {wave.dtype}")
        return fit_length(wave, self.clip_samples)

    def embed(self, wave: Tensor) -> Tensor:
        """Pooled embedding ``[B, feature_dim]``, the head's input."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed")

    def forward(self, wave: Tensor) -> Tensor:
        return self.head(self.embed(wave))

    def prepare(self, train: Any) -> None:
        """Fit whatever the teacher derives from the training split (e.g. input normalisation)
        before it is trained; ``train`` is a :class:`~core.waveforms.WaveformSet`. Default: nothing."""

    def head_only(self) -> bool:
        """True when only ``head`` trains (frozen backbone): the stage then fits the head on
        cached embeddings instead of running the backbone every epoch."""
        return all(not p.requires_grad for name, p in self.named_parameters() if not name.startswith("head."))


class TeacherEnsemble(nn.Module):
    """Members trained from different seeds; logits are the log of the mean member probability,
    so ``softmax(logits)`` is the ensemble's averaged prediction (what KD distils)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.sample_rate = members[0].sample_rate

    @property
    def head_trained(self) -> Tensor:
        return torch.tensor(all(bool(m.head_trained) for m in self.members))

    def forward(self, wave: Tensor) -> Tensor:
        if len(self.members) == 1:
            return self.members[0](wave)
        logp = torch.stack([m(wave).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))


__all__ = ["RANDOM_INIT", "Teacher", "TeacherEnsemble"]
