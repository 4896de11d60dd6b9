"""The one object a run logs to MLflow through.

A server that stops answering mid-run does not stop the run nor lose what it logs: the tracker
writes every call it could not make to ``<run dir>/mlflow-pending.jsonl`` (one JSON line each,
fsynced), retries the server every ``RETRY_EVERY_S`` seconds and replays the file in order when it
answers again. If it is still down when the run ends, ``python -m core.sync <run dir>`` replays it
later (the run's metrics and checkpoints are on disk in the run folder meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from core.tracking.spool import apply, replay
from core.tracking.store import TrackingError, check_store, is_remote, resolve_uri, server_down

log = logging.getLogger(__name__)

#: Seconds between attempts to reach a server that stopped answering (while calls are spooled).
RETRY_EVERY_S = 30.0
#: The spool's file name inside a run folder.
PENDING = "mlflow-pending.jsonl"
#: MLflow's own HTTP retries default to 7 with exponential backoff (minutes per call when the server
#: is down); the tracker has its own retry-and-spool, so a call gives up after seconds instead. A
#: value the user set in the environment wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # MLflow prints its own "View run" / "View experiment" links when a run ends; they open its GenAI
    # view. The tracker prints links that open the training runs instead (Tracker.end).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

#: Without this tag MLflow 3 opens an experiment in its GenAI view instead of the runs table.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
#: MLflow 3's UI remembers a GenAI / model-training switch per browser and starts in GenAI; this query
#: parameter opens the model-training view (seen with 3.17 in tests/ui).
TRAINING_VIEW = "workflowType=machine_learning"


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
    """Logs to one MLflow run. Rank != 0 processes get ``Tracker(enabled=False)``, which logs nothing.

    Args:
        spool: where calls that could not reach a remote server wait (``<run dir>/mlflow-pending.jsonl``);
            None = a failed call raises.
    """

    def __init__(self, uri: str, experiment: str, enabled: bool = True, spool: Path | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.enabled = enabled
        self.spool = Path(spool) if spool is not None and is_remote(uri) else None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None  # mlflow's MlflowClient, made when the run starts
        self._down_since: float | None = None  # monotonic time of the last failed attempt
        self._spooled = 0

    def start(self, run_name: str | None = None, run_id: str | None = None) -> str | None:
        """Start a new run, or continue ``run_id`` (resume)."""
        if not self.enabled:
            return None
        import mlflow
        from mlflow.tracking import MlflowClient

        check_store(self.uri)
        if is_remote(self.uri):
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient(self.uri)
        try:
            exp = client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
            client.set_experiment_tag(exp_id, *EXPERIMENT_KIND_TAG)
            if run_id is not None:
                run = client.get_run(run_id)
                client.update_run(run.info.run_id, status="RUNNING")
            else:
                run = client.create_run(exp_id, run_name=run_name)
        except Exception as exc:  # noqa: BLE001 - the MLflow client raises many types
            what = f"run {run_id}" if run_id else f"experiment {self.experiment!r}"
            raise TrackingError(
                f"MLflow store {self.uri} answered /health but refused to open {what}: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}. Check that the URI points at "
                f"an MLflow tracking server (and the run id, when resuming)."
            ) from exc
        self._client = client
        self.experiment_id = exp_id
        self.run_id = run.info.run_id
        if self.spool is not None and self.spool.is_file():  # left by an earlier attempt of this run
            self._down_since = -float("inf")
            self._retry()
        return self.run_id

    def logged_steps(self, key: str) -> set[int] | None:
        """The steps at which this run has logged metric ``key``, or None when that cannot be known
        now (tracking off, or calls still waiting for a vanished server): what a resumed run asks
        before it logs an epoch again, so each step is logged once."""
        if not self.enabled or self.run_id is None or self.pending:
            return None
        try:
            return {m.step for m in self._client.get_metric_history(self.run_id, key)}
        except Exception:  # noqa: BLE001 - a server that vanished just now: unknown, as above
            return None

    # --- logging ------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call({"op": "params", "items": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._call({"op": "metrics", "items": [[k, float(v), now, int(step)] for k, v in metrics.items()]})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call({"op": "tags", "items": {k: str(v) for k, v in tags.items()}})

    def end(self, status: str = "FINISHED") -> None:
        if not self.enabled or self.run_id is None:
            return
        self._call({"op": "end", "status": status})
        if is_remote(self.uri) and not self.pending:
            print(
                f"View run at: {self.run_url()}\nView experiment (training runs) at: {self.experiment_url()}",
                flush=True,
            )
        if self.pending and self.spool is not None:
            print(
                f"warning: MLflow server {self.uri} is still unreachable; the run's last "
                f"{self._spooled} logging calls wait in {self.spool} (metrics, checkpoints and plots are "
                f"in {self.spool.parent}). When the server is back, upload them with:\n"
                f"    python -m core.sync {self.spool.parent}",
                file=sys.stderr,
                flush=True,
            )

    @property
    def pending(self) -> bool:
        """True while calls wait in the spool for the server to come back."""
        return self._down_since is not None

    def run_url(self) -> str:
        """Where to look at the run: a browser URL for servers, the `make ui` hint for local stores."""
        if not self.enabled or self.run_id is None:
            return ""
        path = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?{TRAINING_VIEW}"
        if is_remote(self.uri):
            return f"{self.uri.rstrip('/')}/{path}"
        return f"run {self.run_id} in {self.uri} (open it with `make ui`, then http://127.0.0.1:5000/{path})"

    def experiment_url(self) -> str:
        """The experiment's runs table on a server (empty for a local store)."""
        if not self.enabled or self.experiment_id is None or not is_remote(self.uri):
            return ""
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}?{TRAINING_VIEW}"

    # --- the server may go away -----------------------------------------------------------------
    def _call(self, op: dict[str, Any]) -> None:
        if not self.enabled:
            return
        op = {"uri": self.uri, "run_id": self.run_id, **op}
        if self.pending and not self._retry():
            self._append(op)
            return
        try:
            apply(self._client, op)
        except Exception as exc:  # noqa: BLE001 - which failures are outages is decided below
            if self.spool is None or not server_down(self.uri):
                raise
            self._down_since = time.monotonic()
            print(
                f"warning: MLflow server {self.uri} stopped answering ({type(exc).__name__}); training goes "
                f"on, logging calls wait in {self.spool} and are sent when it answers again (retried every "
                f"{RETRY_EVERY_S:g} s)",
                file=sys.stderr,
                flush=True,
            )
            self._append(op)

    def _append(self, op: dict[str, Any]) -> None:
        assert self.spool is not None  # only a tracker with a spool is ever pending
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(op) + "\n")
            fh.flush()
            os.fsync(fh.fileno())  # a killed run still leaves every call it made
        self._spooled += 1

    def _retry(self) -> bool:
        """Replay the spool if the last attempt is old enough; True when it is empty afterwards."""
        assert self.spool is not None and self._down_since is not None
        if time.monotonic() - self._down_since < RETRY_EVERY_S:
            return False
        sent = replay(self.spool, self._client)
        if self.spool.is_file():
            self._down_since = time.monotonic()
            return False
        self._down_since, self._spooled = None, 0
        print(f"MLflow server {self.uri} answers again: sent {sent} waiting logging calls", file=sys.stderr, flush=True)
        return True


@contextlib.contextmanager
def parent_run(
    cfg: Any,
    stage: str,
    tags: Mapping[str, Any] | None = None,
    run_dir: Path | None = None,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """An MLflow run that groups the child runs of a compare/pareto task: tagged ``stage``, the
    flattened config as params; FINISHED when the block completes, FAILED when it raises. Calls a
    vanished server could not take wait in ``run_dir`` (as a training run's do). ``run_id``
    continues that run (a rerun of an interrupted task) instead of starting one."""
    from omegaconf import OmegaConf

    parent = Tracker(
        resolve_uri(cfg.tracking.uri),
        cfg.tracking.experiment,
        spool=Path(run_dir) / PENDING if run_dir is not None else None,
    )
    parent.start(run_name=cfg.tracking.run_name or cfg.name, run_id=run_id)
    parent.set_tags({"stage": stage, **(tags or {})})
    parent.log_params(flatten(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))))
    try:
        yield parent
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    print(f"MLflow: {parent.run_url()}")
