"""What KD costs per training epoch: student-only vs offline KD vs online KD, in one run.

    python -m benchmarks.kd_overhead [hydra overrides]      (make bench-kd)

All three arms run the real loop (``core.engine.loop.train_one_epoch``) on the same batches of the
``kd_gmnotes`` config, in alternating rounds so machine noise hits them alike:

* student-only: CE, no teacher;
* offline KD: the KD loss with the teacher's logits looked up from the on-disk cache;
* online KD: the KD loss with the teacher run on every batch (the spec's "teacher(same input)").

The teacher comes from the teacher stage's cache (trained first if it is not there, which takes
the teacher's training time once). The figures tracked are offline / student-only epoch time
(goal <= 1.15) and online / student-only.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from benchmarks import bench_config
from core.data import prepare_data
from core.engine.loop import epoch_batches, train_one_epoch
from core.engine.model import build_model, model_inputs, normalisation_batches
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.seeding import seed_everything
from core.engine.settings import TrainSettings
from core.registry import load_registry
from core.stages.teacher import prepare_teacher


def main(argv: list[str]) -> int:
    steps, rounds = 8, 3
    cfg, overrides = bench_config("kd_gmnotes", argv, steps)
    registry = load_registry()
    device = torch.device("cpu")
    data = prepare_data(cfg, registry, progress=sys.stderr.isatty())
    teacher = prepare_teacher(cfg, registry, data, device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, registry, data.num_classes)
    train = model_inputs(model, data.splits, cfg.train.cache_logmel)["train"]
    model.frontend.fit_normalization_logmel(normalisation_batches(train, model.frontend, cfg.train.seed))
    ce = registry.build("loss", "ce")
    kd = registry.build("loss", "kd", T=cfg.model.kd.T, alpha=cfg.model.kd.alpha)
    settings = TrainSettings.from_config(cfg.train, clip_seconds=cfg.data.clip_seconds)
    opt = build_optimizer(settings, model.parameters())
    sched = build_scheduler(settings, opt, 10_000)
    arms = {
        "student-only": (ce, None),
        "offline KD": (kd, teacher.targets("offline", data.splits["train"], device)),
        "online KD": (kd, teacher.targets("online", data.splits["train"], device)),
    }

    def epoch_time(loss_fn, targets, epoch: int) -> float:
        batches = epoch_batches(len(train), cfg.train.batch_size, cfg.train.seed, epoch, max_steps=steps)
        t0 = time.perf_counter()
        train_one_epoch(model, loss_fn, train, batches, opt, sched, None, settings, device, epoch, teacher=targets)
        return time.perf_counter() - t0

    for loss_fn, targets in arms.values():  # warm-up
        epoch_time(loss_fn, targets, 0)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, (loss_fn, targets) in arms.items():
            times[name].append(epoch_time(loss_fn, targets, r + 1))
    base = statistics.median(times["student-only"])
    print(
        f"config: {' '.join(overrides)}  batch {cfg.train.batch_size}, {steps} steps x {rounds} rounds, "
        f"{torch.get_num_threads()} threads; teacher {cfg.model.teacher.name} x{cfg.model.teacher.ensemble}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:13s}: {med:6.2f} s per {steps} steps  ratio {med / base:5.2f}  "
            f"(rounds: {', '.join(f'{t:.2f}' for t in ts)})"
        )
    print("goal: offline KD / student-only <= 1.15")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
