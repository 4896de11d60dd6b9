"""Hydra multirun sweeps (``python -m core.run -m experiment=kd_gmnotes model.kd.T=2,3,4``) as one
MLflow parent run with one child run per job.

:class:`SweepParent` is a Hydra callback (``hydra.callbacks`` in ``configs/config.yaml``): before the
first job it checks the tracking store, opens the parent run (tagged ``stage=sweep``, the sweep's
overrides as params) and leaves its id in the sweep folder; every job reads it there
(:func:`parent_of_this_job`) and nests its run under it, tagged with its own overrides.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.errors import UserError
from core.tracking.store import resolve_uri
from core.tracking.tracker import Tracker

PARENT_FILE = "mlflow_parent_run_id"


class SweepParent(Callback):
    def __init__(self) -> None:
        self.tracker: Tracker | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        keys = swept(overrides)
        self.tracker = Tracker(resolve_uri(config.tracking.uri), config.tracking.experiment)
        try:
            self.tracker.start(run_name=f"sweep {config.name}")
        except UserError as exc:  # before any job: the store is unusable
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        self.tracker.set_tags({"stage": "sweep", "sweep_dir": str(sweep_dir), "swept": " ".join(keys)})
        self.tracker.log_params({"sweep_overrides": " ".join(overrides)})
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": self.tracker.run_id, "swept": keys}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.end("FINISHED")
            print(f"MLflow sweep: {self.tracker.run_url()}")


def swept(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (``model.kd.T=2,3,4``, ``range(...)``, ``choice(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]


def fail_parent(parent_run_id: str, cfg: DictConfig) -> None:
    """A job stopped the sweep (Hydra runs no further job): the parent run is FAILED, not RUNNING."""
    from mlflow.tracking import MlflowClient

    MlflowClient(resolve_uri(cfg.tracking.uri)).set_terminated(parent_run_id, status="FAILED")


def parent_of_this_job(name: str) -> tuple[str | None, dict[str, str]]:
    """In a multirun job: (the sweep's parent run id, tags for this job's run, its name included:
    ``name`` plus the swept values, e.g. ``kd_gmnotes model.kd.T=3``); else (None, {})."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, {}
    path = Path(hc.sweep.dir) / PARENT_FILE
    info = json.loads(path.read_text()) if path.is_file() else {"run_id": None, "swept": []}
    mine = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in info["swept"]]
    return info["run_id"], {
        "sweep_dir": hc.sweep.dir,
        "sweep_job": str(hc.job.num),
        "sweep_job_overrides": " ".join(hc.overrides.task),
        "mlflow.runName": " ".join([name, *mine]),
    }
