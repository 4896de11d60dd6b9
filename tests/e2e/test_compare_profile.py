"""task=compare (student-only vs KD over seeds) and task=profile (params/MACs report)."""

from __future__ import annotations

import json
import statistics

import pytest
from mlflow.tracking import MlflowClient

from core.config import ConfigValueError, merged
from core.data import prepare_data
from core.registry import load_registry
from core.run import run
from core.tasks.compare import format_pairs, format_table, load_baseline, paired, summarize, teacher_summary
from tests.conftest import sqlite_store

CNN_TEACHER = (
    "model.teacher.name=mobilenet_v3_small",
    "model.teacher.freeze=false",
    "model.teacher.epochs=1",
    "+model.teacher.options.width_mult=0.35",
)


def test_compare_trains_both_arms_per_seed_and_reports_mean_and_std(tiny, tmp_path):
    cfg = tiny("task=compare", "compare.seeds=[0,1]", "compare.resplit=true", "train.epochs=1", *CNN_TEACHER)
    out = run(cfg, tmp_path / "outputs" / "cmp")
    runs = out["runs"]
    assert [(r["arm"], r["seed"]) for r in runs] == [("student", 0), ("kd", 0), ("student", 1), ("kd", 1)]
    client = MlflowClient(cfg.tracking.uri)
    children = [client.get_run(r["run_id"]) for r in runs]
    parents = {c.data.tags["mlflow.parentRunId"] for c in children}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags["stage"] == "compare" and parent.info.status == "FINISHED"
    assert [c.data.params["model.kd.enabled"] for c in children] == ["False", "True", "False", "True"]
    assert [c.data.params["train.seed"] for c in children] == ["0", "0", "1", "1"]
    # compare.resplit: each seed on its own split (data.seed), its teacher trained on that split
    assert [c.data.params["data.seed"] for c in children] == ["0", "0", "1", "1"]
    held_out = [set(prepare_data(tiny(f"data.seed={seed}"), load_registry()).groups["test"]) for seed in (0, 1)]
    assert held_out[0] != held_out[1]
    teacher_test = [c.data.metrics["teacher_test_acc"] for c in children[1::2]]
    # the parent's summary is the mean/std of the children's own metrics
    kd_test = [c.data.metrics["test_acc"] for c in children[1::2]]
    assert parent.data.metrics["kd_test_acc_mean"] == pytest.approx(statistics.fmean(kd_test))
    assert parent.data.metrics["kd_test_acc_std"] == pytest.approx(statistics.stdev(kd_test))
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert arts == {"compare/compare.md", "compare/compare.json", "compare/compare.png"}
    md = (tmp_path / "outputs" / "cmp" / "compare.md").read_text()
    assert "| student only | 2 |" in md and "| student + KD | 2 |" in md and "teacher mobilenet_v3_small" in md
    assert "argmax" in md
    saved = json.loads((tmp_path / "outputs" / "cmp" / "compare.json").read_text())
    teacher_val = [c.data.metrics["teacher_val_acc"] for c in children[1::2]]
    assert saved["teacher"]["teacher_val_acc"] == pytest.approx(statistics.fmean(teacher_val))
    assert (
        saved["teacher"]["teacher_test_acc"] == pytest.approx(statistics.fmean(teacher_test))
        and saved["teacher"]["n"] == 2
    )
    kd_minus = [k - s for k, s in zip(kd_test, [c.data.metrics["test_acc"] for c in children[::2]])]
    assert list(saved["paired"]["test_acc"]["kd - student"]["per_seed"].values()) == pytest.approx(kd_minus)
    assert parent.data.metrics["paired_test_acc_kd_minus_student"] == pytest.approx(statistics.fmean(kd_minus))
    assert "| kd - student | test_acc |" in md and "each seed on its own data split" in md

    # compare.baseline: this comparison as another's baseline, read back through the runs' config.yaml
    again = merged(cfg, {"compare": {"baseline": str(tmp_path / "outputs" / "cmp")}})
    base = load_baseline(again)
    assert [(r["arm"], r["seed"]) for r in base] == [(r["arm"], r["seed"]) for r in runs]
    against = paired(runs, "test_acc", base)
    assert against["kd - baseline kd"]["per_seed"] == {"0": 0.0, "1": 0.0}
    assert against["student - baseline student"]["n"] == 2 and "kd - baseline student" not in against
    # the same seeds on one split (no resplit) are not the baseline's splits: refused, named
    with pytest.raises(ConfigValueError, match=r"seed-1 runs used another data split \(data.seed=1 there, 0 here\)"):
        load_baseline(merged(again, {"compare": {"resplit": False}}))
    with pytest.raises(ConfigValueError, match=r"has no runs of seed\(s\) \[5\] \(it has \[0, 1\]\)"):
        load_baseline(merged(again, {"compare": {"seeds": [0, 5]}}))


