"""Pruned layouts: a network's channel counts as plain numbers, and a fresh network reshaped to them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine.checkpoint import CheckpointError
from core.engine.structure import describe, differs, rebuild


def net(c: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, c, 3), nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)
    )


def test_a_smaller_layout_is_rebuilt_and_its_weights_load():
    small = net(4)  # what pruning 8 -> 4 channels leaves
    layout, state = describe(small), small.state_dict()
    assert layout["0"] == {"in_channels": 1, "out_channels": 4, "groups": 1} and layout["1"] == {"num_features": 4}
    assert all(isinstance(v, int) for attrs in layout.values() for v in attrs.values())  # weights_only-safe
    fresh = net(8)
    assert differs(fresh, layout)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)  # the builder's layout no longer fits
    rebuild(fresh, layout, state)
    fresh.load_state_dict(state)
    assert not differs(fresh, layout)
    x = torch.randn(2, 1, 9, 9)
    assert torch.equal(fresh.eval()(x), small.eval()(x))


def test_a_layout_of_another_architecture_is_refused():
    layout = describe(net(4))
    layout["7"] = {"in_features": 4, "out_features": 3}
    with pytest.raises(CheckpointError, match="layer '7'.*another architecture"):
        rebuild(net(8), layout, {})
    wrong_type = describe(net(4))
    wrong_type["1"] = {"in_features": 4, "out_features": 4}
    with pytest.raises(CheckpointError, match="layer '1' is not a BatchNorm2d"):
        rebuild(net(8), wrong_type, {})
