"""Random draws and batch checks shared by the front end and the waveform augmentations."""

from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def rand(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Uniform [0, 1) on ``device``; drawn from ``generator`` (on its own device) when given.

    Drawing on the generator's device keeps a CPU generator usable for CUDA batches, at the
    cost of a small copy; without one the global RNG of ``device`` is used (no copy).
    """
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randn(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def uniform(low: float, high: float, n: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    return low + (high - low) * rand((n,), generator, device)


def check_batch(wave: Tensor, who: str) -> None:
    if wave.ndim != 2 or not wave.is_floating_point():
        raise ValueError(f"{who} expects a float waveform batch [B, L], got {tuple(wave.shape)} {wave.dtype}")
