"""MLflow tracking: where runs go, and the one object the loop logs through.

The tracking URI comes from ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the project's
local store ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's default; its old ``./mlruns`` file store
refuses to start). A remote server is checked before any training starts, so a typo in the URI
costs seconds, not an epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

from core.errors import UserError

log = logging.getLogger(__name__)

#: Without this tag MLflow 3 opens an experiment in its GenAI view instead of the runs table.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used; the message says which URI and what to do."""


def resolve_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when the store is unusable: a server that does not answer, an unwritable db folder."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow server {uri} is not reachable ({exc}). Start it (e.g. `make ui` for the local "
                f"store), fix tracking.uri / MLFLOW_TRACKING_URI, or unset them to log to the local "
                f"sqlite store."
            ) from exc
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        folder = db.parent if str(db) else Path.cwd()
        if not folder.exists() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {folder} is missing or not writable")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 3e-4}} -> {"train.lr": "0.0003"}``; lists become JSON text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value))
        else:
            out[name] = str(value)
    return out


class Tracker:
    """Logs to one MLflow run. Rank != 0 processes get ``Tracker(enabled=False)``, which logs nothing."""

    def __init__(self, uri: str, experiment: str, enabled: bool = True) -> None:
        self.uri = uri
        self.experiment = experiment
        self.enabled = enabled
        self.run_id: str | None = None
        self._client = None

    def start(self, run_name: str | None = None, run_id: str | None = None) -> str | None:
        """Start a new run, or continue ``run_id`` (resume)."""
        if not self.enabled:
            return None
        import mlflow
        from mlflow.tracking import MlflowClient

        check_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        client.set_experiment_tag(exp_id, *EXPERIMENT_KIND_TAG)
        if run_id is not None:
            run = client.get_run(run_id)  # raises with a clear MLflow message when it does not exist
            client.update_run(run.info.run_id, status="RUNNING")
        else:
            run = client.create_run(exp_id, run_name=run_name)
        self._client = client
        self.run_id = run.info.run_id
        return self.run_id

    # --- logging ------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        existing = self._client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are write-once (resume)
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._client.set_terminated(self.run_id, status=status)

    def run_url(self) -> str:
        """Where to look at the run: a browser URL for servers, the `make ui` hint for local stores."""
        if not self.enabled or self.run_id is None:
            return ""
        exp = self._client.get_experiment_by_name(self.experiment)
        path = f"#/experiments/{exp.experiment_id}/runs/{self.run_id}"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{path}"
        return f"run {self.run_id} in {self.uri} (open it with `make ui`, then http://127.0.0.1:5000/{path})"


@contextlib.contextmanager
def parent_run(cfg: Any, stage: str, tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
    """An MLflow run that groups the child runs of a compare/pareto task: tagged ``stage``, the
    flattened config as params; FINISHED when the block completes, FAILED when it raises."""
    from omegaconf import OmegaConf

    parent = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    parent.start(run_name=cfg.tracking.run_name or cfg.name)
    parent.set_tags({"stage": stage, **(tags or {})})
    parent.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    try:
        yield parent
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    print(f"MLflow: {parent.run_url()}")
