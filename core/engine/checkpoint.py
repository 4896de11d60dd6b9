"""Checkpoints that hold everything needed to resume, and load with ``weights_only=True``.

A checkpoint is a dict of state dicts, tensors and plain Python values (config as a plain dict,
never a pickled object), so ``torch.load(..., weights_only=True)`` can read any checkpoint a user
hands us without running code from it.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.util.files import atomic_path


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def save(state: dict[str, Any], path: Path) -> Path:
    """Write atomically: a crash or a full disk mid-write leaves the previous file intact."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = "the previous one is intact" if path.is_file() else "no earlier one existed"
        raise CheckpointError(
            f"no space left on device writing checkpoint {path} ({kept}, nothing half-written was left). "
            f"Free space under {path.parent}, then continue the run with train.resume=auto "
            f"(or train.resume={path.parent.parent})"
        ) from exc
    return path


def load(path: Path | str, source: str | None = None, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with errors a user can act on.

    Args:
        source: how to name the checkpoint in messages (a URL it came from); default the path.
        hint: appended to the refusal message (e.g. how to re-save the file).
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a foreign or corrupt file fails in many ways
        raise CheckpointError(
            f"refusing checkpoint {source}: torch.load(weights_only=True) could not read it "
            f"({_load_failure(exc)}). Only checkpoints made of tensors and plain values are accepted; "
            f"a file that pickles Python objects is refused, never run, or it is corrupt. {hint}".rstrip()
        ) from exc


def _load_failure(err: Exception) -> str:
    """The useful line of a ``torch.load`` error: for refused pickles, the refused global."""
    text = str(err)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


__all__ = ["CheckpointError", "load", "save"]
