"""The prune-and-fine-tune stage (``task=prune``): a trained student loses channels, then relearns.

:func:`core.train.fit` runs it: it loads the student named by ``prune.source`` (a checkpoint, its
run folder, or an MLflow run id) instead of starting from scratch, scores it (*before pruning*),
and at the start of each of ``prune.steps`` rounds asks the pruner plugin ``prune.method`` to
remove channels, scores the result (*after pruning*), rebuilds the optimizer for the smaller
network and fine-tunes (with KD from the cached teacher logits when ``model.kd.enabled``). The
usual final scores are the *after fine-tuning* point. Round ``i`` of ``S`` brings the network to
``ratio * i / S`` of its original channels removed, so the last round reaches ``prune.ratio``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from core import checkpoint as ckpt
from core.errors import UserError
from core.registry import Registry

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"[0-9a-f]{32}")


class PruneError(UserError, ValueError):
    """The pruning stage cannot run as configured."""


def resolve_source(spec: str, tracking_uri: str, what: str = "prune.source") -> tuple[Path, str]:
    """A student checkpoint from a path, a run folder (its ``checkpoints/best.pt``) or an MLflow
    run id (its ``checkpoints/best.pt`` artifact, downloaded). Returns (local file, description)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate, str(candidate)
        raise PruneError(f"{what}={spec}: the folder has no checkpoints/best.pt (is it a training run's folder?)")
    if path.is_file():
        return path, str(path)
    if not _RUN_ID.fullmatch(spec):
        raise PruneError(f"{what}={spec}: no such file or folder, and not an MLflow run id (32 hex digits)")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from core.tracking import check_store

    check_store(tracking_uri)
    try:
        MlflowClient(tracking_uri).get_run(spec)
    except MlflowException as exc:
        raise PruneError(f"{what}={spec}: MLflow run not found in {tracking_uri} ({exc.message.splitlines()[0]}). "
                         f"Check the run id in the UI, or tracking.uri / MLFLOW_TRACKING_URI") from exc
    dst = Path(tempfile.mkdtemp(prefix="audiokd-source-"))
    try:
        local = mlflow.artifacts.download_artifacts(run_id=spec, artifact_path="checkpoints/best.pt",
                                                    dst_path=str(dst), tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        raise PruneError(f"{what}={spec}: the MLflow run has no checkpoints/best.pt artifact (was it trained "
                         f"with tracking.log_checkpoints=false?): {exc}") from exc
    return Path(local), f"MLflow run {spec} (checkpoints/best.pt)"


def load_student_source(spec: str, cfg: DictConfig, class_names: list[str], tracking_uri: str,
                        what: str = "prune.source", same_student: bool = True) -> dict[str, Any]:
    """The source checkpoint, checked against this run: same classes and (``same_student``)
    student arch and width. Adds ``source`` (a description) and ``source_path`` (the local file)."""
    path, described = resolve_source(spec, tracking_uri, what)
    state = ckpt.load(path, source=described)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise PruneError(f"{what}: {described} is not a student checkpoint of this toolkit (no 'model'/'config'); "
                         f"give a best.pt or last.pt written by a training run")
    old = state["config"]["model"]["student"]
    for key in ("arch", "width_mult") if same_student else ():
        if old[key] != cfg.model.student[key]:
            raise PruneError(f"{what}: {described} is a {old['arch']} with width_mult={old['width_mult']}, "
                             f"this run builds {cfg.model.student.arch} with width_mult={cfg.model.student.width_mult}: "
                             f"set model.student.{key}={old[key]}")
    if state.get("class_names") != class_names:
        raise PruneError(f"{what}: {described} was trained on classes {state.get('class_names')}, this run has "
                         f"{class_names}: use the same data.dataset and data.classes")
    state["source"], state["source_path"] = described, str(path)
    return state


def output_layers(net: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers that produce the logits (pruning them would drop classes)."""
    outs = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return outs[-1:]


class PruneStage:
    """Which rounds prune when, with which pruner; see the module docstring."""

    def __init__(self, cfg: DictConfig, registry: Registry) -> None:
        p = cfg.prune
        self.cfg = cfg
        self.ratio, self.steps = float(p.ratio), int(p.steps)
        self.epochs = int(p.epochs if p.epochs is not None else cfg.train.epochs)
        self.method = p.method
        self.pruner = registry.build("pruner", p.method, importance=p.importance, scope=p.scope,
                                     round_to=p.round_to)
        #: epoch at whose start round i prunes
        self.starts = [round(i * self.epochs / self.steps) for i in range(self.steps)]

    def rounds_due(self, epoch: int) -> int:
        """How many rounds must have pruned before ``epoch`` trains."""
        return sum(1 for s in self.starts if s <= epoch)

    def phase_epochs(self, rounds_done: int) -> int:
        """Epochs of fine-tuning after round ``rounds_done`` (1-based) until the next round or the end."""
        end = self.starts[rounds_done] if rounds_done < self.steps else self.epochs
        return end - self.starts[rounds_done - 1]

    def round_ratio(self, round_index: int) -> float:
        """Ratio of the current channels to remove in round ``round_index`` (0-based) so that the
        network reaches ``ratio * (round_index + 1) / steps`` of its original channels removed."""
        before = self.ratio * round_index / self.steps
        after = self.ratio * (round_index + 1) / self.steps
        return 1.0 - (1.0 - after) / (1.0 - before)

    def ignored(self, net: nn.Module, num_classes: int) -> list[nn.Module]:
        names = dict(net.named_modules())
        chosen = output_layers(net, num_classes)
        for name in self.cfg.prune.ignored:
            if name not in names:
                valid = [n for n, m in names.items() if n and isinstance(m, (nn.Conv2d, nn.Linear))]
                raise PruneError(f"prune.ignored: the student has no module {name!r}; conv/linear modules are "
                                 f"e.g. {', '.join(valid[:6])} ... {', '.join(valid[-3:])}")
            chosen.append(names[name])
        return chosen

    def apply(self, net: nn.Module, round_index: int, example: torch.Tensor, num_classes: int,
              calibrate: Callable[[nn.Module], None] | None = None) -> None:
        """Prune round ``round_index`` of ``net`` in place."""
        self.pruner.prune(net, example, self.round_ratio(round_index), self.ignored(net, num_classes),
                          calibrate=calibrate)


__all__ = ["PruneError", "PruneStage", "load_student_source", "output_layers", "resolve_source"]
