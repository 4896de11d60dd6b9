"""The public plugin API: everything a plugin package imports from the core, and nothing else.

A plugin is an installed package that names a module in the ``audiokd.plugins`` entry-point group;
the module implements hooks, each returning the :class:`Component` s it provides::

    from core.api import Component, Option, hookimpl

    @hookimpl
    def audiokd_students():
        return [Component("acme_cnn", build_acme_cnn, "ACME's tiny CNN",
                          options={"dropout": Option(0.1, "classifier dropout")})]

Hooks, one per kind (what the core passes each factory, and what it expects back, is written once,
beside the kind's Protocol in :mod:`core.registry.contracts`):

==========================  ================  =====================================================
hook                        kind              contract
==========================  ================  =====================================================
``audiokd_datasets``        dataset           :class:`Dataset` (its ``get_items`` lists :class:`Clip` s)
``audiokd_students``        student           :class:`StudentFactory`
``audiokd_teachers``        teacher           :class:`TeacherFactory`, building a :class:`Teacher`
``audiokd_losses``          loss              :class:`Loss`
``audiokd_profilers``       profiler          :class:`MacCounter`, returning a :class:`Profile`
``audiokd_timers``          timer             :class:`LatencyTimer`, returning :class:`Timing` s
``audiokd_pruners``         pruner            :class:`Pruner`
``audiokd_doctor``          (none)            a list of :class:`HealthCheck` lines for ``core.doctor``
==========================  ================  =====================================================

Helpers a plugin may call: :func:`check_options` (the one unknown-option check, for options a
component checks itself), :func:`atomic_path` / :func:`atomic_write_text` / :func:`temp_file`
(files that never look complete half-written, with the user's normal permissions),
:class:`StageProgress` (a bar on a terminal, log lines elsewhere),
:func:`load_checkpoint` (``torch.load(weights_only=True)`` with errors a user can act on),
:func:`load_audio` / :func:`fit_length`, the project's :class:`LogMelFrontend`, and
:func:`build_student` (a registered student network, for plugins that compose one). Errors a user
can fix derive from :class:`UserError` (:class:`ConfigValueError` for a bad option value,
:class:`CheckpointError` for a bad weights file): the command line prints their message, no
traceback.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.audio.frontend import LogMelFrontend
from core.audio.io import AudioError, fit_length, load_audio
from core.engine.checkpoint import CheckpointError
from core.engine.checkpoint import load as load_checkpoint
from core.errors import ConfigValueError, UserError
from core.registry import load_registry
from core.registry.contracts import (
    RANDOM_INIT,
    Clip,
    Component,
    Dataset,
    HealthCheck,
    LatencyTimer,
    Loss,
    MacCounter,
    Option,
    Profile,
    Pruner,
    StudentFactory,
    Teacher,
    TeacherFactory,
    Timing,
    UnknownOptionError,
    check_options,
)
from core.registry.hookspecs import hookimpl
from core.util.files import atomic_path, atomic_write_text, temp_file
from core.util.progress import StageProgress


def build_student(
    arch: str, *, num_classes: int, width_mult: float = 1.0, bn_momentum: float = 0.1, **options: Any
) -> nn.Module:
    """The registered student network ``arch``, built as the core builds it (its declared options
    checked and defaulted): for a plugin that composes one, e.g. a CNN teacher."""
    return load_registry().build(
        "student",
        arch,
        options=options,
        where=f"options of student {arch}",
        num_classes=num_classes,
        width_mult=width_mult,
        bn_momentum=bn_momentum,
    )


__all__ = [
    # registration
    "Component",
    "Option",
    "hookimpl",
    # contracts, one per kind, and the values they exchange
    "Clip",
    "Dataset",
    "HealthCheck",
    "LatencyTimer",
    "Loss",
    "MacCounter",
    "Profile",
    "Pruner",
    "StudentFactory",
    "Teacher",
    "TeacherFactory",
    "Timing",
    "RANDOM_INIT",
    # errors
    "AudioError",
    "CheckpointError",
    "ConfigValueError",
    "UnknownOptionError",
    "UserError",
    # helpers
    "LogMelFrontend",
    "StageProgress",
    "atomic_path",
    "atomic_write_text",
    "build_student",
    "check_options",
    "fit_length",
    "load_audio",
    "load_checkpoint",
    "temp_file",
]
