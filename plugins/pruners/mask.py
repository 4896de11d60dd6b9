"""The spec's route: ``torch.nn.utils.prune.ln_structured`` masks, made permanent with ``prune.remove``.

Kept for comparison with ``structural``: it zeroes whole output channels of every conv but keeps
their tensors, so the network has the same shapes, parameter count and MACs as before (measured:
41.6 M MACs before and after). The report shows that next to the structural result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from core.api import Component, hookimpl
from plugins.pruners.common import PrunerError, check_ratio, nearest_multiple

_NORMS = {"l1": 1, "l2": 2}


class MaskPruner:
    """Zeroes the ``ratio`` lowest-norm output channels of each conv (``scope`` must be uniform:
    ``ln_structured`` works one tensor at a time). With ``round_to`` the kept count is a multiple
    of it (the nearest), as in the structural pruner, so both keep the same number of live channels."""

    removes_channels = False
    needs_gradients = False

    def __init__(self, importance: str = "l1", scope: str = "uniform", round_to: int | None = 8) -> None:
        if importance not in _NORMS:
            raise PrunerError(
                f"prune.method=mask ranks channels by weight norm: prune.importance must be "
                f"l1 or l2, got {importance!r} (taylor needs prune.method=structural)"
            )
        if scope != "uniform":
            raise PrunerError(
                f"prune.method=mask prunes each layer on its own: prune.scope must be uniform, "
                f"got {scope!r} (global needs prune.method=structural)"
            )
        self.n, self.round_to = _NORMS[importance], round_to

    def prune(
        self,
        net: nn.Module,
        example_input: torch.Tensor,
        ratio: float,
        ignored: list[nn.Module],
        calibrate: Callable[[nn.Module], None] | None = None,
    ) -> None:
        check_ratio(ratio)
        skip = {id(m) for m in ignored}
        for module in net.modules():
            if not isinstance(module, nn.Conv2d) or id(module) in skip or module.out_channels < 2:
                continue
            channels = module.out_channels
            keep = channels * (1.0 - ratio)
            if self.round_to:
                keep = nearest_multiple(keep, self.round_to)
            amount = channels - min(channels, max(1, int(round(keep))))
            if amount > 0:
                torch_prune.ln_structured(module, "weight", amount=amount, n=self.n, dim=0)
                torch_prune.remove(module, "weight")


@hookimpl
def audiokd_pruners() -> list[Component]:
    return [
        Component(
            "mask",
            MaskPruner,
            "torch.nn.utils.prune ln_structured + remove: zeroes channels, MACs unchanged (comparison)",
            {},
        )
    ]


__all__ = ["MaskPruner"]
