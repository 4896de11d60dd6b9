"""Training throughput: the full data pipeline vs the pure model step, in one run.

    python -m benchmarks.train_throughput [hydra overrides]      (make bench)

*Pure model step*: forward + backward + optimizer step of the student on one fixed, precomputed
network-input batch (what the model alone costs). *Full pipeline*: the real training loop
(``core.engine.loop.train_one_epoch``) fed exactly as training is: batches from the log-mel cache (or,
with a waveform augmentation on, from the waveform cache through waveform augmentation and
log-mel), DataLoader workers if ``train.num_workers`` > 0, normalisation, SpecAugment, loss,
backward, step. Both use the same
batch shape and are measured in alternating rounds, so machine noise hits both alike. The figure
tracked is full / pure samples per second (goal >= 0.9). Beside them, the machine (CPU model) and a
reference figure measured in the same rounds (:mod:`benchmarks.machine`: a bare torchvision step
that involves no code of this project), so a slow machine can be told from a slow pipeline.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from benchmarks import bench_config
from benchmarks.machine import describe, reference_step
from core.data import prepare_data
from core.engine.loop import epoch_batches, train_one_epoch
from core.engine.model import build_model, model_inputs, normalisation_batches
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.seeding import seed_everything
from core.engine.settings import TrainSettings
from core.registry import load_registry


def main(argv: list[str]) -> int:
    steps, rounds = 8, 3
    cfg, overrides = bench_config("demo", argv, steps)
    seed_everything(cfg.train.seed)
    registry = load_registry()
    data = prepare_data(cfg, registry, progress=sys.stderr.isatty())
    model = build_model(cfg, registry, data.num_classes)
    train = model_inputs(model, data.splits, cfg.train.cache_logmel)["train"]  # as training reads it
    model.frontend.fit_normalization_logmel(normalisation_batches(train, model.frontend, cfg.train.seed))
    loss_fn = registry.build("loss", cfg.train.loss)
    settings = TrainSettings.from_config(cfg.train, clip_seconds=cfg.data.clip_seconds)
    opt = build_optimizer(settings, model.parameters())
    sched = build_scheduler(settings, opt, 10_000)
    device = torch.device("cpu")
    bs = cfg.train.batch_size

    x, target = train.batch(list(range(bs)))
    model.eval()
    with torch.no_grad():
        feats = model.features(**{train.input_kind: x})  # fixed batch, normalised, channels_last
    model.train()

    def pure() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(model.net(feats), target)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * bs / (time.perf_counter() - t0)

    def full(epoch: int) -> float:
        batches = epoch_batches(len(train), bs, cfg.train.seed, epoch, max_steps=steps)
        t0 = time.perf_counter()
        train_one_epoch(model, loss_fn, train, batches, opt, sched, None, settings, device, epoch)
        return sum(map(len, batches)) / (time.perf_counter() - t0)

    pure(), full(0)  # warm-up: allocator, worker start-up, first-call costs
    p, f, ref = [], [], []
    for r in range(rounds):
        ref.append(reference_step(device, bs, rounds=1))
        p.append(pure())
        f.append(full(r + 1))
    mp, mf = statistics.median(p), statistics.median(f)
    print(describe(device))
    print(
        f"config: {' '.join(overrides)}  batch {bs}, {steps} steps x {rounds} rounds, "
        f"{torch.get_num_threads()} threads, num_workers {cfg.train.num_workers}, "
        f"channels_last {cfg.train.channels_last}, training input {train.input_kind}"
    )
    print(
        f"reference step    : {statistics.median(ref):7.1f} samples/s  (bare torchvision MobileNetV3-Small 0.75, fp32)"
    )
    print(f"pure model step   : {mp:7.1f} samples/s  (rounds: {', '.join(f'{x:.1f}' for x in p)})")
    print(f"full pipeline     : {mf:7.1f} samples/s  (rounds: {', '.join(f'{x:.1f}' for x in f)})")
    print(f"ratio full / pure : {mf / mp:.3f}  (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
