"""The Trainer: one training run that reads like the recipe.

:meth:`Trainer.run` is restore -> log params -> for each epoch: (extensions) train, evaluate, commit
-> final test on the best checkpoint. Everything it reads was decided at set-up (the task builds it:
:mod:`core.tasks.train`): a :class:`~core.engine.settings.TrainSettings`, the model and its inputs,
the tracker, what the run is (:class:`RunInfo`) and the state to resume from. Stages that change
training plug in as :class:`Extension` s at named points: the teacher's targets for KD
(``targets``), pruning rounds with a new optimizer (``restore`` / ``before_epoch``), their fields
of the checkpoint (``save``) and their final scores (``final_metrics``).

Runs unchanged under ``torchrun`` (DDP): every rank trains its shard, rank 0 logs and saves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from core.data import Inputs
from core.engine.distributed import Dist
from core.engine.loop import TeacherTargets, epoch_batches, epoch_progress, evaluate, train_one_epoch
from core.engine.metrics import Scores, plot_confusion
from core.engine.model import AudioClassifier, load_weights
from core.engine.optim import build_optimizer, build_scheduler, weight_ema
from core.engine.seeding import rng_state, set_rng_state
from core.engine.settings import TrainSettings
from core.engine.state import TrainState
from core.engine.structure import describe
from core.errors import TrainingError
from core.tracking import Tracker, flatten


@attrs.frozen
class RunInfo:
    """What a run is, for its checkpoints and its MLflow run.

    Attributes:
        name: the MLflow run name.
        config: the resolved config as plain data: in every checkpoint, and (flattened) the run's params.
        class_names, class_map: the classes, in label order.
        params, tags, metrics: logged once, when the run starts fresh (metrics at step 0).
        files: ``{file name: text}`` written into the run folder and logged as artifacts, once.
        start_tags: set every time the run starts or resumes (parent run, sweep job).
        log_checkpoints: upload ``last.pt`` / ``best.pt`` as artifacts every epoch.
    """

    name: str
    config: dict[str, Any]
    class_names: list[str]
    class_map: dict[str, Any]
    params: dict[str, Any] = attrs.field(factory=dict)
    tags: dict[str, Any] = attrs.field(factory=dict)
    metrics: dict[str, float] = attrs.field(factory=dict)
    files: dict[str, str] = attrs.field(factory=dict)
    start_tags: dict[str, Any] = attrs.field(factory=dict)
    log_checkpoints: bool = True


@attrs.define
class Result:
    run_id: str | None
    run_dir: Path
    best_epoch: int
    metrics: dict[str, float]
    tracking_uri: str
    run_url: str


class Extension:
    """A stage that changes training, plugged into the Trainer at named points (each a no-op here).

    Attributes:
        targets: KD's teacher logits per batch, handed to every training step (None: no KD).
    """

    targets: TeacherTargets | None = None

    def restore(self, trainer: Trainer, state: TrainState | None) -> None:
        """Before the optimizer is built: take the stage's fields of the resumed checkpoint (or
        ``None`` for a fresh run); may set ``trainer.phase_epochs``."""

    def log_params(self, trainer: Trainer) -> None:
        """A fresh run's first logging: the stage's params, tags and step-0 metrics."""

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Before ``epoch`` trains (a pruning round is due, say)."""

    def save(self, state: TrainState) -> None:
        """Fill the stage's fields of an epoch's checkpoint."""

    def final_metrics(self) -> dict[str, float]:
        """The stage's scores, added to the run's final metrics."""
        return {}


