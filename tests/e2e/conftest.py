"""End-to-end fixtures: one trained tiny student for the whole session."""

from __future__ import annotations

import pytest

from core.engine.trainer import Result
from core.run import run
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
