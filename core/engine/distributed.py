"""Devices and ``torchrun`` (DDP): every rank trains its shard, rank 0 logs and saves."""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from typing import TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import nn

from core.errors import TrainingError

T = TypeVar("T")


@attrs.define
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def same_weights(self, model: nn.Module) -> list[str]:
        """Every rank's :func:`weights_sha256` of ``model``'s parameters (rank order); raises if they
        differ, i.e. the replicas drifted apart (a collective skipped on one rank, a rank-local change).

        Buffers (BatchNorm running statistics) are first copied from rank 0: DDP does the same at the
        start of every training forward, so after the last step each rank still holds the statistics
        of its own last batch; rank 0's are the ones checkpointed."""
        mine = weights_sha256(dict(model.named_parameters()))
        if self.world == 1:
            return [mine]
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
        every: list[str] = [""] * self.world
        dist.all_gather_object(every, mine)
        if len(set(every)) > 1:
            raise TrainingError(
                f"DDP replicas ended with different weights (sha256 per rank: {every}); the checkpoint holds rank 0's"
            )
        return every

    def main_first(self, fn: Callable[[bool], T]) -> T:
        """Run ``fn(is_main)`` on rank 0, then on the other ranks once it is done, so work that
        writes shared files (downloads, renders, caches) happens once and the rest reads it."""
        if self.main:
            result = fn(True)
        self.barrier()
        if not self.main:
            result = fn(False)
        return result

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` under DDP when there are several ranks, else itself."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names and exact tensor bytes (dtype and shape included)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state[name].shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        # Rank 0 may prepare data and train the teacher (minutes to an hour on a big set) while the
        # other ranks wait at a barrier; the default 30-minute collective timeout would kill them.
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=4))
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"train.device={name} but torch.cuda.is_available() is False; use device=auto or cpu")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise TrainingError(f"train.device={name!r} is not valid; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


__all__ = ["Dist", "pick_device", "setup_distributed", "weights_sha256"]
