"""End-to-end fixtures: one trained tiny student for the whole session, and simulated kills."""

from __future__ import annotations

import sys

import pytest

from core.engine.trainer import Result
from core.run import run
from core.tracking.tracker import Tracker
from tests.conftest import compose_config, sqlite_store


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory) -> Result:
    """A tiny student trained for one epoch, shared by every test that needs a trained source (prune,
    export, evaluate, resume refusals) instead of training its own: the run's Result, whose MLflow
    store is ``trained.tracking_uri``. Tests read it and never write into its folder."""
    root = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        "experiment=tiny",
        f"data.root={data_root}",
        f"train.out_dir={root / 'outputs'}",
        f"tracking.uri={sqlite_store(root / 'mlflow.db')}",
        f"model.teacher.cache_dir={root / 'teachers'}",
        "train.epochs=1",
    )
    return run(cfg, root / "outputs" / "source")


class Killed(BaseException):
    """A kill, simulated in-process: raised at a boundary, nothing the process would have done after
    it happens; with :func:`killable`, not even the run's own cleanup (a killed process cannot mark
    its MLflow run FAILED). Only what was on disk and in MLflow at that instant remains."""


@pytest.fixture
def killable(monkeypatch):
    """While a :class:`Killed` propagates, a tracker ends nothing (a killed process cannot)."""
    real_end = Tracker.end

    def end(self, status="FINISHED"):
        if not isinstance(sys.exc_info()[1], Killed):
            real_end(self, status)

    monkeypatch.setattr(Tracker, "end", end)
