"""The training loop runs unchanged under torchrun: 2 CPU processes (gloo), one MLflow run, one
checkpoint set (saved without DDP's ``module.`` prefix, so it loads into a plain model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from core import checkpoint as ckpt


def test_torchrun_two_cpu_ranks(tmp_path, data_root):
    torchrun = Path(sys.executable).with_name("torchrun")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "core.run", "experiment=tiny",
         f"data.root={data_root}", f"train.out_dir={tmp_path / 'outputs'}", f"tracking.uri={db}",
         "train.threads=1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("final (best epoch") == 1  # only rank 0 reports
    lasts = list((tmp_path / "outputs").glob("**/checkpoints/last.pt"))
    assert len(lasts) == 1
    state = ckpt.load(lasts[0])
    assert state["finished"] and not any(k.startswith("module.") for k in state["model"])
    client = MlflowClient(db)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [1, 2]
