"""The example third-party plugin package (examples/audiokd-plugin-example) installed the way a user
installs one, into a folder outside the project's packages; then listed, checked and trained by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import core.list
from core.api import UnknownOptionError
from core.engine import checkpoint as ckpt
from core.run import run

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "audiokd-plugin-example"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``pip install`` of the example into its own site folder (no network: the project's setuptools
    builds it), which then goes on sys.path and PYTHONPATH as a second site-packages would."""
    site, source = tmp_path / "site", tmp_path / "source"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: keep the repository clean
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (site / "audiokd_example" / "plugins.py").is_file()
    assert not str(site).startswith(str(REPO))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return site


def test_the_example_package_is_listed_with_its_options(installed, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "220")
    assert core.list.main(["--options"]) == 0  # what `python -m core.list --options` runs
    out = capsys.readouterr().out
    student = next(line for line in out.splitlines() if "acme_cnn" in line and "student" in line)
    teacher = next(line for line in out.splitlines() if "acme_wave_teacher" in line)
    assert "audiokd-plugin-example" in student and "audiokd-plugin-example" in teacher
    assert "model.student.options.channels" in out and "model.teacher.options.width" in out


def test_the_example_student_and_teacher_train_by_name_with_kd(installed, tiny, tmp_path):
    cfg = tiny(
        "model.student.arch=acme_cnn",
        "model.student.options.channels=4",
        "model.kd.enabled=true",
        "model.teacher.name=acme_wave_teacher",
        "model.teacher.freeze=false",
        "model.teacher.epochs=1",
        "train.epochs=1",
    )
    result = run(cfg, tmp_path / "outputs" / "acme")
    client = MlflowClient(cfg.tracking.uri)
    kd_run = client.get_run(result.run_id)
    assert kd_run.info.status == "FINISHED" and kd_run.data.tags["teacher"] == "acme_wave_teacher"
    assert "train_loss_kd" in kd_run.data.metrics
    assert kd_run.data.params["model.student.options.channels"] == "4"  # the option in effect is logged
    teacher_runs = client.search_runs([kd_run.info.experiment_id], filter_string="tags.stage = 'teacher'")
    assert [r.data.tags["teacher"] for r in teacher_runs] == ["acme_wave_teacher"]
    state = ckpt.load(result.run_dir / "checkpoints" / "last.pt")
    assert state["config"]["model"]["student"]["arch"] == "acme_cnn"
    assert any(k.startswith("net.body") for k in state["model"])  # the plugin's own module names


def test_the_example_students_options_are_checked_before_any_data_work(installed, tiny, tmp_path):
    with pytest.raises(UnknownOptionError) as err:
        run(
            tiny("model.student.arch=acme_cnn", "+model.student.options.chanels=4", f"data.root={tmp_path / 'fresh'}"),
            tmp_path / "outputs" / "bad",
        )
    assert "chanels" in str(err.value) and "channels (default 8)" in str(err.value)
    assert not (tmp_path / "fresh").exists()
