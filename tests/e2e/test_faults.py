"""Faults a long run on a shared server must survive: SIGKILL mid-epoch, the MLflow server going
away mid-run (or answering errors at the start), a non-finite loss, a full disk.

Each test makes the fault happen for real where it can (a killed process, a stopped server) and
checks that nothing is lost: same MLflow run, same metrics as an uninterrupted run, the last good
checkpoint still loadable.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import core.engine.trainer
import core.stages.teacher.passes
import core.sync
import core.tasks.train
import core.tracking.tracker
from core.engine import checkpoint as ckpt
from core.engine.distributed import Dist
from core.engine.loop import epoch_batches
from core.errors import TrainingError
from core.run import run
from core.tracking import PENDING, TrackingError
from tests.conftest import MlflowServer, compose_config, free_port, sqlite_store
from tests.e2e.test_train import check_run, run_dir

REPO = Path(__file__).resolve().parents[2]


# --- SIGKILL mid-epoch ----------------------------------------------------------------------------


def _cli(tmp_path: Path, data_root: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core.run", *_overrides(tmp_path, data_root, name, *extra)]


def _overrides(tmp_path: Path, data_root: Path, name: str, *extra: str) -> list[str]:
    return [
        "experiment=tiny",
        f"data.root={data_root}",
        f"train.out_dir={tmp_path / name}",
        f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
        "train.epochs=3",
        "train.threads=1",
        *extra,
    ]


@pytest.fixture
def one_thread():
    """``train.threads=1`` in this process (as in the killed one), undone after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_sigkill_mid_epoch_resumes_the_same_run_with_the_same_final_metrics(tmp_path, data_root, one_thread, capsys):
    """The victim is a real process killed with SIGKILL; the uninterrupted run and the resume run in
    this process with the same settings (one thread), which spares two interpreter starts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run(compose_config(*_overrides(tmp_path, data_root, "straight")), tmp_path / "straight" / "r")

    # The victim prints "epoch 2/3 ..." after saving epoch 2's checkpoint; it is killed (SIGKILL: no
    # handler, no cleanup) as soon as that line appears, i.e. inside epoch 3.
    victim = subprocess.Popen(
        _cli(tmp_path, data_root, "killed"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.startswith("epoch 2/3"):
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    last = next((tmp_path / "killed").glob("**/checkpoints/last.pt"))
    state = ckpt.load(last)
    assert state["epoch"] == 1 and not state["finished"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(state["run_id"]).info.status == "RUNNING"  # nobody could mark it
    assert not list(last.parent.glob(".*.part"))  # no half-written checkpoint left behind

    capsys.readouterr()
    run(compose_config(*_overrides(tmp_path, data_root, "killed", "train.resume=auto")), tmp_path / "ignored")
    assert "at epoch 3/3" in capsys.readouterr().out
    assert len(list((tmp_path / "killed").glob("**/checkpoints/last.pt"))) == 1  # no second run folder

    all_runs = client.search_runs([client.get_experiment_by_name("NSynth-Student-Baseline").experiment_id])
    assert len(all_runs) == 2  # the uninterrupted one and the killed-then-resumed one, nothing else
    killed_id = state["run_id"]
    straight_id = next(r.info.run_id for r in all_runs if r.info.run_id != killed_id)
    check_run(client.tracking_uri, killed_id, 3)
    for name in ("train_loss", "val_loss", "val_acc"):
        a = client.get_metric_history(straight_id, name)
        b = client.get_metric_history(killed_id, name)
        assert [m.step for m in b] == [1, 2, 3]
        assert [m.value for m in b] == pytest.approx([m.value for m in a], rel=1e-6, abs=1e-7), name
    fa, fb = client.get_run(straight_id).data.metrics, client.get_run(killed_id).data.metrics
    for name in ("test_acc", "test_f1", "best_val_acc", "best_epoch"):
        assert fb[name] == pytest.approx(fa[name], rel=1e-6), name


# --- the MLflow server ------------------------------------------------------------------------------


@pytest.fixture
def own_server(mlflow_server_process, monkeypatch):
    """The session's server, which this test may stop and start again (starting a server costs ~30 s
    on a slow 2-core machine, so the tests share one: each checks its own runs by id). The client
    gives up at once on a refused connection (the production default retries twice), and the tracker
    retries on every call, not every 30 s."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(core.tracking.tracker, "RETRY_EVERY_S", 0.0)
    if mlflow_server_process.proc is None:
        mlflow_server_process.start()
    yield mlflow_server_process
    if mlflow_server_process.proc is None:  # left stopped by a failing test: the next one needs it
        mlflow_server_process.start()


def _stop_and_start_at(monkeypatch, server: MlflowServer, stop_at: int, start_at: int | None) -> None:
    """Stop the server before training epoch index ``stop_at``; start it again before ``start_at``."""
    real = core.engine.trainer.train_one_epoch

    def epoch(*args, **kwargs):
        if args[-1] == stop_at:
            server.stop(hard=True)
        if args[-1] == start_at:
            server.start()
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", epoch)


