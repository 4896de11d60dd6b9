"""Teacher stage and KD in the loop, end to end on the tiny GMNotes render."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import core.stages.teacher.fit
import core.stages.teacher.passes
from core.errors import ConfigValueError, UserError
from core.registry import UnknownComponentError, load_registry
from core.run import run
from core.stages.teacher import OfflineTargets, OnlineTargets, TeacherError, prepare_teacher, teacher_logits
from core.util.files import umask

# A small CNN teacher trained from scratch by the stage: 2 members, 1 epoch each.
CNN_TEACHER = (
    "model.kd.enabled=true",
    "model.teacher.name=mobilenet_v3_small",
    "model.teacher.freeze=false",
    "model.teacher.epochs=1",
    "model.teacher.ensemble=2",
    "+model.teacher.options.width_mult=0.35",
)


def runs_by_stage(uri: str, stage: str):
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.stage = '{stage}'")


def test_kd_run_trains_a_teacher_then_distils_and_logs_both(tiny, tmp_path):
    cfg = tiny(*CNN_TEACHER, "model.kd.T=2.5", "model.kd.alpha=0.6")
    result = run(cfg, tmp_path / "outputs" / "kd")
    client = MlflowClient(cfg.tracking.uri)
    kd_run = client.get_run(result.run_id)
    p, m = kd_run.data.params, kd_run.data.metrics
    assert kd_run.data.tags["stage"] == "kd" and kd_run.data.tags["teacher"] == "mobilenet_v3_small"
    for key, value in {
        "model.kd.T": "2.5",
        "model.kd.alpha": "0.6",
        "model.kd.mode": "offline",
        "model.teacher.name": "mobilenet_v3_small",
        "model.teacher.checkpoint": "None",
        "model.teacher.freeze": "False",
        "model.teacher.unfreeze_last_n": "0",
    }.items():
        assert p[key] == value, key
    for name in ("train_loss_ce", "train_loss_kd"):
        assert [x.step for x in client.get_metric_history(result.run_id, name)] == [1, 2], name
    # KD total = alpha * kd + (1 - alpha) * ce, epoch means included
    assert m["train_loss"] == pytest.approx(0.6 * m["train_loss_kd"] + 0.4 * m["train_loss_ce"], rel=1e-4)
    assert {"teacher_val_acc", "teacher_val_f1", "teacher_test_acc", "teacher_test_f1", "teacher_train_acc"} <= set(m)
    # the teacher's cost counts every member: two nets of the student's own shape here
    assert m["teacher_macs_thop"] == pytest.approx(2 * m["student_macs_thop"], rel=0.02)
    assert m["teacher_params"] == pytest.approx(2 * m["student_params"], rel=0.02)

    (teacher_run,) = runs_by_stage(cfg.tracking.uri, "teacher")
    assert teacher_run.info.run_id == p["teacher_run_id"] and teacher_run.info.status == "FINISHED"
    assert {"val_acc", "test_acc", "m0_val_acc", "m1_val_acc"} <= set(teacher_run.data.metrics)
    assert teacher_run.data.metrics["val_acc"] == pytest.approx(m["teacher_val_acc"])
    assert [x.step for x in client.get_metric_history(teacher_run.info.run_id, "m1_val_f1")] == [1]
    stored = torch.load(p["teacher_path"], weights_only=True)
    assert stored["members"] == 2 and bool(stored["trained"]["members.0.head_trained"])
    assert p["teacher_checkpoint"] == "none"  # no checkpoint: trained from a random initialisation


def test_the_trained_teacher_and_its_logits_are_reused(tiny, tmp_path, monkeypatch):
    run(tiny(*CNN_TEACHER, "train.epochs=1"), tmp_path / "outputs" / "first")

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran again although its logits are cached")

    monkeypatch.setattr(core.stages.teacher.passes, "run_pass", no_teacher_pass)
    monkeypatch.setattr(core.stages.teacher.fit, "finetune", no_teacher_pass)
    second = run(tiny(*CNN_TEACHER, "train.epochs=1", "train.seed=7"), tmp_path / "outputs" / "second")
    assert len(runs_by_stage(tiny().tracking.uri, "teacher")) == 1
    monkeypatch.undo()
    # a different teacher setting is a different teacher: trained again
    run(tiny(*CNN_TEACHER, "train.epochs=1", "model.teacher.lr=3e-3"), tmp_path / "outputs" / "third")
    assert len(runs_by_stage(tiny().tracking.uri, "teacher")) == 2
    assert second.metrics["test_acc"] >= 0


def test_logit_cache_follows_the_teacher_weights(tiny, tmp_path):
    cfg = tiny(*CNN_TEACHER)
    registry = load_registry()
    from core.data import prepare_data

    data = prepare_data(cfg, registry, progress=False)
    teacher = prepare_teacher(cfg, registry, data, torch.device("cpu"), log_fn=lambda _: None)
    valid = data.splits["valid"]
    folder = tmp_path / "logits"
    first = teacher_logits(teacher.module, valid, torch.device("cpu"), folder)
    assert np.allclose(first, teacher.logits["valid"], atol=1e-5)  # the forward pass = the combined member logits
    assert len(list(folder.glob("logits-*.npy"))) == 1
    again = teacher_logits(teacher.module, valid, torch.device("cpu"), folder)
    assert np.array_equal(first, again) and len(list(folder.glob("logits-*.npy"))) == 1
    # offline targets are the cached train logits, looked up by clip index
    targets = OfflineTargets(teacher.logits["train"], torch.device("cpu"))
    assert torch.equal(targets([3, 0]), torch.from_numpy(teacher.logits["train"][[3, 0]]))
    # online targets run the teacher on the same clips: without augmentation they agree
    online = teacher.targets("online", data.splits["train"], torch.device("cpu"))
    assert torch.allclose(online([3, 0]), targets([3, 0]), atol=1e-4)

    with torch.no_grad():
        teacher.module.members[0].head.bias[0] += 1.0  # a per-class change (a common shift cancels)
    changed = teacher_logits(teacher.module, valid, torch.device("cpu"), folder)
    assert len(list(folder.glob("logits-*.npy"))) == 2 and not np.allclose(first, changed)


def test_alpha_zero_kd_equals_the_student_only_run(tiny, tmp_path):
    """The teacher stage leaves the student's initialisation and batch order untouched, and
    alpha=0 is plain CE: the two runs must match step for step."""
    student = run(tiny("train.epochs=2"), tmp_path / "outputs" / "student")
    kd = run(tiny(*CNN_TEACHER, "train.epochs=2", "model.kd.alpha=0.0"), tmp_path / "outputs" / "kd")
    client = MlflowClient(tiny().tracking.uri)
    a = [x.value for x in client.get_metric_history(student.run_id, "val_loss")]
    b = [x.value for x in client.get_metric_history(kd.run_id, "val_loss")]
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert kd.metrics["test_acc"] == pytest.approx(student.metrics["test_acc"])


def test_online_teacher_hears_the_augmented_clip_the_student_hears(tiny, tmp_path, monkeypatch):
    seen = []
    real = OnlineTargets.__call__

    def spy(self, indices, wave=None):
        clean = self.waves.batch(indices)[0]
        seen.append(wave is not None and not torch.allclose(wave, clean))
        return real(self, indices, wave)

    monkeypatch.setattr(OnlineTargets, "__call__", spy)
    result = run(
        tiny(*CNN_TEACHER, "model.kd.mode=online", "train.epochs=1", "aug.gain.enabled=true", "aug.gain.p=1.0"),
        tmp_path / "outputs" / "online",
    )
    assert seen and all(seen)
    history = MlflowClient(tiny().tracking.uri).get_metric_history(result.run_id, "train_loss_kd")
    assert len(history) == 1 and history[0].value > 0


def test_kd_refuses_a_teacher_whose_head_was_never_trained(tiny, tmp_path):
    with pytest.raises(TeacherError, match="never trained"):
        run(tiny(*CNN_TEACHER, "model.teacher.epochs=0"), tmp_path / "outputs" / "x")
    assert not list((tmp_path / "outputs").glob("**/last.pt"))


def test_frozen_transformer_runs_its_backbone_once_per_clip_and_stores_only_what_trained(tiny, tmp_path, monkeypatch):
    """freeze=true: the backbone runs exactly once per clip, to embed it (cached); the head trains on
    the embeddings and every split's logits come from them. teacher.pt holds the head, not the
    frozen backbone. Another head fit (other lr) runs the backbone on no clip at all."""
    from plugins.teachers.ast import ASTTeacher, build_ast_tiny

    clips = []
    real_embed = ASTTeacher.embed
    monkeypatch.setattr(ASTTeacher, "embed", lambda self, wave: (clips.append(len(wave)), real_embed(self, wave))[1])
    base = (
        "model.kd.enabled=true",
        "model.teacher.name=ast_tiny",
        "model.teacher.epochs=3",
        "model.teacher.batch_size=16",
        "train.epochs=1",
    )
    cfg = tiny(*base)
    first = run(cfg, tmp_path / "outputs" / "a")
    from core.data import prepare_data

    n = {s: len(w) for s, w in prepare_data(cfg, load_registry(), progress=False).splits.items()}
    # each clip once, plus one single-clip pass per profiler counting the teacher's MACs
    profiling = len(cfg.profilers)
    assert sum(clips) == n["train"] + n["valid"] + n["test"] + profiling
    params = MlflowClient(cfg.tracking.uri).get_run(first.run_id).data.params
    stored = torch.load(params["teacher_path"], weights_only=True)
    # what the stage rebuilds: frozen backbone and all
    member = build_ast_tiny(len(cfg.data.classes), sample_rate=cfg.aug.sr, clip_seconds=cfg.data.clip_seconds)
    frozen = {k for k, p in member.named_parameters() if not p.requires_grad}
    assert set(stored["trained"]) == {f"members.0.{k}" for k in member.state_dict() if k not in frozen}
    assert {"members.0.head.weight", "members.0.head_trained"} <= set(stored["trained"])
    stored_numel = sum(t.numel() for t in stored["trained"].values())
    assert stored_numel < sum(t.numel() for t in member.state_dict().values()) / 100
    assert stored["frozen"]["weights"] == params["teacher_weights"] and params["teacher_checkpoint"] == "none"
    assert oct(os.stat(params["teacher_path"]).st_mode & 0o777) == oct(0o666 & ~umask())

    clips.clear()
    run(tiny(*base, "model.teacher.lr=3e-3"), tmp_path / "outputs" / "b")
    assert sum(clips) == profiling  # embeddings, head fit and logits all came from the cache
    t1, t2 = sorted(runs_by_stage(cfg.tracking.uri, "teacher"), key=lambda r: r.info.start_time)
    history = MlflowClient(cfg.tracking.uri).get_metric_history(t2.info.run_id, "m0_val_f1")
    assert [x.step for x in history] == [1, 2, 3]
    assert params["model.teacher.freeze"] == "True"

    # a stored head is never paired with another backbone: a teacher.pt whose frozen digest does
    # not match the rebuilt backbone is trained again (from the cached embeddings), not used
    stored["frozen"]["digest"] = "0" * 24
    torch.save(stored, params["teacher_path"])
    run(cfg, tmp_path / "outputs" / "c")
    assert len(runs_by_stage(cfg.tracking.uri, "teacher")) == 3 and sum(clips) == 2 * profiling


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        (("model.kd.enabled=true",), ConfigValueError, ["model.teacher.name"]),
        (("model.kd.enabled=true", "model.teacher.name=bert"), UnknownComponentError, ["unknown teacher", "ast_base"]),
        (("train.loss=kd",), UserError, ["needs teacher logits", "model.kd.enabled=true"]),
        (("model.kd.enabled=true", "model.teacher.name=mobilenet_v3_small"), UserError, ["freeze=false"]),
        (("model.teacher.ensemble=0",), ConfigValueError, ["ensemble"]),
        (("model.kd.mode=sometimes",), ConfigValueError, ["offline", "online"]),
        (
            ("model.kd.enabled=true", "model.teacher.name=ast_tiny", "model.teacher.mixup=0.3"),
            UserError,
            ["model.teacher.mixup", "cached embeddings", "freeze=false"],
        ),
    ],
)
def test_bad_kd_settings_stop_with_a_clear_message(tiny, tmp_path, overrides, error, words):
    with pytest.raises(error) as err:
        run(tiny(*overrides), tmp_path / "outputs" / "bad")
    for w in words:
        assert w.lower() in str(err.value).lower(), (w, str(err.value))
    assert not list((tmp_path / "outputs").glob("**/last.pt"))


def test_cross_fitted_teacher_gives_each_clip_the_logits_of_a_member_that_never_heard_it(tiny, tmp_path, monkeypatch):
    from core.data import prepare_data
    from core.stages.teacher import group_folds
    from core.stages.teacher import teacher_logits as real_logits

    trained_on = []
    real_finetune = core.stages.teacher.fit.finetune

    def spy(fitting, member, keep, m):
        trained_on.append(set(keep.tolist()))
        return real_finetune(fitting, member, keep, m)

    monkeypatch.setattr(core.stages.teacher.fit, "finetune", spy)
    cfg = tiny(*CNN_TEACHER, "model.teacher.cross_fit=true")
    registry = load_registry()
    data = prepare_data(cfg, registry, progress=False)
    teacher = prepare_teacher(cfg, registry, data, torch.device("cpu"), log_fn=lambda _: None)
    paths = data.splits["train"].paths
    folds = group_folds(data.groups["train"], 2, 0)
    instrument = [p.rsplit("/", 1)[-1].rsplit("-", 2)[0] for p in paths]
    for m in range(2):
        held_out = set(np.flatnonzero(folds == m).tolist())
        assert held_out and trained_on[m] == set(range(len(paths))) - held_out
        # whole instruments per fold
        assert not {instrument[i] for i in held_out} & {instrument[i] for i in trained_on[m]}
        mine = real_logits(teacher.module.members[m], data.splits["train"], torch.device("cpu"), tmp_path / "x")
        assert np.allclose(teacher.logits["train"][sorted(held_out)], mine[sorted(held_out)])
    assert 0.0 <= teacher.scores["teacher_train_acc"] <= 1.0


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("model.teacher.cross_fit=true", "model.teacher.ensemble=1"), ["ensemble >= 2"]),
        (("model.teacher.cross_fit=true", "model.teacher.ensemble=2", "model.kd.mode=online"), ["offline"]),
    ],
)
def test_cross_fit_settings_are_checked(tiny, tmp_path, overrides, words):
    with pytest.raises(ConfigValueError) as err:
        run(tiny(*CNN_TEACHER[:1], "model.teacher.name=mobilenet_v3_small", *overrides), tmp_path / "bad")
    for w in words:
        assert w in str(err.value)
