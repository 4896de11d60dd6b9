"""Student training throughput on synthetic log-mel: no dataset, no Hydra, no MLflow.

    python -m benchmarks.synthetic [--device cuda] [--batch 256] [--amp] [--steps 20] ...
    make bench-synthetic ARGS="--device cuda --batch 256"

Needs only torch, torchvision, torchaudio, torchmetrics, pluggy, attrs, PyYAML and the project's
tree, so it measures the GPU path on a machine that has nothing else. The student and its
settings are the project's defaults (``configs/model.yaml``, ``aug.yaml``, ``train.yaml``), the
data a seeded random log-mel set held as training holds it: a float16 memmap on disk, moved into
device memory when it fits (:func:`core.data.logmel.on_device`, as ``train.data_on_device=auto``
does on CUDA). Three figures, measured in alternating rounds so noise hits them alike:

* reference: a bare torchvision MobileNetV3-Small step on random input (:mod:`benchmarks.machine`),
  which tells a slow machine from a slow pipeline;
* pure: the student's training step on one fixed, precomputed network-input batch;
* full: the project's loop (``core.engine.loop.train_one_epoch``) on the synthetic set: batch
  gathering, normalisation, SpecAugment, autocast, loss, backward, step.

``data share`` is the part of a full step that is not the pure model step: 1 - full / pure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import yaml

from benchmarks.machine import describe, reference_step, sync
from core.audio.frontend import LogMelFrontend
from core.data.logmel import LogMelSet, on_device
from core.engine.distributed import pick_device
from core.engine.loop import autocast, crop_generator, epoch_batches, random_crop, train_one_epoch
from core.engine.model import AudioClassifier, student_network, to_channels_last
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.settings import TrainSettings, crop_fraction
from core.registry import load_registry

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class Attrs(dict):
    """A config group read from YAML, with attribute access like the composed config's."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc
        return Attrs(value) if isinstance(value, dict) else value


#: synthetic clips are as long as the project's default ``data.clip_seconds`` (an NSynth note)
CLIP_SECONDS = 4.0


def defaults() -> Attrs:
    """The project's default ``model``, ``aug`` and ``train`` groups, from ``configs/``."""
    return Attrs({g: yaml.safe_load((CONFIGS / f"{g}.yaml").read_text()) for g in ("model", "aug", "train")})


@attrs.frozen
class SyntheticClips:
    """What a :class:`~core.data.logmel.LogMelSet` takes from its waveform set."""

    labels: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]] = attrs.field(factory=list)


