"""Tasks made of child runs under one MLflow parent run (compare, pareto), continued by a rerun.

A comparison is hours of training: killed midway (SIGKILL, a reboot), the same command run again
must not train its finished arms again. The task's folder holds ``children.json``: a key of the
task's resolved config, its parent MLflow run, and whether it finished. A rerun whose config has the
same key finds an unfinished one under ``train.out_dir`` and continues it: in its folder, in its
parent run; each child that completed (its ``last.pt`` closed) gives its stored final metrics, one
that was interrupted resumes from its ``last.pt``, the others train.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import attrs
from omegaconf import DictConfig, open_dict

from core.config import as_dict, merged
from core.engine.state import TrainState
from core.engine.trainer import Result
from core.errors import TrainingError
from core.registry import Registry
from core.tasks.train import run_train
from core.util.files import atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "children.json"


@attrs.frozen
class Family:
    """Where a task's child runs go: ``run_dir``, and the parent MLflow run to continue (None: a new one)."""

    run_dir: Path
    key: str
    parent_run_id: str | None = None

    def mark(self, parent_run_id: str | None, finished: bool) -> None:
        """Record the parent run and whether the task finished (written atomically, read by a rerun)."""
        state = {"key": self.key, "parent_run_id": parent_run_id, "finished": finished}
        atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=2))


def config_key(cfg: DictConfig) -> str:
    """What makes two invocations the same task: the resolved config but ``train.resume`` and
    ``compare.baseline`` (which only adds rows to the report)."""
    values = as_dict(cfg)
    values["train"] = {k: v for k, v in values["train"].items() if k != "resume"}
    if "compare" in values:
        values["compare"] = {k: v for k, v in values["compare"].items() if k != "baseline"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def family(cfg: DictConfig, run_dir: Path) -> Family:
    """This task's earlier, unfinished run of the same config under ``train.out_dir`` (continued), or a
    new one in ``run_dir``."""
    key = config_key(cfg)
    for path in sorted(Path(cfg.train.out_dir).glob(f"**/{STATE_FILE}")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping %s, which cannot be read: %s", path, exc)
            continue
        if state.get("key") == key and not state.get("finished"):
            print(
                f"continuing the unfinished {cfg.task} in {path.parent}: completed runs are kept, an "
                f"interrupted one resumes",
                flush=True,
            )
            return Family(path.parent, key, state.get("parent_run_id"))
    return Family(Path(run_dir), key)


def child_run(cfg: DictConfig, registry: Registry, run_dir: Path, parent_run_id: str | None) -> Result:
    """The child run in ``run_dir``: its stored result when it completed, resumed when it was
    interrupted, else trained now."""
    kept = completed(cfg, run_dir)
    if kept is not None:
        return kept
    if (run_dir / "checkpoints" / "last.pt").is_file():
        cfg = merged(cfg, {"train": {"resume": str(run_dir)}})
    return run_train(cfg, registry, run_dir, parent_run_id=parent_run_id)


def continue_job(cfg: DictConfig, earlier_dir: Path) -> Result | None:
    """A sweep job whose sweep continues an interrupted one: its stored result when the job completed
    there; else None, after pointing ``train.resume`` at its ``last.pt`` when it was interrupted (a
    training job), so :func:`core.run.run` resumes it."""
    if cfg.task not in ("train", "prune") or not (earlier_dir / "checkpoints" / "last.pt").is_file():
        return None
    kept = completed(cfg, earlier_dir)
    if kept is None:
        with open_dict(cfg):
            cfg.train.resume = str(earlier_dir)
    return kept


def completed(cfg: DictConfig, run_dir: Path) -> Result | None:
    """The result of the run in ``run_dir`` if it completed (its ``last.pt`` closed), from the final
    metrics stored there; None otherwise."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    state = TrainState.load(last)
    if not state.closed:
        return None
    if not state.final:
        raise TrainingError(
            f"{run_dir} completed under an older version, whose checkpoints kept no final "
            f"metrics: start this task anew (another train.out_dir or name)"
        )
    print(f"{run_dir}: complete (MLflow run {state.run_id}), kept", flush=True)
    return Result(
        run_id=state.run_id,
        run_dir=run_dir,
        best_epoch=int(state.final["best_epoch"]),
        metrics=state.final,
        tracking_uri=str(cfg.tracking.uri),
        run_url="",
    )


__all__ = ["STATE_FILE", "Family", "child_run", "completed", "config_key", "continue_job", "family"]
