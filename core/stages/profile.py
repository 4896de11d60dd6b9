"""Costs of a model: params and MACs from every MAC counter named in ``profilers``, cross-checked.

Every training run logs its student's (:func:`student_costs`); ``task=profile`` prints a table of
the student and teacher (:func:`profile_model` rows, written by :func:`write_report`). Two tools
that disagree by more than :data:`TOLERANCE` get a note naming the module types the difference
comes from. The student's input is what the data/aug config implies (4 s at 16 kHz, hop 160 ->
``1x1x128x401``); the teacher's is the waveform, its own front end included.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.engine.model import AudioClassifier, network_input
from core.registry import Registry
from core.registry.contracts import Profile

#: Largest relative difference between two tools' MACs that needs no explanation.
TOLERANCE = 0.15


def compare(model: nn.Module, example: Any, profiles: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One report row from each tool's ``Profile`` (``params``, ``macs``, ``notes``, ``by_module``).

    ``diff_pct`` compares the first two tools: ``(second - first) / max(both)`` in percent.
    """
    tools = list(profiles)
    first = profiles[tools[0]]
    shape = [
        list(x.shape) for x in (example if isinstance(example, tuple) else (example,)) if isinstance(x, torch.Tensor)
    ]
    row: dict[str, Any] = {
        "model": name,
        "input_shape": shape[0] if len(shape) == 1 else shape,
        "params": first.params,
        "trainable_params": first.trainable_params,
    }
    row.update({f"macs_{tool}": p.macs for tool, p in profiles.items()})
    notes = [n for p in profiles.values() for n in p.notes]
    if len(tools) >= 2:
        a, b = profiles[tools[0]], profiles[tools[1]]
        diff = (b.macs - a.macs) / max(a.macs, b.macs, 1)
        row["diff_pct"] = round(100 * diff, 2)
        row["within_tolerance"] = abs(diff) <= TOLERANCE
        if not row["within_tolerance"]:
            notes.append(
                f"{tools[0]} and {tools[1]} differ by {100 * diff:+.1f}% (tolerance "
                f"{100 * TOLERANCE:.0f}%): {explain(model, a, b, tools[1], tools[0])}"
            )
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
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``macs.json`` (the rows as they are) and ``macs.md`` (a table plus the notes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "macs.json", out_dir / "macs.md"
    json_path.write_text(json.dumps(list(rows), indent=2) + "\n")
    cols = _columns(rows)
    md = [
        "| " + " | ".join(title for _, title in cols) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|",
    ]
    md += ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    md += [
        "",
        f"MACs = multiply-accumulates of one forward pass (batch 1); diff % = (second tool - first) / "
        f"max(both); tolerance {100 * TOLERANCE:.0f}%.",
    ]
    for r in rows:
        md += ["", f"**{r['model']}**", *(f"- {note}" for note in r.get("notes", []))]
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path


def profile_model(
    registry: Registry, tools: Sequence[str], model: nn.Module, example: Any, name: str
) -> dict[str, Any]:
    """One report row: every tool's count of ``model`` on ``example``, compared."""
    profiles = {tool: registry.build("profiler", tool).profile(model, example) for tool in tools}
    return compare(model, example, profiles, name)


def cross_check(registry: Registry, model: nn.Module, example: Any, name: str | None = None) -> dict[str, Any]:
    """``thop`` against ``flop_counter`` on one model: one report row (:func:`compare`), whose
    ``diff_pct`` is ``(flop_counter - thop) / max(both)`` in percent and whose notes, beyond the
    tolerance, say where the tools disagree by module type."""
    return profile_model(registry, ("thop", "flop_counter"), model, example, name or type(model).__name__)


def student_costs(
    registry: Registry, tools: Sequence[str], model: AudioClassifier, clip_samples: int
) -> dict[str, float]:
    """``student_params`` and ``student_macs_<tool>`` of the student network (front end excluded)
    for one clip's log-mel ``[1, 1, n_mels, frames]``, from each MAC counter in ``tools``."""
    example = network_input(model, clip_samples)
    metrics: dict[str, float] = {}
    for name in tools:
        p: Profile = registry.build("profiler", name).profile(model.net, example)
        metrics.update({"student_params": p.params, f"student_macs_{name}": p.macs})
    return metrics


def first_macs(costs: dict[str, float]) -> float | None:
    """The first ``student_macs_<tool>`` of a costs dict (the table's MACs column)."""
    return next((v for k, v in costs.items() if k.startswith("student_macs_")), None)


__all__ = [
    "TOLERANCE",
    "compare",
    "cross_check",
    "explain",
    "first_macs",
    "format_table",
    "profile_model",
    "student_costs",
    "write_report",
]
