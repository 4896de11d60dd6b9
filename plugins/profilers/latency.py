"""Per-clip latency of a model in PyTorch eager and in onnxruntime (timer ``latency``).

Deployment runs one clip at a time on a small CPU budget, so both backends are timed at batch 1
with the same thread count (default 1): ``warmup`` untimed calls, then ``runs`` timed calls; the
median is the figure, p90 and min show the spread. ``time.perf_counter`` around each call,
because neither ``torch.utils.benchmark`` nor onnxruntime's profiler times the other backend.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.api import Component, ConfigValueError, Timing, hookimpl


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LatencyProfiler:
    """Args:
    runs: timed calls (the median of at least 50 is what the report shows by default).
    warmup: untimed calls first (allocator, oneDNN kernels, onnxruntime arenas).
    threads: intra-op threads for both backends.
    """

    def __init__(self, runs: int = 50, warmup: int = 10, threads: int = 1) -> None:
        if runs < 1 or warmup < 0 or threads < 1:
            raise ConfigValueError(
                f"latency profiler: need runs >= 1, warmup >= 0, threads >= 1 "
                f"(got runs={runs}, warmup={warmup}, threads={threads})"
            )
        self.runs, self.warmup, self.threads = runs, warmup, threads

    def _time(self, call: Callable[[], Any], backend: str) -> Timing:
        for _ in range(self.warmup):
            call()
        times = []
        for _ in range(self.runs):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return Timing(
            backend,
            statistics.median(times),
            times[min(len(times) - 1, int(0.9 * len(times)))],
            times[0],
            self.runs,
            self.threads,
        )

    def torch(self, model: nn.Module, example_input: torch.Tensor) -> Timing:
        """Eager PyTorch on CPU, eval mode, no autograd; the model's mode is restored after."""
        was_training = model.training
        model.eval()
        try:
            with torch_threads(self.threads), torch.inference_mode():
                return self._time(lambda: model(example_input), "torch")
        finally:
            model.train(was_training)

    def onnx(self, path: Path | str, example_input: torch.Tensor) -> Timing:
        """onnxruntime's CPU provider with all graph optimisations, ``threads`` intra-op threads."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(example_input.cpu().numpy())}
        return self._time(lambda: session.run(None, feed), "onnx")


def _factory(runs: int = 50, warmup: int = 10, threads: int = 1) -> LatencyProfiler:
    return LatencyProfiler(runs, warmup, threads)


@hookimpl
def audiokd_timers() -> list[Component]:
    return [
        Component(
            "latency",
            _factory,
            "per-clip latency, batch 1, N threads: median of >= 50 runs, PyTorch eager and onnxruntime",
        )
    ]


__all__ = ["LatencyProfiler", "Timing"]
