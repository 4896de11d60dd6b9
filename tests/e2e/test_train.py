"""End-to-end training on a tiny GMNotes render: MLflow contents, checkpoints, resume, plugins, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import core.engine.trainer
from core.engine import checkpoint as ckpt
from core.errors import UserError
from core.registry import UnknownComponentError
from core.run import run
from tests.conftest import sqlite_store

EPOCH_METRICS = {"train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1"}


def run_dir(tmp_path: Path, name: str = "r") -> Path:
    return tmp_path / "outputs" / name


def check_run(uri: str, run_id: str, epochs: int) -> None:
    client = MlflowClient(uri)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    exp = client.get_experiment(r.info.experiment_id)
    assert exp.name == "NSynth-Student-Baseline"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    p = r.data.params
    assert p["model.student.arch"] == "mobilenet_v3_small" and p["train.epochs"] == str(epochs)
    assert p["data.classes"] == '["bass", "flute", "keyboard"]' and p["num_classes"] == "3"
    for name in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, name)] == list(range(1, epochs + 1)), name
    assert {"test_acc", "test_f1", "best_val_acc", "test_f1_bass"} <= set(r.data.metrics)
    m = r.data.metrics
    assert m["student_params"] == int(p["student_params"]) > 0
    assert 0 < m["student_macs_flop_counter"] < m["student_macs_thop"]  # thop also counts BN/pooling ops
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoints", "config.yaml", "class_map.json", "confusion"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    }
    local = client.download_artifacts(run_id, "checkpoints/last.pt")
    state = ckpt.load(local)  # weights_only=True
    for key in ("model", "optimizer", "scheduler", "epoch", "rng", "config", "class_map", "run_id"):
        assert key in state
    assert state["finished"] and state["epoch"] == epochs - 1


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("train.cache_logmel=false",),
        ("aug.noise.enabled=true", "aug.gain.enabled=true", "aug.rir.enabled=true"),  # training reads waveforms
        ("train.num_workers=2",),
    ],
)
def test_tiny_run_sqlite(tiny, tmp_path, extra):
    cfg = tiny(*extra)
    result = run(cfg, run_dir(tmp_path))
    check_run(cfg.tracking.uri, result.run_id, cfg.train.epochs)
    assert (result.run_dir / "checkpoints" / "best.pt").is_file()
    assert 0.0 <= result.metrics["test_acc"] <= 1.0


def test_tiny_run_through_mlflow_server(tiny, tmp_path, mlflow_server, capsys):
    cfg = tiny(f"tracking.uri={mlflow_server}")
    result = run(cfg, run_dir(tmp_path))
    check_run(mlflow_server, result.run_id, cfg.train.epochs)
    # the links printed open the training runs, not MLflow's GenAI view (MLflow's own lines are off)
    out = capsys.readouterr().out
    experiment_id = MlflowClient(mlflow_server).get_run(result.run_id).info.experiment_id
    experiment = f"{mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert f"View experiment (training runs) at: {experiment}" in out
    assert f"/runs/{result.run_id}?workflowType=machine_learning" in out and "🧪" not in out


def test_resume_continues_the_same_run_and_matches_an_uninterrupted_one(tiny, tmp_path, monkeypatch):
    epochs = 3
    straight = run(tiny(f"train.epochs={epochs}"), run_dir(tmp_path, "straight"))

    real = core.engine.trainer.train_one_epoch

    def crash_in_last_epoch(*args, **kwargs):
        if args[-1] == epochs - 1:  # the epoch index argument
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", crash_in_last_epoch)
    cfg = tiny(f"train.epochs={epochs}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, run_dir(tmp_path, "crashed"))
    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", real)
    state = ckpt.load(run_dir(tmp_path, "crashed") / "checkpoints" / "last.pt")
    assert state["epoch"] == epochs - 2 and not state["finished"]
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(state["run_id"]).info.status == "FAILED"

    resumed = run(tiny(f"train.epochs={epochs}", "train.resume=auto"), tmp_path / "ignored")
    assert resumed.run_id == state["run_id"] and resumed.run_dir == run_dir(tmp_path, "crashed")
    check_run(cfg.tracking.uri, resumed.run_id, epochs)
    history = client.get_metric_history(resumed.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    straight_hist = client.get_metric_history(straight.run_id, "val_loss")
    assert [m.value for m in history] == pytest.approx([m.value for m in straight_hist], rel=1e-5, abs=1e-6)
    assert resumed.metrics["test_acc"] == pytest.approx(straight.metrics["test_acc"])
    a = ckpt.load(run_dir(tmp_path, "straight") / "checkpoints" / "last.pt")["model"]
    b = ckpt.load(run_dir(tmp_path, "crashed") / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_train_ema_checkpoints_scores_and_resumes_the_weight_average(tiny, tmp_path, monkeypatch):
    """``train.ema``: ``model`` in every checkpoint is the moving average (what validation scored,
    what later stages load), ``raw_model`` the trained weights; a run killed in its last epoch and
    resumed ends with both exactly as an uninterrupted run."""
    overrides = ("train.epochs=2", "train.ema=0.8", "train.lr=0.01")
    straight = run(tiny(*overrides), run_dir(tmp_path, "straight"))
    real = core.engine.trainer.train_one_epoch

    def crash_in_last_epoch(*args, **kwargs):
        if args[-1] == 1:  # the epoch index argument
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", crash_in_last_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny(*overrides), run_dir(tmp_path, "crashed"))
    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", real)
    run(tiny(*overrides, "train.resume=auto"), tmp_path / "ignored")

    a = ckpt.load(run_dir(tmp_path, "straight") / "checkpoints" / "last.pt")
    b = ckpt.load(run_dir(tmp_path, "crashed") / "checkpoints" / "last.pt")
    for key in ("model", "raw_model"):
        assert all(torch.allclose(a[key][k].float(), b[key][k].float(), atol=1e-5) for k in a[key]), key
    floats = [k for k, v in a["model"].items() if v.is_floating_point()]
    assert any(not torch.allclose(a["model"][k], a["raw_model"][k]) for k in floats)

    # validation scored the average: the logged val_loss is the average's, not the trained weights'
    logged = MlflowClient(straight.tracking_uri).get_metric_history(straight.run_id, "val_loss")[-1].value
    raw = dict(a, model=a["raw_model"])
    ckpt.save(raw, tmp_path / "raw.pt")
    scored = {}
    for name, path in (
        ("average", run_dir(tmp_path, "straight") / "checkpoints" / "last.pt"),
        ("raw", tmp_path / "raw.pt"),
    ):
        scored[name] = run(tiny("task=evaluate", f"evaluate.source={path}", "evaluate.splits=[valid]"), tmp_path / name)
    assert scored["average"]["valid"].loss == pytest.approx(logged, abs=1e-6)
    assert abs(scored["raw"]["valid"].loss - logged) > 1e-3


def test_resume_refuses_another_architecture(tiny, tmp_path, trained):
    first = trained
    with pytest.raises(UserError, match="width_mult"):
        run(tiny("train.epochs=2", "model.student.width_mult=0.5", f"train.resume={first.run_dir}"), tmp_path / "x")
    with pytest.raises(UserError, match="no checkpoint"):
        run(tiny(f"train.resume={tmp_path / 'nowhere'}"), tmp_path / "y")


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.student.arch=resnet_9000", ["unknown student", "mobilenet_v3_small"]),
        ("data.dataset=LibriSpeech", ["unknown dataset", "GMNotes", "NSynth"]),
        ("train.loss=focal", ["unknown loss", "ce"]),
        ("train.loss=kd", ["needs teacher logits"]),
        ("data.classes=[violin,kazoo]", ["kazoo", "string", "valid names"]),
        ("data.classes=[violin,cello]", ["cello", "violin", "string"]),
        ("model.student.num_classes=5", ["num_classes=5", "3 classes"]),
    ],
)
def test_bad_names_stop_with_a_clear_message(tiny, tmp_path, override, words):
    with pytest.raises(UserError) as err:
        run(tiny(override), run_dir(tmp_path))
    for w in words:
        assert w.lower() in str(err.value).lower(), (w, str(err.value))
    if "arch" in override:
        assert isinstance(err.value, UnknownComponentError)
    assert not list((tmp_path / "outputs").glob("**/last.pt"))  # nothing trained


@pytest.mark.slow
def test_sanity_three_classes_fifty_notes_overfit(compose, data_root, tmp_path):
    """The spec's sanity check: 3 classes x 50 notes reach >= 95 % train accuracy within 20 epochs."""
    cfg = compose(
        "experiment=sanity",
        f"data.root={data_root}",
        f"train.out_dir={tmp_path / 'o'}",
        f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
        "train.num_workers=0",
    )
    result = run(cfg, tmp_path / "o" / "r")
    client = MlflowClient(cfg.tracking.uri)
    acc = [m.value for m in client.get_metric_history(result.run_id, "train_acc")]
    assert len(acc) == 20
    n_train = int(client.get_run(result.run_id).data.params["n_train"])
    assert n_train == 150
    assert max(acc) >= 0.95, acc
