"""``python -m core.run experiment=<name> [overrides]``: compose the config and run its task.

Thin on purpose: it validates the config, checks the tracking store and the component options,
then hands over to :data:`core.tasks.TASKS`; everything it calls lives in importable, tested modules.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from core.config import register_schema, validate
from core.engine.trainer import Result
from core.errors import UserError
from core.registry import load_registry
from core.tasks import TASKS, resolve_options
from core.tasks.children import continue_job
from core.tracking import check_store, resolve_uri
from core.tracking.sweep import fail_parent, this_job

log = logging.getLogger("core.run")

register_schema()


def run(cfg: DictConfig, run_dir: Path, parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Any:
    """Validate the composed config, resolve components by name and run its ``task``: ``train`` and
    ``prune`` return the :class:`~core.engine.trainer.Result`, the others their report.

    Args:
        parent_run_id, tags: for a sweep job (``-m``), the sweep's parent run and the job's tags
            (train and prune runs nest under it; compare/pareto open their own parent run).
    """
    validate(cfg)
    check_store(resolve_uri(cfg.tracking.uri))  # before any download, render or training
    registry = load_registry()
    resolve_options(cfg, registry)
    if cfg.task in ("train", "prune"):
        return TASKS[cfg.task](cfg, registry, run_dir, parent_run_id=parent_run_id, tags=tags)
    return TASKS[cfg.task](cfg, registry, run_dir)


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    job = this_job(cfg.tracking.run_name or cfg.name)
    try:
        result = continue_job(cfg, job.earlier_dir) if job.earlier_dir else None
        if result is None:
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            result = run(cfg, run_dir, parent_run_id=job.parent_run_id, tags=job.tags)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if job.parent_run_id:
            fail_parent(job.parent_run_id, cfg)
        sys.exit(2)
    if isinstance(result, Result) and result.metrics:
        m = result.metrics
        print(
            f"\nfinal (best epoch {result.best_epoch}): "
            f"val acc {m['best_val_acc']:.3f}  val macro-F1 {m['best_val_f1']:.3f}  "
            f"test acc {m['test_acc']:.3f}  test macro-F1 {m['test_f1']:.3f}"
        )
        print(f"checkpoints: {result.run_dir / 'checkpoints'}")
        print(f"MLflow: {result.run_url}")


if __name__ == "__main__":
    main()
