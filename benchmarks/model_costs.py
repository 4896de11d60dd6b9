"""Model and front-end costs on this machine: log-mel front end time, student params/MACs by both
profilers, teacher forward time per 4 s clip (random weights).

    python -m benchmarks.model_costs
"""

import statistics
import time

import torch

from core.audio.frontend import LogMelFrontend
from core.registry import load_registry

torch.set_num_threads(2)
reg = load_registry()
fe = LogMelFrontend()
x = torch.randn(32, 64000) * 0.1
for mode in ("eval", "train"):
    getattr(fe, mode)()
    fe(x)
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        fe(x)
        ts.append(time.perf_counter() - t)
    print(f"LogMelFrontend [32,64000] {mode}: median {statistics.median(ts) * 1e3:.1f} ms")
ex = torch.zeros(1, 1, 128, 401)
for w in (0.5, 0.75, 1.0):
    net = reg.build("student", "mobilenet_v3_small", num_classes=11, width_mult=w, bn_momentum=0.1)
    r = {n: reg.build("profiler", n).profile(net, ex) for n in ("thop", "flop_counter")}
    thop, fc = r["thop"], r["flop_counter"]
    print(
        f"mobilenet_v3_small w={w}: params {thop.params:,}  MACs thop {thop.macs / 1e6:.1f} M  "
        f"flop_counter {fc.macs / 1e6:.1f} M"
    )
wave = torch.randn(1, 64000) * 0.1
for name in ("ast_tiny", "passt_tiny", "ast_base", "passt_base"):
    m = reg.build("teacher", name, num_classes=11, checkpoint="none").eval()
    with torch.inference_mode():
        m(wave)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            m(wave)
            ts.append(time.perf_counter() - t)
    print(f"{name}: forward per 4 s clip (B=1, 2 threads) median {statistics.median(ts) * 1e3:.0f} ms")
