"""Several teachers as one: members trained from different seeds, their probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from core.registry.contracts import Teacher

Tensor = torch.Tensor


class TeacherEnsemble(nn.Module):
    """Members trained from different seeds; logits are the log of the mean member probability,
    so ``softmax(logits)`` is the ensemble's averaged prediction (what KD distils)."""

    def __init__(self, members: Sequence[Teacher]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.sample_rate = members[0].sample_rate

    @property
    def teachers(self) -> list[Teacher]:
        """The members, as the :class:`Teacher` s they are."""
        return cast(list[Teacher], list(self.members))

    @property
    def head_trained(self) -> Tensor:
        return torch.tensor(all(bool(m.head_trained) for m in self.members))

    def forward(self, wave: Tensor) -> Tensor:
        if len(self.members) == 1:
            return self.members[0](wave)
        logp = torch.stack([m(wave).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))


__all__ = ["TeacherEnsemble"]
