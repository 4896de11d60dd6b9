"""Every registered built-in component, built the way the core builds it and checked against its
kind's Protocol (core/registry/contracts.py): a drift between a contract and a plugin fails here."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from core.api import (
    RANDOM_INIT,
    Clip,
    Dataset,
    HealthCheck,
    LatencyTimer,
    Loss,
    MacCounter,
    Option,
    Profile,
    Pruner,
    StudentFactory,
    Teacher,
    TeacherFactory,
    Timing,
)
from core.registry import KINDS, load_registry
from core.registry.contracts import OPTION_BLOCKS

REGISTRY = load_registry()
K = 3


def builtins(kind: str) -> list[str]:
    return [e.component.name for e in REGISTRY.entries(kind) if e.package == "audiokd"]


def build(kind: str, name: str, **core_args):
    """As the core does: the component's declared options, defaults filled in, after the core's arguments."""
    return REGISTRY.build(kind, name, options={}, where="test", **core_args)


def student(width: float = 0.35) -> nn.Module:
    return build("student", "mobilenet_v3_small", num_classes=K, width_mult=width, bn_momentum=0.1)


def test_every_kind_has_builtins_and_every_option_is_documented():
    for kind in KINDS:
        assert builtins(kind), kind
        for entry in REGISTRY.entries(kind):
            component = entry.component
            assert component.summary, component.name
            if OPTION_BLOCKS[kind] is None:
                continue
            assert component.options is not None, f"{kind} {component.name} declares no options"
            for key, option in component.options.items():
                assert isinstance(option, Option) and option.help, (component.name, key)
                json.dumps(option.default)  # lands in the logged config: plain data only


@pytest.mark.parametrize("name", builtins("dataset"))
def test_datasets(name, tmp_path):
    factory = REGISTRY.get("dataset", name).factory
    args = dict(root=tmp_path, classes=["bass", "flute"], max_total_size_mb=1.0, max_per_class=None, seed=0)
    inspect.signature(factory).bind(**args, **REGISTRY.options("dataset", name, {}, "test"))
    dataset = build("dataset", name, **args)
    assert isinstance(dataset, Dataset)
    assert list(dataset.class_names) == ["bass", "flute"] and isinstance(dataset.describe(), str)
    assert dataset.class_map()["classes"] == ["bass", "flute"]
    assert not any(tmp_path.iterdir())  # building checks options; it never downloads or renders


def test_a_dataset_lists_clips_with_their_instrument(tmp_path):
    from tests.plugins.datasets.test_nsynth import write_local_copy

    copy = write_local_copy(tmp_path / "copy")
    dataset = REGISTRY.build(
        "dataset",
        "NSynth",
        options={"local_dir": str(copy)},
        where="test",
        root=tmp_path / "root",
        classes=["bass"],
        max_total_size_mb=1.0,
        max_per_class=None,
        seed=0,
    )
    dataset.prepare()
    clips = dataset.get_items("train")
    assert clips and all(
        isinstance(c, Clip) and c.label == 0 and c.group == c.path.stem.rsplit("-", 2)[0] for c in clips
    )
    assert dict(dataset.missing) == {"train": []}


@pytest.mark.parametrize("name", builtins("student"))
def test_students(name):
    factory = REGISTRY.get("student", name).factory
    assert isinstance(factory, StudentFactory)
    net = build("student", name, num_classes=K, width_mult=0.35, bn_momentum=0.1)
    assert isinstance(net, nn.Module)
    assert net.eval()(torch.zeros(2, 1, 64, 101)).shape == (2, K)
    assert [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features == K  # the output layer


@pytest.mark.parametrize("name", builtins("teacher"))
def test_teachers(name):
    factory = REGISTRY.get("teacher", name).factory
    assert isinstance(factory, TeacherFactory)
    teacher = build(
        "teacher",
        name,
        num_classes=K,
        checkpoint=RANDOM_INIT,
        freeze=False,
        unfreeze_last_n=0,
        sample_rate=16000,
        clip_seconds=1.0,
    )
    assert isinstance(teacher, Teacher) and teacher.head.out_features == K and not bool(teacher.head_trained)
    wave = 0.1 * torch.randn(1, 16000)
    with torch.inference_mode():
        teacher.eval()
        assert teacher.embed(wave).shape == (1, teacher.feature_dim)
        assert teacher(wave).shape == (1, K)
    assert not teacher.head_only()  # freeze=false trains the backbone too


@pytest.mark.parametrize("name", builtins("loss"))
def test_losses(name):
    kd = REGISTRY.get("loss", name).factory().needs_teacher
    loss = build("loss", name, **({"T": 2.0, "alpha": 0.5} if kd else {}))
    assert isinstance(loss, Loss) and isinstance(loss.needs_teacher, bool)
    logits, target = torch.randn(4, K, requires_grad=True), torch.tensor([0, 1, 2, 0])
    terms = loss(logits, target, torch.randn(4, K)) if kd else loss(logits, target)
    assert "total" in terms and all(v.ndim == 0 for v in terms.values())
    terms["total"].backward()
    assert logits.grad is not None


@pytest.mark.parametrize("name", builtins("profiler"))
def test_mac_counters(name):
    counter = build("profiler", name)
    assert isinstance(counter, MacCounter)
    net = student().train()
    profile = counter.profile(net, torch.zeros(1, 1, 64, 101))
    assert (
        isinstance(profile, Profile) and profile.macs > 0 and profile.params == sum(p.numel() for p in net.parameters())
    )
    assert net.training  # left as it was found


@pytest.mark.parametrize("name", builtins("timer"))
def test_latency_timers(name, tmp_path):
    from core.stages.export import export_onnx

    timer = build("timer", name, runs=2, warmup=0, threads=1)
    assert isinstance(timer, LatencyTimer)
    net = nn.Linear(10, K).eval()
    assert isinstance(timer.torch(net, torch.zeros(1, 10)), Timing)
    timing = timer.onnx(export_onnx(net, torch.zeros(1, 10), tmp_path / "lin.onnx"), torch.zeros(1, 10))
    assert isinstance(timing, Timing) and timing.runs == 2 and timing.median_ms > 0


@pytest.mark.parametrize("name", builtins("pruner"))
def test_pruners(name):
    pruner = build("pruner", name, importance="l1", scope="uniform", round_to=None)
    assert isinstance(pruner, Pruner) and isinstance(pruner.needs_gradients, bool)
    net = student(0.5)
    output = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    before = sum(p.numel() for p in net.parameters())
    zeros_before = sum(int((p == 0).sum()) for p in net.parameters())
    pruner.prune(net, torch.zeros(1, 1, 64, 101), 0.5, [output], calibrate=None)
    after = sum(p.numel() for p in net.parameters())
    zeros_after = sum(int((p == 0).sum()) for p in net.parameters())
    assert (after < before) if pruner.removes_channels else (after == before and zeros_after > zeros_before)
    assert output.out_features == K and net.eval()(torch.zeros(1, 1, 64, 101)).shape == (1, K)


def test_doctor_lines():
    lines = REGISTRY.health()
    assert lines and all(isinstance(check, HealthCheck) and isinstance(check.ok, bool) for _, check in lines)
