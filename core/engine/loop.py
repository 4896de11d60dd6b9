"""The training loop's pieces: the batches of an epoch, one epoch of training, one evaluation.

Each takes explicit arguments (a :class:`~core.engine.settings.TrainSettings`, never the config), so
the Trainer and the teacher stage run the same code with their own values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn

from core.data import Inputs
from core.engine.distributed import Dist
from core.engine.metrics import Scores, score, score_predictions
from core.engine.settings import TrainSettings
from core.errors import TrainingError
from core.util.progress import StageProgress

log = logging.getLogger(__name__)


class TeacherTargets(Protocol):
    """What KD plugs into the loop: the teacher's logits ``[B, K]`` for a batch's clip indices,
    from a cached table (offline) or the teacher run now (``online``: on ``wave``, the augmented
    waveform batch the student hears, when the loop passes it)."""

    online: bool

    def __call__(self, indices: list[int], wave: torch.Tensor | None = None) -> torch.Tensor: ...


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, d: Dist = Dist(), max_steps: int | None = None
) -> list[list[int]]:
    """This rank's shuffled batches for one epoch, a pure function of (seed, epoch).

    Deriving the order from the epoch number (not from a running generator) makes a resumed run
    see exactly the batches the uninterrupted run would have seen.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = len(order) // d.world  # equal shard sizes keep DDP's collectives in step
    order = order[d.rank * per_rank : (d.rank + 1) * per_rank]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < 2:  # BatchNorm cannot train on a batch of one
        batches.pop()
    return batches[:max_steps] if max_steps else batches


class _Batches(torch.utils.data.Dataset):
    """Index lists -> (inputs, labels) batches, so DataLoader workers prefetch from the memmap."""

    def __init__(self, waves: Inputs, batches: Sequence[Sequence[int]]) -> None:
        self.waves, self.batch_list = waves, batches

    def __len__(self) -> int:
        return len(self.batch_list)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.waves.batch(self.batch_list[i])


