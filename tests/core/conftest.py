"""Engine-test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny(compose, data_root, tmp_path):
    """The `tiny` experiment on the session's GMNotes render, with this test's own outputs, MLflow
    store and teacher cache (a trained teacher is never shared between tests)."""
    def make(*overrides: str):
        return compose("experiment=tiny", f"data.root={data_root}", f"train.out_dir={tmp_path / 'outputs'}",
                       f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                       f"model.teacher.cache_dir={tmp_path / 'teachers'}", *overrides)
    return make
