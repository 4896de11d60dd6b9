"""Student-only vs KD (vs pruned), same data, epochs and seeds: the comparisons of Steps 2 and 3.

``task=compare`` trains, for each seed in ``compare.seeds``, one run per arm of ``compare.arms``:
``student`` (CE), ``kd`` (``model.kd.enabled`` forced on, everything else identical), and the
pruned arms, which take that seed's ``kd`` (``pruned_kd``) or ``student`` (``pruned``) best
checkpoint, prune it with ``prune.*`` and fine-tune it for ``prune.epochs`` with KD or CE
(``task=prune``); the teacher stage has made (or found) the teacher first. It prints and logs one
table: mean +- std over seeds of val/test accuracy and macro-F1 per arm, with params and MACs, and
the teacher's own scores; the paired per-seed differences between arms (KD - student, pruned - its
source), with a 95 % t-interval; plus a bar plot. The runs are children of one parent MLflow run
(tag ``mlflow.parentRunId``), so the UI groups them.

``compare.resplit``: seed ``s`` also draws the data (``data.seed=s``): on GMNotes another set of
held-out instruments per seed, so the spread over seeds includes which instruments are unseen, the
noise that one split's 33 test instruments hide; the arms of one seed share its split (and a
teacher trained on it), so their paired difference is exact.

``compare.baseline``: an earlier comparison (its folder or ``compare.json``) whose runs the report
pairs with this one's, seed by seed: each arm minus the baseline's same arm (what the changed
settings gave), and minus the baseline arm it is normally compared with when this comparison does
not train that arm (``kd`` against the baseline's ``student``). A pruned arm whose source arm is
not trained here prunes the baseline's checkpoint of it. That is how one ingredient is measured:
run only the arms it touches, against the comparison without it. It is checked before anything
trains: every seed must be in the baseline, on the same data split.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from core.config import as_dict, merged
from core.data import prepare_data
from core.engine.state import TrainState
from core.errors import ConfigValueError
from core.registry import Registry
from core.stages.export import export_and_time, parity_clips, student_row, teacher_row, write_report
from core.stages.teacher import prepare_teacher
from core.tasks.children import child_run, family
from core.tracking import Tracker, parent_run

METRICS = (
    ("best_val_acc", "val acc"),
    ("best_val_f1", "val macro-F1"),
    ("test_acc", "test acc"),
    ("test_f1", "test macro-F1"),
)
ARMS = (("student", False), ("kd", True), ("pruned", False), ("pruned_kd", True))
#: the paired differences reported, (arm, baseline): what KD adds, what pruning costs
PAIRS = (("kd", "student"), ("pruned_kd", "kd"), ("pruned", "student"))
TEACHER_METRICS = ("teacher_val_acc", "teacher_val_f1", "teacher_test_acc", "teacher_test_f1")
#: pruned arm -> the arm whose best checkpoint it prunes
PRUNE_FROM = {"pruned": "student", "pruned_kd": "kd"}
NAMES = {
    "student": "student only",
    "kd": "student + KD",
    "pruned": "pruned, CE fine-tune",
    "pruned_kd": "pruned, KD fine-tune",
}


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


def paired(
    runs: list[dict[str, Any]], metric: str = "test_acc", baseline: Sequence[dict[str, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """Per pair ``(arm, baseline)`` of :data:`PAIRS` present, keyed ``"arm - baseline"``: ``metric`` of
    the arm minus its baseline's, seed by seed (the same data, and with the seed the same
    initialisation and batch order), their mean, std, how many are > 0, and a 95 % Student-t
    interval of the mean (``None`` with one seed). With ``baseline`` (another comparison's runs, on
    the same splits) also each arm minus the baseline's same arm, and minus its :data:`PAIRS`
    partner there when this comparison has none, keyed ``"arm - baseline <arm>"``."""
    from scipy import stats

    by = {(r["arm"], r["seed"]): r[metric] for r in runs}
    by.update({(f"baseline {r['arm']}", r["seed"]): r[metric] for r in baseline})
    mine = [arm for arm, _ in ARMS if any(r["arm"] == arm for r in runs)]
    pairs = list(PAIRS)
    for arm in mine:
        pairs.append((arm, f"baseline {arm}"))
        pairs += [(a, f"baseline {b}") for a, b in PAIRS if a == arm and b not in mine]
    out: dict[str, dict[str, Any]] = {}
    for arm, base in pairs:
        seeds = [s for (a, s) in by if a == arm and (base, s) in by]
        if not seeds:
            continue
        diffs = [by[(arm, s)] - by[(base, s)] for s in seeds]
        mean, std = mean_std(diffs)
        interval = None
        if len(diffs) > 1:
            half = float(stats.t.ppf(0.975, len(diffs) - 1)) * std / len(diffs) ** 0.5
            interval = [mean - half, mean + half]
        out[f"{arm} - {base}"] = {
            "arm": arm,
            "baseline": base,
            "per_seed": dict(zip(map(str, seeds), diffs)),
            "mean": mean,
            "std": std,
            "positive": sum(d > 0 for d in diffs),
            "n": len(diffs),
            "ci95": interval,
        }
    return out


def format_pairs(pairs: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table of ``{metric: paired(runs, metric)}``: one row per pair and metric."""
    lines = [
        "| paired difference | metric | per seed | mean ± std | > 0 | 95 % interval |",
        "|---|---|---|---:|---:|---:|",
    ]
    for metric, rows in pairs.items():
        for name, p in rows.items():
            seeds = ", ".join(f"{s}: {d:+.3f}" for s, d in p["per_seed"].items())
            interval = f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" if p["ci95"] else "-"
            lines.append(
                f"| {name} | {metric} | {seeds} | {p['mean']:+.3f} ± {p['std']:.3f} | "
                f"{p['positive']}/{p['n']} | {interval} |"
            )
    return "\n".join(lines)