def test_summary_table_numbers():
    runs = [
        {
            "arm": "student",
            "best_val_acc": a,
            "best_val_f1": a,
            "test_acc": a,
            "test_f1": a,
            "params": 1_000_000,
            "macs": 40_000_000,
        }
        for a in (0.4, 0.6)
    ]
    s = summarize(runs)
    assert s["student"]["test_acc_mean"] == pytest.approx(0.5)
    assert s["student"]["test_acc_std"] == pytest.approx(statistics.stdev([0.4, 0.6]))
    assert "0.500 ± 0.141" in format_table(s, None) and "1.000 M" in format_table(s, None)
    one = summarize(runs[:1])
    assert "| 0.400 |" in format_table(one, None) and "±" not in format_table(one, None)  # no std of one run


def test_paired_differences_per_seed_with_a_t_interval():
    """KD - student and pruned - source, seed by seed: mean, std, sign count, 95 % t-interval."""
    acc = {("student", 0): 0.50, ("kd", 0): 0.53, ("student", 1): 0.45, ("kd", 1): 0.46, ("student", 2): 0.52}
    acc |= {("kd", 2): 0.56, ("pruned_kd", 0): 0.52, ("pruned_kd", 1): 0.47, ("pruned_kd", 2): 0.50}
    runs = [{"arm": arm, "seed": seed, "test_acc": a} for (arm, seed), a in acc.items()]
    p = paired(runs)
    assert list(p) == ["kd - student", "pruned_kd - kd"]  # no pruned arm: no pruned - student
    kd = p["kd - student"]
    diffs = [0.03, 0.01, 0.04]
    assert list(kd["per_seed"]) == ["0", "1", "2"] and list(kd["per_seed"].values()) == pytest.approx(diffs)
    assert kd["mean"] == pytest.approx(statistics.fmean(diffs)) and kd["std"] == pytest.approx(statistics.stdev(diffs))
    assert kd["positive"] == 3 and kd["n"] == 3
    half = 4.302653 * statistics.stdev(diffs) / 3**0.5  # t(0.975, 2 degrees of freedom)
    assert kd["ci95"] == pytest.approx([kd["mean"] - half, kd["mean"] + half], rel=1e-5)
    assert p["pruned_kd - kd"]["positive"] == 1
    assert paired(runs[:2])["kd - student"]["ci95"] is None  # one seed: no interval
    table = format_pairs({"test_acc": p})
    assert "| kd - student | test_acc | 0: +0.030, 1: +0.010, 2: +0.040 | +0.027 ± 0.015 | 3/3 |" in table

    # one teacher per seed (compare.resplit): mean ± std over seeds in the table
    t = {"name": "cnn", "params": 1e6, "macs": None}
    scores = [0.6, 0.7]
    teachers = {
        s: {**t, **dict.fromkeys(("teacher_val_acc", "teacher_val_f1", "teacher_test_acc", "teacher_test_f1"), a)}
        for s, a in enumerate(scores)
    }
    both = teacher_summary(teachers)
    assert both["n"] == 2 and both["teacher_test_acc"] == pytest.approx(0.65)
    assert both["teacher_test_acc_std"] == pytest.approx(statistics.stdev(scores)) and set(both["per_seed"]) == {
        "0",
        "1",
    }
    assert "| teacher cnn | 2 | 0.650 ± 0.071 |" in format_table({}, both)
    assert "| teacher cnn | 1 | 0.600 |" in format_table({}, teacher_summary({0: teachers[0]}))


def test_paired_differences_against_a_baseline_comparison():
    """compare.baseline: each arm minus the baseline's same arm, and minus its usual partner there when
    this comparison does not train that partner (kd here against the baseline's student)."""
    base = [{"arm": a, "seed": s, "test_acc": v} for (a, s), v in {("student", 0): 0.50, ("kd", 0): 0.51}.items()]
    base += [{"arm": "student", "seed": 1, "test_acc": 0.45}, {"arm": "kd", "seed": 1, "test_acc": 0.44}]
    kd_only = [{"arm": "kd", "seed": 0, "test_acc": 0.55}, {"arm": "kd", "seed": 1, "test_acc": 0.47}]
    p = paired(kd_only, "test_acc", base)
    assert list(p) == ["kd - baseline kd", "kd - baseline student"]
    assert list(p["kd - baseline kd"]["per_seed"].values()) == pytest.approx([0.04, 0.03])
    assert list(p["kd - baseline student"]["per_seed"].values()) == pytest.approx([0.05, 0.02])
    assert p["kd - baseline student"]["positive"] == 2 and p["kd - baseline student"]["baseline"] == "baseline student"
    both = base[:1] + [{"arm": "kd", "seed": 0, "test_acc": 0.56}]  # this comparison trains its own student
    assert list(paired(both, "test_acc", base)) == ["kd - student", "student - baseline student", "kd - baseline kd"]
    assert "| kd - baseline student | test_acc | 0: +0.050, 1: +0.020 |" in format_pairs({"test_acc": p})


