"""Hydra multirun sweeps: one MLflow child run per job under one parent run of the sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import sqlite_store

REPO = Path(__file__).resolve().parents[2]


def _command(tmp_path: Path, data_root: Path, *overrides: str, epochs: int = 1) -> list[str]:
    """``python -m core.run -m experiment=tiny ...`` on this test's outputs and store."""
    return [
        sys.executable,
        "-m",
        "core.run",
        "-m",
        "experiment=tiny",
        f"data.root={data_root}",
        f"train.out_dir={tmp_path / 'outputs'}",
        f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
        f"train.epochs={epochs}",
        "train.threads=1",
        *overrides,
    ]


def _sweep(tmp_path: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(tmp_path, data_root, *overrides),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_kd_temperature_sweep_gives_one_child_run_per_job_under_one_parent(tmp_path, data_root):
    out = _sweep(
        tmp_path,
        data_root,
        "model.kd.enabled=true",
        "model.teacher.name=mobilenet_v3_small",
        "model.teacher.freeze=false",
        "model.teacher.epochs=1",
        "+model.teacher.options.width_mult=0.35",
        f"model.teacher.cache_dir={tmp_path / 'teachers'}",
        "model.kd.T=2,3,4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["swept"] == "model.kd.T" and "model.kd.T=2,3,4" in parent.data.params["sweep_overrides"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model.kd.T"] for r in children) == ["2.0", "3.0", "4.0"]
    assert sorted(r.info.run_name for r in children) == [f"tiny model.kd.T={t}" for t in (2, 3, 4)]
    assert all(r.info.status == "FINISHED" and r.data.tags["stage"] == "kd" for r in children)
    assert sorted(r.data.tags["sweep_job"] for r in children) == ["0", "1", "2"]
    # one run folder per job, under the sweep folder that holds the parent's id
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert sorted(p.parent.parent.name for p in sweep_dir.glob("*/checkpoints/last.pt")) == ["0", "1", "2"]
    assert len([r for r in runs if r.data.tags.get("stage") == "teacher"]) == 1  # trained once, reused
    assert out.stdout.count("reusing the trained teacher") == 2


def test_a_job_that_stops_the_sweep_marks_the_parent_failed(tmp_path, data_root):
    out = _sweep(tmp_path, data_root, "train.lr=-1,0.001")
    assert out.returncode == 2 and "train.lr" in out.stderr
    runs = _runs(tmp_path)
    assert [(r.data.tags.get("stage"), r.info.status) for r in runs] == [("sweep", "FAILED")]


def test_a_sweep_killed_mid_job_is_continued_by_the_same_command(tmp_path, data_root):
    """SIGKILL inside the second job; the same command again keeps the first job's run, resumes the
    second in its own run, and finishes the same parent run."""
    import signal

    cmd = _command(tmp_path, data_root, "train.seed=0,1", epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    victim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.startswith("epoch 1/2") and sum(s.startswith("epoch 1/2") for s in seen) == 2:  # job 1
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    before = {r.info.run_id: r for r in _runs(tmp_path)}
    (parent,) = [r for r in before.values() if r.data.tags.get("stage") == "sweep"]
    assert parent.info.status == "RUNNING"  # what a kill leaves

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing the unfinished sweep" in again.stdout and "complete (MLflow run" in again.stdout
    runs = _runs(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.run_id for r in runs if r.data.tags.get("stage") == "sweep"] == [parent.info.run_id]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["train.seed"] for r in children) == ["0", "1"]
    assert {r.info.run_id for r in children} == {r for r in before if r != parent.info.run_id}  # no new runs
    for r in children:
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [1, 2]  # once each
