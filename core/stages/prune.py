"""The prune-and-fine-tune stage (``task=prune``): a trained student loses channels, then relearns.

The train task loads the student named by ``prune.source`` (a checkpoint, its run folder, or an
MLflow run id) instead of starting from scratch, and plugs :class:`PruneRounds` into the Trainer:
at the start of each of ``prune.steps`` rounds it scores the network (*before pruning*, first round
only), asks the pruner plugin ``prune.method`` to remove channels, optionally re-estimates the
BatchNorm statistics, scores the result (*after pruning*) and gives the Trainer a new optimizer
for the smaller network, which is then fine-tuned (with KD from the cached teacher logits when
``model.kd.enabled``). The usual final scores are the *after fine-tuning* point. Round ``i`` of
``S`` brings the network to ``ratio * i / S`` of its original channels removed, so the last round
reaches ``prune.ratio``, up to rounding: each round rounds the current counts to multiples of
``prune.round_to`` (MobileNetV3-Small 0.75 at ratio 0.5: 3.5 M MACs in one round, 3.8 M in two).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from core.data import Inputs
from core.engine import checkpoint
from core.engine.distributed import Dist
from core.engine.loop import epoch_batches
from core.engine.model import AudioClassifier, network_input, to_channels_last
from core.engine.state import TrainState
from core.engine.trainer import Extension, Trainer
from core.errors import UserError
from core.registry import Registry
from core.stages.profile import first_macs
from core.tracking import check_store

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"[0-9a-f]{32}")


class PruneError(UserError, ValueError):
    """The pruning stage cannot run as configured."""


# ----------------------------------------------------------------------------------------------
# the trained student to start from


@attrs.frozen
class StudentSource:
    """A trained student's checkpoint, found and checked: its state, where it was read from, and
    how to name it in messages and params (``MLflow run <id> (checkpoints/best.pt)``)."""

    state: TrainState
    path: Path
    described: str


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

    check_store(tracking_uri)
    try:
        MlflowClient(tracking_uri).get_run(spec)
    except MlflowException as exc:
        raise PruneError(
            f"{what}={spec}: MLflow run not found in {tracking_uri} ({exc.message.splitlines()[0]}). "
            f"Check the run id in the UI, or tracking.uri / MLFLOW_TRACKING_URI"
        ) from exc
    dst = Path(tempfile.mkdtemp(prefix="audiokd-source-"))
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=spec, artifact_path="checkpoints/best.pt", dst_path=str(dst), tracking_uri=tracking_uri
        )
    except (MlflowException, OSError) as exc:
        raise PruneError(
            f"{what}={spec}: the MLflow run has no checkpoints/best.pt artifact (was it trained "
            f"with tracking.log_checkpoints=false?): {exc}"
        ) from exc
    return Path(local), f"MLflow run {spec} (checkpoints/best.pt)"


def load_student_source(
    spec: str, student: Any, class_names: list[str] | None, tracking_uri: str, what: str = "prune.source"
) -> StudentSource:
    """The source checkpoint, checked against this run: the same classes (unless ``class_names``
    is None) and, unless ``student`` (the ``model.student`` config group) is None, the same student
    arch and width."""
    path, described = resolve_source(spec, tracking_uri, what)
    raw = checkpoint.load(path, source=described)
    if not isinstance(raw, dict) or "model" not in raw or "config" not in raw:
        raise PruneError(
            f"{what}: {described} is not a student checkpoint of this toolkit (no 'model'/'config'); "
            f"give a best.pt or last.pt written by a training run"
        )
    state = TrainState.from_dict(raw, described)
    old = state.config["model"]["student"]
    for key in ("arch", "width_mult") if student is not None else ():
        if old[key] != student[key]:
            raise PruneError(
                f"{what}: {described} is a {old['arch']} with width_mult={old['width_mult']}, "
                f"this run builds {student.arch} with width_mult={student.width_mult}: "
                f"set model.student.{key}={old[key]}"
            )
    if class_names is not None and state.class_names != class_names:
        raise PruneError(
            f"{what}: {described} was trained on classes {state.class_names}, this run has "
            f"{class_names}: use the same data.dataset and data.classes"
        )
    return StudentSource(state, path, described)


# ----------------------------------------------------------------------------------------------
# the schedule of rounds


def output_layers(net: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers that produce the logits (pruning them would drop classes)."""
    outs: list[nn.Module] = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return outs[-1:]