class Trainer:
    """One training run (see the module docstring).

    Args:
        model: the student, on ``device``, its weights initialised (or loaded from the source it prunes).
        loss_fn: the training loss (:class:`~core.registry.contracts.Loss`).
        inputs: each split's inputs (cached log-mel or waveforms).
        settings: the loop's settings.
        run: what the run is (:class:`RunInfo`).
        run_dir: the run folder (checkpoints, plots); a resumed run continues its own.
        resume: the checkpoint to continue, or ``None``.
        measure_costs: the student's params and MACs (``student_params``, ``student_macs_<tool>``).
        extensions: stages that change training, in the order they are called.
    """

    def __init__(
        self,
        *,
        model: AudioClassifier,
        loss_fn: Any,
        inputs: Mapping[str, Inputs],
        settings: TrainSettings,
        device: torch.device,
        dist: Dist,
        tracker: Tracker,
        run: RunInfo,
        run_dir: Path,
        resume: TrainState | None = None,
        measure_costs: Callable[[AudioClassifier], dict[str, float]] = lambda _: {},
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.model, self.loss_fn, self.inputs, self.settings = model, loss_fn, dict(inputs), settings
        self.device, self.dist, self.tracker, self.run_info = device, dist, tracker, run
        self.run_dir = Path(resume.run_dir) if resume is not None else Path(run_dir)
        self.resume, self.measure_costs, self.extensions = resume, measure_costs, list(extensions)
        self.targets = next((e.targets for e in self.extensions if e.targets is not None), None)
        self.epochs = settings.epochs
        #: epochs the current learning-rate schedule spans (a pruning round starts a new one)
        self.phase_epochs = settings.epochs
        self.steps_per_epoch = len(self.batches(0))
        if self.steps_per_epoch == 0:
            raise TrainingError(f"the training split has {len(self.inputs['train'])} clips: too few for one batch")
        use_scaler = settings.amp and device.type == "cuda" and settings.amp_dtype == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.start_epoch, self.best_epoch, self.best_f1 = 0, -1, -1.0
        self.costs: dict[str, float] = {}
        self.run_id: str | None = None

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> Result:
        """Restore -> log params -> for each epoch: train, evaluate, commit -> final test."""
        self.restore()
        if self.resume is None:
            self.log_params()
        try:
            for epoch in range(self.start_epoch, self.epochs):
                for extension in self.extensions:
                    extension.before_epoch(self, epoch)
                train_metrics, seconds = self.train_epoch(epoch)
                val = evaluate(self.scored, self.inputs["valid"], self.settings, self.device)
                self.commit(epoch, train_metrics, val, seconds)
            self.check_replicas()
        except BaseException as exc:
            self.tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        return self.test()

    def restore(self) -> None:
        """Continue the checkpoint to resume (weights, optimizer, schedule, RNG, best so far) in its
        MLflow run, or start a new run; measure the student's costs."""
        state = self.resume
        if state is not None:  # the weights it trained (with train.ema, ``model`` holds the average)
            weights = {**state.to_dict(), "model": state.raw_model or state.model}
            load_weights(self.model, weights, self.settings.channels_last)
        for extension in self.extensions:
            extension.restore(self, state)
        self.optimize(self.phase_epochs)
        if state is not None:
            if self.ema is not None:
                self.ema.module.load_state_dict(state.model)
            self.opt.load_state_dict(state.optimizer)
            self.sched.load_state_dict(state.scheduler)
            if self.scaler is not None and state.scaler:
                self.scaler.load_state_dict(state.scaler)
            set_rng_state(state.rng)
            self.start_epoch, self.best_epoch, self.best_f1 = state.epoch + 1, state.best_epoch, state.best_f1
            if self.dist.main:
                print(
                    f"resuming {self.run_dir / 'checkpoints' / 'last.pt'} at epoch {self.start_epoch + 1}/{self.epochs}"
                )
        self.run_id = self.tracker.start(run_name=self.run_info.name, run_id=state.run_id if state else None)
        if self.run_info.start_tags:
            self.tracker.set_tags(self.run_info.start_tags)
        if state is not None:
            self.replay(state)
        if self.dist.main:
            self.costs = self.measure_costs(self.model)

    def log_params(self) -> None:
        """A fresh run's params, tags, step-0 metrics and files; then each extension's."""
        if self.dist.main:
            info = self.run_info
            self.tracker.log_params({**flatten(info.config), **info.params})
            self.tracker.log_metrics(self.costs, step=0)
            self.tracker.set_tags(info.tags)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name, text in info.files.items():
                (self.run_dir / name).write_text(text)
                self.tracker.log_artifact(self.run_dir / name)
            self.tracker.log_metrics(info.metrics, step=0)
        for extension in self.extensions:
            extension.log_params(self)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """One epoch over this rank's batches; its metrics and its wall time in seconds."""
        t0 = time.perf_counter()
        batches = self.batches(epoch)
        with epoch_progress(f"epoch {epoch + 1}/{self.epochs}", len(batches), self.dist.main) as bar:
            metrics = train_one_epoch(
                self.train_model,
                self.loss_fn,
                self.inputs["train"],
                batches,
                self.opt,
                self.sched,
                self.scaler,
                self.settings,
                self.device,
                epoch,
                teacher=self.targets,
                progress=bar,
                ema=self.ema,
            )
        seconds = time.perf_counter() - t0
        metrics["train_samples_per_s"] = sum(map(len, batches)) * self.dist.world / seconds
        return metrics, seconds

    def commit(self, epoch: int, train_metrics: dict[str, float], val: Scores, seconds: float) -> None:
        """The epoch, exactly once: save ``best.pt`` (when validation macro-F1 improved) and
        ``last.pt`` first, then log what ``last.pt`` holds (:meth:`log_epoch`); print one line. A kill
        between the two leaves the epoch saved but not logged, which the resume logs (:meth:`replay`):
        never the other way round, which would log the epoch again when it is trained again."""
        improved = val.f1 > self.best_f1
        if improved:
            self.best_f1, self.best_epoch = val.f1, epoch
        if not self.dist.main:
            return
        samples_per_s = train_metrics.pop("train_samples_per_s")
        metrics = {
            **train_metrics,
            **val.as_metrics("val"),
            "lr": float(self.sched.get_last_lr()[0]),
            "epoch_time_s": seconds,
            "train_samples_per_s": samples_per_s,
        }
        state = self.state(epoch, metrics, val.confusion)
        folder = self.run_dir / "checkpoints"
        if improved:
            state.save(folder / "best.pt")
        state.save(folder / "last.pt")
        self.log_epoch(state)
        print(
            f"epoch {epoch + 1}/{self.epochs}  loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_acc']:.3f}  val_acc {val.acc:.3f}  val_f1 {val.f1:.3f}  "
            f"({seconds:.1f} s, {samples_per_s:.1f} samples/s)",
            flush=True,
        )

    def log_epoch(self, state: TrainState, metrics: bool = True) -> None:
        """What an epoch logs: its metrics at step ``epoch + 1`` (unless ``metrics`` is False), its
        validation confusion plot and its checkpoints (uploading a file again replaces it)."""
        step, m = state.epoch + 1, state.metrics
        if metrics:
            self.tracker.log_metrics(m, step=step)
        if state.val_confusion:
            val = Scores(m["val_loss"], m["val_acc"], m["val_f1"], [], state.val_confusion)
            self.log_confusion(val, f"val epoch {step}", f"confusion_val_epoch{step:03d}.png")
        if self.run_info.log_checkpoints:
            folder = self.run_dir / "checkpoints"
            self.tracker.log_artifact(folder / "last.pt", "checkpoints")
            if state.best_epoch == state.epoch:
                self.tracker.log_artifact(folder / "best.pt", "checkpoints")

    def replay(self, state: TrainState) -> None:
        """A resumed run's last epoch was saved, but a kill may have come before all of it reached
        MLflow: its metrics are logged if MLflow lacks that step (so each step is logged once; when
        the store cannot tell, e.g. calls still wait for a server, they are not), its plot and
        checkpoints uploaded again."""
        if not self.dist.main:
            return
        logged = self.tracker.logged_steps("val_f1")
        self.log_epoch(state, metrics=logged is not None and state.epoch + 1 not in logged)

    def check_replicas(self) -> None:
        """Under DDP, every rank's final parameters must be the same (recorded as a tag)."""
        if self.dist.world > 1:
            replicas = self.dist.same_weights(self.model)
            if self.dist.main:
                self.tracker.set_tags({"ddp_world_size": self.dist.world, "ddp_weights_sha256": json.dumps(replicas)})

    def test(self) -> Result:
        """Score the best checkpoint on validation and test, log the final metrics, close the run."""
        self.dist.barrier()
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if best_path.is_file():
            best = TrainState.load(best_path)
            load_weights(self.model, best.to_dict(), self.settings.channels_last)
            self.best_epoch = best.epoch
        final: dict[str, float] = {}
        if self.dist.main:
            val = evaluate(self.model, self.inputs["valid"], self.settings, self.device)
            test = evaluate(self.model, self.inputs["test"], self.settings, self.device)
            final = {
                **{f"best_{k}": v for k, v in val.as_metrics("val").items()},
                **test.as_metrics("test", self.run_info.class_names),
                "best_epoch": self.best_epoch + 1,
            }
            logged = self.tracker.logged_steps("test_acc")
            if logged is None or self.epochs not in logged:  # once, also when a resume redoes this
                self.tracker.log_metrics(final, step=self.epochs)
            final.update(self.costs)
            for extension in self.extensions:
                final.update(extension.final_metrics())
            self.log_confusion(test, "test (best checkpoint)", "confusion_test.png")
            self.tracker.end("FINISHED")
            self.close(final)
        self.dist.close()
        return Result(
            run_id=self.run_id,
            run_dir=self.run_dir,
            best_epoch=self.best_epoch + 1,
            metrics=final,
            tracking_uri=self.tracker.uri,
            run_url=self.tracker.run_url(),
        )

    # --- what extensions call --------------------------------------------------------------------

    def batches(self, epoch: int) -> list[list[int]]:
        s = self.settings
        return epoch_batches(len(self.inputs["train"]), s.batch_size, s.seed, epoch, self.dist, s.max_steps_per_epoch)

    def optimize(self, phase_epochs: int) -> None:
        """The network to train (DDP-wrapped under torchrun), a new optimizer and a schedule over
        ``phase_epochs`` epochs; made again after each pruning round, which replaces the parameters."""
        self.phase_epochs = phase_epochs
        self.train_model: nn.Module = self.dist.wrap(self.model, self.device)
        self.opt = build_optimizer(self.settings, self.model.parameters())
        self.sched = build_scheduler(self.settings, self.opt, self.steps_per_epoch * phase_epochs)
        #: ``train.ema``: the moving average of the weights, restarted from the network as it is now
        self.ema = weight_ema(self.model, self.settings.ema) if self.settings.ema else None

    @property
    def scored(self) -> nn.Module:
        """The network that is evaluated, checkpointed as ``model`` and deployed: the moving average
        of the weights with ``train.ema``, else the trained network itself."""
        return self.ema.module if self.ema is not None else self.model

    def reset_best(self) -> None:
        """Forget the best epoch so far: the best checkpoint must come from the current network."""
        self.best_f1, self.best_epoch = -1.0, -1

    def scores(self, prefix: str) -> dict[str, float]:
        """``<prefix>_{val,test}_{acc,f1}`` of the scored network as it is now."""
        out: dict[str, float] = {}
        for split, name in (("valid", "val"), ("test", "test")):
            s = evaluate(self.scored, self.inputs[split], self.settings, self.device)
            out.update({f"{prefix}_{name}_acc": s.acc, f"{prefix}_{name}_f1": s.f1})
        return out

    def close(self, final: dict[str, float]) -> None:
        """Mark ``last.pt`` closed, with the final metrics: the run is complete and a resume refuses
        it. Done last, after MLflow has the final scores and the run ended, so a kill before this
        leaves a run that a resume finishes (its final scores logged once, as above)."""
        path = self.run_dir / "checkpoints" / "last.pt"
        state = TrainState.load(path)
        state.closed, state.final = True, dict(final)
        state.save(path)
        if self.run_info.log_checkpoints:  # the uploaded last.pt is the file on disk
            self.tracker.log_artifact(path, "checkpoints")

    def state(self, epoch: int, metrics: dict[str, float], val_confusion: list[list[int]]) -> TrainState:
        """The checkpoint of the epoch just finished."""
        info = self.run_info
        state = TrainState(
            model=self.scored.state_dict(),
            raw_model=self.model.state_dict() if self.ema is not None else {},
            structure=describe(self.model.net),
            optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else {},
            epoch=epoch,
            best_epoch=self.best_epoch,
            best_f1=self.best_f1,
            rng=rng_state(),
            finished=epoch + 1 == self.epochs,
            metrics=metrics,
            config=info.config,
            class_names=info.class_names,
            class_map=info.class_map,
            run_id=self.run_id,
            run_dir=str(self.run_dir),
            val_confusion=val_confusion,
        )
        for extension in self.extensions:
            extension.save(state)
        return state

    def log_confusion(self, scores: Scores, title: str, file_name: str) -> None:
        path = plot_confusion(scores, self.run_info.class_names, title, self.run_dir / "plots" / file_name)
        self.tracker.log_artifact(path, "confusion")


__all__ = ["Extension", "Result", "RunInfo", "Trainer", "TrainingError"]