def load_baseline(cfg: DictConfig) -> list[dict[str, Any]]:
    """The runs of ``compare.baseline`` (a comparison's folder or its ``compare.json``) for this
    comparison's seeds; [] when unset. Raises :class:`ConfigValueError`, before anything trains, when
    it cannot be read, lacks one of ``compare.seeds``, or trained a seed on another data split than
    this comparison will (``data.*`` of its runs' ``config.yaml`` against this one's, ``data.root``
    aside)."""
    given = cfg.compare.baseline
    if not given:
        return []
    path = Path(str(given)).expanduser()
    file = path / "compare.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigValueError(
            f"compare.baseline={given}: no compare.json there; give the folder of a finished comparison "
            "(<train.out_dir>/<name>/<time>) or its compare.json"
        )
    try:
        runs = list(json.loads(file.read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigValueError(f"compare.baseline={given}: {file} is not a comparison's compare.json ({exc})") from exc
    seeds = [int(s) for s in cfg.compare.seeds]
    theirs = sorted({int(r["seed"]) for r in runs})
    missing = [s for s in seeds if s not in theirs]
    if missing:
        raise ConfigValueError(
            f"compare.baseline={given} has no runs of seed(s) {missing} (it has {theirs}); pair only its "
            f"seeds, e.g. compare.seeds={theirs}"
        )
    chosen = [dict(r) for r in runs if int(r["seed"]) in seeds]
    ours = {k: v for k, v in as_dict(cfg.data).items() if k != "root"}
    for r in chosen:
        folder = file.parent / f"{r['arm']}-seed{r['seed']}"
        if (folder / "config.yaml").is_file():  # the comparison's folder as it is now (it may have moved)
            r["run_dir"] = str(folder)
        config = Path(r["run_dir"]) / "config.yaml"
        if not config.is_file():
            raise ConfigValueError(
                f"compare.baseline={given}: the {r['arm']} run of seed {r['seed']} has no config.yaml "
                f"(looked in {folder} and {r['run_dir']}), so its data split cannot be checked"
            )
        theirs_data = {k: v for k, v in as_dict(OmegaConf.load(config).data).items() if k != "root"}
        here = {**ours, "seed": int(r["seed"])} if cfg.compare.resplit else ours
        differ = sorted(k for k in here.keys() | theirs_data.keys() if here.get(k) != theirs_data.get(k))
        if differ:
            shown = ", ".join(f"data.{k}={theirs_data.get(k)!r} there, {here.get(k)!r} here" for k in differ)
            raise ConfigValueError(
                f"compare.baseline={given}: its seed-{r['seed']} runs used another data split ({shown}); "
                "paired differences need the same split (set data.* and compare.resplit as the baseline did)"
            )
    have = {(r["arm"], int(r["seed"])) for r in chosen if (Path(r["run_dir"]) / "checkpoints" / "best.pt").is_file()}
    for arm, source in PRUNE_FROM.items():
        if arm not in cfg.compare.arms or source in cfg.compare.arms:
            continue  # no pruned arm, or its source is trained here
        lacking = [s for s in seeds if (source, s) not in have]
        if lacking:
            raise ConfigValueError(
                f"compare.baseline={given}: {arm} prunes the baseline's {source} checkpoints, and it has none "
                f"(checkpoints/best.pt) for seed(s) {lacking}"
            )
    return chosen


def teacher_summary(teachers: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The teacher's scores: one teacher's, or with one per seed (``compare.resplit``) their mean,
    with ``<metric>_std``, ``n`` and each seed's under ``per_seed``."""
    if not teachers:
        return None
    rows = list(teachers.values())
    out = {k: v for k, v in rows[0].items() if k not in TEACHER_METRICS}
    out["n"] = len(rows)
    for k in TEACHER_METRICS:
        out[k], out[f"{k}_std"] = mean_std([r[k] for r in rows])
    if len(rows) > 1:
        out["per_seed"] = {str(seed): {k: r[k] for k in TEACHER_METRICS} for seed, r in teachers.items()}
    return out


def format_table(summary: dict[str, dict[str, Any]], teacher: dict[str, Any] | None) -> str:
    """Markdown table: one row per arm (mean +- std over seeds) and the teacher's own scores."""
    head = ["", "runs", *(title for _, title in METRICS), "params", "MACs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for arm, row in summary.items():
        cells = [NAMES[arm], str(row["n"])]
        cells += [
            f"{row[f'{k}_mean']:.3f} ± {row[f'{k}_std']:.3f}" if row["n"] > 1 else f"{row[f'{k}_mean']:.3f}"
            for k, _ in METRICS
        ]
        cells += [f"{row['params'] / 1e6:.3f} M", f"{row['macs'] / 1e6:.1f} M"]
        lines.append("| " + " | ".join(cells) + " |")
    if teacher:
        n = int(teacher.get("n", 1))
        cells = [
            f"teacher {teacher['name']}",
            str(n),
            *(
                f"{teacher[k]:.3f} ± {teacher[f'{k}_std']:.3f}" if n > 1 else f"{teacher[k]:.3f}"
                for k in TEACHER_METRICS
            ),
            f"{teacher['params'] / 1e6:.3f} M",
            f"{teacher['macs'] / 1e6:.1f} M" if teacher.get("macs") else "-",
        ]
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
        ax.bar(
            [x + i * width for x in xs],
            [row[f"{k}_mean"] for k, _ in METRICS],
            width,
            yerr=[row[f"{k}_std"] for k, _ in METRICS],
            capsize=3,
            label=f"{arm} (n={row['n']})",
        )
    if teacher:
        ax.bar(
            [x + len(summary) * width for x in xs],
            [teacher[k] for k in TEACHER_METRICS],
            width,
            yerr=[teacher.get(f"{k}_std", 0.0) for k in TEACHER_METRICS],
            capsize=3,
            label="teacher",
            color="0.6",
        )
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
    """Train every (seed, arm) pair, then report. Returns ``{"runs", "summary", "teacher"}``. A rerun
    of an interrupted comparison continues it (:mod:`core.tasks.children`)."""
    baseline = load_baseline(cfg)  # checked before anything trains
    base_runs = {(r["arm"], int(r["seed"])): Path(r["run_dir"]) for r in baseline}
    runs: list[dict[str, Any]] = []
    teachers: dict[int, dict[str, Any]] = {}  # per seed with compare.resplit, else the one teacher
    arms = [(arm, kd) for arm, kd in ARMS if arm in cfg.compare.arms]
    fam = family(cfg, run_dir)
    run_dir = fam.run_dir
    tags = {"teacher": cfg.model.teacher.name}
    with parent_run(cfg, "compare", tags, run_dir, run_id=fam.parent_run_id) as parent:
        fam.mark(parent.run_id, finished=False)
        for seed in cfg.compare.seeds:
            for arm, kd in arms:
                child = {
                    "task": "train",
                    "train": {"seed": int(seed)},
                    "model": {"kd": {"enabled": kd}},
                    "tracking": {"run_name": f"{cfg.name}-{arm}-seed{seed}"},
                    **({"data": {"seed": int(seed)}} if cfg.compare.resplit else {}),
                }
                if arm in PRUNE_FROM:
                    src = PRUNE_FROM[arm]  # trained here, or the baseline's run
                    trained = run_dir / f"{src}-seed{seed}" if src in cfg.compare.arms else base_runs[(src, int(seed))]
                    source = trained / "checkpoints" / "best.pt"
                    child.update(task="prune", prune={"source": str(source)})
                print(f"\n=== {arm}, seed {seed} ===", flush=True)
                result = child_run(merged(cfg, child), registry, run_dir / f"{arm}-seed{seed}", parent.run_id)
                m = result.metrics
                runs.append(
                    {
                        "arm": arm,
                        "seed": int(seed),
                        "run_id": result.run_id,
                        "run_dir": str(result.run_dir),
                        **{k: m[k] for k, _ in METRICS},
                        "params": m["student_params"],
                        "macs": m.get(f"student_macs_{cfg.profilers[0]}", 0) if cfg.profilers else 0,
                        **{k: v for k, v in m.items() if k.startswith(("before_prune_", "after_prune_"))},
                    }
                )
                if kd and (cfg.compare.resplit or not teachers):
                    macs_key = f"teacher_macs_{cfg.profilers[0]}" if cfg.profilers else ""
                    teachers[int(seed)] = {
                        "name": cfg.model.teacher.name,
                        "params": m["teacher_params"],
                        "macs": m.get(macs_key),
                        **{k: m[k] for k in TEACHER_METRICS},
                    }
        summary, teacher = report(cfg, runs, teachers, run_dir, parent, baseline)
        if cfg.export.enabled and set(PRUNE_FROM) & set(cfg.compare.arms):
            summary_table = deployment_summary(cfg, registry, runs, run_dir, parent)
            print("\n" + summary_table, flush=True)
    fam.mark(parent.run_id, finished=True)
    return {"runs": runs, "summary": summary, "teacher": teacher}


def report(
    cfg: DictConfig,
    runs: list[dict[str, Any]],
    teachers: dict[int, dict[str, Any]],
    run_dir: Path,
    parent: Tracker,
    baseline: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Print, write (``compare.md``, ``compare.json``, ``compare.png``) and log to the parent run the
    per-arm summary, the teacher's scores and the paired differences (with ``baseline``'s runs too:
    :func:`paired`); returns (summary, teacher)."""
    summary, teacher = summarize(runs), teacher_summary(teachers)
    pairs = {metric: rows for metric in ("best_val_acc", "test_acc") if (rows := paired(runs, metric, baseline))}
    table, pair_table = format_table(summary, teacher), format_pairs(pairs)
    print("\n" + table + ("\n\n" + pair_table if pairs else ""), flush=True)
    split = "each seed on its own data split (data.seed = seed)" if cfg.compare.resplit else "one data split"
    text = (
        f"{table}\n\nmean ± std over seeds {', '.join(map(str, cfg.compare.seeds))}, {split}; val = best "
        "epoch by val macro-F1, test = that checkpoint. Decision rule: argmax over classes (multiclass, no "
        "threshold).\n"
    )
    if pairs:
        text += (
            f"\n{pair_table}\n\nPaired: the same seed's runs (same data, initialisation and batch "
            "order); 95 % interval: Student t over the seeds.\n"
        )
    if baseline:
        source = cfg.compare.baseline
        text += f"\n`baseline <arm>`: that arm's runs in the comparison {source} (same seeds and splits).\n"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "compare.md").write_text(text)
    everything = {"runs": runs, "summary": summary, "teacher": teacher, "paired": pairs}
    if baseline:
        everything["baseline"] = {"source": str(cfg.compare.baseline), "runs": baseline}
    (run_dir / "compare.json").write_text(json.dumps(everything, indent=2))
    plot(summary, teacher, run_dir / "compare.png")
    for name in ("compare.md", "compare.json", "compare.png"):
        parent.log_artifact(run_dir / name, "compare")
    metrics = {f"{arm}_{k}": v for arm, row in summary.items() for k, v in row.items() if k.endswith(("_mean", "_std"))}
    for metric, rows in pairs.items():
        metrics.update(
            {f"paired_{metric}_{p['arm']}_minus_{p['baseline'].replace(' ', '_')}": p["mean"] for p in rows.values()}
        )
    parent.log_metrics(metrics, step=0)
    return summary, teacher


def deployment_summary(
    cfg: DictConfig, registry: Registry, runs: list[dict[str, Any]], run_dir: Path, tracker: Tracker
) -> str:
    """The first seed's models side by side (teacher, student, KD student, pruned students):
    params, MACs, per-clip latency in PyTorch and onnxruntime (each exported and checked against
    PyTorch on real test clips), test accuracy and macro-F1. Logged to the parent run."""
    seed = cfg.compare.seeds[0]
    if cfg.compare.resplit:  # that seed's own split (and its teacher)
        cfg = merged(cfg, {"data": {"seed": int(seed)}})
    data = prepare_data(cfg, registry, prepare=True, progress=False)
    test = data.splits["test"]
    models: dict[str, dict[str, Any]] = {}
    if cfg.model.teacher.name:
        teacher = prepare_teacher(
            merged(cfg, {"model": {"kd": {"enabled": True}}}),
            registry,
            data,
            torch.device("cpu"),
            log_fn=lambda _: None,
        )
        models[f"teacher ({cfg.model.teacher.name} x{cfg.model.teacher.ensemble})"] = teacher_row(
            list(cfg.profilers), teacher
        )
    for r in runs:
        if r["seed"] != seed:
            continue
        state = TrainState.load(Path(r["run_dir"]) / "checkpoints" / "best.pt")
        row = student_row(list(cfg.profilers), registry, state, test.clip_samples)
        row.update(test_acc=r["test_acc"], test_f1=r["test_f1"])
        models[NAMES[r["arm"]]] = row
    print(f"\n=== export and latency (seed {seed}) ===", flush=True)
    rows = export_and_time(
        cfg.export, registry, models, parity_clips(cfg.export.parity_clips, data), run_dir / "export"
    )
    return write_report(rows, cfg.export, run_dir, tracker, title="summary")


__all__ = ["format_pairs", "format_table", "mean_std", "paired", "run_compare", "summarize", "teacher_summary"]
