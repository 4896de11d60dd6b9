"""The log-mel cache: each clip's unnormalised log-mel computed once (float16 memmap)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from core.audio.frontend import LogMelFrontend
from core.errors import UserError
from core.util.files import atomic_path

Tensor = torch.Tensor

log = logging.getLogger(__name__)


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


class DeviceLogMel:
    """A :class:`LogMelSet` copied once into device memory (float16, as on disk), its batches
    gathered there: on a GPU no batch crosses the host bus and no loader worker is needed.
    A 1 GB NSynth subset is ~0.8 GB of log-mel, all of NSynth's training split ~30 GB (289,205 clips
    x 128 mels x 401 frames x 2 bytes), which one large GPU holds. A batch equals the memmap's
    (float16 values converted to float32), so training is the same either way."""

    input_kind = "logmel"
    on_device = True

    def __init__(self, source: LogMelSet, device: torch.device, chunk: int = 1024) -> None:
        self.npy_path, self.labels, self.paths, self.skipped = (
            source.npy_path,
            source.labels,
            source.paths,
            source.skipped,
        )
        mels = source.mels
        self.mels = torch.empty(mels.shape, dtype=torch.float16, device=device)
        for start in range(0, len(mels), chunk):  # chunks: the host never holds a second full copy
            self.mels[start : start + chunk].copy_(torch.from_numpy(np.array(mels[start : start + chunk])))
        self.targets = torch.from_numpy(np.asarray(source.labels, dtype=np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Any) -> tuple[Tensor, Tensor]:
        """``(log-mel float32 [B, n_mels, frames], labels int64 [B])``, on the set's device."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).to(self.mels.device, non_blocking=True)
        return self.mels.index_select(0, idx).float(), self.targets.index_select(0, idx)


#: ``train.data_on_device=null`` (auto) moves the log-mel sets onto a GPU while they take at most
#: this fraction of its free memory; the rest is left to the model's activations and the allocator
DEVICE_FRACTION = 0.5


def device_budget(device: torch.device) -> list[int] | None:
    """Bytes of ``device`` memory a run's splits may take together (:data:`DEVICE_FRACTION` of a
    GPU's free memory now, as a one-element list that :func:`on_device` consumes); None off a GPU."""
    return [int(torch.cuda.mem_get_info(device)[0] * DEVICE_FRACTION)] if device.type == "cuda" else None


def on_device(inputs: Any, device: torch.device, mode: bool | None, budget: list[int] | None = None) -> Any:
    """``inputs`` held in ``device`` memory (:class:`DeviceLogMel`) or as they are.

    Args:
        mode: ``train.data_on_device``: ``True`` always (a RAM copy on CPU; on a GPU it must fit),
            ``False`` never, ``None`` (auto): on CUDA when it fits in what is left of ``budget``.
        budget: from :func:`device_budget`, shared by a run's splits (consumed here); ``None``:
            a new one for this set alone.

    Only cached log-mel moves (waveforms read for waveform augmentation stay on the host).
    """
    if mode is False or not isinstance(inputs, LogMelSet):
        return inputs
    if device.type != "cuda":
        return DeviceLogMel(inputs, device) if mode else inputs
    budget = budget if budget is not None else device_budget(device)
    assert budget is not None
    need = int(np.prod(inputs.mels.shape)) * 2 + len(inputs) * 8
    if need > budget[0]:
        if mode:
            raise UserError(
                f"train.data_on_device=true: the log-mel cache {inputs.npy_path.name} needs "
                f"{need / 1e9:.2f} GB and {device} has {budget[0] / 1e9:.2f} GB left for data; "
                f"set train.data_on_device=null (auto: on the device while it fits) or false"
            )
        return inputs
    budget[0] -= need
    return DeviceLogMel(inputs, device)


def place(inputs: dict[str, Any], device: torch.device, mode: bool | None) -> dict[str, Any]:
    """Every split's inputs through :func:`on_device`, training split first, sharing one
    :func:`device_budget`; logs where they ended up."""
    budget = device_budget(device)
    order = sorted(inputs, key=lambda split: split != "train")
    placed = {split: on_device(inputs[split], device, mode, budget) for split in order}
    moved = [split for split in order if isinstance(placed[split], DeviceLogMel)]
    if moved:
        size = sum(placed[s].mels.numel() * 2 for s in moved)
        log.info("log-mel of %s held in %s memory (%.2f GB)", ", ".join(moved), device, size / 1e9)
    return {split: placed[split] for split in inputs}


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


__all__ = ["DEVICE_FRACTION", "DeviceLogMel", "LogMelSet", "build_logmel_cache", "device_budget", "on_device", "place"]
