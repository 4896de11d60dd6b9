"""Several teachers as one: members trained from different seeds, their probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from core.registry.contracts import Teacher
from core.stages.teacher.plan import weights_digest

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

    def frozen_names(self) -> set[str]:
        """The state entries training never changes: parameters that do not require grad."""
        return {n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def trained_state(self) -> dict[str, Tensor]:
        """What the teacher stage stores: every trainable parameter (the head, unfrozen blocks) and
        every buffer (BatchNorm statistics, ``head_trained``). The frozen backbone is not stored:
        it is rebuilt from its checkpoint, and :meth:`frozen_digest` tells that it is the same."""
        frozen = self.frozen_names()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def frozen_digest(self) -> str:
        frozen = self.frozen_names()
        return weights_digest(self, skip=lambda name: name not in frozen)

    def load_trained(self, state: dict[str, Tensor], frozen_digest: str) -> str | None:
        """Load a :meth:`trained_state` onto this freshly built ensemble; returns why it does not
        fit (other entries, or a frozen backbone other than the one it was trained on), else None."""
        frozen = self.frozen_names()
        if set(state) != set(self.state_dict()) - frozen:
            return "its stored entries differ from this teacher's trainable ones"
        if self.frozen_digest() != frozen_digest:
            return "the rebuilt frozen backbone differs from the one its head was trained on"
        self.load_state_dict(state, strict=False)
        return None

    def forward(self, wave: Tensor) -> Tensor:
        if len(self.members) == 1:
            return self.members[0](wave)
        logp = torch.stack([m(wave).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))


__all__ = ["TeacherEnsemble"]
