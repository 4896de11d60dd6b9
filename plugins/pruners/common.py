"""What the pruner plugins share (a helper module of the pruners family)."""

from __future__ import annotations

import math

from core.api import UserError


class PrunerError(UserError, ValueError):
    """A pruner was misconfigured, or asked for an impossible ratio."""


def nearest_multiple(channels: float, round_to: int) -> int:
    """The multiple of ``round_to`` nearest to ``channels``, at least one multiple. A tie (ratio 0.5
    of 24 channels: 12, between 8 and 16) keeps the smaller count, so at least the asked share goes."""
    return max(round_to, math.ceil(round(channels / round_to - 0.5, 6)) * round_to)


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise PrunerError(f"pruning ratio {ratio} must be within (0, 1)")