@attrs.frozen
class PruneSchedule:
    """When each of ``steps`` rounds prunes, and how much, over ``epochs`` fine-tuning epochs."""

    ratio: float
    steps: int
    epochs: int

    @property
    def starts(self) -> list[int]:
        """The epoch at whose start round i prunes."""
        return [round(i * self.epochs / self.steps) for i in range(self.steps)]

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


class PruneStage:
    """The pruner plugin of ``prune.method`` and the schedule of its rounds, from the ``prune`` config."""

    def __init__(self, prune: Any, train_epochs: int, registry: Registry) -> None:
        self.method = prune.method
        epochs = int(prune.epochs if prune.epochs is not None else train_epochs)
        self.schedule = PruneSchedule(float(prune.ratio), int(prune.steps), epochs)
        self.steps, self.epochs = self.schedule.steps, epochs
        self.ignored_names = list(prune.ignored)
        self.recalibrate_bn, self.calib_batches = int(prune.recalibrate_bn), int(prune.calib_batches)
        self.pruner = registry.build(
            "pruner",
            prune.method,
            options=prune.options,
            where="prune.options",
            importance=prune.importance,
            scope=prune.scope,
            round_to=prune.round_to,
        )

    def ignored(self, net: nn.Module, num_classes: int) -> list[nn.Module]:
        names = dict(net.named_modules())
        chosen = output_layers(net, num_classes)
        for name in self.ignored_names:
            if name not in names:
                valid = [n for n, m in names.items() if n and isinstance(m, (nn.Conv2d, nn.Linear))]
                raise PruneError(
                    f"prune.ignored: the student has no module {name!r}; conv/linear modules are "
                    f"e.g. {', '.join(valid[:6])} ... {', '.join(valid[-3:])}"
                )
            chosen.append(names[name])
        return chosen

    def apply(
        self,
        net: nn.Module,
        round_index: int,
        example: torch.Tensor,
        num_classes: int,
        calibrate: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Prune round ``round_index`` of ``net`` in place."""
        self.pruner.prune(
            net, example, self.schedule.round_ratio(round_index), self.ignored(net, num_classes), calibrate=calibrate
        )


# ----------------------------------------------------------------------------------------------
# the Trainer extension


class PruneRounds(Extension):
    """Pruning rounds inside the Trainer (see the module docstring).

    Args:
        stage: the pruner and its schedule.
        source: what is pruned (logged as ``prune_source_resolved``); None when resuming.
        num_classes: the output layer's size (never pruned).
        clip_samples: one clip's length (the pruner traces the network on its log-mel).
    """

    def __init__(self, stage: PruneStage, source: StudentSource | None, num_classes: int, clip_samples: int) -> None:
        self.stage, self.source = stage, source
        self.num_classes, self.clip_samples = num_classes, clip_samples
        self.rounds_done = 0
        self.scores: dict[str, float] = {}

    def restore(self, trainer: Trainer, state: TrainState | None) -> None:
        if state is not None:
            self.rounds_done, self.scores = state.prune_rounds, dict(state.prune_scores)
        if self.rounds_done:
            trainer.phase_epochs = self.stage.schedule.phase_epochs(self.rounds_done)

    def log_params(self, trainer: Trainer) -> None:
        if trainer.dist.main and self.source is not None:
            trainer.tracker.log_params({"prune_source_resolved": self.source.described})
            trainer.tracker.set_tags({"stage": "prune", "pruner": self.stage.method})

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        if self.rounds_done < self.stage.schedule.rounds_due(epoch):
            self.prune_round(trainer, epoch)
            trainer.reset_best()  # the best checkpoint comes from the last round's network

    def prune_round(self, trainer: Trainer, epoch: int) -> None:
        """Score, prune one round, score again; the costs and scores go to MLflow."""
        model, main = trainer.model, trainer.dist.main
        if self.rounds_done == 0 and main:
            before = {**trainer.scores("before_prune"), **{f"before_prune_{k}": v for k, v in trainer.costs.items()}}
            self.scores.update(before)
            trainer.tracker.log_metrics(before, step=0)
        train_set = trainer.inputs["train"]
        calibrate = None
        if self.stage.pruner.needs_gradients:
            calibrate = calibrator(
                model,
                train_set,
                trainer.settings.batch_size,
                trainer.settings.seed,
                trainer.device,
                self.stage.calib_batches,
            )
        self.stage.apply(
            model.net, self.rounds_done, network_input(model, self.clip_samples), self.num_classes, calibrate=calibrate
        )
        if trainer.settings.channels_last:
            to_channels_last(model.net)
        if self.stage.recalibrate_bn:
            recalibrate_batchnorm(
                model,
                train_set,
                trainer.settings.batch_size,
                trainer.settings.seed,
                trainer.device,
                self.stage.recalibrate_bn,
            )
        self.rounds_done += 1
        # new parameters: a new optimizer and schedule (and weight average, which scores them next)
        trainer.optimize(self.stage.schedule.phase_epochs(self.rounds_done))
        if main:
            trainer.costs = trainer.measure_costs(model)
            after = trainer.scores("after_prune")
            self.scores.update(after)
            trainer.tracker.log_metrics({**after, **trainer.costs, "prune_round": self.rounds_done}, step=epoch)
            macs = first_macs(trainer.costs) or 0.0
            print(
                f"prune round {self.rounds_done}/{self.stage.steps} ({self.stage.method}): params "
                f"{trainer.costs.get('student_params', 0) / 1e6:.3f} M, MACs {macs / 1e6:.1f} M; val acc "
                f"{after['after_prune_val_acc']:.3f}, test acc {after['after_prune_test_acc']:.3f}",
                flush=True,
            )

    def save(self, state: TrainState) -> None:
        state.prune_rounds, state.prune_scores = self.rounds_done, dict(self.scores)

    def final_metrics(self) -> dict[str, float]:
        return dict(self.scores)


@torch.no_grad()
def recalibrate_batchnorm(
    model: AudioClassifier, train_set: Inputs, batch_size: int, seed: int, device: torch.device, n_batches: int
) -> None:
    """Re-estimate every BatchNorm's running mean/var as the exact average over ``n_batches``
    training batches (momentum ``None``), the rest of the model in eval mode (no SpecAugment, no
    dropout). Pruning changes the channels feeding each BatchNorm, so its stored statistics no
    longer describe its input; torch.optim never touches them."""
    norms = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for idx in epoch_batches(len(train_set), batch_size, seed, 0, Dist(), n_batches):
            x, _ = train_set.batch(idx)
            model(**{train_set.input_kind: x.to(device)})
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def calibrator(
    model: AudioClassifier, train_set: Inputs, batch_size: int, seed: int, device: torch.device, n_batches: int
) -> Callable[[nn.Module], None]:
    """Accumulates CE gradients of ``n_batches`` training batches (eval-mode BatchNorm, so the
    running statistics are not disturbed) for gradient-based channel importance."""

    def calibrate(net: nn.Module) -> None:
        was_training = model.training
        model.eval()
        for idx in epoch_batches(len(train_set), batch_size, seed, 0, Dist(), n_batches):
            x, target = train_set.batch(idx)
            logits = model(**{train_set.input_kind: x.to(device)})
            F.cross_entropy(logits.float(), target.to(device)).backward()
        model.train(was_training)

    return calibrate


__all__ = [
    "PruneError",
    "PruneRounds",
    "PruneSchedule",
    "PruneStage",
    "StudentSource",
    "calibrator",
    "load_student_source",
    "output_layers",
    "recalibrate_batchnorm",
    "resolve_source",
]
