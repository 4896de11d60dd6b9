"""``task=export``: every student of ``export.sources`` (and the teacher) exported to ONNX, checked
against PyTorch on real test clips and timed; one table, logged to an MLflow run (stage export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from core.data import prepare_data
from core.engine.distributed import pick_device
from core.engine.loop import evaluate
from core.engine.settings import TrainSettings
from core.registry import Registry
from core.stages.export import export_and_time, parity_clips, student_row, teacher_row, write_report
from core.stages.prune import load_student_source
from core.stages.teacher import prepare_teacher
from core.tracking import parent_run, resolve_uri


def run_export(cfg: DictConfig, registry: Registry, run_dir: Path) -> list[dict[str, Any]]:
    """Export, check and time the students (scored on the test split now) and the teacher."""
    data = prepare_data(cfg, registry, prepare=True, progress=False)
    uri = resolve_uri(cfg.tracking.uri)
    test = data.splits["test"]
    settings = TrainSettings.from_config(cfg.train, clip_seconds=cfg.data.clip_seconds)
    models: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(cfg.export.sources):
        # any student of these classes: it is rebuilt from its own config
        source = load_student_source(spec, None, data.class_names, uri, what="export.sources")
        row = student_row(list(cfg.profilers), registry, source.state, test.clip_samples)
        s = evaluate(row["module"], test, settings, torch.device("cpu"))
        row.update(test_acc=s.acc, test_f1=s.f1)
        models[f"student{i}-{source.path.parent.parent.name}"] = row
    if cfg.export.teacher and cfg.model.teacher.name:
        t = prepare_teacher(cfg, registry, data, pick_device(cfg.train.device))
        models[f"teacher-{t.name}"] = teacher_row(list(cfg.profilers), t)
    with parent_run(cfg, "export", run_dir=run_dir) as tracker:
        rows = export_and_time(
            cfg.export, registry, models, parity_clips(cfg.export.parity_clips, data), run_dir / "export"
        )
        table = write_report(rows, cfg.export, run_dir / "export", tracker)
        print("\n" + table + f"\nONNX files: {run_dir / 'export'}", flush=True)
    return rows


__all__ = ["run_export"]
