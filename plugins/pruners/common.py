"""What the pruner plugins share (a helper module of the pruners family)."""

from __future__ import annotations

from core.api import UserError


class PrunerError(UserError, ValueError):
    """A pruner was misconfigured, or asked for an impossible ratio."""


def check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise PrunerError(f"pruning ratio {ratio} must be within (0, 1)")