def synthetic_logmel(folder: Path, clips: int, n_mels: int, frames: int, classes: int, seed: int = 0) -> LogMelSet:
    """A seeded random log-mel set written as the log-mel cache is (float16 ``.npy``)."""
    rng = np.random.default_rng(seed)
    path = folder / "logmel-synthetic.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(clips, n_mels, frames))
    for start in range(0, clips, 256):
        n = min(256, clips - start)
        out[start : start + n] = rng.normal(-4.0, 2.0, size=(n, n_mels, frames)).astype(np.float16)
    out.flush()
    del out
    labels = rng.integers(0, classes, size=clips).astype(np.int64)
    return LogMelSet(path, SyntheticClips(labels, [f"synthetic/{i}" for i in range(clips)]))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when there is one) | cpu | cuda | cuda:N")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: train.batch_size)")
    p.add_argument("--steps", type=int, default=8, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=2048, help="synthetic clips in the set")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--arch", default=None, help="student (default: model.student.arch)")
    p.add_argument("--width-mult", type=float, default=None)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="autocast on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--data-on-device", choices=("auto", "true", "false"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--crop-seconds", type=float, default=None, help="train on random windows of the 4 s clips (train.crop_seconds)"
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cfg = defaults()
    student = Attrs(cfg.model.student)
    student.update({k: v for k, v in (("arch", args.arch), ("width_mult", args.width_mult)) if v is not None})
    cfg["model"]["student"] = student
    changes = {k: v for k, v in (("batch_size", args.batch), ("amp", args.amp)) if v is not None}
    channels_last = cfg.train.channels_last if args.channels_last is None else args.channels_last
    changes["crop"] = crop_fraction(args.crop_seconds, CLIP_SECONDS)  # as train.crop_seconds gives
    settings = TrainSettings.from_config(
        cfg.train, clip_seconds=CLIP_SECONDS, channels_last=channels_last, num_workers=0, **changes
    )
    bs = settings.batch_size

    torch.manual_seed(0)
    registry = load_registry()
    frontend = LogMelFrontend.from_config(cfg.aug)
    model = AudioClassifier(frontend, student_network(cfg, registry, args.classes), None, channels_last)
    if channels_last:
        to_channels_last(model.net)
    model.to(device)
    loss_fn = registry.build("loss", "ce")
    opt = build_optimizer(settings, model.parameters())
    sched = build_scheduler(settings, opt, 10_000)
    with tempfile.TemporaryDirectory(prefix="audiokd-synthetic-") as tmp:
        cached = synthetic_logmel(
            Path(tmp), args.clips, frontend.n_mels, frontend.num_frames(round(frontend.sr * CLIP_SECONDS)), args.classes
        )
        mode = {"auto": None, "true": True, "false": False}[args.data_on_device]  # as train.data_on_device
        inputs = on_device(cached, device, mode)
        frontend.fit_normalization_logmel(iter([cached.batch(range(min(len(cached), 512)))[0]]))
        x, target = inputs.batch(list(range(bs)))
        model.eval()
        with torch.no_grad():
            feats = model.features(logmel=x.to(device)).detach()
        if settings.crop:  # the pure step gets windows of the same width as the loop's
            feats = random_crop(feats, settings.crop, crop_generator(0, 0))
            if channels_last:
                feats = feats.contiguous(memory_format=torch.channels_last)
        target = target.to(device)
        model.train()

        def pure() -> float:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                with autocast(settings, device):
                    logits = model.net(feats)
                loss = loss_fn(logits.float(), target)["total"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync(device)
            return args.steps * bs / (time.perf_counter() - t0)

        def full(epoch: int) -> float:
            batches = epoch_batches(len(inputs), bs, 0, epoch, max_steps=args.steps)
            sync(device)
            t0 = time.perf_counter()
            train_one_epoch(model, loss_fn, inputs, batches, opt, sched, None, settings, device, epoch)
            sync(device)
            return sum(map(len, batches)) / (time.perf_counter() - t0)

        pure(), full(0)  # warm-up: allocator, cuDNN autotuning, first-call costs
        p, f, r = [], [], []
        for i in range(args.rounds):
            r.append(reference_step(device, bs, rounds=1))
            p.append(pure())
            f.append(full(i + 1))
    mr, mp, mf = statistics.median(r), statistics.median(p), statistics.median(f)
    print(describe(device))
    print(
        f"student {student.arch} x{student.width_mult}, batch {bs}, {args.steps} steps x {args.rounds} rounds, "
        f"amp {settings.amp and device.type == 'cuda'} ({settings.amp_dtype}), channels_last {channels_last}, "
        f"data {type(inputs).__name__} on {inputs_device(inputs)}, {args.clips} synthetic clips, "
        f"training windows {f'{args.crop_seconds:g} s' if settings.crop else 'whole 4 s clips'}"
    )
    print(f"reference step    : {mr:9.1f} samples/s  (bare torchvision MobileNetV3-Small 0.75, fp32)")
    print(f"pure model step   : {mp:9.1f} samples/s  (rounds: {', '.join(f'{v:.1f}' for v in p)})")
    print(f"full pipeline     : {mf:9.1f} samples/s  (rounds: {', '.join(f'{v:.1f}' for v in f)})")
    print(f"ratio full / pure : {mf / mp:.3f}   data share of a step: {1 - mf / mp:.1%}")
    return 0


def inputs_device(inputs: Any) -> str:
    mels = getattr(inputs, "mels", None)
    return str(mels.device) if isinstance(mels, torch.Tensor) else "host (memmap)"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
