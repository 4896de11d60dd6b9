"""Checkpoints that hold everything needed to resume, and load with ``weights_only=True``.

A checkpoint is a dict of state dicts, tensors and plain Python values (config as a plain dict,
never a pickled object), so ``torch.load(..., weights_only=True)`` can read any checkpoint a user
hands us without running code from it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.fsutil import atomic_path


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def save(state: dict[str, Any], path: Path) -> Path:
    """Write atomically: a crash or a full disk mid-write leaves the previous file intact."""
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        raise CheckpointError(
            f"cannot load {path} with weights_only=True ({type(exc).__name__}: {exc}). "
            f"Only checkpoints made of tensors and plain values are accepted; a file that needs "
            f"arbitrary code to unpickle is refused on purpose."
        ) from exc


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_py_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state() -> tuple[Any, ...]:
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss
