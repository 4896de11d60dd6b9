"""MLflow tracking against a real sqlite store and a real server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from core.tracking import EXPERIMENT_KIND_TAG, Tracker, TrackingError, flatten, resolve_uri
from tests.conftest import free_port  # noqa: F401  (importlib mode resolves tests/ as a package root)


def test_uri_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_uri() == "http://example:5000"
    assert resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_flatten_config():
    assert flatten({"a": {"b": 1, "c": [1, "x"]}, "d": None}) == {"a.b": "1", "a.c": '[1, "x"]', "d": "None"}


def _exercise(uri: str, tmp_path) -> None:
    tracker = Tracker(uri, "unit-test-exp")
    run_id = tracker.start(run_name="r1")
    tracker.log_params({"train.lr": 0.1, "data.classes": '["a"]'})
    tracker.log_metrics({"train_loss": 1.0, "val_acc": 0.5}, step=1)
    tracker.log_metrics({"train_loss": 0.5, "val_acc": 0.75}, step=2)
    art = tmp_path / "last.pt"
    art.write_bytes(b"checkpoint bytes")
    tracker.log_artifact(art, "checkpoints")
    tracker.end()

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1"
    assert [m.value for m in client.get_metric_history(run_id, "val_acc")] == [0.5, 0.75]
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/last.pt"]
    exp = client.get_experiment_by_name("unit-test-exp")
    assert exp.tags[EXPERIMENT_KIND_TAG[0]] == EXPERIMENT_KIND_TAG[1]

    # resume continues the same run and does not choke on params already logged
    again = Tracker(uri, "unit-test-exp")
    assert again.start(run_id=run_id) == run_id
    again.log_params({"train.lr": 0.1, "extra": 1})
    again.log_metrics({"val_acc": 0.8}, step=3)
    again.end()
    assert len(client.get_metric_history(run_id, "val_acc")) == 3


def test_sqlite_store(tmp_path):
    _exercise(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)


def test_real_server(mlflow_server, tmp_path):
    _exercise(mlflow_server, tmp_path)


def test_unreachable_server_fails_fast_with_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        Tracker(uri, "x").start()
    assert time.perf_counter() - t0 < 10
    assert uri in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)


def test_unwritable_sqlite_folder(tmp_path):
    with pytest.raises(TrackingError, match="not writable|missing"):
        Tracker(f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}", "x").start()
