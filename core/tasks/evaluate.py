"""``task=evaluate``: score a trained student on the configured dataset, without training.

    python -m core.run experiment=<name> task=evaluate evaluate.source=<checkpoint | run folder | MLflow run id> \
        [evaluate.splits=[valid,test]] [data.dataset=NSynth data.root=...]

The student (pruned ones included) is rebuilt from its own checkpoint, front end and all, so no
``model.*`` override has to match it. The dataset is the configured one (``data.*``), decoded at the
student's own sample rate and clip length; its classes must be the student's (in any order: labels
are matched by name), and ``data.classes`` left empty means exactly the student's. Each split in
``evaluate.splits`` gets accuracy, macro-F1, per-class F1 and a confusion matrix, printed, written
to ``evaluation.json`` and logged to an MLflow run (tag ``stage=evaluate``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from core.config import as_dict, merged
from core.data import prepare_data
from core.engine.distributed import pick_device
from core.engine.loop import predict
from core.engine.metrics import Scores, plot_confusion, score
from core.engine.model import model_inputs
from core.engine.settings import TrainSettings
from core.errors import ConfigValueError
from core.registry import Registry
from core.stages.export import student_from_state
from core.stages.prune import load_student_source
from core.tracking import Tracker, flatten, resolve_uri


def run_evaluate(cfg: DictConfig, registry: Registry, run_dir: Path) -> dict[str, Scores]:
    """Score ``evaluate.source`` on each split of ``evaluate.splits``; returns the scores per split."""
    uri = resolve_uri(cfg.tracking.uri)
    source = load_student_source(cfg.evaluate.source, None, None, uri, what="evaluate.source")
    known = list(source.state.class_names)
    trained = source.state.config
    # the student's own front end decides the audio it hears; the dataset is the configured one
    data_cfg = merged(
        cfg,
        {
            "aug": {"sr": trained["aug"]["sr"]},
            "data": {"clip_seconds": trained["data"]["clip_seconds"], "classes": list(cfg.data.classes) or known},
        },
    )
    data = prepare_data(data_cfg, registry, prepare=True, progress=False)
    if sorted(data.class_names) != sorted(known):
        raise ConfigValueError(
            f"evaluate.source knows the classes {known}, the configured dataset gives "
            f"{data.class_names} (data.classes): leave data.classes empty to use the student's, "
            f"or name the same classes"
        )
    to_student = torch.tensor([known.index(name) for name in data.class_names])
    device = pick_device(cfg.train.device)
    model = student_from_state(registry, source.state).to(device)
    settings = TrainSettings.from_config(cfg.train, clip_seconds=cfg.data.clip_seconds)
    inputs = model_inputs(model, {s: data.splits[s] for s in cfg.evaluate.splits}, cfg.train.cache_logmel)

    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri, cfg.tracking.experiment)
    tracker.start(run_name=cfg.tracking.run_name or f"{cfg.name}-evaluate")
    tracker.set_tags({"stage": "evaluate", "dataset": cfg.data.dataset, "student": trained["model"]["student"]["arch"]})
    tracker.log_params({**flatten(as_dict(cfg)), "evaluate_source_resolved": source.described})
    results: dict[str, Scores] = {}
    report: dict[str, Any] = {"source": source.described, "classes": known, "splits": {}}
    for split, waves in inputs.items():
        logits, labels = predict(model, waves, settings, device)
        labels = to_student[labels]
        s = score(logits, labels, F.cross_entropy(logits, labels).item())
        results[split] = s
        prefix = {"valid": "val"}.get(split, split)
        tracker.log_metrics({**s.as_metrics(prefix, known), f"{prefix}_clips": len(waves)}, step=0)
        plot = plot_confusion(
            s, known, f"{split} ({cfg.data.dataset}): {source.described}", run_dir / "plots" / f"confusion_{split}.png"
        )
        tracker.log_artifact(plot, "confusion")
        report["splits"][split] = {
            "clips": len(waves),
            "skipped": len(data.splits[split].skipped),
            "acc": s.acc,
            "macro_f1": s.f1,
            "per_class_f1": dict(zip(known, s.per_class_f1)),
            "confusion": s.confusion,
        }
        print(f"{split}: {len(waves)} clips  acc {s.acc:.3f}  macro-F1 {s.f1:.3f}", flush=True)
    (run_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    tracker.log_artifact(run_dir / "evaluation.json", "evaluate")
    tracker.end("FINISHED")
    print(f"MLflow: {tracker.run_url()}")
    return results


__all__ = ["run_evaluate"]
