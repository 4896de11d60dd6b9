"""The loop's pieces on tiny inputs: an epoch's batches, the learning-rate schedule, the settings."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from core.engine.distributed import Dist
from core.engine.loop import epoch_batches
from core.engine.optim import build_optimizer, build_scheduler, lr_factor
from core.engine.settings import TrainSettings
from tests.conftest import CONFIGS

TRAIN = OmegaConf.load(CONFIGS / "train.yaml")


def settings(**changes) -> TrainSettings:
    return TrainSettings.from_config(TRAIN, **changes)


def test_an_epochs_batches_are_a_pure_function_of_seed_and_epoch():
    a = epoch_batches(103, 16, seed=3, epoch=5)
    assert a == epoch_batches(103, 16, seed=3, epoch=5)  # what a resumed run sees again
    assert a != epoch_batches(103, 16, seed=3, epoch=6) and a != epoch_batches(103, 16, seed=4, epoch=5)
    flat = [i for b in a for i in b]
    assert sorted(flat) == list(range(103)) and [len(b) for b in a] == [16] * 6 + [7]


def test_a_last_batch_of_one_is_dropped_and_max_steps_cuts():
    batches = epoch_batches(33, 16, seed=0, epoch=0)
    assert [len(b) for b in batches] == [16, 16]  # BatchNorm cannot train on one clip
    assert len(epoch_batches(100, 16, seed=0, epoch=0, max_steps=2)) == 2


def test_ddp_ranks_get_equal_disjoint_shards():
    shards = [epoch_batches(51, 5, seed=1, epoch=2, d=Dist(rank=r, world=2)) for r in (0, 1)]
    flat = [{i for b in s for i in b} for s in shards]
    assert not flat[0] & flat[1] and len(flat[0]) == len(flat[1]) == 25  # the odd clip out: equal shards
    assert [len(s) for s in shards] == [5, 5]


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    total = 200
    warmup = int(0.05 * total)
    factors = [lr_factor(step, total, "cosine") for step in range(total + 1)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))  # monotone decay
    mid = warmup + (total - warmup) // 2
    assert factors[mid] == pytest.approx(0.5 * (1 + math.cos(math.pi * (mid - warmup) / (total - warmup))))
    assert {lr_factor(s, total, "none") for s in range(total)} == {1.0}


def test_a_restored_schedule_continues_where_it_stopped():
    s = settings(lr=0.1)
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(s, net.parameters())
    sched = build_scheduler(s, opt, total_steps=40)
    for _ in range(13):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(s, net.parameters())
    sched2 = build_scheduler(s, opt2, total_steps=40)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr() == [pytest.approx(0.1 * lr_factor(13, 40, "cosine"))]


@pytest.mark.parametrize(
    "name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_each_optimizer_gets_the_settings(name, cls):
    opt = build_optimizer(settings(optimizer=name, lr=0.02), torch.nn.Linear(2, 2).parameters())
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.02


def test_settings_read_the_config_once_and_derive_the_eval_batch_size():
    s = settings()
    assert (s.epochs, s.batch_size, s.eval_batch_size, s.grad_clip, s.max_steps_per_epoch) == (10, 32, 64, None, None)
    teacher = settings(batch_size=16, lr=1e-3, epochs=6)  # the teacher stage's own values
    assert (teacher.batch_size, teacher.eval_batch_size, teacher.lr, teacher.epochs) == (16, 32, 1e-3, 6)
    assert TrainSettings.from_config(OmegaConf.merge(TRAIN, {"eval_batch_size": 7})).eval_batch_size == 7


def test_training_from_device_memory_equals_training_from_the_memmap(tmp_path, monkeypatch):
    """Same model, same batches: an epoch fed from a :class:`DeviceLogMel` ends with exactly the
    weights and metrics of one fed from the float16 memmap (and with a prefetching reader too)."""
    import torch.nn.functional as F
    from torch import nn

    from benchmarks.synthetic import synthetic_logmel
    from core.audio.frontend import LogMelFrontend
    from core.data import on_device
    from core.engine import loop
    from core.engine.model import AudioClassifier

    cached = synthetic_logmel(tmp_path, clips=40, n_mels=128, frames=101, classes=3)
    cpu = torch.device("cpu")
    s = settings(batch_size=8, channels_last=False)
    batches = epoch_batches(len(cached), s.batch_size, seed=0, epoch=0)
    aug = OmegaConf.load(CONFIGS / "aug.yaml")

    def one_epoch(inputs, reader=None):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=4),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        model = AudioClassifier(LogMelFrontend.from_config(aug), net)
        model.frontend.fit_normalization_logmel([cached.batch(range(40))[0]])
        opt = build_optimizer(s, model.parameters())
        sched = build_scheduler(s, opt, len(batches))
        ce = lambda logits, target: {"total": F.cross_entropy(logits, target)}  # noqa: E731
        with monkeypatch.context() as patch:
            if reader is not None:
                patch.setattr(loop, "iterate", reader)
            metrics = loop.train_one_epoch(model, ce, inputs, batches, opt, sched, None, s, cpu, 0)
        return metrics, torch.cat([p.detach().flatten() for p in model.parameters()])

    memmap = one_epoch(cached)
    device = one_epoch(on_device(cached, cpu, True))
    ahead = one_epoch(cached, reader=lambda waves, b, workers, pin: loop.prefetched(waves, b, pin=False))
    for other in (device, ahead):
        assert other[0] == memmap[0] and torch.equal(other[1], memmap[1])


def test_the_prefetching_reader_yields_every_batch_in_order(tmp_path):
    from benchmarks.synthetic import synthetic_logmel
    from core.engine.loop import prefetched

    cached = synthetic_logmel(tmp_path, clips=20, n_mels=8, frames=5, classes=2)
    batches = [[3, 1], [0], [19, 2, 7], []][:3]
    got = list(prefetched(cached, batches, pin=False))
    assert len(got) == 3 and all(torch.equal(g[0], cached.batch(b)[0]) for g, b in zip(got, batches))
    assert list(prefetched(cached, [], pin=False)) == []


def test_random_crops_are_windows_of_each_example_at_their_own_start():
    from core.engine.loop import crop_generator, random_crop

    x = torch.arange(6 * 3 * 40, dtype=torch.float32).view(6, 3, 40)  # [B, n_mels, frames]
    out = random_crop(x, 0.25, crop_generator(seed=0, epoch=0))
    assert out.shape == (6, 3, 10)
    starts = [int(out[i, 0, 0] - x[i, 0, 0]) for i in range(6)]
    for i, start in enumerate(starts):  # every mel bin of an example is cut at the same frames
        assert torch.equal(out[i], x[i, :, start : start + 10])
    assert len(set(starts)) > 1  # each example has its own window
    again = random_crop(x, 0.25, crop_generator(seed=0, epoch=0))
    assert torch.equal(out, again)  # what a resumed run cuts again
    assert not torch.equal(out, random_crop(x, 0.25, crop_generator(seed=0, epoch=1)))
    wave = torch.randn(4, 16000)
    assert random_crop(wave, 0.5, crop_generator(0, 0)).shape == (4, 8000)
    assert random_crop(wave, 1.0, crop_generator(0, 0)) is wave


def test_train_crop_seconds_trains_on_windows_and_evaluates_whole_clips(tmp_path):
    """``train.crop_seconds=1`` of 4 s clips: every training step sees a quarter of the frames,
    evaluation all of them."""
    import torch.nn.functional as F
    from torch import nn

    from benchmarks.synthetic import synthetic_logmel
    from core.engine import loop

    cached = synthetic_logmel(tmp_path, clips=24, n_mels=8, frames=401, classes=3)
    s = TrainSettings.from_config(OmegaConf.merge(TRAIN, {"crop_seconds": 1.0}), clip_seconds=4.0, batch_size=8)
    assert s.crop == 0.25
    widths: list[int] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 3)

        def forward(self, logmel: torch.Tensor) -> torch.Tensor:
            widths.append(logmel.shape[-1])
            return self.linear(logmel.mean(-1))

    model = Recorder()
    opt = build_optimizer(s, model.parameters())
    batches = epoch_batches(len(cached), s.batch_size, seed=0, epoch=0)
    ce = lambda logits, target: {"total": F.cross_entropy(logits, target)}  # noqa: E731
    loop.train_one_epoch(model, ce, cached, batches, opt, build_scheduler(s, opt, 3), None, s, torch.device("cpu"), 0)
    assert widths == [100, 100, 100]
    widths.clear()
    loop.evaluate(model, cached, s, torch.device("cpu"))
    assert set(widths) == {401}
    whole = TrainSettings.from_config(TRAIN, clip_seconds=4.0)
    assert whole.crop is None
    with pytest.raises(ValueError, match="clip_seconds"):
        TrainSettings.from_config(OmegaConf.merge(TRAIN, {"crop_seconds": 1.0}))


def test_mixed_losses_give_the_gradients_of_mixed_soft_targets():
    """``mix_terms`` mixes CE and KD losses; the student's gradient must equal that of the same losses
    against the mixed label distribution and the mixed teacher probabilities (offline targets)."""
    import torch.nn.functional as F

    from core.engine.loop import draw_mix, mix_terms, mixup_generator
    from plugins.losses.kd import KDLoss

    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    target, teacher = torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(6, 4)
    lam, perm = draw_mix(mixup_generator(seed=0, epoch=0), 0.3, 6)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(6))
    kd = KDLoss(T=3.0, alpha=0.7)
    mixed = mix_terms(kd, logits, target, teacher, (lam, perm), mixed_teacher=False)
    (grad,) = torch.autograd.grad(mixed["total"], logits)

    soft_labels = lam * F.one_hot(target, 4) + (1 - lam) * F.one_hot(target[perm], 4)
    soft_teacher = lam * F.softmax(teacher / 3.0, 1) + (1 - lam) * F.softmax(teacher[perm] / 3.0, 1)
    ce = F.cross_entropy(logits, soft_labels.float())
    kl = F.kl_div(F.log_softmax(logits / 3.0, 1), soft_teacher, reduction="batchmean") * 9.0
    (expected,) = torch.autograd.grad(0.7 * kl + 0.3 * ce, logits)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert mixed["ce"].item() == pytest.approx(ce.item(), abs=1e-6)  # CE against soft labels is linear in them

    # an online teacher heard the mixed input: its logits are not permuted, only the labels mix
    online = mix_terms(kd, logits, target, teacher, (lam, perm), mixed_teacher=True)
    assert online["kd"].item() == pytest.approx(kd(logits, target, teacher)["kd"].item())
    assert mix_terms(kd, logits, target, teacher, None, False)["total"].item() == kd(logits, target, teacher)["total"]


def test_train_mixup_trains_on_mixed_batches_and_both_labels(tmp_path):
    """``train.mixup``: each training batch is ``lam * x + (1 - lam) * x[perm]``, its loss is taken
    against both examples' labels, the same again for the same (seed, epoch); evaluation is unmixed."""
    import torch.nn.functional as F
    from torch import nn

    from benchmarks.synthetic import synthetic_logmel
    from core.engine import loop

    cached = synthetic_logmel(tmp_path, clips=16, n_mels=8, frames=20, classes=3)
    seen: list[torch.Tensor] = []
    labels: list[list[int]] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 3)

        def forward(self, logmel: torch.Tensor) -> torch.Tensor:
            seen.append(logmel.detach().clone())
            return self.linear(logmel.mean(-1))

    def ce(logits, target):
        labels.append(target.tolist())
        return {"total": F.cross_entropy(logits, target)}

    def run(mixup: float | None, epoch: int = 0) -> list[list[int]]:
        s = TrainSettings.from_config(OmegaConf.merge(TRAIN, {"mixup": mixup}), clip_seconds=4.0, batch_size=8)
        model = Recorder()
        opt = build_optimizer(s, model.parameters())
        batches = epoch_batches(len(cached), s.batch_size, seed=0, epoch=epoch)
        seen.clear(), labels.clear()
        loop.train_one_epoch(
            model, ce, cached, batches, opt, build_scheduler(s, opt, 2), None, s, torch.device("cpu"), epoch
        )
        return batches

    batches = run(None)
    plain = [cached.batch(b) for b in batches]
    assert all(torch.equal(x, p[0]) for x, p in zip(seen, plain)) and labels == [p[1].tolist() for p in plain]

    run(0.3)
    mixing = loop.mixup_generator(0, 0)
    for step, (x, y) in enumerate(plain):
        lam, perm = loop.draw_mix(mixing, 0.3, len(y))
        assert torch.allclose(seen[step], lam * x + (1 - lam) * x[perm])
        assert labels[2 * step : 2 * step + 2] == [y.tolist(), y[perm].tolist()]
    first = [x.clone() for x in seen]
    run(0.3)
    assert all(torch.equal(a, b) for a, b in zip(first, seen))  # a resumed epoch mixes alike
    next_epoch = loop.draw_mix(loop.mixup_generator(0, 1), 0.3, 8)[0]
    assert next_epoch != loop.draw_mix(loop.mixup_generator(0, 0), 0.3, 8)[0]
    seen.clear()
    loop.evaluate(Recorder(), cached, TrainSettings.from_config(TRAIN, clip_seconds=4.0), torch.device("cpu"))
    assert torch.equal(torch.cat(seen), cached.batch(list(range(len(cached))))[0])