def test_a_missing_baseline_is_refused_before_anything_trains(tiny, tmp_path):
    cfg = tiny("task=compare", f"compare.baseline={tmp_path / 'nowhere'}", *CNN_TEACHER)
    with pytest.raises(ConfigValueError, match=r"compare.baseline=.*nowhere: no compare.json there"):
        run(cfg, tmp_path / "outputs" / "cmp")
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "teachers").exists()


def test_profile_reports_student_and_teacher_without_data(compose, tmp_path):
    cfg = compose(
        "experiment=profile_macs",
        f"data.root={tmp_path / 'no-data'}",
        f"tracking.uri={sqlite_store(tmp_path / 'mlflow.db')}",
        "model.student.width_mult=0.75",
        "model.teacher.name=ast_tiny",
    )
    rows = run(cfg, tmp_path / "profile")
    student, teacher = rows
    assert student["input_shape"] == [1, 1, 128, 401] and teacher["input_shape"] == [1, 64000]
    # MobileNetV3-Small x0.75 for 11 classes: counted here before (thop 41.6 M, flop_counter 36.5 M)
    assert student["macs_thop"] == pytest.approx(41.6e6, rel=0.01)
    assert student["macs_flop_counter"] == pytest.approx(36.5e6, rel=0.01)
    assert abs(teacher["diff_pct"]) <= 15 and student["within_tolerance"]
    assert not (tmp_path / "no-data").exists()  # nothing downloaded or rendered
    saved = json.loads((tmp_path / "profile" / "macs.json").read_text())
    assert saved == rows
    r = MlflowClient(cfg.tracking.uri).search_runs(
        [MlflowClient(cfg.tracking.uri).get_experiment_by_name("NSynth-Profile").experiment_id]
    )[0]
    assert r.data.metrics["student_macs_thop"] == student["macs_thop"]
    assert r.data.metrics["teacher_params"] == teacher["params"]


def test_compare_needs_a_teacher(tiny, tmp_path):
    with pytest.raises(ConfigValueError, match="model.teacher.name"):
        run(tiny("task=compare"), tmp_path / "x")


def test_a_comparison_killed_midway_is_continued_by_the_same_command(tiny, tmp_path, killable, monkeypatch):
    """Killed during its second run (the KD arm, after epoch 1), the same command again keeps the
    completed student run, resumes the KD run, and finishes the same parent run in the same folder."""
    import core.tasks.children
    from core.engine.trainer import Trainer
    from tests.e2e.conftest import Killed

    overrides = ("task=compare", "compare.seeds=[0]", "train.epochs=2", *CNN_TEACHER)
    real = Trainer.log_epoch

    def log_epoch(self, state, metrics=True):
        if self.run_info.name.endswith("kd-seed0") and state.epoch == 0 and metrics:
            raise Killed
        return real(self, state, metrics)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "log_epoch", log_epoch)
        with pytest.raises(Killed):
            run(tiny(*overrides), tmp_path / "outputs" / "cmp")
    client = MlflowClient(tiny().tracking.uri)
    before = {
        r.data.tags.get("mlflow.runName"): r
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
    }
    assert before["tiny"].info.status == "RUNNING" and before["tiny-student-seed0"].info.status == "FINISHED"

    trained = []
    real_train = core.tasks.children.run_train
    monkeypatch.setattr(
        core.tasks.children,
        "run_train",
        lambda cfg, registry, run_dir, **kw: trained.append(run_dir) or real_train(cfg, registry, run_dir, **kw),
    )
    out = run(tiny(*overrides), tmp_path / "outputs" / "rerun")  # a new folder, as Hydra would make
    assert trained == [tmp_path / "outputs" / "cmp" / "kd-seed0"]  # only the interrupted run, resumed
    by_arm = {r["arm"]: r for r in out["runs"]}
    assert by_arm["student"]["run_id"] == before["tiny-student-seed0"].info.run_id
    assert by_arm["kd"]["run_id"] == before["tiny-kd-seed0"].info.run_id
    parent = client.get_run(before["tiny"].info.run_id)
    assert parent.info.status == "FINISHED" and (tmp_path / "outputs" / "cmp" / "compare.json").is_file()
    assert [m.step for m in client.get_metric_history(by_arm["kd"]["run_id"], "val_loss")] == [1, 2]
