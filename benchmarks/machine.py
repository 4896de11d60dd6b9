"""What machine a figure was measured on, and a reference figure measured on it in the same run.

Machines that look alike differ ~3x in speed (the same student step ran at 210 samples/s on one
2-core AMD EPYC and 65 on another), so a benchmark prints the CPU model (``lscpu``'s model name),
the GPU's name, and :func:`reference_step`: a bare torchvision MobileNetV3-Small 0.75 training step
on random input, which involves no code of this project. A pipeline figure is then read against
it: a slow machine slows both alike, a slow pipeline only its own figure.

Imports only torch and torchvision (no Hydra, no MLflow), so it runs on a machine with only torch.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torchvision


def cpu_model() -> str:
    """``lscpu``'s model name (or ``/proc/cpuinfo``'s, or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device) -> str:
    """One line: CPU model and cores, torch's threads and version, and the GPU when ``device`` is one."""
    line = (
        f"machine: CPU {cpu_model()} ({torch.get_num_threads()} torch threads of "
        f"{len(os.sched_getaffinity(0))} cores), torch {torch.__version__}"
    )
    if device.type == "cuda":
        line += f", GPU {torch.cuda.get_device_name(device)}"
    return line


def reference_step(device: torch.device, batch: int, frames: int = 401, steps: int = 5, rounds: int = 3) -> float:
    """Median samples/s of a bare torchvision ``mobilenet_v3_small(width_mult=0.75)`` training step
    (forward, cross-entropy, backward, AdamW) on a random ``[batch, 3, 128, frames]`` float32 input
    (the student's log-mel shape of a 4 s clip, as 3 channels) on ``device``, fp32, after one
    warm-up step."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(width_mult=0.75, num_classes=11).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 128, frames, device=device)
    y = torch.randint(0, 11, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed() -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        return steps * batch / (time.perf_counter() - t0)

    step()
    return statistics.median(timed() for _ in range(rounds))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["cpu_model", "describe", "reference_step", "sync"]
