"""task=prune / export / pareto and the pruned compare arm, end to end on the tiny GMNotes render."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

import core.engine.trainer
from core.config import ConfigValueError
from core.engine import checkpoint as ckpt
from core.engine.model import build_model
from core.engine.state import TrainState
from core.engine.structure import describe
from core.registry import UnknownComponentError, load_registry
from core.run import run
from core.stages.export import ExportError, check_deployment, check_parity, export_onnx, student_from_state
from core.stages.prune import PruneError
from core.tasks.pareto import pareto_front
from tests.e2e.test_compare_profile import CNN_TEACHER
from tests.plugins.pruners.test_pruners import THIRD_PARTY_PRUNER

FAST = ("export.latency_runs=3", "export.latency_warmup=1", "export.parity_clips=4")


def prune_cfg(tiny, source, *extra):
    return tiny("task=prune", f"prune.source={source}", "prune.epochs=1", *extra)


def test_prune_logs_three_points_removes_channels_and_saves_a_loadable_layout(tiny, tmp_path, trained):
    cfg = prune_cfg(tiny, trained.run_dir)
    result = run(cfg, tmp_path / "outputs" / "pruned")
    m = result.metrics
    for point in ("before_prune", "after_prune"):
        assert {f"{point}_{s}_{k}" for s in ("val", "test") for k in ("acc", "f1")} <= set(m), point
    assert m["before_prune_test_acc"] == pytest.approx(trained.metrics["test_acc"])  # the source, unchanged
    assert m["student_macs_thop"] < 0.6 * m["before_prune_student_macs_thop"]
    assert m["student_params"] < 0.5 * m["before_prune_student_params"]
    run_ = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    assert run_.data.tags["stage"] == "prune" and run_.data.tags["pruner"] == "structural"
    assert {"before_prune_val_acc", "after_prune_val_acc", "test_acc"} <= set(run_.data.metrics)
    state = ckpt.load(result.run_dir / "checkpoints" / "best.pt")  # weights_only=True
    fresh = build_model(cfg, load_registry(), 3)
    assert state["structure"] != describe(fresh.net)  # per-layer channel counts of the pruned net
    model = student_from_state(
        load_registry(), TrainState.from_dict(state, "best.pt")
    )  # rebuilt from the layout, no pickled module
    assert sum(p.numel() for p in model.net.parameters()) == m["student_params"]
    assert model(torch.zeros(2, 16000 * 4)).shape == (2, 3)


def test_mask_pruning_leaves_macs_unchanged(tiny, tmp_path, trained):
    m = run(prune_cfg(tiny, trained.run_dir, "prune.method=mask"), tmp_path / "outputs" / "mask").metrics
    assert m["student_macs_thop"] == m["before_prune_student_macs_thop"]
    assert m["student_params"] == m["before_prune_student_params"]


def test_iterative_kd_pruning_from_an_mlflow_run_id(tiny, tmp_path, trained):
    cfg = prune_cfg(
        tiny,
        trained.run_id,
        "prune.steps=2",
        "prune.epochs=3",
        "prune.importance=taylor",
        "model.kd.enabled=true",
        *CNN_TEACHER,
        f"tracking.uri={trained.tracking_uri}",
    )
    result = run(cfg, tmp_path / "outputs" / "steps")
    client = MlflowClient(cfg.tracking.uri)
    rounds = client.get_metric_history(result.run_id, "prune_round")
    assert [(r.step, r.value) for r in rounds] == [(0, 1.0), (2, 2.0)]  # round 2 starts epoch 3 (index 2)
    history = sorted(client.get_metric_history(result.run_id, "student_macs_thop"), key=lambda h: (h.step, h.timestamp))
    macs = [h.value for h in history]
    assert macs[0] > macs[1] > macs[2]  # unpruned > round 1 > round 2
    assert result.best_epoch == 3  # the best checkpoint is the final round's network
    assert "train_loss_kd" in client.get_run(result.run_id).data.metrics  # re-KD while fine-tuning
    assert client.get_run(result.run_id).data.params["prune_source_resolved"].startswith("MLflow run")


def test_a_pruned_run_resumes_and_matches_an_uninterrupted_one(tiny, tmp_path, trained, monkeypatch):
    overrides = ("prune.epochs=2",)
    straight = run(prune_cfg(tiny, trained.run_dir, *overrides), tmp_path / "outputs" / "straight")
    real = core.engine.trainer.train_one_epoch

    def crash_in_last_epoch(*args, **kwargs):
        if args[-1] == 1:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", crash_in_last_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(prune_cfg(tiny, trained.run_dir, *overrides), tmp_path / "outputs" / "crashed")
    monkeypatch.setattr(core.engine.trainer, "train_one_epoch", real)
    last = tmp_path / "outputs" / "crashed" / "checkpoints" / "last.pt"
    assert ckpt.load(last)["prune_rounds"] == 1
    resumed = run(prune_cfg(tiny, trained.run_dir, *overrides, f"train.resume={last}"), tmp_path / "x")
    assert resumed.run_dir == tmp_path / "outputs" / "crashed"
    for key in ("test_acc", "best_val_f1", "student_params", "after_prune_val_acc", "before_prune_test_acc"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key]), key


def test_with_train_ema_the_pruned_network_is_what_is_scored_and_kept(tiny, tmp_path, trained, monkeypatch):
    """The weight average restarts from the pruned network: the scores right after pruning and the
    best checkpoint are the pruned network's, never the unpruned average's."""
    real = core.engine.trainer.Trainer.scores
    scored: list[tuple[str, bool]] = []

    def spy(self, prefix):
        scored.append((prefix, describe(self.scored.net) == describe(self.model.net)))
        return real(self, prefix)

    monkeypatch.setattr(core.engine.trainer.Trainer, "scores", spy)
    result = run(prune_cfg(tiny, trained.run_dir, "train.ema=0.8"), tmp_path / "outputs" / "ema")
    assert scored == [("before_prune", True), ("after_prune", True)]
    state = ckpt.load(result.run_dir / "checkpoints" / "best.pt")
    assert state["raw_model"] and state["structure"] == describe(
        student_from_state(load_registry(), TrainState.from_dict(state, "best.pt")).net
    )
    assert result.metrics["student_params"] < 0.5 * result.metrics["before_prune_student_params"]


def test_third_party_pruner_runs_by_name(tiny, tmp_path, trained, make_plugin_dist):
    make_plugin_dist("acme-pruners", "acme_pruners", THIRD_PARTY_PRUNER)
    m = run(prune_cfg(tiny, trained.run_dir, "prune.method=halve_last"), tmp_path / "outputs" / "acme").metrics
    assert m["student_params"] < m["before_prune_student_params"]


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        (("prune.ratio=1.0",), ConfigValueError, ["prune.ratio", "(0, 1)"]),
        (("prune.ratio=0",), ConfigValueError, ["prune.ratio"]),
        (("prune.importance=random",), ConfigValueError, ["l1", "taylor"]),
        (("prune.method=magic",), UnknownComponentError, ["unknown pruner", "structural", "mask"]),
        (("prune.source=null",), ConfigValueError, ["prune.source"]),
        (("prune.source=/nowhere/best.pt",), PruneError, ["no such file"]),
        (("prune.source=0123456789abcdef0123456789abcdef",), PruneError, ["MLflow run not found"]),
        (("model.student.width_mult=0.5",), PruneError, ["width_mult=0.35", "model.student.width_mult"]),
        (("data.classes=[bass,flute]",), PruneError, ["classes"]),
        (("prune.ignored=[features.99]",), PruneError, ["no module 'features.99'", "features.0.0"]),
        (("prune.steps=3", "prune.epochs=2"), ConfigValueError, ["prune.steps"]),
    ],
)
def test_bad_prune_inputs_stop_with_a_clear_message(tiny, tmp_path, trained, overrides, error, words):
    cfg = prune_cfg(tiny, trained.run_dir, *overrides)
    with pytest.raises(error) as err:
        run(cfg, tmp_path / "outputs" / "bad")
    for w in words:
        assert w.lower() in str(err.value).lower(), (w, str(err.value))
    assert not (tmp_path / "outputs" / "bad" / "checkpoints").exists()


def test_a_checkpoint_that_is_not_a_student_is_refused(tiny, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(PruneError, match="not a student checkpoint"):
        run(prune_cfg(tiny, tmp_path / "other.pt"), tmp_path / "outputs" / "bad")


def test_onnx_export_matches_pytorch_on_real_clips_and_a_mismatch_is_caught(tiny, tmp_path, trained):
    cfg = tiny("task=export", f"export.sources=[{trained.run_dir}]", "export.teacher=false", *FAST)
    rows = run(cfg, tmp_path / "outputs" / "export")
    (row,) = rows
    assert row["max_abs_diff"] <= 1e-4 and row["argmax_agree"] == 1.0
    assert row["latency_torch_ms"] > 0 and row["latency_onnx_ms"] > 0 and row["latency_onnx_net_ms"] > 0
    # the deployment form: numpy front end (core/audio/host.py) + the network graph, checked and timed
    assert row["deploy_max_abs_diff"] <= 1e-4 and row["deploy_argmax_agree"] == 1.0 and row["latency_deploy_ms"] > 0
    import onnx

    graph = onnx.load(row["onnx"])
    assert [i.name for i in graph.graph.input] == ["waveform"]  # the front end is inside the graph
    assert any(n.op_type in ("STFT", "DFT") for n in graph.graph.node)
    # the check can fail: the same graph against a model whose weights moved
    model = student_from_state(load_registry(), TrainState.load(trained.run_dir / "checkpoints" / "best.pt"))
    clips = torch.randn(3, 64000) * 0.1
    check_parity(model, row["onnx"], clips)
    with torch.no_grad():
        model.net.classifier[-1].bias += 0.01
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(model, row["onnx"], clips)
    check_deployment(
        student_from_state(load_registry(), TrainState.load(trained.run_dir / "checkpoints" / "best.pt")),
        row["net_onnx"],
        row["frontend"],
        clips,
    )
    with pytest.raises(ExportError, match="numpy front end and onnxruntime differ"):
        check_deployment(model, row["net_onnx"], row["frontend"], clips)


def test_export_refuses_a_missing_source(tiny, tmp_path):
    with pytest.raises(ConfigValueError, match="export.sources"):
        run(tiny("task=export"), tmp_path / "outputs" / "e")
    with pytest.raises(PruneError, match="no such file"):
        run(tiny("task=export", "export.sources=[/nowhere.pt]"), tmp_path / "outputs" / "e")


def test_compare_with_a_pruned_kd_arm_ends_with_the_deployment_summary(tiny, tmp_path):
    cfg = tiny(
        "task=compare",
        "compare.seeds=[0]",
        "compare.arms=[student,kd,pruned_kd]",
        "train.epochs=1",
        "prune.epochs=1",
        *CNN_TEACHER,
        *FAST,
    )
    out = run(cfg, tmp_path / "outputs" / "cmp")
    assert [r["arm"] for r in out["runs"]] == ["student", "kd", "pruned_kd"]
    pruned = out["runs"][2]
    assert pruned["macs"] < out["runs"][1]["macs"]
    assert pruned["before_prune_test_acc"] == pytest.approx(out["runs"][1]["test_acc"])  # pruned the KD student
    md = (tmp_path / "outputs" / "cmp" / "summary.md").read_text()
    for name in ("teacher (mobilenet_v3_small x1)", "student only", "student + KD", "pruned, KD fine-tune"):
        assert f"| {name} |" in md
    rows = json.loads((tmp_path / "outputs" / "cmp" / "summary.json").read_text())
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)
    parent = MlflowClient(cfg.tracking.uri).get_run(
        MlflowClient(cfg.tracking.uri).get_run(pruned["run_id"]).data.tags["mlflow.parentRunId"]
    )
    arts = {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(parent.info.run_id, "export")}
    assert {"export/summary.md", "export/summary.json"} <= arts and any(a.endswith(".onnx") for a in arts)


def test_compare_arms_are_checked(tiny, tmp_path):
    with pytest.raises(ConfigValueError, match="add kd"):
        run(tiny("task=compare", "compare.arms=[student,pruned_kd]", *CNN_TEACHER), tmp_path / "o")
    with pytest.raises(ConfigValueError, match="unknown arm"):
        run(tiny("task=compare", "compare.arms=[student,tiny]", *CNN_TEACHER), tmp_path / "o")


def test_pareto_reports_every_width_ratio_and_fine_tune(tiny, tmp_path):
    cfg = tiny(
        "task=pareto",
        "pareto.widths=[0.35,0.5]",
        "pareto.ratios=[0.5]",
        "pareto.kd=[false]",
        "train.epochs=1",
        "prune.epochs=1",
        *FAST,
    )
    points = run(cfg, tmp_path / "outputs" / "pareto")
    assert [(p["width"], p["ratio"], p["finetune"]) for p in points] == [
        (0.35, 0.0, "-"),
        (0.35, 0.5, "CE"),
        (0.5, 0.0, "-"),
        (0.5, 0.5, "CE"),
    ]
    assert points[1]["macs"] < points[0]["macs"] and points[3]["macs"] < points[2]["macs"]
    folder = tmp_path / "outputs" / "pareto"
    assert (folder / "pareto.png").stat().st_size > 10_000
    assert (folder / "pareto.md").read_text().count("\n| ") == 4  # one row per point


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        {"macs": 10, "test_acc": 0.5},
        {"macs": 5, "test_acc": 0.5},
        {"macs": 20, "test_acc": 0.7},
        {"macs": 30, "test_acc": 0.6},
    ]
    assert pareto_front(pts, "macs") == {1, 2}


def test_latency_profiler_times_batch_one_with_the_median(tmp_path):
    import time

    class Sleepy(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.004)
            return x

    prof = load_registry().build("timer", "latency", runs=7, warmup=1, threads=1)
    t = prof.torch(Sleepy(), torch.zeros(1, 10))
    assert t.runs == 7 and t.threads == 1 and 4.0 <= t.median_ms < 50 and t.min_ms <= t.median_ms <= t.p90_ms
    net = torch.nn.Linear(10, 3).eval()
    path = export_onnx(net, torch.zeros(1, 10), tmp_path / "lin.onnx")
    assert prof.onnx(path, torch.zeros(1, 10)).median_ms > 0
    with pytest.raises(ValueError, match="runs >= 1"):
        load_registry().build("timer", "latency", runs=0)


def test_batchnorm_recalibration_sets_the_exact_statistics_of_the_training_batches():
    from core.audio.frontend import LogMelFrontend
    from core.engine.model import AudioClassifier
    from core.stages.prune import recalibrate_batchnorm
    from plugins.students.mobilenet import build_mobilenet

    torch.manual_seed(0)
    model = AudioClassifier(LogMelFrontend(n_mels=32), build_mobilenet("mobilenet_v3_small", 3, 0.35))
    bn = model.net.features[0][1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after pruning
    feats = torch.randn(12, 32, 41)

    class Inputs:  # a cached log-mel split
        input_kind = "logmel"

        def __len__(self):
            return len(feats)

        def batch(self, idx):
            return feats[idx], torch.zeros(len(idx), dtype=torch.long)

    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    recalibrate_batchnorm(model.train(), Inputs(), batch_size=4, seed=0, device=torch.device("cpu"), n_batches=3)
    hook.remove()
    assert len(seen) == 3 and bn.momentum == 0.1 and model.training  # settings restored
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)  # cumulative average of batch means
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)


def test_pruned_ce_arm_and_export_switched_off(tiny, tmp_path):
    cfg = tiny(
        "task=compare",
        "compare.seeds=[0]",
        "compare.arms=[student,pruned]",
        "train.epochs=1",
        "prune.epochs=1",
        "export.enabled=false",
    )
    out = run(cfg, tmp_path / "outputs" / "cmp")
    student_run, pruned = out["runs"]
    assert pruned["arm"] == "pruned" and pruned["macs"] < student_run["macs"]
    assert pruned["before_prune_test_acc"] == pytest.approx(student_run["test_acc"])  # pruned the CE student
    params = MlflowClient(cfg.tracking.uri).get_run(pruned["run_id"]).data.params
    assert params["model.kd.enabled"] == "False"  # fine-tuned with CE
    assert not (tmp_path / "outputs" / "cmp" / "summary.md").exists()  # no export with export.enabled=false
    assert (tmp_path / "outputs" / "cmp" / "compare.md").read_text().count("pruned, CE fine-tune") == 1

    # compare.baseline: another pruning recipe on the baseline's own student checkpoints, paired with it
    again = tiny(
        "task=compare",
        "compare.seeds=[0]",
        "compare.arms=[pruned]",
        "train.epochs=1",
        "prune.epochs=1",
        "prune.ratio=0.3",
        "export.enabled=false",
        f"compare.baseline={tmp_path / 'outputs' / 'cmp'}",
    )
    (other,) = run(again, tmp_path / "outputs" / "cmp2")["runs"]
    assert other["before_prune_test_acc"] == pytest.approx(student_run["test_acc"])  # the baseline's student
    assert other["macs"] > pruned["macs"]  # ratio 0.3 keeps more than 0.5
    saved = json.loads((tmp_path / "outputs" / "cmp2" / "compare.json").read_text())
    assert set(saved["paired"]["test_acc"]) == {"pruned - baseline pruned", "pruned - baseline student"}
    assert saved["paired"]["test_acc"]["pruned - baseline student"]["per_seed"]["0"] == pytest.approx(
        other["test_acc"] - student_run["test_acc"]
    )
    # a baseline without the arm to prune is refused before anything trains
    with pytest.raises(ConfigValueError, match=r"pruned_kd prunes the baseline's kd checkpoints, and it has none"):
        run(
            tiny(
                "task=compare",
                "compare.seeds=[0]",
                "compare.arms=[pruned_kd]",
                *CNN_TEACHER,
                f"compare.baseline={tmp_path / 'outputs' / 'cmp'}",
            ),
            tmp_path / "o",
        )