def iterate(
    waves: Inputs, batches: Sequence[Sequence[int]], num_workers: int, pin: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, labels)`` of each batch: gathered in device memory when the set lives there
    (:class:`~core.data.DeviceLogMel`), prefetched by ``num_workers`` workers, or read here. With
    ``pin`` (a CUDA device) and no workers, the next batch is read into pinned memory on a thread
    while the current one trains, so its host-to-device copy can run asynchronously."""
    if getattr(waves, "on_device", False):
        for b in batches:
            yield waves.batch(b)
        return
    if num_workers <= 0:
        yield from (prefetched(waves, batches) if pin else (waves.batch(b) for b in batches))
        return
    loader = torch.utils.data.DataLoader(
        _Batches(waves, batches),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=2,
    )
    yield from loader


def prefetched(
    waves: Inputs, batches: Sequence[Sequence[int]], pin: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches in order, each read (and pinned) on a thread one batch ahead of its use."""

    def load(b: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = waves.batch(b)
        return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audiokd-prefetch") as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield batch


def crop_generator(seed: int, epoch: int) -> torch.Generator:
    """Where an epoch's training crops start: a pure function of (seed, epoch), like the batch order,
    so a resumed run crops exactly as the uninterrupted run would have."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)


def random_crop(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A window of ``fraction`` of the last (time) axis of every example of ``x`` (waveforms
    ``[B, L]`` or log-mel ``[B, n_mels, frames]``), each at its own uniformly drawn start.

    Written here because torchvision's and torchaudio's crops take one window per call (the same for
    the whole batch); this draws one per example and gathers them in one indexed read on ``x``'s device.
    """
    total = x.shape[-1]
    size = max(1, round(total * fraction))
    if size >= total:
        return x
    starts = torch.randint(0, total - size + 1, (x.shape[0],), generator=generator)
    index = (starts[:, None] + torch.arange(size)).to(x.device)
    index = index.view(x.shape[0], *([1] * (x.dim() - 2)), size).expand(*x.shape[:-1], size)
    return x.gather(-1, index)


def mixup_generator(seed: int, epoch: int) -> np.random.Generator:
    """The mixing weights and partners of an epoch's batches: a pure function of (seed, epoch), like
    the batch order, so a resumed run mixes exactly as the uninterrupted run would have. numpy's,
    because torch has no seeded Beta sampler."""
    return np.random.default_rng([seed, epoch, 0x6D6978])


def draw_mix(generator: np.random.Generator, alpha: float, batch: int) -> tuple[float, torch.Tensor]:
    """One batch's mixup: weight ``lam ~ Beta(alpha, alpha)`` and the partner of every example (a
    permutation of the batch)."""
    return float(generator.beta(alpha, alpha)), torch.from_numpy(generator.permutation(batch))


def mix_terms(
    loss_fn: Any,
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    mix: tuple[float, torch.Tensor] | None,
    mixed_teacher: bool,
) -> dict[str, torch.Tensor]:
    """The loss terms of a batch; with ``mix = (lam, perm)`` (the input was ``lam * x + (1 - lam) *
    x[perm]``) each term is the same mix of the loss against both examples' labels and teacher targets.

    Mixing the losses keeps the plugin contract (class indices, teacher logits) and is exact: CE and
    KL against ``lam * p + (1 - lam) * q`` differ from the mixed losses by a constant only, so the
    gradients are those of mixed (soft) targets. ``mixed_teacher``: the teacher heard the mixed input
    (online), so its logits are already the mixed input's targets and only the labels mix.
    """

    def terms(y: torch.Tensor, t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return loss_fn(logits, y) if t is None else loss_fn(logits, y, t)

    if mix is None:
        return terms(target, teacher_logits)
    lam, perm = mix
    perm = perm.to(target.device)
    partner = teacher_logits if teacher_logits is None or mixed_teacher else teacher_logits[perm]
    a, b = terms(target, teacher_logits), terms(target[perm], partner)
    return {k: lam * a[k] + (1.0 - lam) * b[k] for k in a}


def autocast(s: TrainSettings, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 (or fp16) autocast on CUDA; on CPU full precision (bf16 measured 4x slower on a 2-core
    AMD EPYC: 1,881 vs 417 ms per MobileNetV3 step of 32 clips)."""
    if s.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if s.amp_dtype == "bf16" else torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    loss_fn: Any,
    waves: Inputs,
    batches: list[list[int]],
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: torch.amp.GradScaler | None,
    s: TrainSettings,
    device: torch.device,
    epoch: int,
    teacher: TeacherTargets | None = None,
    progress: StageProgress | None = None,
    ema: ModelEmaV3 | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns the epoch's ``train_loss``, ``train_acc``, ``train_f1`` and
    each loss term's mean (``train_loss_<term>``). ``teacher`` (KD) gives each batch's teacher
    logits; ``progress`` advances by one per step. With ``s.crop`` every clip is cut to a random
    window first; with ``s.mixup`` each batch is mixed with a shuffled copy of itself
    (:func:`mix_terms`). An online teacher on waveforms hears the same (cropped, mixed) input.
    ``ema`` (:func:`~core.engine.optim.weight_ema`) is updated after every optimizer step."""
    model.train()
    base: Any = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    sums: dict[str, float] = {}
    seen, preds, targets = 0, [], []
    loader = iterate(waves, batches, s.num_workers, device.type == "cuda")
    crops = crop_generator(s.seed, epoch)
    mixing = mixup_generator(s.seed, epoch)
    for step, (idx, (x, target)) in enumerate(zip(batches, loader)):
        x = x.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if s.crop:
            x = random_crop(x, s.crop, crops)
        mix = draw_mix(mixing, s.mixup, x.shape[0]) if s.mixup else None
        online = teacher is not None and teacher.online and waves.input_kind == "wave"
        if online:
            x = base.augment_wave(x)  # teacher and student hear the same augmented clip
        if mix is not None:
            # log-mel mixes in the log domain, as EfficientAT mixes its spectrograms
            x = mix[0] * x + (1.0 - mix[0]) * x[mix[1].to(x.device)]
        inputs: dict[str, Any] = {waves.input_kind: x, **({"augment": False} if online else {})}
        teacher_logits = None
        if teacher is not None:
            teacher_logits = teacher(idx, x) if online else teacher(idx)
        with autocast(s, device):
            logits = model(**inputs)
        terms = mix_terms(loss_fn, logits.float(), target, teacher_logits, mix, mixed_teacher=online)
        loss = terms["total"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                f"the last good checkpoint is kept. Lower train.lr or set train.grad_clip."
            )
        optimizer_step(loss, model, opt, sched, scaler, s.grad_clip)
        if ema is not None:  # the schedule counts the optimizer steps (a resumed one too)
            ema.update(base, step=sched.last_epoch)
        if progress is not None:
            progress.update(advance=1)
        n = target.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        seen += n
        preds.append(logits.detach().argmax(1).cpu())
        targets.append(target.cpu())
    result = score_predictions(torch.cat(preds), torch.cat(targets), logits.shape[1], sums["total"] / seen)
    out = {"train_loss": result.loss, "train_acc": result.acc, "train_f1": result.f1}
    out.update({f"train_loss_{k}": v / seen for k, v in sums.items() if k != "total"})
    return out


def optimizer_step(
    loss: torch.Tensor,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """Backward, optional gradient clipping, one optimizer and one schedule step (fp16: through the
    gradient scaler, unscaled before clipping)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()


def epoch_progress(label: str, steps: int, enabled: bool) -> StageProgress:
    """A bar with ETA over an epoch's steps on a terminal; elsewhere a log line every 30 s of a long
    epoch (the epoch's own summary line follows it, so no closing line)."""
    return StageProgress(
        label, total=steps, noun="steps", enabled=enabled, log_every_s=30.0, logger=log, final_line=False
    )


@torch.inference_mode()
def predict(
    model: nn.Module, waves: Inputs, s: TrainSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every clip of a split, in order, in eval mode."""
    model.eval()
    logits, targets = [], []
    idx = list(range(len(waves)))
    bs = s.eval_batch_size
    for wave, target in iterate(waves, [idx[i : i + bs] for i in range(0, len(idx), bs)], 0, False):
        with autocast(s, device):
            out = model(**{waves.input_kind: wave.to(device)})
        logits.append(out.float().cpu())
        targets.append(target)
    return torch.cat(logits), torch.cat(targets)


def evaluate(model: nn.Module, waves: Inputs, s: TrainSettings, device: torch.device) -> Scores:
    """Score every clip of a split (argmax decision; loss is plain CE whatever the training loss)."""
    logits, target = predict(model, waves, s, device)
    return score(logits, target, F.cross_entropy(logits, target).item())


__all__ = [
    "TeacherTargets",
    "autocast",
    "crop_generator",
    "draw_mix",
    "epoch_batches",
    "epoch_progress",
    "evaluate",
    "iterate",
    "mix_terms",
    "mixup_generator",
    "optimizer_step",
    "predict",
    "random_crop",
    "train_one_epoch",
]
