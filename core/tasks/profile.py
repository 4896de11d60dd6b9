"""``task=profile``: params and MACs of the configured student (and teacher) for the configured input.

``python -m core.run experiment=profile_macs model.student.arch=... model.student.width_mult=...``
counts with every MAC counter named in ``profilers`` (default ``thop`` and ``flop_counter``),
prints one table, and writes ``macs.json`` + ``macs.md`` into the run folder and MLflow. No data
is downloaded: only the dataset's class list is read, and the teacher is built with random
weights (MACs do not depend on them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from omegaconf import DictConfig

from core.audio.frontend import LogMelFrontend
from core.config import as_dict
from core.data import build_dataset
from core.engine.model import student_network
from core.registry import Registry
from core.registry.contracts import RANDOM_INIT
from core.stages.profile import format_table, profile_model, write_report
from core.stages.teacher import TeacherPlan
from core.tracking import Tracker, flatten, resolve_uri


def run_profile(cfg: DictConfig, registry: Registry, run_dir: Path) -> list[dict[str, Any]]:
    """Profile the configured student (and teacher, when ``model.teacher.name`` is set); print the
    table, write the report into ``run_dir`` and log it to MLflow. Returns the rows."""
    num_classes = len(build_dataset(cfg, registry).class_names)  # no download: only the class list
    s = cfg.model.student
    student = student_network(cfg, registry, num_classes)
    clip_samples = round(cfg.data.clip_seconds * cfg.aug.sr)
    frames = LogMelFrontend.from_config(cfg.aug).num_frames(clip_samples)
    rows = [
        profile_model(
            registry,
            cfg.profilers,
            student,
            torch.zeros(1, 1, cfg.aug.n_mels, frames),
            f"student {s.arch} x{s.width_mult}",
        )
    ]
    if cfg.model.teacher.name:
        plan = attrs.evolve(
            TeacherPlan.from_config(cfg, registry), checkpoint=RANDOM_INIT, freeze=False, unfreeze_last_n=0
        )
        rows.append(
            profile_model(
                registry,
                cfg.profilers,
                plan.build_member(registry, num_classes),
                torch.zeros(1, clip_samples),
                f"teacher {cfg.model.teacher.name} (front end included)",
            )
        )
    print(format_table(rows))
    for r in rows:
        for note in r["notes"]:
            print(f"  {r['model']}: {note}")
    json_path, md_path = write_report(rows, run_dir)

    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    tracker.start(run_name=cfg.tracking.run_name or cfg.name)
    tracker.set_tags({"stage": "profile", "student": s.arch})
    tracker.log_params(flatten(as_dict(cfg)))
    metrics: dict[str, float] = {}
    for r, who in zip(rows, ("student", "teacher")):
        metrics[f"{who}_params"] = r["params"]
        metrics.update({f"{who}_{k}": v for k, v in r.items() if k.startswith("macs_")})
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifact(json_path, "profile")
    tracker.log_artifact(md_path, "profile")
    tracker.end("FINISHED")
    print(f"report: {md_path}\nMLflow: {tracker.run_url()}")
    return rows


__all__ = ["run_profile"]
