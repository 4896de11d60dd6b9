"""The spool: logging calls a vanished MLflow server could not take, one JSON line each, replayed
in order when it answers again (by the tracker itself, or ``python -m core.sync``)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from core.tracking.store import TrackingError, server_down
from core.util.files import atomic_write_text

log = logging.getLogger(__name__)


def apply(client: Any, op: dict[str, Any]) -> None:
    """Make one logging call (as the tracker spools them) against ``client``."""
    from mlflow.entities import Metric, Param

    run_id = op["run_id"]
    kind = op["op"]
    if kind == "params":
        existing = client.get_run(run_id).data.params
        params = [Param(k, v) for k, v in op["items"].items() if k not in existing]  # write-once (resume)
        for i in range(0, len(params), 100):  # MLflow's batch limit
            client.log_batch(run_id, params=params[i : i + 100])
    elif kind == "metrics":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in op["items"]]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op["artifact_path"])
    elif kind == "tags":
        for k, v in op["items"].items():
            client.set_tag(run_id, k, v)
    elif kind == "end":
        client.set_terminated(run_id, status=op["status"])
    else:
        raise TrackingError(f"unknown spooled call {kind!r}")


def replay(spool: Path, client: Any) -> int:
    """Send the spooled calls in order; returns how many were sent. On the first failure the
    unsent rest is written back (atomically), so a call is never sent twice nor lost."""
    lines = [line for line in Path(spool).read_text(encoding="utf-8").splitlines() if line.strip()]
    sent = 0
    for i, line in enumerate(lines):
        try:
            op = json.loads(line)
        except json.JSONDecodeError:  # the last line of a run killed mid-write
            log.warning("%s: line %d is not complete JSON; dropped: %.200s", spool, i + 1, line)
            continue
        try:
            apply(client, op)
        except Exception as exc:  # noqa: BLE001
            if server_down(op["uri"]):  # kept for the next attempt
                atomic_write_text(Path(spool), "".join(f"{rest}\n" for rest in lines[i:]))
                return sent
            # the server answers but refuses this one call (e.g. a deleted artifact file): say so, go on
            print(
                f"warning: MLflow refused a waiting {op['op']} call for run {op['run_id']}: "
                f"{type(exc).__name__}: {str(exc).strip()[:300]}",
                file=sys.stderr,
                flush=True,
            )
            continue
        sent += 1
    Path(spool).unlink()
    return sent
