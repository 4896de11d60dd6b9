"""Student-only vs KD, same data, epochs and seeds: the comparison the spec's Step 2 asks for.

``task=compare`` trains, for each seed in ``compare.seeds``, one student-only run and one KD run
(``model.kd.enabled`` forced off/on, everything else identical), after the teacher stage has made
(or found) the teacher. It prints and logs one table: mean +- std over seeds of val/test accuracy
and macro-F1 per arm, with params and MACs, and the teacher's own scores; plus a bar plot. The
runs are children of one parent MLflow run (tag ``mlflow.parentRunId``), so the UI groups them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.registry import Registry
from core.tracking import Tracker, flatten, resolve_uri

METRICS = (("best_val_acc", "val acc"), ("best_val_f1", "val macro-F1"), ("test_acc", "test acc"),
           ("test_f1", "test macro-F1"))
ARMS = (("student", False), ("kd", True))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean and std of every metric over its runs, and the run count."""
    out: dict[str, dict[str, Any]] = {}
    for arm, _ in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        row: dict[str, Any] = {"n": len(mine), "params": mine[0]["params"], "macs": mine[0]["macs"]}
        for key, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in mine])
        out[arm] = row
    return out


def format_table(summary: dict[str, dict[str, Any]], teacher: dict[str, Any] | None) -> str:
    """Markdown table: one row per arm (mean +- std over seeds) and the teacher's own scores."""
    head = ["", "runs", *(title for _, title in METRICS), "params", "MACs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    names = {"student": "student only", "kd": "student + KD"}
    for arm, row in summary.items():
        cells = [names[arm], str(row["n"])]
        cells += [f"{row[f'{k}_mean']:.3f} ± {row[f'{k}_std']:.3f}" if row["n"] > 1 else f"{row[f'{k}_mean']:.3f}"
                  for k, _ in METRICS]
        cells += [f"{row['params'] / 1e6:.3f} M", f"{row['macs'] / 1e6:.1f} M"]
        lines.append("| " + " | ".join(cells) + " |")
    if teacher:
        cells = [f"teacher {teacher['name']}", "1", f"{teacher['teacher_val_acc']:.3f}",
                 f"{teacher['teacher_val_f1']:.3f}", f"{teacher['teacher_test_acc']:.3f}",
                 f"{teacher['teacher_test_f1']:.3f}", f"{teacher['params'] / 1e6:.3f} M",
                 f"{teacher['macs'] / 1e6:.1f} M" if teacher.get("macs") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], teacher: dict[str, Any] | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / (len(summary) + (1 if teacher else 0))
    xs = range(len(METRICS))
    for i, (arm, row) in enumerate(summary.items()):
        ax.bar([x + i * width for x in xs], [row[f"{k}_mean"] for k, _ in METRICS], width,
               yerr=[row[f"{k}_std"] for k, _ in METRICS], capsize=3, label=f"{arm} (n={row['n']})")
    if teacher:
        keys = ("teacher_val_acc", "teacher_val_f1", "teacher_test_acc", "teacher_test_f1")
        ax.bar([x + len(summary) * width for x in xs], [teacher[k] for k in keys], width, label="teacher",
               color="0.6")
    ax.set_xticks([x + width * (len(summary) - (0 if teacher else 1)) / 2 for x in xs])
    ax.set_xticklabels([title for _, title in METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_compare(cfg: DictConfig, registry: Registry, run_dir: Path) -> dict[str, Any]:
    """Train every (seed, arm) pair, then report. Returns ``{"runs", "summary", "teacher"}``."""
    from core.train import fit

    parent = Tracker(resolve_uri(cfg.tracking.uri), cfg.tracking.experiment)
    parent_id = parent.start(run_name=cfg.tracking.run_name or cfg.name)
    parent.set_tags({"stage": "compare", "teacher": cfg.model.teacher.name})
    parent.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    runs: list[dict[str, Any]] = []
    teacher: dict[str, Any] | None = None
    try:
        for seed in cfg.compare.seeds:
            for arm, kd in ARMS:
                child = OmegaConf.merge(cfg, {"task": "train", "train": {"seed": int(seed)},
                                              "model": {"kd": {"enabled": kd}},
                                              "tracking": {"run_name": f"{cfg.name}-{arm}-seed{seed}"}})
                print(f"\n=== {arm}, seed {seed} ===", flush=True)
                result = fit(child, registry, run_dir / f"{arm}-seed{seed}", parent_run_id=parent_id)
                m = result.metrics
                runs.append({"arm": arm, "seed": int(seed), "run_id": result.run_id,
                             **{k: m[k] for k, _ in METRICS}, "params": m["student_params"],
                             "macs": m.get(f"student_macs_{cfg.profilers[0]}", 0) if cfg.profilers else 0})
                if kd and teacher is None:
                    macs_key = f"teacher_macs_{cfg.profilers[0]}" if cfg.profilers else ""
                    teacher = {"name": cfg.model.teacher.name, "params": m["teacher_params"],
                               "macs": m.get(macs_key),
                               **{k: m[k] for k in ("teacher_val_acc", "teacher_val_f1",
                                                    "teacher_test_acc", "teacher_test_f1")}}
        summary = summarize(runs)
        table = format_table(summary, teacher)
        print("\n" + table, flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "compare.md").write_text(
            table + "\n\nmean ± std over seeds " + ", ".join(map(str, cfg.compare.seeds)) +
            "; val = best epoch by val macro-F1, test = that checkpoint. Decision rule: argmax over classes "
            "(multiclass, no threshold).\n")
        (run_dir / "compare.json").write_text(json.dumps({"runs": runs, "summary": summary, "teacher": teacher},
                                                         indent=2))
        plot(summary, teacher, run_dir / "compare.png")
        for name in ("compare.md", "compare.json", "compare.png"):
            parent.log_artifact(run_dir / name, "compare")
        parent.log_metrics({f"{arm}_{k}": v for arm, row in summary.items() for k, v in row.items()
                            if k.endswith(("_mean", "_std"))}, step=0)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    print(f"MLflow: {parent.run_url()}")
    return {"runs": runs, "summary": summary, "teacher": teacher}


__all__ = ["format_table", "mean_std", "run_compare", "summarize"]
