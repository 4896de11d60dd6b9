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

import attrs
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.errors import UserError
from core.tracking.store import resolve_uri
from core.tracking.tracker import Tracker
from core.util.files import atomic_write_text

PARENT_FILE = "mlflow_parent_run_id"


class SweepParent(Callback):
    """Opens (or, for a rerun of an interrupted sweep, continues) the sweep's parent run."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.files: list[Path] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        keys = swept(overrides)
        earlier = unfinished_sweep(sweep_dir, overrides)
        self.tracker = Tracker(resolve_uri(config.tracking.uri), config.tracking.experiment)
        try:
            self.tracker.start(run_name=f"sweep {config.name}", run_id=earlier[1] if earlier else None)
        except UserError as exc:  # before any job: the store is unusable
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        self.tracker.set_tags({"stage": "sweep", "sweep_dir": str(sweep_dir), "swept": " ".join(keys)})
        self.tracker.log_params({"sweep_overrides": " ".join(overrides)})
        info = {
            "run_id": self.tracker.run_id,
            "swept": keys,
            "overrides": overrides,
            "finished": False,
            "continues": str(earlier[0]) if earlier else None,
        }
        if earlier:
            print(
                f"continuing the unfinished sweep {earlier[0]}: complete jobs are kept, an interrupted one resumes",
                flush=True,
            )
            self.files.append(earlier[0] / PARENT_FILE)
        self.files.append(sweep_dir / PARENT_FILE)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / PARENT_FILE, json.dumps(info))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.end("FINISHED")
            for path in self.files:  # neither this sweep nor the one it continued is continued again
                atomic_write_text(path, json.dumps({**json.loads(path.read_text()), "finished": True}))
            print(f"MLflow sweep: {self.tracker.run_url()}")


def unfinished_sweep(sweep_dir: Path, overrides: list[str]) -> tuple[Path, str] | None:
    """An earlier sweep of this experiment with the same overrides that did not finish (a job was
    killed): its folder and parent run id, newest first."""
    for path in sorted(sweep_dir.parent.glob(f"*/{PARENT_FILE}"), reverse=True):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.parent != sweep_dir and info.get("overrides") == overrides and not info.get("finished"):
            return path.parent, info["run_id"]
    return None


def swept(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (``model.kd.T=2,3,4``, ``range(...)``, ``choice(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]


def fail_parent(parent_run_id: str, cfg: DictConfig) -> None:
    """A job stopped the sweep (Hydra runs no further job): the parent run is FAILED, not RUNNING."""
    from mlflow.tracking import MlflowClient

    MlflowClient(resolve_uri(cfg.tracking.uri)).set_terminated(parent_run_id, status="FAILED")


@attrs.frozen
class SweepJob:
    """This process's place in a sweep: the parent run, the tags of its own run, and the folder of
    the same job in the interrupted sweep this one continues (None when it continues none)."""

    parent_run_id: str | None = None
    tags: dict[str, str] = attrs.field(factory=dict)
    earlier_dir: Path | None = None


def this_job(name: str) -> SweepJob:
    """In a multirun job: the sweep's parent run id, tags for this job's run (its name included:
    ``name`` plus the swept values, e.g. ``kd_gmnotes model.kd.T=3``) and its earlier folder; else
    an empty :class:`SweepJob`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return SweepJob()
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return SweepJob()
    path = Path(hc.sweep.dir) / PARENT_FILE
    info = json.loads(path.read_text()) if path.is_file() else {"run_id": None, "swept": []}
    mine = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in info["swept"]]
    tags = {
        "sweep_dir": hc.sweep.dir,
        "sweep_job": str(hc.job.num),
        "sweep_job_overrides": " ".join(hc.overrides.task),
        "mlflow.runName": " ".join([name, *mine]),
    }
    earlier = Path(info["continues"]) / hc.sweep.subdir if info.get("continues") else None
    return SweepJob(info["run_id"], tags, earlier)
