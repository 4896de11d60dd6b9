"""MLflow tracking: the store (:mod:`~core.tracking.store`), the tracker a run logs through
(:mod:`~core.tracking.tracker`), the spool that survives a vanished server
(:mod:`~core.tracking.spool`) and Hydra sweeps as parent runs (:mod:`~core.tracking.sweep`).

Importing this package imports no MLflow: the tracker loads it when a run starts."""

from core.tracking.spool import apply, replay
from core.tracking.store import TrackingError, check_store, is_remote, resolve_uri
from core.tracking.tracker import EXPERIMENT_KIND_TAG, PENDING, Tracker, flatten, parent_run

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "PENDING",
    "Tracker",
    "TrackingError",
    "apply",
    "check_store",
    "flatten",
    "is_remote",
    "parent_run",
    "replay",
    "resolve_uri",
]
