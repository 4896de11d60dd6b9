"""Accuracy against cost: student widths x prune ratios, fine-tuned with and without KD (``task=pareto``).

For each width in ``pareto.widths`` a student is trained (CE, ``train.epochs``); its best
checkpoint is then pruned at each ratio of ``pareto.ratios`` and fine-tuned for ``prune.epochs``
with CE and/or KD (``pareto.kd``). Every model is exported and timed (core/export.py), and the
parent MLflow run gets the table (``pareto.md``/``.json``) and the plot (test accuracy vs MACs
and vs onnxruntime latency, ``pareto.png``), with the Pareto-optimal points marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from core.config import merged
from core.data import prepare_data
from core.engine.state import TrainState
from core.registry import Registry
from core.stages.export import export_and_time, parity_clips, student_row, write_report
from core.tasks.children import child_run, family
from core.tracking import parent_run


def pareto_front(points: list[dict[str, Any]], cost: str, value: str = "test_acc") -> set[int]:
    """Indices of the points no other point beats on both ``cost`` (lower) and ``value`` (higher)."""
    front = set()
    for i, p in enumerate(points):
        if p.get(cost) is None:
            continue
        dominated = any(
            q.get(cost) is not None
            and q[cost] <= p[cost]
            and q[value] >= p[value]
            and (q[cost] < p[cost] or q[value] > p[value])
            for q in points
        )
        if not dominated:
            front.add(i)
    return front


def format_table(points: list[dict[str, Any]]) -> str:
    front = pareto_front(points, "macs")
    head = [
        "width",
        "prune ratio",
        "fine-tune",
        "params",
        "MACs",
        "latency torch (ms)",
        "latency onnxruntime (ms)",
        "after prune test acc",
        "test acc",
        "test macro-F1",
        "Pareto (MACs)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for i, p in enumerate(points):
        after = p.get("after_prune_test_acc")
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{p['width']:g}",
                    f"{p['ratio']:g}" if p["ratio"] else "-",
                    p["finetune"],
                    f"{p['params'] / 1e6:.3f} M",
                    f"{p['macs'] / 1e6:.1f} M",
                    f"{p['latency_torch_ms']:.2f}",
                    f"{p['latency_onnx_ms']:.2f}",
                    f"{after:.3f}" if after is not None else "-",
                    f"{p['test_acc']:.3f}",
                    f"{p['test_f1']:.3f}",
                    "yes" if i in front else "",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, cost, label in ((axes[0], "macs", "MACs (M)"), (axes[1], "latency_onnx_ms", "onnxruntime latency (ms)")):
        front = pareto_front(points, cost)
        for finetune, marker in (("-", "o"), ("CE", "s"), ("KD", "^")):
            mine = [p for p in points if p["finetune"] == finetune]
            if not mine:
                continue
            xs = [p[cost] / (1e6 if cost == "macs" else 1) for p in mine]
            sc = ax.scatter(
                xs,
                [p["test_acc"] for p in mine],
                c=[p["width"] for p in mine],
                cmap="viridis",
                vmin=min(q["width"] for q in points),
                vmax=max(q["width"] for q in points) + 1e-9,
                marker=marker,
                s=45,
                label="unpruned" if finetune == "-" else f"pruned, {finetune} fine-tune",
            )
            for p, x in zip(mine, xs):
                if p["ratio"]:
                    ax.annotate(
                        f"{p['ratio']:g}", (x, p["test_acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
        fx = sorted((points[i][cost] / (1e6 if cost == "macs" else 1), points[i]["test_acc"]) for i in front)
        ax.plot([x for x, _ in fx], [y for _, y in fx], "k--", lw=0.8, label="Pareto front")
        if cost == "macs":  # MACs span a decade or more; latency differs by a few ms
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.colorbar(sc, ax=axes, label="width_mult")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_pareto(cfg: DictConfig, registry: Registry, run_dir: Path) -> list[dict[str, Any]]:
    """Train every width, prune each at every ratio with CE and/or KD, export and time them all,
    report. A rerun of an interrupted pareto task continues it (:mod:`core.tasks.children`)."""
    points: list[dict[str, Any]] = []
    fam = family(cfg, run_dir)
    run_dir = fam.run_dir
    with parent_run(cfg, "pareto", run_dir=run_dir, run_id=fam.parent_run_id) as parent:
        parent_id = parent.run_id
        fam.mark(parent_id, finished=False)
        for width in cfg.pareto.widths:
            common = {"model": {"student": {"width_mult": float(width)}}}
            name = f"w{width:g}"
            print(f"\n=== student width {width:g} ===", flush=True)
            base = child_run(
                merged(
                    cfg,
                    common,
                    {
                        "task": "train",
                        "model": {"kd": {"enabled": False}},
                        "tracking": {"run_name": f"{cfg.name}-{name}"},
                    },
                ),
                registry,
                run_dir / name,
                parent_id,
            )
            points.append(
                {"width": float(width), "ratio": 0.0, "finetune": "-", "run_dir": str(base.run_dir), **base.metrics}
            )
            for ratio in cfg.pareto.ratios:
                for kd in cfg.pareto.kd:
                    tag = f"{name}-r{ratio:g}-{'kd' if kd else 'ce'}"
                    print(f"\n=== {tag} ===", flush=True)
                    child = {
                        "task": "prune",
                        "model": {"kd": {"enabled": bool(kd)}},
                        "prune": {"ratio": float(ratio), "source": str(base.run_dir / "checkpoints" / "best.pt")},
                        "tracking": {"run_name": f"{cfg.name}-{tag}"},
                    }
                    r = child_run(merged(cfg, common, child), registry, run_dir / tag, parent_id)
                    points.append(
                        {
                            "width": float(width),
                            "ratio": float(ratio),
                            "finetune": "KD" if kd else "CE",
                            "run_dir": str(r.run_dir),
                            **r.metrics,
                        }
                    )

        data = prepare_data(cfg, registry, prepare=True, progress=False)
        test = data.splits["test"]
        models = {}
        for i, p in enumerate(points):
            row = student_row(
                list(cfg.profilers),
                registry,
                TrainState.load(Path(p["run_dir"]) / "checkpoints" / "best.pt"),
                test.clip_samples,
            )
            models[f"p{i:02d}-w{p['width']:g}-r{p['ratio']:g}-{p['finetune']}"] = row
        timed = export_and_time(
            cfg.export, registry, models, parity_clips(cfg.export.parity_clips, data), run_dir / "export"
        )
        for p, t in zip(points, timed):
            p.update(
                params=t["params"],
                macs=t["macs"],
                latency_torch_ms=t["latency_torch_ms"],
                latency_onnx_ms=t["latency_onnx_ms"],
                latency_onnx_net_ms=t.get("latency_onnx_net_ms"),
            )
        table = format_table(points)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "pareto.md").write_text(
            table + f"\n\nOne seed ({cfg.train.seed}); students trained {cfg.train.epochs} epochs, pruned students "
            f"fine-tuned {cfg.prune.epochs or cfg.train.epochs} epochs ({cfg.prune.method}, {cfg.prune.importance}, "
            f"{cfg.prune.scope}, round_to {cfg.prune.round_to}). Latency: batch 1, "
            f"{cfg.export.latency_threads} thread(s), median of {cfg.export.latency_runs} runs, waveform in.\n"
        )
        (run_dir / "pareto.json").write_text(json.dumps(points, indent=2, default=str))
        plot(points, run_dir / "pareto.png")
        for f in ("pareto.md", "pareto.json", "pareto.png"):
            parent.log_artifact(run_dir / f, "pareto")
        write_report(timed, cfg.export, run_dir / "export", None)
        print("\n" + table, flush=True)
    fam.mark(parent_id, finished=True)
    return points


__all__ = ["format_table", "pareto_front", "plot", "run_pareto"]
