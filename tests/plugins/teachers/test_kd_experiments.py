"""kd_passt and kd_ast, run by name end to end on the tiny GMNotes render, with the teacher's
weights coming in through the users' path: a state_dict downloaded from a loopback HTTP server
(PaSST) and a ``save_pretrained`` folder (AST)."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

from core.run import run
from plugins.teachers.ast import AST_TINY
from tests.conftest import sqlite_store
from tests.plugins.teachers.test_passt import tiny_state

TINY_DATA = (
    "data.dataset=GMNotes",
    "data.classes=[bass,flute,keyboard]",
    "data.options.GMNotes.notes_per_instrument=4",
    "data.options.GMNotes.velocities=[75,127]",
    "model.student.width_mult=0.35",
    "train.epochs=1",
    "train.batch_size=16",
    "model.teacher.epochs=3",
    "model.teacher.batch_size=16",
)


@pytest.fixture
def kd(compose, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOKD_CACHE", str(tmp_path / "cache"))

    def make(experiment: str, *overrides: str):
        cfg = compose(
            f"experiment={experiment}",
            f"data.root={data_root}",
            f"train.out_dir={tmp_path / 'out'}",
            f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
            f"model.teacher.cache_dir={tmp_path / 'teachers'}",
            *TINY_DATA,
            *overrides,
        )
        return run(cfg, tmp_path / "out" / experiment), cfg

    return make


def check(cfg, result, teacher: str, checkpoint: str) -> None:
    client = MlflowClient(cfg.tracking.uri)
    r = client.get_run(result.run_id)
    assert r.data.tags["stage"] == "kd" and r.data.params["model.teacher.name"] == teacher
    assert r.data.params["model.teacher.checkpoint"] == checkpoint
    assert r.data.params["model.teacher.freeze"] == "True" and r.data.params["model.kd.enabled"] == "True"
    assert {"train_loss_kd", "train_loss_ce", "teacher_val_acc", "test_acc"} <= set(r.data.metrics)


def test_kd_passt_distils_from_a_downloaded_state_dict(kd, file_server):
    torch.save(tiny_state(), file_server.root / "passt-tiny.pt")
    url = f"{file_server.url}/passt-tiny.pt"
    result, cfg = kd("kd_passt", "model.teacher.name=passt_tiny", f"model.teacher.checkpoint={url}")
    check(cfg, result, "passt_tiny", url)
    assert file_server.gets == ["/passt-tiny.pt"]  # downloaded once


def test_kd_ast_distils_from_a_save_pretrained_folder(kd, tmp_path):
    folder = tmp_path / "ast-tiny"
    ASTForAudioClassification(ASTConfig(**AST_TINY, max_length=1024, num_labels=5)).save_pretrained(folder)
    ASTFeatureExtractor(max_length=1024).save_pretrained(folder)
    result, cfg = kd("kd_ast", "model.teacher.name=ast_tiny", f"model.teacher.checkpoint={folder}")
    check(cfg, result, "ast_tiny", str(folder))
    assert params(cfg, result)["teacher_checkpoint"] == str(folder)


def test_a_teacher_checkpoint_is_known_by_its_content_and_the_default_is_logged_resolved(kd, tmp_path, monkeypatch):
    """The same weights under another path are the same teacher (trained once); other weights under
    the same path are another; a KD run without model.teacher.checkpoint logs the default it used."""
    from plugins.teachers import ast as ast_plugin

    def save(folder, seed):
        torch.manual_seed(seed)
        ASTForAudioClassification(ASTConfig(**AST_TINY, max_length=1024, num_labels=5)).save_pretrained(folder)
        ASTFeatureExtractor(max_length=1024).save_pretrained(folder)

    save(tmp_path / "a", seed=0)
    save(tmp_path / "copy", seed=0)  # the same bytes, elsewhere
    monkeypatch.setattr(ast_plugin, "AST_BASE_CHECKPOINT", str(tmp_path / "a"))  # as if the hub default
    first, cfg = kd("kd_ast", "model.teacher.name=ast_base")
    p = params(cfg, first)
    assert p["model.teacher.checkpoint"] == "None" and p["teacher_checkpoint"] == str(tmp_path / "a")
    copy, _ = kd("kd_ast", "model.teacher.name=ast_base", f"model.teacher.checkpoint={tmp_path / 'copy'}")
    assert params(cfg, copy)["teacher_key"] == p["teacher_key"] and teacher_runs(cfg) == 1  # reused
    save(tmp_path / "copy", seed=1)  # other weights, same path
    other, _ = kd("kd_ast", "model.teacher.name=ast_base", f"model.teacher.checkpoint={tmp_path / 'copy'}")
    assert params(cfg, other)["teacher_weights"] != p["teacher_weights"] and teacher_runs(cfg) == 2


def params(cfg, result) -> dict[str, str]:
    return MlflowClient(cfg.tracking.uri).get_run(result.run_id).data.params


def teacher_runs(cfg) -> int:
    client = MlflowClient(cfg.tracking.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(exps, filter_string="tags.stage = 'teacher'"))


def test_spec_overrides_compose(compose):
    cfg = compose("model.teacher.name=passt_base", "model.kd.enabled=true", "model.kd.T=3.0", "model.kd.alpha=0.7")
    assert cfg.model.teacher.name == "passt_base" and cfg.model.kd.enabled and cfg.model.kd.T == 3.0
    for name in ("kd_passt", "kd_ast", "kd_gmnotes", "compare_kd", "demo", "profile_macs"):
        c = compose(f"experiment={name}")
        assert c.name == name
    assert compose("experiment=compare_kd").model.teacher.ensemble == 3  # inherited from kd_gmnotes
