"""What the teacher plugins share (a helper module of the teachers family): value checks,
checkpoint files (local, cached download, safe loading), position-embedding fitting and freezing.
The module contract itself, :class:`core.api.Teacher`, lives in the core because the teacher stage
relies on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from core.api import RANDOM_INIT, CheckpointError, ConfigValueError, Teacher, atomic_path, load_checkpoint

Tensor = torch.Tensor


# --------------------------------------------------------------------------- options


def check_common(teacher: str, num_classes: int, sample_rate: int) -> None:
    if num_classes < 2:
        raise ConfigValueError(f"teacher {teacher}: a classifier needs at least 2 classes, got {num_classes}")
    if sample_rate <= 0:
        raise ConfigValueError(f"teacher {teacher}: sample_rate={sample_rate} must be > 0")


def check_positive(teacher: str, values: Mapping[str, Any]) -> dict[str, float]:
    """Every value (``model.teacher.options`` and ``clip_seconds``, whose keys the core has checked)
    must be a number > 0; returns them as floats."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigValueError(f"model.teacher.options.{key}={value!r} for teacher {teacher} must be a number > 0")
    return {k: float(v) for k, v in values.items()}


def pick_checkpoint(checkpoint: str | None, default: str | None) -> str | None:
    """The checkpoint to load: ``None`` -> the variant's default, :data:`RANDOM_INIT` -> ``None``
    (random initialisation), anything else unchanged."""
    if checkpoint is None:
        return default
    if str(checkpoint).strip().lower() == RANDOM_INIT:
        return None
    return str(checkpoint)


# --------------------------------------------------------------------------- checkpoint files


def cache_dir() -> Path:
    """``$AUDIOKD_CACHE``, else ``~/.cache/audiokd``."""
    root = os.environ.get("AUDIOKD_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "audiokd"


def is_url(checkpoint: str) -> bool:
    return urllib.parse.urlparse(checkpoint).scheme in ("http", "https")


def resolve_weights_file(checkpoint: str, teacher: str, timeout: float = 60.0) -> Path:
    """A local file for ``checkpoint``: an http(s) URL is downloaded once into
    ``cache_dir()/teachers``; anything else must be an existing file."""
    if is_url(checkpoint):
        return download_cached(checkpoint, teacher, timeout)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"teacher {teacher}: checkpoint {checkpoint!r} is neither an http(s) URL "
            f"nor an existing file. Set model.teacher.checkpoint=/path/to/weights.pt "
            f"(a state_dict saved with torch.save)"
        )
    return path


def download_cached(url: str, teacher: str, timeout: float = 60.0) -> Path:
    """Download ``url`` into the cache unless already there. Written under a temporary name and
    renamed when complete, so an interrupted download is never taken for the file."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights.pt"
    # The URL's hash keeps same-named files from different releases apart.
    dest = cache_dir() / "teachers" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if dest.is_file():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            expected = response.headers.get("Content-Length")
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh, length=1 << 20)
            size = tmp.stat().st_size
            if expected is not None and size != int(expected):
                raise CheckpointError(f"download of {url} stopped after {size} of {expected} bytes")
    except OSError as err:  # URLError, HTTPError, timeouts, refused connections, a full disk
        raise CheckpointError(
            f"teacher {teacher}: could not download checkpoint {url}: {err}. Without network, fetch "
            f"that file elsewhere and point at it: model.teacher.checkpoint=/path/to/{name} "
            f"(or put it in the cache as {dest})"
        ) from err
    return dest


def load_state_dict_file(path: Path, source: str) -> dict[str, Tensor]:
    """Tensors of a ``torch.save``-d state_dict, read with ``weights_only=True`` so a file that
    pickles Python code (or anything other than tensors and containers) is refused, never run.
    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped."""
    obj = load_checkpoint(path, source, hint="Re-save it with torch.save(model.state_dict(), path).")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {source} is not a state_dict (a dict of tensors); "
            f"save one with torch.save(model.state_dict(), path)"
        )
    return obj


# --------------------------------------------------------------------------- position embeddings


def fit_time_positions(grid: Tensor, size: int, crop: Literal["center", "start"]) -> Tensor:
    """Fit position embeddings ``[1, D, F, T]`` to ``T = size`` along time.

    Shorter grids are cropped (keeping the centre, as the original AST code does, or the start,
    as PaSST's own forward does for short clips); longer ones are interpolated bilinearly, the
    AST rule, which leaves the frequency axis as it is.
    """
    old = grid.shape[-1]
    if size == old:
        return grid
    if size < old:
        start = old // 2 - size // 2 if crop == "center" else 0
        return grid[..., start : start + size].contiguous()
    return nn.functional.interpolate(grid, size=(grid.shape[-2], size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- head and freezing


def set_trainable(
    teacher: Teacher,
    blocks: Sequence[nn.Module],
    final_norms: Sequence[nn.Module],
    freeze: bool,
    unfreeze_last_n: int,
    name: str,
) -> None:
    """``freeze=False``: everything trains. ``freeze=True``: only ``teacher.head`` trains, plus
    the last ``unfreeze_last_n`` of ``blocks`` and, when that is > 0, ``final_norms`` (the norms
    between the last block and the head, which see the unfrozen blocks' output)."""
    n_blocks = len(blocks)
    if (
        isinstance(unfreeze_last_n, bool)
        or not isinstance(unfreeze_last_n, int)
        or not 0 <= unfreeze_last_n <= n_blocks
    ):
        raise ConfigValueError(
            f"model.teacher.unfreeze_last_n={unfreeze_last_n!r} must be an integer "
            f"in [0, {n_blocks}] ({name} has {n_blocks} transformer blocks)"
        )
    if not freeze:
        if unfreeze_last_n:
            raise ConfigValueError(
                f"model.teacher.unfreeze_last_n={unfreeze_last_n} only applies with "
                f"model.teacher.freeze=true (freeze=false trains every block)"
            )
        teacher.requires_grad_(True)
        return
    teacher.requires_grad_(False)
    trainable: list[nn.Module] = [teacher.head]
    if unfreeze_last_n:
        trainable += list(blocks[n_blocks - unfreeze_last_n :]) + list(final_norms)
    for module in trainable:
        module.requires_grad_(True)


__all__ = [
    "RANDOM_INIT",
    "CheckpointError",
    "Teacher",
    "cache_dir",
    "check_common",
    "download_cached",
    "fit_time_positions",
    "is_url",
    "check_positive",
    "load_state_dict_file",
    "pick_checkpoint",
    "resolve_weights_file",
    "set_trainable",
]
