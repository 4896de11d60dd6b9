"""Seeds and random states: one seed at set-up, exact states in every checkpoint, and stages that
draw random numbers of their own (the teacher stage) kept from disturbing the run's."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python's and torch's (CPU and every CUDA device's) random states, as plain values and tensors
    (a checkpoint loads them with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Whatever the block draws (or seeds), the random states after it are those before it: a stage
    that trains with its own seeds (the teacher stage) leaves the student's initialisation, batch
    order and augmentation exactly as in a run without it."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


__all__ = ["isolated_rng", "rng_state", "seed_everything", "set_rng_state"]
