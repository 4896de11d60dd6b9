"""Cross-entropy on hard labels (the multiclass NSynth task: one family per note)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.api import Component, hookimpl


class CrossEntropy:
    """``loss(logits, target) -> {"total": ce, "ce": ce}``; teacher logits, if given, are ignored.

    Args:
        label_smoothing: passed to ``F.cross_entropy``.
    """

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be within [0, 1)")
        self.label_smoothing = label_smoothing

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        return {"total": ce, "ce": ce}


def build_ce(**options: Any) -> CrossEntropy:
    try:
        return CrossEntropy(**options)
    except TypeError as exc:
        raise TypeError(f"loss 'ce': {exc}; valid options: label_smoothing") from None


@hookimpl
def audiokd_losses() -> list[Component]:
    return [Component("ce", build_ce, "cross-entropy on hard labels (optional label smoothing)")]
