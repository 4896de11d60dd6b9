"""What a plugin of each kind provides and what the core passes it: one Protocol per kind.

Every kind's contract is written here once, beside its Protocol, with the exact arguments the core
passes. Plugins read it through :mod:`core.api`; ``tests/contracts`` builds every registered
built-in and checks it against its Protocol, so a drift between this page and the code fails a test.

How the core builds a component: ``Registry.build(kind, name, options=..., **core_args)`` checks the
user's option block (the config key named in :data:`OPTION_BLOCKS`) against the options the
component declared (:class:`Option`), fills in their defaults, and calls
``component.factory(**core_args, **options)``. A component that declares no options gets the
user's block as it is and checks it itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

from core.audio.io import fit_length
from core.errors import ConfigValueError

Tensor = torch.Tensor

#: ``model.teacher.checkpoint`` value that asks for random initialisation (timing, profiling, tests);
#: ``null`` means the teacher's default weights.
RANDOM_INIT = "none"

#: kind -> the config key holding a component's own options (``None``: the kind has no option block)
OPTION_BLOCKS: dict[str, str | None] = {
    "dataset": "data.options.<name>",
    "student": "model.student.options",
    "teacher": "model.teacher.options",
    "loss": None,
    "profiler": None,
    "timer": None,
    "pruner": "prune.options",
}


# ----------------------------------------------------------------------------------------------
# registration records


@attrs.frozen
class Option:
    """One option a component accepts in its config block, with its default and a line of help.
    The default lives here only: the core fills it in before calling the factory, the run's
    logged config shows it, and the README's configuration reference lists it."""

    default: Any
    help: str = ""


@attrs.frozen
class Component:
    """One registered component.

    Args:
        name: the name configs use to select it (``model.student.arch=...``).
        factory: callable that builds it; each kind's Protocol below says what it is called with.
        summary: one line shown by ``python -m core.list``.
        options: the options its config block accepts (see :class:`Option`); ``None``: the factory
            receives the block unchecked and checks it itself.
    """

    name: str
    factory: Callable[..., Any]
    summary: str = ""
    options: Mapping[str, Option] | None = None


class UnknownOptionError(ConfigValueError):
    """A plugin option block names a key the component does not have."""


def check_options(what: str, where: str, given: Mapping[str, Any], valid: Mapping[str, Any] | Iterable[str]) -> None:
    """Refuse keys of ``given`` not in ``valid`` with one line naming ``what`` (``student
    mobilenet_v3_small``), the config key ``where`` and every valid key (with its default when
    ``valid`` maps keys to :class:`Option` or default values). The one option check every plugin
    factory uses."""
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    if isinstance(valid, Mapping):
        shown = ", ".join(f"{k} (default {_default(v)})" for k, v in valid.items()) or "(none)"
    else:
        shown = ", ".join(valid) or "(none)"
    raise UnknownOptionError(f"unknown option(s) for {what} in {where}: {', '.join(unknown)}; valid keys: {shown}")


def _default(value: Any) -> Any:
    return value.default if isinstance(value, Option) else value


# ----------------------------------------------------------------------------------------------
# datasets


class Clip(NamedTuple):
    """One clip a dataset lists: its audio file, its class index and its group (the instrument, or
    whatever must never be split across folds: the teacher stage's cross-fitting keeps each group in
    one fold)."""

    path: Path
    label: int
    group: str


@runtime_checkable
class Dataset(Protocol):
    """Kind ``dataset`` (hook ``audiokd_datasets``, selected by ``data.dataset``).

    The core calls ``factory(root: Path, classes: list[str], max_total_size_mb: float,
    max_per_class: int | None, seed: int, **options)`` with ``root`` = ``data.root`` (absolute),
    ``classes`` = ``data.classes`` (empty: every class), and the options of
    ``data.options.<name>``. The factory validates and must not download, render or write
    anything; ``prepare()`` does that (on DDP rank 0 only), then the core reads ``get_items`` of
    ``train``, ``valid`` and ``test``.
    """

    @property
    def class_names(self) -> Sequence[str]:
        """Label names in label order."""

    @property
    def missing(self) -> Mapping[str, Sequence[str]]:
        """Per split, files the dataset's index lists that do not exist (filled by ``get_items``);
        the core counts them with the clips it could not decode."""

    def prepare(self) -> None:
        """Download, render or check the data under ``root``; resumable and idempotent."""

    def get_items(self, split: str) -> Sequence[Clip]:
        """Every clip of ``split`` (``train``, ``valid``, ``test``)."""

    def describe(self) -> str:
        """The class mapping, one line per class, printed at the start of a run."""

    def class_map(self) -> dict[str, Any]:
        """The class mapping as JSON-ready data, saved as ``class_map.json`` with every run."""


# ----------------------------------------------------------------------------------------------
# students


