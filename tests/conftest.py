"""Shared fixtures: third-party plugin distributions made on the fly, composed configs."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_STORE_TEMPLATE: list[Path] = []


def sqlite_store(path: Path) -> str:
    """The URI of the MLflow sqlite store at ``path``, made empty there if it does not exist yet.
    MLflow makes a store's tables on first use (7.3 s on a slow 2-core AMD EPYC, about half of a tiny
    run), so one is made per session and copied (0.1 s): each test still gets a store of its own, the
    real sqlite store."""
    import atexit
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    if not _STORE_TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="audiokd-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _STORE_TEMPLATE.append(folder / "mlflow.db")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_STORE_TEMPLATE[0], path)
    return f"sqlite:///{path}"


CONFIGS = REPO / "configs"


@pytest.fixture
def make_plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a plugin package the way pip would lay it out: a module plus a dist-info folder whose
    entry_points.txt names it in the ``audiokd.plugins`` group; the folder goes on sys.path (and
    PYTHONPATH, for subprocesses). Nothing under the repo's packages is touched."""

    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    def make(dist_name: str, module_name: str, source: str, entry_name: str | None = None) -> Path:
        (site / f"{module_name}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist_name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[audiokd.plugins]\n{entry_name or module_name} = {module_name}\n")
        return site

    return make


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root for the session: the tiny GMNotes render and the caches are made once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny(compose, data_root, tmp_path):
    """The `tiny` experiment on the session's GMNotes render, with this test's own outputs, MLflow
    store and teacher cache (a trained teacher is never shared between tests)."""

    def make(*overrides: str):
        return compose(
            "experiment=tiny",
            f"data.root={data_root}",
            f"train.out_dir={tmp_path / 'outputs'}",
            f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
            f"model.teacher.cache_dir={tmp_path / 'teachers'}",
            *overrides,
        )

    return make


def compose_config(*overrides: str):
    """Compose the real Hydra config (schema + configs/) with overrides, as `core.run` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from core.config import register_schema

    register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def compose() -> Callable[..., object]:
    """:func:`compose_config` as a fixture."""
    return compose_config


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite backend, artifacts on disk) on 127.0.0.1; ``stop`` and ``start``
    again on the same port and store, as a team server that went away and came back."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> str:
        import subprocess
        import sys
        import time
        import urllib.request

        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        sqlite_store(self.root / "mlflow.db")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=open(self.root / "server.log", "a"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: workers are stopped with it
        )
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop(hard=True)
                raise RuntimeError("mlflow server did not start:\n" + (self.root / "server.log").read_text()[-3000:])
            time.sleep(0.5)

    def stop(self, hard: bool = False) -> None:
        import signal
        import subprocess

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` (sqlite backend, artifacts on disk) on 127.0.0.1 for this test session;
    tests that stop it (a server that goes away) start it again on the same port and store."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """The session's server's URL, the server running (a test before may have stopped it)."""
    if mlflow_server_process.proc is None:
        mlflow_server_process.start()
    return mlflow_server_process.url
