"""A network's channel layout as plain numbers, and rebuilding a pruned network from it.

A structurally pruned network no longer matches the architecture its builder makes, so its
checkpoint must say how many channels each layer kept. Torch-Pruning's own ``tp.state_dict``
stores every module's ``__dict__`` (Python objects, hooks), which ``torch.load(weights_only=True)``
refuses; so the layout is written by hand here as ``{module name: {attribute: int}}`` for the
layers whose shapes pruning changes, and :func:`rebuild` applies it to a freshly built network
before ``load_state_dict``. Nothing in a checkpoint is ever unpickled as code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from core.engine.checkpoint import CheckpointError

#: per layer type, the attributes that hold its channel counts
_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.GroupNorm: ("num_groups", "num_channels"),
}


def _attrs(module: nn.Module) -> tuple[str, ...] | None:
    return _ATTRS.get(type(module))


def describe(net: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {attribute: value}}`` for every conv, linear and norm layer (ints and
    tuples of ints only, so the result saves with any checkpoint and loads with weights_only)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in net.named_modules():
        keys = _attrs(module)
        if keys:
            out[name] = {k: getattr(module, k) for k in keys}
    return out


def differs(net: nn.Module, structure: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``net`` (as built) has another channel layout than ``structure``."""
    return describe(net) != {k: dict(v) for k, v in structure.items()}


def rebuild(
    net: nn.Module, structure: Mapping[str, Mapping[str, Any]], state: Mapping[str, torch.Tensor], prefix: str = ""
) -> nn.Module:
    """Reshape ``net`` in place to ``structure`` so that ``state`` (its state_dict, keys under
    ``prefix``) loads. Parameters and buffers get the shapes ``state`` holds; their values come
    from the ``load_state_dict`` that follows.

    Raises:
        CheckpointError: the structure names layers ``net`` does not have, or of another type
            (a checkpoint of another architecture).
    """
    mine = describe(net)
    for name, attrs in structure.items():
        if name not in mine:
            raise CheckpointError(
                f"the checkpoint's pruned layout names layer {name!r}, which this network does not have: "
                f"it was saved from another architecture (model.student.arch / width_mult)"
            )
        if set(attrs) != set(mine[name]):
            raise CheckpointError(
                f"the checkpoint's layer {name!r} is not a {type(net.get_submodule(name)).__name__} "
                f"here: it was saved from another architecture"
            )
        module = net.get_submodule(name)
        for key, value in attrs.items():
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
        for kind in ("_parameters", "_buffers"):
            table = getattr(module, kind)
            for pname, tensor in list(table.items()):
                key = f"{prefix}{name}.{pname}" if name else f"{prefix}{pname}"
                if tensor is None or key not in state or state[key].shape == tensor.shape:
                    continue
                fresh = torch.empty(state[key].shape, dtype=tensor.dtype, device=tensor.device)
                table[pname] = (
                    nn.Parameter(fresh, requires_grad=tensor.requires_grad) if kind == "_parameters" else fresh
                )
    return net


__all__ = ["describe", "differs", "rebuild"]