def test_server_gone_mid_run_gets_everything_when_it_comes_back(tiny, tmp_path, own_server, monkeypatch, capsys):
    _stop_and_start_at(monkeypatch, own_server, stop_at=1, start_at=2)
    cfg = tiny(f"tracking.uri={own_server.url}", "train.epochs=3")
    result = run(cfg, run_dir(tmp_path))
    err = capsys.readouterr().err
    assert "stopped answering" in err and "answers again" in err
    assert not (result.run_dir / PENDING).exists()
    check_run(own_server.url, result.run_id, 3)  # every epoch's metrics, params, checkpoints, FINISHED


def test_server_gone_until_after_the_run_is_sent_by_core_sync(tiny, tmp_path, own_server, monkeypatch, capsys):
    _stop_and_start_at(monkeypatch, own_server, stop_at=1, start_at=None)
    cfg = tiny(f"tracking.uri={own_server.url}", "train.epochs=3")
    result = run(cfg, run_dir(tmp_path))  # training finishes although the server is down
    err = capsys.readouterr().err
    assert f"python -m core.sync {result.run_dir}" in err
    spool = result.run_dir / PENDING
    ops = [json.loads(line)["op"] for line in spool.read_text().splitlines()]
    assert ops.count("end") == 1 and "artifact" in ops and "metrics" in ops
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()
    assert result.metrics["test_acc"] >= 0

    own_server.start()
    assert core.sync.main([str(result.run_dir)]) == 0
    assert not spool.exists()
    check_run(own_server.url, result.run_id, 3)
    assert core.sync.main([str(result.run_dir)]) == 0  # a second sync sends nothing twice
    assert len(MlflowClient(own_server.url).get_metric_history(result.run_id, "val_loss")) == 3


def test_sync_while_the_server_is_still_down_keeps_every_call(tmp_path, capsys):
    spool = tmp_path / PENDING
    url = f"http://127.0.0.1:{free_port()}"
    lines = [json.dumps({"uri": url, "run_id": "r", "op": "metrics", "items": [["a", 1.0, 0, 1]]})] * 3
    spool.write_text("\n".join(lines) + "\n")
    assert core.sync.main([str(tmp_path)]) == 2
    assert url in capsys.readouterr().err
    assert spool.read_text().splitlines() == lines


class _Answers(http.server.BaseHTTPRequestHandler):
    """A web server that is not a healthy MLflow: /health answers ``health``, the rest ``other``."""

    health = 500
    other = 500

    def do_GET(self):  # noqa: N802 - http.server's naming
        code = self.health if self.path.startswith("/health") else self.other
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"no")

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "health, other, words",
    [
        (500, 500, ["not reachable", "500"]),
        (503, 503, ["not reachable", "503"]),
        (200, 404, ["not the MLflow API", "404"]),
    ],
)
def test_a_server_answering_errors_stops_the_run_before_any_work(tiny, tmp_path, health, other, words):
    handler = type("H", (_Answers,), {"health": health, "other": other})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        t0 = time.perf_counter()
        with pytest.raises(TrackingError) as err:
            run(tiny(f"tracking.uri={url}", f"data.root={tmp_path / 'fresh-data'}"), run_dir(tmp_path))
        assert time.perf_counter() - t0 < 30
    finally:
        httpd.shutdown()
    assert url in str(err.value) and all(w in str(err.value) for w in words)
    assert not (tmp_path / "fresh-data").exists()  # checked before anything is downloaded or rendered