@runtime_checkable
class StudentFactory(Protocol):
    """Kind ``student`` (hook ``audiokd_students``, selected by ``model.student.arch``).

    The core calls ``factory(num_classes: int, width_mult: float, bn_momentum: float, **options)``
    (``model.student.width_mult``, ``.bn_momentum`` and ``.options``) and gets an ``nn.Module``
    mapping log-mel ``[B, 1, n_mels, frames]`` to logits ``[B, num_classes]``. Pruners and the
    pruned-layout checkpoints handle any network built of Conv/Linear/Norm layers; the output
    layer is the last ``nn.Linear`` with ``num_classes`` outputs.
    """

    def __call__(self, *, num_classes: int, width_mult: float, bn_momentum: float, **options: Any) -> nn.Module: ...


# ----------------------------------------------------------------------------------------------
# teachers


@runtime_checkable
class TeacherFactory(Protocol):
    """Kind ``teacher`` (hook ``audiokd_teachers``, selected by ``model.teacher.name``).

    The core calls ``factory(num_classes: int, checkpoint: str | None, freeze: bool,
    unfreeze_last_n: int, sample_rate: int, **options)``: ``model.teacher.checkpoint`` (``None``:
    the teacher's default weights, :data:`RANDOM_INIT`: random weights), ``.freeze``,
    ``.unfreeze_last_n``, ``aug.sr`` and ``model.teacher.options`` (whose ``clip_seconds`` defaults
    to ``data.clip_seconds``). It returns a :class:`Teacher`; the teacher stage then trains its
    head (or more) on the task's classes, caches it and its logits.
    """

    def __call__(
        self,
        *,
        num_classes: int,
        checkpoint: str | None,
        freeze: bool,
        unfreeze_last_n: int,
        sample_rate: int,
        **options: Any,
    ) -> Teacher: ...


