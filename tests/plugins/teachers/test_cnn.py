"""The CNN teacher with the teacher stage's crops and mixup (``model.teacher.crop_seconds``, ``.mixup``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from core.registry import load_registry
from core.stages.teacher import TeacherPlan
from core.stages.teacher.plan import backbone_key

CNN = ("model.teacher.name=mobilenet_v3_small", "model.teacher.freeze=false", "+model.teacher.options.width_mult=0.35")


def test_teacher_crop_seconds_trains_on_windows_and_is_a_new_teacher(compose) -> None:
    registry = load_registry()
    whole = TeacherPlan.from_config(compose(*CNN), registry)
    cropped = TeacherPlan.from_config(compose(*CNN, "model.teacher.crop_seconds=1.0"), registry)
    assert whole.settings.crop is None and cropped.settings.crop == 0.25  # of data.clip_seconds=4
    data = SimpleNamespace(class_names=["a", "b", "c"], splits={})
    spec, spec_cropped = whole.spec(data, "w"), cropped.spec(data, "w")
    assert spec != spec_cropped  # another cache key: the cropped teacher is trained, not reused
    assert backbone_key(spec) == backbone_key(spec_cropped)  # a frozen backbone's embeddings stay cached

    teacher = cropped.build_member(registry, 3)
    frames: list[int] = []
    teacher.frontend.register_forward_hook(lambda module, args, out: frames.append(out.shape[-1]))
    teacher.train()
    teacher(torch.randn(4, 16000))  # a 1 s window of a 4 s clip, as the stage's loop cuts it
    teacher.eval()
    with torch.no_grad():
        teacher(torch.randn(2, 16000))  # target passes: a short clip is padded to the whole 4 s
        teacher(torch.randn(2, 64000))
    assert frames == [101, 401, 401]


def test_the_cnn_teachers_specaugment_covers_the_same_share_at_any_resolution(compose) -> None:
    registry = load_registry()
    default = TeacherPlan.from_config(compose(*CNN), registry).build_member(registry, 3)
    coarse = TeacherPlan.from_config(
        compose(*CNN, "+model.teacher.options.n_mels=64", "+model.teacher.options.hop_ms=20"), registry
    ).build_member(registry, 3)
    assert (default.frontend.freq_mask, default.frontend.time_mask) == (24, 40)  # of 128 bins, 401 frames
    assert (coarse.frontend.freq_mask, coarse.frontend.time_mask) == (12, 20)  # of 64 bins, 201 frames


def test_teacher_mixup_is_a_new_teacher_and_off_keeps_the_old_key(compose) -> None:
    registry = load_registry()
    data = SimpleNamespace(class_names=["a", "b", "c"], splits={})
    plain = TeacherPlan.from_config(compose(*CNN), registry)
    mixed = TeacherPlan.from_config(compose(*CNN, "model.teacher.mixup=0.3"), registry)
    assert plain.settings.mixup == 0.0 and mixed.settings.mixup == 0.3  # the loop mixes with these settings
    spec, spec_mixed = plain.spec(data, "w"), mixed.spec(data, "w")
    assert spec_mixed == {**spec, "mixup": 0.3}  # another cache key: the mixup teacher is trained, not reused
    assert "mixup" not in spec  # off: the key of a teacher cached before the switch existed
    assert backbone_key(spec) == backbone_key(spec_mixed)
    zero = TeacherPlan.from_config(compose(*CNN, "model.teacher.mixup=0"), registry)
    assert zero.spec(data, "w") == spec
