"""The training loop runs unchanged under torchrun: 2 CPU processes (gloo), one MLflow run, one
checkpoint set (saved without DDP's ``module.`` prefix, so it loads into a plain model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from core.engine import checkpoint as ckpt
from core.engine.distributed import Dist, weights_sha256
from core.engine.model import build_model
from core.errors import TrainingError
from core.registry import load_registry
from tests.conftest import free_port, sqlite_store


def test_torchrun_two_cpu_ranks(tmp_path, data_root):
    torchrun = Path(sys.executable).with_name("torchrun")
    db = sqlite_store(tmp_path / "mlflow.db")
    out = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "core.run",
            "experiment=tiny",
            f"data.root={data_root}",
            f"train.out_dir={tmp_path / 'outputs'}",
            f"tracking.uri={db}",
            "train.threads=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("final (best epoch") == 1  # only rank 0 reports
    lasts = list((tmp_path / "outputs").glob("**/checkpoints/last.pt"))
    assert len(lasts) == 1
    state = ckpt.load(lasts[0])
    assert state["finished"] and not any(k.startswith("module.") for k in state["model"])
    assert len(list((tmp_path / "outputs").glob("**/checkpoints/*.pt"))) == 2  # one best.pt, one last.pt
    client = MlflowClient(db)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] == [1, 2]
    # each rank hashed its own final weights; all equal, and equal to the checkpoint rank 0 wrote
    per_rank = json.loads(runs[0].data.tags["ddp_weights_sha256"])
    model = build_model(OmegaConf.create(state["config"]), load_registry(), len(state["class_names"]))
    model.load_state_dict(state["model"])
    assert len(per_rank) == 2 and set(per_rank) == {weights_sha256(dict(model.named_parameters()))}


def _replica(rank: int, port: int, drift: bool, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    if drift and rank == 1:
        with torch.no_grad():
            net.bias[0] += 1e-6
    try:
        Path(out, f"rank{rank}").write_text(json.dumps(Dist(rank=rank, world=2).same_weights(net)))
    except TrainingError as exc:
        Path(out, f"rank{rank}").write_text(f"error: {exc}")
    dist.destroy_process_group()


@pytest.mark.parametrize("drift", [False, True])
def test_replicas_that_drift_apart_are_caught(tmp_path, drift):
    torch.multiprocessing.spawn(_replica, args=(free_port(), drift, str(tmp_path)), nprocs=2)
    answers = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    if drift:
        assert all(a.startswith("error: DDP replicas ended with different weights") for a in answers)
    else:
        assert answers[0] == answers[1] and len(set(json.loads(answers[0]))) == 1
