"""Progress of long stages: a rich bar with ETA on a terminal, plain log lines with ETA elsewhere."""

from __future__ import annotations

import logging

import numpy as np
import torch

import core.util.progress
from core.run import run
from core.stages.teacher.passes import run_pass
from core.util.progress import StageProgress
from tests.e2e.test_train import run_dir


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_carry_elapsed_time_and_eta(monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(core.util.progress.time, "monotonic", clock)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="t"):
        bar = StageProgress("decoded", total=40, noun="files", log_every_s=10, logger=logging.getLogger("t")).start(40)
        clock.now += 5
        bar.update(advance=10)  # 5 s since the last line: nothing yet
        clock.now += 5
        bar.update(advance=10)  # 20 of 40 in 10 s: 10 s left
        clock.now += 5
        bar.update(advance=20)
        bar.stop()
    assert caplog.messages == ["decoded 20/40 files (10 s, ETA 10 s)", "decoded 40/40 files (15 s)"]


def test_training_epochs_and_teacher_logits_show_bars_on_a_terminal(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    run(tiny("train.epochs=2"), run_dir(tmp_path))
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err

    class Waves:
        def __len__(self):
            return 10

        def batch(self, idx):
            idx = list(idx)
            return torch.zeros(len(idx), 4), torch.zeros(len(idx))

    out = run_pass(torch.nn.Linear(4, 3), Waves(), torch.device("cpu"), batch_size=4)
    assert out.shape == (10, 3) and np.isfinite(out).all()
    assert "teacher logits" in capsys.readouterr().err


def test_without_a_terminal_no_bar_is_drawn_and_stages_log_lines(tiny, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="core.stages.teacher.passes"):
        run(
            tiny(
                "train.epochs=1",
                "model.kd.enabled=true",
                "model.teacher.name=mobilenet_v3_small",
                "model.teacher.freeze=false",
                "model.teacher.epochs=1",
                "+model.teacher.options.width_mult=0.35",
            ),
            run_dir(tmp_path),
        )
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.err  # no terminal control codes in a log file
    assert any(m.startswith("teacher logits ") and " clips (" in m for m in caplog.messages)
    assert "epoch 1/1  loss" in captured.out  # one summary line per epoch
