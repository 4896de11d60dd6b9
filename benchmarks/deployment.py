"""Per-clip latency of the deployment forms of the default student, no dataset needed.

    python -m benchmarks.deployment [--runs 50] [--warmup 10] [--threads 1]

The default student (``configs/model.yaml``, random weights, normalisation fitted on noise: latency
does not depend on the values) on one 4 s clip, batch 1: PyTorch eager, the whole exported graph in
onnxruntime (waveform in), and the deployment form, ``<model>.net.onnx`` fed by the numpy front end
(:mod:`core.audio.host`), with its two parts alone. The ``latency`` timer plugin times the first four,
:func:`core.stages.export.time_deployment` the deployed pair; the machine line comes first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.machine import describe
from benchmarks.synthetic import defaults
from core.audio.frontend import LogMelFrontend
from core.audio.host import HostLogMel
from core.engine.model import AudioClassifier, student_network
from core.registry import load_registry
from core.stages.export import export_onnx, median_ms, save_host_frontend, time_deployment


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deployment", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    registry, cfg = load_registry(), defaults()
    frontend = LogMelFrontend.from_config(cfg.aug)
    frontend.fit_normalization([0.1 * torch.randn(8, 4 * cfg.aug.sr)])
    model = AudioClassifier(frontend, student_network(cfg, registry, 11)).eval()
    timer = registry.build("timer", "latency", runs=args.runs, warmup=args.warmup, threads=args.threads)
    wave = 0.1 * torch.randn(1, 4 * cfg.aug.sr)
    with tempfile.TemporaryDirectory(prefix="audiokd-deploy-") as tmp:
        folder = Path(tmp)
        whole = export_onnx(model, wave, folder / "student.onnx")
        with torch.inference_mode():
            feats = model.features(wave)
        net = export_onnx(model.net, feats, folder / "student.net.onnx")
        npz = save_host_frontend(model.frontend, folder / "student.frontend.npz")
        host, clip = HostLogMel.load(npz), wave[0].numpy()
        rows = {
            "PyTorch eager, whole model": timer.torch(model, wave).median_ms,
            "onnxruntime, whole graph (waveform in)": timer.onnx(whole, wave).median_ms,
            "deployed: numpy front end + onnxruntime network": time_deployment(
                net, npz, wave, args.runs, args.warmup, args.threads
            ),
            "  numpy front end alone": median_ms(lambda: host(clip), args.runs, args.warmup),
            "  onnxruntime network alone (log-mel in)": timer.onnx(net, feats).median_ms,
        }
    print(describe(torch.device("cpu")))
    print(
        f"default student {cfg.model.student.arch} x{cfg.model.student.width_mult}, one 4 s clip, batch 1, "
        f"{args.threads} thread(s), median of {args.runs} after {args.warmup} warm-up calls"
    )
    for name, ms in rows.items():
        print(f"{name:50s} {ms:7.2f} ms")
    whole_ms = rows["onnxruntime, whole graph (waveform in)"]
    print(f"deployed vs whole graph: {whole_ms / rows['deployed: numpy front end + onnxruntime network']:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