def test_train_ema_averages_the_weights_after_every_step(tmp_path):
    """``train.ema=d``: after optimizer step t the average moves ``1 - d_t`` of the way to the weights,
    ``d_t = min(d, 1 - t ** -0.75)`` (the first step copies), BatchNorm statistics too; the trained
    weights are untouched."""
    import torch.nn.functional as F
    from torch import nn

    from benchmarks.synthetic import synthetic_logmel
    from core.engine import loop
    from core.engine.optim import weight_ema

    cached = synthetic_logmel(tmp_path, clips=48, n_mels=8, frames=20, classes=3)
    s = TrainSettings.from_config(OmegaConf.merge(TRAIN, {"ema": 0.6}), clip_seconds=4.0, batch_size=8, lr=0.1)
    assert s.ema == 0.6 and settings().ema == 0.0
    trajectory: list[dict[str, torch.Tensor]] = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.linear = nn.BatchNorm1d(8), nn.Linear(8, 3)

        def forward(self, logmel: torch.Tensor) -> torch.Tensor:
            if self.training:
                trajectory.append({k: v.detach().clone() for k, v in self.state_dict().items()})
            return self.linear(self.norm(logmel.mean(-1)))

    model = Net()
    ema = weight_ema(model, s.ema)
    opt = build_optimizer(s, model.parameters())
    batches = epoch_batches(len(cached), s.batch_size, seed=0, epoch=0)
    ce = lambda logits, target: {"total": F.cross_entropy(logits, target)}  # noqa: E731
    sched = build_scheduler(s, opt, 6)
    loop.train_one_epoch(model, ce, cached, batches, opt, sched, None, s, torch.device("cpu"), 0, ema=ema)
    # the weights after each step: the state seen by the next forward, and the final state
    after = [*trajectory[1:], model.state_dict()]
    assert len(after) == 6
    expected = {k: v.clone().float() for k, v in after[0].items()}
    decays = [min(0.6, 1 - t**-0.75) for t in range(2, 7)]  # steps 2..6: 0.41, 0.56, then 0.6
    assert decays[0] == pytest.approx(0.4054, abs=1e-4) and decays[-1] == 0.6
    for d, state in zip(decays, after[1:]):
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * state[k].float()
    averaged = ema.module.state_dict()
    for k in ("linear.weight", "norm.running_mean", "norm.running_var"):
        assert torch.allclose(averaged[k], expected[k], atol=1e-6), k
        assert not torch.allclose(averaged[k], model.state_dict()[k]), k  # it is not the trained weights
