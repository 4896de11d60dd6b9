"""Exactly once across a kill at every boundary of an epoch's commit and of the final scoring.

A kill is simulated in-process: at the boundary a :class:`Killed` is raised, and nothing the process
would have done afterwards happens, the run's own cleanup included (a killed process cannot mark
its MLflow run FAILED). Only what was on disk and in MLflow at that instant remains; then
``train.resume=auto`` must finish the run so that every per-epoch metric has each step once, the
final scores are logged once, the run ends FINISHED, and everything equals an uninterrupted run.
(``test_faults.py`` kills a real process with SIGKILL mid-epoch.)
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from core.engine import trainer as trainer_module
from core.engine.state import TrainState
from core.errors import TrainingError
from core.run import run
from core.tracking.tracker import Tracker
from tests.e2e.conftest import Killed
from tests.e2e.test_train import EPOCH_METRICS, check_run

EPOCHS = 3


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """The uninterrupted run every resumed one must equal."""
    from tests.conftest import compose_config, sqlite_store

    root = tmp_path_factory.mktemp("straight")
    cfg = compose_config(
        "experiment=tiny",
        f"data.root={data_root}",
        f"train.out_dir={root / 'outputs'}",
        f"tracking.uri={sqlite_store(root / 'mlflow.db')}",
        f"train.epochs={EPOCHS}",
    )
    result = run(cfg, root / "outputs" / "r")
    client = MlflowClient(cfg.tracking.uri)
    history = {k: [m.value for m in client.get_metric_history(result.run_id, k)] for k in EPOCH_METRICS}
    return result, history


def after_checkpoint_before_metrics(monkeypatch):
    """Epoch 2's last.pt is saved; its metrics never reached MLflow."""
    real = trainer_module.Trainer.log_epoch

    def log_epoch(self, state, metrics=True):
        if state.epoch == 1 and metrics:
            raise Killed
        return real(self, state, metrics)

    monkeypatch.setattr(trainer_module.Trainer, "log_epoch", log_epoch)


def after_metrics(monkeypatch):
    """Epoch 2's metrics reached MLflow; its plot and checkpoint uploads did not."""
    real = Tracker.log_metrics

    def log_metrics(self, metrics, step):
        real(self, metrics, step)
        if step == 2 and "val_f1" in metrics:
            raise Killed

    monkeypatch.setattr(Tracker, "log_metrics", log_metrics)


def after_the_last_epoch(monkeypatch):
    """Every epoch is committed (last.pt says finished); no final score was computed."""

    def test(self):
        raise Killed

    monkeypatch.setattr(trainer_module.Trainer, "test", test)


def during_final_scoring(monkeypatch):
    """The final scores reached MLflow; the run was not ended, last.pt not closed."""
    real = Tracker.log_metrics

    def log_metrics(self, metrics, step):
        real(self, metrics, step)
        if "test_acc" in metrics:
            raise Killed

    monkeypatch.setattr(Tracker, "log_metrics", log_metrics)


def after_the_run_ended(monkeypatch):
    """MLflow has the run FINISHED; the kill came before last.pt was marked closed."""

    def close(self, final):
        raise Killed

    monkeypatch.setattr(trainer_module.Trainer, "close", close)


@pytest.mark.parametrize(
    "kill",
    [after_checkpoint_before_metrics, after_metrics, after_the_last_epoch, during_final_scoring, after_the_run_ended],
)
def test_a_kill_at_each_commit_boundary_resumes_to_the_uninterrupted_run(
    tiny, tmp_path, killable, monkeypatch, straight, kill
):
    cfg = tiny(f"train.epochs={EPOCHS}")
    with monkeypatch.context() as patch:
        kill(patch)
        with pytest.raises(Killed):
            run(cfg, tmp_path / "outputs" / "killed")
    last = tmp_path / "outputs" / "killed" / "checkpoints" / "last.pt"
    killed = TrainState.load(last)
    assert not killed.closed
    client = MlflowClient(cfg.tracking.uri)
    expected_status = "FINISHED" if kill is after_the_run_ended else "RUNNING"
    assert client.get_run(killed.run_id).info.status == expected_status  # nobody could mark it otherwise

    resumed = run(tiny(f"train.epochs={EPOCHS}", "train.resume=auto"), tmp_path / "elsewhere")
    assert resumed.run_id == killed.run_id and resumed.run_dir == last.parent.parent
    check_run(cfg.tracking.uri, resumed.run_id, EPOCHS)  # FINISHED; each epoch metric at steps 1..3 once
    result, history = straight
    for key in EPOCH_METRICS:
        values = [m.value for m in client.get_metric_history(resumed.run_id, key)]
        assert values == pytest.approx(history[key], rel=1e-5, abs=1e-6), key
    for key in ("test_acc", "test_f1", "best_val_acc", "best_val_f1", "best_epoch"):
        assert [m.step for m in client.get_metric_history(resumed.run_id, key)] == [EPOCHS], key  # once
        assert resumed.metrics[key] == pytest.approx(result.metrics[key], rel=1e-6), key
    arts = {a.path for a in client.list_artifacts(resumed.run_id, "confusion")}
    assert {f"confusion/confusion_val_epoch{e:03d}.png" for e in (1, 2, 3)} | {"confusion/confusion_test.png"} <= arts
    closed = TrainState.load(last)
    assert closed.closed and closed.final["test_acc"] == pytest.approx(result.metrics["test_acc"])
    with pytest.raises(TrainingError, match="complete"):  # nothing is left to do
        run(tiny(f"train.epochs={EPOCHS}", f"train.resume={last.parent.parent}"), tmp_path / "again")
    assert len(client.search_runs([client.get_run(killed.run_id).info.experiment_id])) == 1


def test_auto_resume_skips_a_checkpoint_it_cannot_read_and_another_experiments_runs(tiny, tmp_path, caplog):
    broken = tmp_path / "outputs" / "broken" / "checkpoints" / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    other = tmp_path / "outputs" / "other" / "checkpoints" / "last.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"never read: its config.yaml says another experiment")
    (other.parent.parent / "config.yaml").write_text("name: another_experiment\n")
    with caplog.at_level("WARNING"):
        result = run(tiny("train.epochs=1", "train.resume=auto"), tmp_path / "outputs" / "fresh")
    assert result.metrics["test_acc"] >= 0  # started fresh
    assert any("skipping" in r.message and str(broken) in r.message for r in caplog.records)
    assert not any(str(other) in r.message for r in caplog.records)
