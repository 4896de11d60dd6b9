"""Knowledge distillation (Hinton et al.): soft teacher targets at temperature T plus hard labels.

    kd    = T^2 * KL( softmax(t / T) || softmax(s / T) )      (batch mean)
    total = alpha * kd + (1 - alpha) * CE(s, y)

The T^2 factor keeps the soft term's gradient scale independent of T, so alpha means the same at
every temperature.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.api import Component, UserError, hookimpl


class KDLossError(UserError, ValueError):
    """Bad KD settings, or KD used without a teacher."""


class KDLoss:
    """``loss(logits, target, teacher_logits) -> {"total", "ce", "kd"}``.

    Args:
        T: softmax temperature (> 0); the spec's range is 2-4, default 3.
        alpha: weight of the distillation term in [0, 1]; 0 is plain CE.
        label_smoothing: for the hard-label CE term.
    """

    #: the engine must supply teacher logits (and refuses to train this loss without a teacher)
    needs_teacher = True

    def __init__(self, T: float = 3.0, alpha: float = 0.7, label_smoothing: float = 0.0) -> None:
        if T <= 0:
            raise KDLossError(f"KD temperature T={T} must be > 0")
        if not 0.0 <= alpha <= 1.0:
            raise KDLossError(f"KD alpha={alpha} must be within [0, 1]")
        self.T, self.alpha, self.label_smoothing = float(T), float(alpha), label_smoothing

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if teacher_logits is None:
            raise KDLossError(
                "the kd loss needs teacher logits: set model.kd.enabled=true and a "
                "model.teacher.name (python -m core.list shows the teachers)"
            )
        if teacher_logits.shape != logits.shape:
            raise KDLossError(
                f"teacher logits {tuple(teacher_logits.shape)} do not match student logits "
                f"{tuple(logits.shape)}: the teacher's head must have the same classes"
            )
        s = logits.float()
        t = teacher_logits.detach().float()  # the teacher only teaches: no gradient flows into it
        ce = F.cross_entropy(s, target, label_smoothing=self.label_smoothing)
        kd = (
            F.kl_div(
                F.log_softmax(s / self.T, dim=1),
                F.log_softmax(t / self.T, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            * self.T**2
        )
        return {"total": self.alpha * kd + (1.0 - self.alpha) * ce, "ce": ce, "kd": kd}


def build_kd(**options: Any) -> KDLoss:
    try:
        return KDLoss(**options)
    except TypeError as exc:
        raise KDLossError(f"loss 'kd': {exc}; valid options: T, alpha, label_smoothing") from None


@hookimpl
def audiokd_losses() -> list[Component]:
    return [Component("kd", build_kd, "distillation: alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE")]
