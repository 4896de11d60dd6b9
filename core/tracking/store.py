"""Where runs go, and whether that store can be used right now.

The tracking URI comes from ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the project's
local store ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's default; its old ``./mlruns`` file store
refuses to start). A remote server is checked (``/health`` and one API call) before any training
starts, so a typo in the URI costs seconds, not an epoch.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from core.errors import UserError


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
    if is_remote(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
            api = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
            try:
                urllib.request.urlopen(api, timeout=timeout).close()  # noqa: S310
            except urllib.error.HTTPError as exc:
                raise TrackingError(
                    f"{uri} answers /health but not the MLflow API (HTTP {exc.code} on {api}): is it an MLflow "
                    f"tracking server? Fix tracking.uri / MLFLOW_TRACKING_URI"
                ) from exc
        except TrackingError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow server {uri} is not reachable ({exc}). Start it (e.g. `make ui` for the local "
                f"store), fix tracking.uri / MLFLOW_TRACKING_URI, or unset them to log to the local "
                f"sqlite store."
            ) from exc
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        folder = db.parent if str(db) else Path.cwd()
        if not folder.exists() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {folder} is missing or not writable")
    elif is_file_store(uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        raise TrackingError(
            f"tracking.uri={uri} is a folder, MLflow's file store, which MLflow 3 refuses to open. Use the sqlite "
            f"store sqlite:///{(folder / 'mlflow.db').resolve()} (or leave tracking.uri unset for "
            f"./mlflow.db), an http(s) tracking server, or set MLFLOW_ALLOW_FILE_STORE=true"
        )


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_file_store(uri: str) -> bool:
    """A plain path or a ``file:`` URI: MLflow's folder store (other schemes name a database or server)."""
    if uri.startswith("databricks"):  # a Databricks workspace profile, not a folder
        return False
    return uri.startswith("file:") or "://" not in uri and ":" not in uri.split("/")[0]


def server_down(uri: str) -> bool:
    try:
        check_store(uri, timeout=5.0)
    except TrackingError:
        return True
    return False
