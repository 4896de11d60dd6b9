"""What ``core.run`` can do (``task=``), each an orchestration of stages and the engine, a page long.

``train`` and ``prune`` (:mod:`~core.tasks.train`), ``compare`` (:mod:`~core.tasks.compare`),
``pareto`` (:mod:`~core.tasks.pareto`), ``export`` (:mod:`~core.tasks.export`), ``profile``
(:mod:`~core.tasks.profile`) and ``evaluate`` (:mod:`~core.tasks.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, open_dict

from core.registry import Registry
from core.tasks.compare import run_compare
from core.tasks.evaluate import run_evaluate
from core.tasks.export import run_export
from core.tasks.pareto import run_pareto
from core.tasks.profile import run_profile
from core.tasks.train import run_train

#: ``task`` -> the function that runs it, called as ``fn(cfg, registry, run_dir)`` (train and prune
#: also take the sweep's parent run and tags)
TASKS: dict[str, Callable[..., Any]] = {
    "train": run_train,
    "prune": run_train,
    "compare": run_compare,
    "pareto": run_pareto,
    "export": run_export,
    "profile": run_profile,
    "evaluate": run_evaluate,
}


def resolve_options(cfg: DictConfig, registry: Registry) -> None:
    """Check the option blocks of the components this run builds and fill in their declared
    defaults, so the run's logged config (MLflow params, ``config.yaml``, checkpoints) shows every
    option in effect: ``data.options.<dataset>``, ``model.student.options`` and, when the run
    prunes, ``prune.options``. A component that declares no options keeps its block as given. (The
    teacher's block is checked when the teacher stage plans; its run logs the resolved options.)"""
    data, student, prune = cfg.data, cfg.model.student, cfg.prune
    with open_dict(data.options):
        data.options[data.dataset] = registry.options(
            "dataset", data.dataset, data.options.get(data.dataset), f"data.options.{data.dataset}"
        )
    student.options = registry.options("student", student.arch, student.options, "model.student.options")
    prunes = cfg.task in ("prune", "pareto") or (
        cfg.task == "compare" and {"pruned", "pruned_kd"} & set(cfg.compare.arms)
    )
    if prunes:
        prune.options = registry.options("pruner", prune.method, prune.options, "prune.options")


__all__ = [
    "TASKS",
    "resolve_options",
    "run_compare",
    "run_evaluate",
    "run_export",
    "run_pareto",
    "run_profile",
    "run_train",
]
