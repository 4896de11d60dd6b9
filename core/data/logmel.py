"""The log-mel cache: each clip's unnormalised log-mel computed once (float16 memmap)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from core.audio.frontend import LogMelFrontend
from core.util.files import atomic_path

Tensor = torch.Tensor


class LogMelSet(torch.utils.data.Dataset):
    """Cached, unnormalised log-mel of a :class:`~core.data.waveforms.WaveformSet` (float16 memmap).

    Log-mel is a fixed function of the waveform, so with no waveform augmentation it would be
    recomputed identically every epoch; on 2 CPU cores that was ~16 % of a training step. The set
    stores it once; normalisation and SpecAugment still run per batch (``LogMelFrontend.post``).
    float16 keeps log-power to ~0.004 at the top of its range, far below the normalised scale.
    """

    input_kind = "logmel"

    def __init__(self, npy_path: Path, waves: Any) -> None:
        self.npy_path = Path(npy_path)
        self.labels = waves.labels
        self.paths = waves.paths
        self.skipped = waves.skipped
        self._mels: Optional[np.memmap] = None

    @property
    def mels(self) -> np.memmap:
        if self._mels is None:
            self._mels = np.load(self.npy_path, mmap_mode="r")
        return self._mels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.mels[index].astype(np.float32)), torch.tensor(self.labels[index])

    def batch(self, indices: Any) -> tuple[Tensor, Tensor]:
        """``(log-mel float32 [B, n_mels, frames], labels int64 [B])``."""
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.mels[idx].astype(np.float32)), torch.from_numpy(self.labels[idx])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mels"] = None  # workers reopen the file instead of receiving the array
        return state


@torch.no_grad()
def build_logmel_cache(waves: Any, frontend: LogMelFrontend, batch_size: int = 64) -> LogMelSet:
    """Compute ``frontend.log_mel`` of every clip once, next to the waveform cache, or reuse it.

    The file name hashes the waveform cache's name and :meth:`LogMelFrontend.signature`, so a
    changed clip set or front-end setting gets a new file. Written under a temporary name and
    renamed when complete, so an interrupted build is never mistaken for a cache.
    """
    key = hashlib.sha256(f"{waves.npy_path.name}|{frontend.signature()}".encode()).hexdigest()[:24]
    final = waves.npy_path.parent / f"logmel-{key}.npy"
    n, frames = len(waves), frontend.num_frames(waves.clip_samples)
    if final.is_file():
        arr = np.load(final, mmap_mode="r")
        if arr.shape == (n, frontend.n_mels, frames) and arr.dtype == np.float16:
            return LogMelSet(final, waves)
    device = frontend.mean.device
    with atomic_path(final, suffix=".tmp.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, frontend.n_mels, frames))
        for start in range(0, n, batch_size):
            wave, _ = waves.batch(range(start, min(n, start + batch_size)))
            out[start : start + len(wave)] = frontend.log_mel(wave.to(device)).cpu().numpy().astype(np.float16)
        out.flush()
        del out
    return LogMelSet(final, waves)


__all__ = ["LogMelSet", "build_logmel_cache"]
