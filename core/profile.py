"""The profiling stage: params and MACs of the student (and teacher) for the configured input.

``python -m core.run experiment=profile_macs model.student.arch=... model.student.width_mult=...``
counts with every profiler plugin named in ``profilers`` (default ``thop`` and ``flop_counter``),
prints one table, and writes ``macs.json`` + ``macs.md`` into the run folder and MLflow. Two
tools that disagree by more than :data:`TOLERANCE` get a note naming the module types the
difference comes from. The student's input is what the data/aug config implies (4 s at 16 kHz,
hop 160 -> ``1x1x128x401``); the teacher's is the waveform, its own front end included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from core.data import build_dataset
from core.features import LogMelFrontend
from core.registry import Registry
from core.teacher import RANDOM_INIT  # MACs do not depend on the weights: none are loaded
from core.tracking import Tracker, flatten, resolve_uri

#: Largest relative difference between two tools' MACs that needs no explanation.
TOLERANCE = 0.15


def compare(model: nn.Module, example: Any, profiles: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One report row from each tool's ``Profile`` (``params``, ``macs``, ``notes``, ``by_module``).

    ``diff_pct`` compares the first two tools: ``(second - first) / max(both)`` in percent.
    """
    tools = list(profiles)
    first = profiles[tools[0]]
    shape = [list(x.shape) for x in (example if isinstance(example, tuple) else (example,))
             if isinstance(x, torch.Tensor)]
    row: dict[str, Any] = {"model": name, "input_shape": shape[0] if len(shape) == 1 else shape,
                           "params": first.params, "trainable_params": first.trainable_params}
    row.update({f"macs_{tool}": p.macs for tool, p in profiles.items()})
    notes = [n for p in profiles.values() for n in p.notes]
    if len(tools) >= 2:
        a, b = profiles[tools[0]], profiles[tools[1]]
        diff = (b.macs - a.macs) / max(a.macs, b.macs, 1)
        row["diff_pct"] = round(100 * diff, 2)
        row["within_tolerance"] = abs(diff) <= TOLERANCE
        if not row["within_tolerance"]:
            notes.append(f"{tools[0]} and {tools[1]} differ by {100 * diff:+.1f}% (tolerance "
                         f"{100 * TOLERANCE:.0f}%): {explain(model, a, b, tools[1], tools[0])}")
    row["notes"] = notes
    return row


def explain(model: nn.Module, a: Any, b: Any, b_name: str, a_name: str, top: int = 3) -> str:
    """The module types that account for most of the difference between two profiles, from
    their per-module counts (modules one tool has no entry for count as 0 there)."""
    diff_by_type: dict[str, int] = defaultdict(int)
    in_units = 0
    for name, macs in a.by_module.items():
        if name == "":
            continue
        other = b.by_module.get(name, 0)
        in_units += other
        diff_by_type[type(model.get_submodule(name)).__name__] += other - macs
    diff_by_type[f"(ops outside {a_name}'s modules)"] = b.macs - in_units
    ranked = sorted(((d, t) for t, d in diff_by_type.items() if d), key=lambda x: -abs(x[0]))[:top]
    return "; ".join(f"{t} {d / 1e6:+.3f} M MACs ({b_name} - {a_name})" for d, t in ranked)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    tools = [k for k in rows[0] if k.startswith("macs_")] if rows else []
    cols = [("model", "model"), ("input_shape", "input"), ("params", "params")]
    cols += [(k, f"MACs {k.removeprefix('macs_')}") for k in tools]
    if rows and "diff_pct" in rows[0]:
        cols.append(("diff_pct", "diff %"))
    return cols


def _cells(row: Mapping[str, Any], cols: list[tuple[str, str]]) -> list[str]:
    def cell(key: str) -> str:
        value = row.get(key, "")
        if key == "input_shape":
            return "x".join(map(str, value)) if value and isinstance(value[0], int) else str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:+.2f}"
        return str(value)

    return [cell(key) for key, _ in cols]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of report rows, for the terminal."""
    cols = _columns(rows)
    table = [[title for _, title in cols], *(_cells(r, cols) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``macs.json`` (the rows as they are) and ``macs.md`` (a table plus the notes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "macs.json", out_dir / "macs.md"
    json_path.write_text(json.dumps(list(rows), indent=2) + "\n")
    cols = _columns(rows)
    md = ["| " + " | ".join(title for _, title in cols) + " |",
          "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    md += ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    md += ["", f"MACs = multiply-accumulates of one forward pass (batch 1); diff % = (second tool - first) / "
               f"max(both); tolerance {100 * TOLERANCE:.0f}%."]
    for r in rows:
        md += ["", f"**{r['model']}**", *(f"- {note}" for note in r.get("notes", []))]
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path


def profile_model(registry: Registry, tools: Sequence[str], model: nn.Module, example: Any,
                  name: str) -> dict[str, Any]:
    profiles = {tool: registry.build("profiler", tool).profile(model, example) for tool in tools}
    return compare(model, example, profiles, name)


def run_profile(cfg: DictConfig, registry: Registry, run_dir: Path) -> list[dict[str, Any]]:
    """Profile the configured student (and teacher, when ``model.teacher.name`` is set); print the
    table, write the report into ``run_dir`` and log it to MLflow. Returns the rows."""
    from core.teaching import build_member

    num_classes = len(build_dataset(cfg, registry).class_names)  # no download: only the class list
    s = cfg.model.student
    options = OmegaConf.to_container(s.options, resolve=True) or {}
    student = registry.build("student", s.arch, num_classes=num_classes, width_mult=s.width_mult,
                             bn_momentum=s.bn_momentum, **options)
    clip_samples = round(cfg.data.clip_seconds * cfg.aug.sr)
    frames = LogMelFrontend.from_config(cfg.aug).num_frames(clip_samples)
    rows = [profile_model(registry, cfg.profilers, student, torch.zeros(1, 1, cfg.aug.n_mels, frames),
                          f"student {s.arch} x{s.width_mult}")]
    if cfg.model.teacher.name:
        tcfg = OmegaConf.merge(cfg, {"model": {"teacher": {"checkpoint": RANDOM_INIT, "freeze": False,
                                                           "unfreeze_last_n": 0}}})
        teacher = build_member(tcfg, registry, num_classes)
        rows.append(profile_model(registry, cfg.profilers, teacher, torch.zeros(1, clip_samples),
                                  f"teacher {cfg.model.teacher.name} (front end included)"))
    print(format_table(rows))
    for r in rows:
        for note in r["notes"]:
            print(f"  {r['model']}: {note}")
    json_path, md_path = write_report(rows, run_dir)

    tracker = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    tracker.start(run_name=cfg.tracking.run_name or cfg.name)
    tracker.set_tags({"stage": "profile", "student": s.arch})
    tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
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


__all__ = ["TOLERANCE", "compare", "explain", "format_table", "profile_model", "run_profile", "write_report"]
