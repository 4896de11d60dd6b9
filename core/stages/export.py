"""Export to ONNX, check onnxruntime against PyTorch, and time every model per clip.

The exported graph is the whole deployable model: **waveform in, logits out**. The log-mel front
end (STFT, mel filterbank, log, the training set's per-bin normalisation) is inside the graph, so
a user feeds ``[1, samples]`` float32 audio at ``aug.sr`` (mono, ``data.clip_seconds`` long) and
gets ``[1, K]`` logits; no feature code has to be re-implemented next to onnxruntime. torch.onnx's
dynamo exporter (opset 18) translates the STFT; the TorchScript exporter cannot (complex tensors).

The check runs real test clips through both backends and refuses an export whose logits differ
by more than ``export.tolerance`` or whose argmax differs on any clip. Latency comes from the
``export.latency_profiler`` plugin (batch 1, ``export.latency_threads`` threads, median of
``export.latency_runs`` runs after warm-up) for PyTorch eager and onnxruntime.

``task=export`` does this for the students in ``export.sources`` (and the configured teacher);
``task=compare`` with a pruned arm and ``task=pareto`` call :func:`export_and_time` on their own
models (:mod:`core.tasks`).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from core.audio.frontend import LogMelFrontend
from core.audio.host import HostLogMel
from core.engine.model import AudioClassifier, build_model, load_weights
from core.engine.state import TrainState
from core.errors import UserError
from core.registry import Registry
from core.stages.profile import first_macs, student_costs
from core.util.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """An export failed or its onnxruntime outputs do not match PyTorch."""


def export_onnx(module: nn.Module, example_wave: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Write ``module`` (waveform ``[1, samples]`` -> logits) as one ONNX file, atomically.
    The module is copied to CPU in eval mode; the caller's copy is untouched."""
    m = copy.deepcopy(module).cpu().eval()
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # INFO lines per graph pass under Hydra's logging
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with atomic_path(Path(path), suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                m,
                (example_wave.cpu(),),
                str(tmp),
                dynamo=True,
                opset_version=opset,
                input_names=["waveform"],
                output_names=["logits"],
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; say which model
            raise ExportError(
                f"ONNX export of {type(module).__name__} failed: {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            ) from exc
    return Path(path)


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(module: nn.Module, path: Path, clips: torch.Tensor, tolerance: float = 1e-4) -> dict[str, float]:
    """Logits of each clip (one at a time, as deployed) from PyTorch and onnxruntime.

    Returns ``{"max_abs_diff", "argmax_agree"}`` (agreement as a fraction of clips).

    Raises:
        ExportError: a difference above ``tolerance`` or a different argmax on any clip.
    """
    path = Path(path)
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    m = copy.deepcopy(module).cpu().eval()
    worst, agree = 0.0, 0
    with torch.inference_mode():
        for clip in clips:
            x = clip.unsqueeze(0).float().cpu()
            ref = m(x).float().numpy()
            out = session.run(None, {name: x.numpy()})[0]
            worst = max(worst, float(np.abs(out - ref).max()))
            agree += int(out.argmax() == ref.argmax())
    result = {"max_abs_diff": worst, "argmax_agree": agree / len(clips)}
    if worst > tolerance or agree != len(clips):
        raise ExportError(
            f"{path.name}: onnxruntime differs from PyTorch on {len(clips)} real clips: max abs "
            f"logit difference {worst:.3g} (allowed {tolerance:g}), same argmax on {agree}/{len(clips)}"
        )
    return result


def save_host_frontend(frontend: LogMelFrontend, path: Path) -> Path:
    """The constants :class:`~core.audio.host.HostLogMel` computes the network input from: the STFT
    window zero-padded to ``n_fft`` (as ``torch.stft`` pads it), torchaudio's own mel filterbank,
    the fitted per-bin normalisation, hop, log floor and sample rate; written atomically."""
    spec = frontend.spectrogram
    window = spec.window.detach().double().cpu()
    padded = torch.zeros(spec.n_fft, dtype=torch.float64)
    left = (spec.n_fft - len(window)) // 2
    padded[left : left + len(window)] = window
    with atomic_path(Path(path), suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            window=padded.numpy(),
            filterbank=frontend.mel_scale.fb.detach().double().cpu().numpy(),
            mean=frontend.mean.detach().float().cpu().numpy(),
            std=frontend.std.detach().float().cpu().numpy(),
            hop=frontend.hop,
            log_floor=frontend.log_floor,
            sr=frontend.sr,
        )
    return Path(path)


def check_deployment(
    module: AudioClassifier, net_path: Path, frontend_path: Path, clips: torch.Tensor, tolerance: float = 1e-4
) -> dict[str, float]:
    """The deployed pair (:class:`HostLogMel` in numpy, then the network graph in onnxruntime)
    against the PyTorch model on each clip, as :func:`check_parity` does for the whole graph.

    Returns ``{"deploy_max_abs_diff", "deploy_argmax_agree"}``.

    Raises:
        ExportError: a difference above ``tolerance`` or a different argmax on any clip.
    """
    session = onnx_session(net_path)
    name = session.get_inputs()[0].name
    host = HostLogMel.load(frontend_path)
    m = copy.deepcopy(module).cpu().eval()
    worst, agree = 0.0, 0
    with torch.inference_mode():
        for clip in clips:
            ref = m(clip.unsqueeze(0).float().cpu()).float().numpy()
            out = session.run(None, {name: host(clip.float().cpu().numpy())})[0]
            worst = max(worst, float(np.abs(out - ref).max()))
            agree += int(out.argmax() == ref.argmax())
    if worst > tolerance or agree != len(clips):
        raise ExportError(
            f"{Path(frontend_path).name} + {Path(net_path).name}: the numpy front end and onnxruntime differ "
            f"from PyTorch on {len(clips)} real clips: max abs logit difference {worst:.3g} (allowed "
            f"{tolerance:g}), same argmax on {agree}/{len(clips)}"
        )
    return {"deploy_max_abs_diff": worst, "deploy_argmax_agree": agree / len(clips)}


def time_deployment(
    net_path: Path, frontend_path: Path, example: torch.Tensor, runs: int, warmup: int, threads: int
) -> float:
    """Median ms per clip of the deployed pair: numpy front end then onnxruntime (``threads``
    intra-op threads), batch 1, ``runs`` runs after ``warmup``. Timed here, as one call of the
    application would be: the ``timer`` plugins time one model on one backend."""
    session = onnx_session(net_path, threads)
    name = session.get_inputs()[0].name
    host = HostLogMel.load(frontend_path)
    wave = example[0].float().cpu().numpy()
    return median_ms(lambda: session.run(None, {name: host(wave)}), runs, warmup)


def median_ms(call: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median wall time of ``call`` in ms over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def export_and_time(
    export: Any, registry: Registry, models: dict[str, dict[str, Any]], clips: torch.Tensor, out_dir: Path
) -> list[dict[str, Any]]:
    """Export, check and time each model.

    Args:
        export: the ``export`` config group.
        models: name -> ``{"module": waveform -> logits module, "params", "macs", "test_acc",
            "test_f1", "required"}``; ``required=False`` (a teacher) turns an export failure into a
            row without ONNX figures (said in the table) instead of an error.
        clips: real clips ``[N, samples]`` for the parity check; the first one is the timing input.

    Returns:
        One row per model with its costs, scores, ONNX file, parity and latency figures.
    """
    e = export
    profiler = registry.build(
        "timer", e.latency_profiler, runs=e.latency_runs, warmup=e.latency_warmup, threads=e.latency_threads
    )
    example = clips[:1].float().cpu()
    rows = []
    for name, info in models.items():
        module = copy.deepcopy(info["module"]).cpu().eval()
        row = {k: v for k, v in info.items() if k not in ("module", "required")}
        row["name"] = name
        row["latency_torch_ms"] = profiler.torch(module, example).median_ms
        path = out_dir / f"{_slug(name)}.onnx"
        try:
            export_onnx(module, example, path, e.opset)
            row.update(check_parity(module, path, clips[: e.parity_clips], e.tolerance))
        except ExportError as exc:
            if info.get("required", True):
                raise
            print(f"{name}: no ONNX figures: {exc}", flush=True)
            row["onnx_error"] = str(exc)
            rows.append(row)
            continue
        row["onnx"] = str(path)
        row["onnx_mb"] = path.stat().st_size / 2**20
        row["latency_onnx_ms"] = profiler.onnx(path, example).median_ms
        if isinstance(module, AudioClassifier):
            # The network alone as a second graph (log-mel in): onnxruntime's STFT is much slower
            # than torch's, so this column shows what the network itself costs there.
            with torch.inference_mode():
                feats = module.features(example)
            net_path = out_dir / f"{_slug(name)}.net.onnx"
            export_onnx(module.net, feats, net_path, e.opset)
            row["latency_onnx_net_ms"] = profiler.onnx(net_path, feats).median_ms
            row["latency_torch_net_ms"] = profiler.torch(module.net, feats).median_ms
            # The deployment form: that graph fed by the numpy front end (core/audio/host.py).
            frontend_path = save_host_frontend(module.frontend, out_dir / f"{_slug(name)}.frontend.npz")
            row.update(check_deployment(module, net_path, frontend_path, clips[: e.parity_clips], e.tolerance))
            row["latency_deploy_ms"] = time_deployment(
                net_path, frontend_path, example, e.latency_runs, e.latency_warmup, e.latency_threads
            )
            row["net_onnx"], row["frontend"] = str(net_path), str(frontend_path)
        rows.append(row)
        print(
            f"{name}: ONNX {row['onnx_mb']:.2f} MB, parity max |diff| {row['max_abs_diff']:.2e}, "
            f"latency torch {row['latency_torch_ms']:.2f} ms, onnxruntime {row['latency_onnx_ms']:.2f} ms"
            + (
                f", deployed (numpy front end + onnxruntime) {row['latency_deploy_ms']:.2f} ms"
                if "latency_deploy_ms" in row
                else ""
            ),
            flush=True,
        )
    return rows


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def format_rows(rows: list[dict[str, Any]], threads: int, runs: int) -> str:
    """Markdown: params, MACs, latency (both backends), test accuracy and macro-F1 per model."""
    head = [
        "model",
        "params",
        "MACs",
        "latency torch (ms)",
        "latency onnxruntime (ms)",
        "network only: torch / onnxruntime (ms)",
        "deployed: numpy front end + onnxruntime (ms)",
        "test acc",
        "test macro-F1",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    f"{r['params'] / 1e6:.3f} M" if r.get("params") else "-",
                    f"{r['macs'] / 1e6:.1f} M" if r.get("macs") else "-",
                    num(r.get("latency_torch_ms"), ".2f"),
                    num(r.get("latency_onnx_ms"), ".2f"),
                    f"{num(r.get('latency_torch_net_ms'), '.2f')} / {num(r.get('latency_onnx_net_ms'), '.2f')}",
                    num(r.get("latency_deploy_ms"), ".2f"),
                    num(r.get("test_acc"), ".3f"),
                    num(r.get("test_f1"), ".3f"),
                ]
            )
            + " |"
        )
    lines.append(
        f"\nlatency: one {threads}-thread CPU process, batch 1 (one clip), median of {runs} runs after "
        f"warm-up; waveform in, log-mel front end included, except the 'network only' column (log-mel in). "
        f"'deployed': <model>.frontend.npz through core/audio/host.py (numpy) then <model>.net.onnx. "
        f"MACs: the network on one clip's log-mel (students) / the whole teacher."
    )
    return "\n".join(lines)


def write_report(
    rows: list[dict[str, Any]], export: Any, out_dir: Path, tracker: Any = None, title: str = "latency"
) -> str:
    """The table (``<title>.md``) and the rows (``<title>.json``) in ``out_dir``; with a tracker,
    both, the ONNX files and each model's figures logged to it."""
    table = format_rows(rows, export.latency_threads, export.latency_runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{title}.md", table + "\n")
    atomic_write_text(out_dir / f"{title}.json", json.dumps(rows, indent=2, default=str))
    if tracker is not None:
        for suffix in ("md", "json"):
            tracker.log_artifact(out_dir / f"{title}.{suffix}", "export")
        for r in rows:
            metrics = {
                f"{_slug(r['name'])}_{k}": r[k]
                for k in (
                    "latency_torch_ms",
                    "latency_onnx_ms",
                    "latency_torch_net_ms",
                    "latency_onnx_net_ms",
                    "latency_deploy_ms",
                    "max_abs_diff",
                    "deploy_max_abs_diff",
                    "onnx_mb",
                )
                if isinstance(r.get(k), (int, float))
            }
            tracker.log_metrics(metrics, step=0)
            for key in ("onnx", "net_onnx", "frontend"):
                if r.get(key):
                    tracker.log_artifact(Path(r[key]), "export")
    return table


# ----------------------------------------------------------------------------------------------
# students from checkpoints


def student_from_state(registry: Registry, state: TrainState) -> AudioClassifier:
    """The AudioClassifier a checkpoint describes, built from the checkpoint's own config (so a
    pruned or another-width student needs no matching overrides), its weights loaded."""
    src = OmegaConf.create(state.config)
    src.train.channels_last = False  # export/timing on a fresh CPU module; NCHW exports cleanly
    model = build_model(src, registry, len(state.class_names))
    load_weights(model, state.to_dict())
    return model.eval()


def student_row(profilers: list[str], registry: Registry, state: TrainState, clip_samples: int) -> dict[str, Any]:
    """The ``models`` entry of a student checkpoint for :func:`export_and_time`."""
    model = student_from_state(registry, state)
    costs = student_costs(registry, profilers, model, clip_samples)
    # test scores come from the caller: a checkpoint holds only per-epoch metrics
    return {"module": model, "params": costs.get("student_params"), "macs": first_macs(costs), "required": True}


def parity_clips(n: int, data: Any) -> torch.Tensor:
    """The first ``n`` (``export.parity_clips``) test clips ``[N, samples]``: real audio for the parity check."""
    test = data.splits["test"]
    return test.batch(list(range(min(len(test), n))))[0]


def teacher_row(profilers: list[str], teacher: Any) -> dict[str, Any]:
    """The ``models`` entry of a prepared teacher (its scores and costs from the teacher stage)."""
    macs_key = f"teacher_macs_{profilers[0]}" if profilers else ""
    return {
        "module": teacher.module,
        "params": teacher.scores.get("teacher_params"),
        "macs": teacher.scores.get(macs_key),
        "test_acc": teacher.scores.get("teacher_test_acc"),
        "test_f1": teacher.scores.get("teacher_test_f1"),
        "required": False,
    }


__all__ = [
    "ExportError",
    "check_deployment",
    "check_parity",
    "export_and_time",
    "export_onnx",
    "format_rows",
    "median_ms",
    "parity_clips",
    "save_host_frontend",
    "student_from_state",
    "student_row",
    "teacher_row",
    "time_deployment",
    "write_report",
]