# --- non-finite loss --------------------------------------------------------------------------------


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    real_build = core.tasks.train.build_loss
    calls = {"n": 0}

    def poisoned(cfg, registry):
        loss = real_build(cfg, registry)

        def fn(*args):
            calls["n"] += 1
            out = loss(*args)
            if calls["n"] == steps + 3:  # epoch 2, step 3
                out = {**out, "total": out["total"] * float("nan")}
            return out

        return fn

    monkeypatch.setattr(core.tasks.train, "build_loss", poisoned)
    cfg = tiny("train.epochs=3")
    from core.config import validate
    from core.data import prepare_data
    from core.registry import load_registry

    validate(cfg)
    data = prepare_data(cfg, load_registry(), prepare=True, progress=False)
    steps = len(
        epoch_batches(
            len(data.splits["train"]), cfg.train.batch_size, cfg.train.seed, 0, Dist(), cfg.train.max_steps_per_epoch
        )
    )
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 3") as err:
        run(cfg, run_dir(tmp_path))
    assert "last good checkpoint is kept" in str(err.value)
    state = ckpt.load(run_dir(tmp_path) / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(state["run_id"]).info.status == "FAILED"
    monkeypatch.setattr(core.tasks.train, "build_loss", real_build)
    resumed = run(tiny("train.epochs=3", "train.resume=auto"), tmp_path / "ignored")  # and it resumes
    assert resumed.run_id == state["run_id"]
    check_run(cfg.tracking.uri, resumed.run_id, 3)


# --- full disk --------------------------------------------------------------------------------------


def _fill_disk_on(monkeypatch, module, name: str, nth: int, target_arg: int) -> None:
    """The ``nth`` call of ``module.name`` (a writer whose positional argument ``target_arg`` is the
    file) writes part of the file, then hits ENOSPC."""
    real = getattr(module, name)
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            with open(args[target_arg], "wb") as fh:
                fh.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tiny, tmp_path, monkeypatch):
    # epoch 1 writes best.pt and last.pt (saves 1, 2); epoch 2's first save fails
    _fill_disk_on(monkeypatch, torch, "save", nth=3, target_arg=1)
    cfg = tiny("train.epochs=2")
    with pytest.raises(ckpt.CheckpointError, match="no space left") as err:
        run(cfg, run_dir(tmp_path))
    assert "train.resume" in str(err.value)
    folder = run_dir(tmp_path) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
    assert ckpt.load(folder / "last.pt")["epoch"] == 0
    assert MlflowClient(cfg.tracking.uri).get_run(ckpt.load(folder / "last.pt")["run_id"]).info.status == "FAILED"


def test_disk_full_while_rewriting_a_cache_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "logits-x.npy"
    old = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(path, old)
    _fill_disk_on(monkeypatch, np, "save", nth=1, target_arg=0)
    with pytest.raises(OSError, match="No space left"):  # 4 rows wanted: the 3-row file is rebuilt
        core.stages.teacher.passes.cached_array(path, 4, lambda: np.zeros((4, 2), np.float32))
    assert np.array_equal(np.load(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["logits-x.npy"]


# --- bad audio in the dataset -------------------------------------------------------------------------


def test_bad_wavs_are_skipped_counted_logged_and_reported_to_mlflow(tiny, tmp_path, caplog):
    import logging

    from tests.plugins.datasets.test_nsynth import write_local_copy

    copy = write_local_copy(tmp_path / "nsynth_copy")
    train_audio = sorted((copy / "nsynth-train" / "audio").glob("bass_*.wav"))
    train_audio[0].write_bytes(os.urandom(700))  # corrupt
    train_audio[1].write_bytes(b"")  # empty
    train_audio[2].write_bytes(train_audio[2].read_bytes()[:200])  # truncated
    train_audio[3].unlink()  # listed, file missing
    cfg = tiny(
        "data.dataset=NSynth",
        "data.classes=[bass,string,reed]",
        f"data.options.NSynth.local_dir={copy}",
        f"data.root={tmp_path / 'root'}",
        "train.epochs=1",
        "train.batch_size=4",
    )
    with caplog.at_level(logging.INFO):
        result = run(cfg, run_dir(tmp_path))  # training goes on
    metrics = MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.metrics
    assert metrics["skipped_clips_train"] == 4 and metrics["skipped_clips_valid"] == 0
    assert "skipped 3 of" in caplog.text and "1 entries of examples.json have no WAV file" in caplog.text
    assert "train: 14 clips (4 skipped)" in caplog.text
    assert int(MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.params["n_train"]) == 18 - 4


def test_a_parent_run_outlives_its_server_too(tiny, tmp_path, own_server, capsys):
    from core.tracking import parent_run

    cfg = tiny(f"tracking.uri={own_server.url}")
    with parent_run(cfg, "compare", run_dir=tmp_path / "compare") as parent:
        own_server.stop(hard=True)
        parent.log_metrics({"summary_acc": 0.5}, step=0)
    assert "python -m core.sync" in capsys.readouterr().err
    own_server.start()
    assert core.sync.main([str(tmp_path / "compare")]) == 0
    stored = MlflowClient(own_server.url).get_run(parent.run_id)
    assert stored.info.status == "FINISHED" and stored.data.metrics["summary_acc"] == 0.5


def test_sync_to_another_server_keeps_a_line_cut_short_by_a_kill(tmp_path, own_server):
    client = MlflowClient(own_server.url)
    run_id = client.create_run(client.create_experiment("moved")).info.run_id
    old = f"http://127.0.0.1:{free_port()}"
    spool = tmp_path / PENDING
    spool.write_text(
        json.dumps({"uri": old, "run_id": run_id, "op": "metrics", "items": [["a", 1.0, 0, 1]]})
        + "\n"
        + '{"uri": "'
        + old
        + '", "run_id": "'
        + run_id
        + '", "op": "metr'
        + "\n"
    )
    assert core.sync.main([str(tmp_path), "--uri", own_server.url]) == 0
    assert [m.value for m in client.get_metric_history(run_id, "a")] == [1.0]
    assert not spool.exists()