class Teacher(nn.Module):
    """Waveform ``[B, L]`` at ``sample_rate`` -> logits ``[B, num_classes]``, through the teacher's
    own front end. What the teacher stage relies on:

    * :meth:`embed` (front end + backbone + pooling, ``[B, feature_dim]``) starts with
      :meth:`fit_clip`, so every clip is cropped or zero-padded to ``clip_samples`` and the front
      end yields the frame count the model was built for;
    * ``head`` is a new ``nn.Linear(feature_dim, num_classes)``; ``forward = head(embed(x))``;
    * ``head_trained`` (a buffer, so it travels with the ``state_dict``) records that the head was
      fitted to the project's classes: distilling from a random head teaches noise, and the engine
      refuses it;
    * with a frozen backbone (:meth:`head_only`) the stage runs ``embed`` once per clip, caches the
      embeddings, fits only ``head`` on them and gets every split's logits from them; the stored
      teacher holds what trained (head, unfrozen blocks, buffers), the frozen part is rebuilt by the
      factory, so the factory must build the same weights again for the same arguments;
    * ``source`` says what the weights were loaded from, the default resolved (a hub id, a URL, a
      file, or :data:`RANDOM_INIT`), for the KD run's params; the cache key is the weights' digest.
    """

    head: nn.Linear
    head_trained: Tensor
    #: what the weights were loaded from (set by the factory; empty: the stage says "as given")
    source: str = ""

    def __init__(self, sample_rate: int, clip_samples: int, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if feature_dim <= 0:
            raise ConfigValueError(f"teacher feature dimension must be > 0, got {feature_dim}")
        self.sample_rate = sample_rate
        self.clip_samples = clip_samples
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("head_trained", torch.tensor(False))

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def fit_clip(self, wave: Tensor) -> Tensor:
        if wave.ndim != 2 or not wave.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects a float waveform batch [B, L], got {tuple(wave.shape)} {wave.dtype}"
            )
        return fit_length(wave, self.clip_samples)

    def embed(self, wave: Tensor) -> Tensor:
        """Pooled embedding ``[B, feature_dim]``, the head's input."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed")

    def forward(self, wave: Tensor) -> Tensor:
        return self.head(self.embed(wave))

    def prepare(self, train: Any) -> None:
        """Fit whatever the teacher derives from the training split (e.g. input normalisation)
        before it is trained; ``train`` has ``len()`` and ``batch(indices) -> (waves [B, L],
        labels [B])``. Default: nothing."""

    def head_only(self) -> bool:
        """True when only ``head`` trains (frozen backbone): the stage then fits the head on
        cached embeddings instead of running the backbone every epoch."""
        return all(not p.requires_grad for name, p in self.named_parameters() if not name.startswith("head."))


# ----------------------------------------------------------------------------------------------
# losses


@runtime_checkable
class Loss(Protocol):
    """Kind ``loss`` (hook ``audiokd_losses``, selected by ``train.loss``).

    The core calls ``factory()``, or with ``model.kd.enabled=true`` ``factory(T=model.kd.T,
    alpha=model.kd.alpha)``, and calls the loss once per step with float32 student logits
    ``[B, K]``, int64 targets ``[B]`` and, under KD, the teacher's logits ``[B, K]``. It returns
    ``{"total": scalar to minimise, <term>: scalar, ...}``; every term is logged per epoch as
    ``train_loss_<term>``. ``needs_teacher`` tells the core to refuse the loss without a teacher
    (and a loss without it under KD).
    """

    needs_teacher: bool

    def __call__(
        self, logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None
    ) -> Mapping[str, Tensor]: ...


# ----------------------------------------------------------------------------------------------
# profilers: MAC counters and latency timers


@attrs.frozen
class Profile:
    """What one MAC counter counted for one model and input.

    Args:
        params: all parameters (shared ones once).
        trainable_params: those with ``requires_grad``.
        macs: multiply-accumulates of one forward pass on the example input.
        tool: the counter's registered name.
        notes: what was counted and how, in words, for the report.
        by_module: MACs per module name (``""`` is the whole model).
    """

    params: int
    trainable_params: int
    macs: int
    tool: str
    notes: list[str] = attrs.field(factory=list)
    by_module: dict[str, int] = attrs.field(factory=dict, repr=False)

    def as_metrics(self, prefix: str) -> dict[str, int]:
        return {
            f"{prefix}_params": self.params,
            f"{prefix}_trainable_params": self.trainable_params,
            f"{prefix}_macs": self.macs,
        }


@runtime_checkable
class MacCounter(Protocol):
    """Kind ``profiler`` (hook ``audiokd_profilers``, listed in ``profilers``).

    The core calls ``factory()`` and then ``profile(model, example_input)``: a student network with
    a zero log-mel ``[1, 1, n_mels, frames]`` (every training run logs ``student_params`` and
    ``student_macs_<name>``), or a whole teacher with a waveform ``[1, samples]``. The counter must
    leave the model as it found it (training flags, hooks, buffers).
    """

    def profile(self, model: nn.Module, example_input: Any) -> Profile: ...


@attrs.frozen
class Timing:
    """Milliseconds per call at batch 1."""

    backend: str
    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    threads: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_latency_{self.backend}_ms": self.median_ms,
            f"{prefix}_latency_{self.backend}_p90_ms": self.p90_ms,
        }


@runtime_checkable
class LatencyTimer(Protocol):
    """Kind ``timer`` (hook ``audiokd_timers``, selected by ``export.latency_profiler``).

    The core calls ``factory(runs=export.latency_runs, warmup=export.latency_warmup,
    threads=export.latency_threads)``, then ``torch(module, example_input)`` for a CPU module in
    eval mode and ``onnx(path, example_input)`` for its exported ONNX file, ``example_input`` being
    one clip (``[1, samples]`` waveform, or ``[1, 1, n_mels, frames]`` log-mel for a network alone).
    """

    def torch(self, model: nn.Module, example_input: Tensor) -> Timing: ...

    def onnx(self, path: Path | str, example_input: Tensor) -> Timing: ...


# ----------------------------------------------------------------------------------------------
# pruners


@runtime_checkable
class Pruner(Protocol):
    """Kind ``pruner`` (hook ``audiokd_pruners``, selected by ``prune.method``).

    The core calls ``factory(importance: str, scope: str, round_to: int | None, **options)``
    (``prune.importance``, ``.scope``, ``.round_to``, ``.options``), then once per round
    ``prune(net, example_input, ratio, ignored, calibrate)``: prune the student network ``net`` in
    place so that ``ratio`` of its current prunable channels are gone, never touching the modules in
    ``ignored`` (its output layer is always among them). ``example_input`` is a zero log-mel batch
    of one clip. With ``needs_gradients`` the core passes ``calibrate(net)``, which fills every
    parameter's ``.grad`` from training batches (for gradient-based importance); otherwise ``None``.
    ``removes_channels`` is False when channels are only zeroed (MACs unchanged).
    """

    removes_channels: bool
    needs_gradients: bool

    def prune(
        self,
        net: nn.Module,
        example_input: Tensor,
        ratio: float,
        ignored: list[nn.Module],
        calibrate: Callable[[nn.Module], None] | None = None,
    ) -> None: ...


# ----------------------------------------------------------------------------------------------
# the doctor


@attrs.frozen
class HealthCheck:
    """One line of ``python -m core.doctor`` (hook ``audiokd_doctor``): what a plugin needs on this
    machine (a system library, a data file) and whether it is there."""

    label: str
    ok: bool
    detail: str


__all__ = [
    "OPTION_BLOCKS",
    "RANDOM_INIT",
    "Clip",
    "Component",
    "Dataset",
    "HealthCheck",
    "LatencyTimer",
    "Loss",
    "MacCounter",
    "Option",
    "Profile",
    "Pruner",
    "StudentFactory",
    "Teacher",
    "TeacherFactory",
    "Timing",
    "UnknownOptionError",
    "check_options",
]
