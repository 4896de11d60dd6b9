"""task=evaluate: a trained student scored on the configured dataset without training."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from core.errors import ConfigValueError
from core.run import run


def test_evaluate_reproduces_the_runs_own_scores_and_logs_them(tiny, tmp_path, trained):
    """The same best checkpoint on the same clips gives the training run's final scores exactly."""
    cfg = tiny("task=evaluate", f"evaluate.source={trained.run_dir}", "evaluate.splits=[valid,test]")
    scores = run(cfg, tmp_path / "eval")
    assert scores["test"].acc == pytest.approx(trained.metrics["test_acc"])
    assert scores["test"].f1 == pytest.approx(trained.metrics["test_f1"])
    assert scores["valid"].acc == pytest.approx(trained.metrics["best_val_acc"])
    client = MlflowClient(cfg.tracking.uri)
    (r,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert r.data.tags["stage"] == "evaluate" and r.info.status == "FINISHED"
    assert r.data.params["evaluate_source_resolved"].endswith("best.pt")
    m = r.data.metrics
    assert m["test_acc"] == pytest.approx(trained.metrics["test_acc"]) and "val_acc" in m
    assert {"test_f1_bass", "test_f1_flute", "test_f1_keyboard"} <= set(m)
    assert {a.path for a in client.list_artifacts(r.info.run_id, "confusion")} == {
        "confusion/confusion_valid.png",
        "confusion/confusion_test.png",
    }
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["classes"] == ["bass", "flute", "keyboard"] and report["splits"]["test"]["acc"] == scores["test"].acc
    assert sum(map(sum, report["splits"]["test"]["confusion"])) == report["splits"]["test"]["clips"]


def test_evaluate_by_mlflow_run_id_with_the_classes_in_another_order(tiny, tmp_path, trained):
    """Labels are matched by name: the dataset's class order need not be the student's."""
    cfg = tiny(
        "task=evaluate",
        f"evaluate.source={trained.run_id}",
        f"tracking.uri={trained.tracking_uri}",
        "data.classes=[keyboard,bass,flute]",
    )
    scores = run(cfg, tmp_path / "eval")
    assert scores["test"].acc == pytest.approx(trained.metrics["test_acc"])


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("data.classes=[bass,flute]",), ["knows the classes", "bass", "keyboard", "data.classes"]),
        (("evaluate.splits=[dev]",), ["evaluate.splits", "train, valid, test"]),
    ],
)
def test_evaluate_refuses_data_the_student_cannot_be_scored_on(tiny, tmp_path, trained, overrides, words):
    with pytest.raises(ConfigValueError) as err:
        run(tiny("task=evaluate", f"evaluate.source={trained.run_dir}", *overrides), tmp_path / "eval")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_evaluate_needs_a_source(tiny, tmp_path):
    with pytest.raises(ConfigValueError, match="evaluate.source"):
        run(tiny("task=evaluate"), tmp_path / "eval")
