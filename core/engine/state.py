"""The checkpoint of a training run as a typed state, committed once per epoch.

On disk it is a plain dict whose keys are the field names (tensors, state dicts and plain values;
the config as a plain dict), so ``torch.load(..., weights_only=True)`` reads any checkpoint a user
hands us without running code from it, and files written before this class existed load too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from core.engine import checkpoint
from core.engine.checkpoint import CheckpointError


@attrs.define
class TrainState:
    """Everything needed to resume a run exactly, and what later stages read back.

    Attributes:
        model: the ``AudioClassifier``'s state dict (front-end statistics included): the weights
            that are scored and deployed (with ``train.ema``, their moving average).
        raw_model: with ``train.ema``, the trained weights themselves, so a resumed run continues
            both (empty without EMA; the average's warm-up counts the schedule's steps).
        structure: per-layer channel counts (:mod:`core.engine.structure`), so a pruned network
            can be rebuilt before its weights load.
        optimizer, scheduler, scaler: their state dicts (``scaler`` empty without fp16).
        epoch: index of the last finished epoch (0-based).
        best_epoch, best_f1: the epoch with the best validation macro-F1 so far, and that score.
        rng: the random states after the epoch (:func:`core.engine.seeding.rng_state`).
        finished: the last epoch is done.
        metrics: that epoch's logged metrics.
        prune_rounds, prune_scores: pruning rounds done and the scores they logged (``task=prune``).
        config: the run's resolved config; class_names, class_map: its classes.
        run_id, run_dir: the MLflow run and the run folder, continued on resume.
        val_confusion: that epoch's validation confusion matrix (its plot is redrawn from it when a
            resumed run finds the epoch saved but not logged).
        closed: the run is complete: trained, scored on the test split, logged and ended; a later
            resume has nothing left to do. ``finished`` without ``closed`` is a run killed between
            its last epoch and its final scores: a resume does only what is left.
        final: the run's final metrics (as returned to the caller), once closed.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int
    best_epoch: int
    best_f1: float
    rng: dict[str, Any]
    finished: bool
    config: dict[str, Any]
    class_names: list[str]
    class_map: dict[str, Any]
    run_id: str | None
    run_dir: str
    scaler: dict[str, Any] = attrs.field(factory=dict)
    metrics: dict[str, float] = attrs.field(factory=dict)
    structure: dict[str, Any] = attrs.field(factory=dict)
    raw_model: dict[str, Any] = attrs.field(factory=dict)
    prune_rounds: int = 0
    prune_scores: dict[str, float] = attrs.field(factory=dict)
    val_confusion: list[list[int]] = attrs.field(factory=list)
    closed: bool = False
    final: dict[str, float] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_dict(cls, state: Any, source: str) -> TrainState:
        """The state of a loaded checkpoint; refuses anything that is not a training checkpoint."""
        names = {f.name for f in attrs.fields(cls)}
        required = {f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING}
        if not isinstance(state, dict) or not required <= set(state):
            have = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"{source} is not a training checkpoint of this toolkit (it holds {have}); give "
                f"a best.pt or last.pt written by a training run"
            )
        values = {k: v for k, v in state.items() if k in names}
        values.setdefault("closed", bool(state.get("finished")))  # written before runs were closed explicitly
        return cls(**values)

    def save(self, path: Path) -> Path:
        """Atomically: a kill or a full disk mid-write leaves the previous file intact."""
        return checkpoint.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path | str, source: str | None = None) -> TrainState:
        return cls.from_dict(checkpoint.load(path, source=source), source or str(path))


__all__ = ["TrainState"]
