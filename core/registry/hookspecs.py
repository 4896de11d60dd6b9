"""The hooks a plugin module implements: one per component kind, plus the doctor's health lines.

Each kind hook returns a list of :class:`~core.registry.contracts.Component`; what each kind's
factory is called with and what it returns is written once, in :mod:`core.registry.contracts`.
"""

from __future__ import annotations

import pluggy

from core.registry.contracts import Component, HealthCheck

PROJECT = "audiokd"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    @hookspec
    def audiokd_datasets(self) -> list[Component]:
        """Datasets: see :class:`~core.registry.contracts.Dataset`."""

    @hookspec
    def audiokd_students(self) -> list[Component]:
        """Student networks: see :class:`~core.registry.contracts.StudentFactory`."""

    @hookspec
    def audiokd_teachers(self) -> list[Component]:
        """Teachers: see :class:`~core.registry.contracts.TeacherFactory` and ``Teacher``."""

    @hookspec
    def audiokd_losses(self) -> list[Component]:
        """Training losses: see :class:`~core.registry.contracts.Loss`."""

    @hookspec
    def audiokd_profilers(self) -> list[Component]:
        """MAC counters: see :class:`~core.registry.contracts.MacCounter`."""

    @hookspec
    def audiokd_timers(self) -> list[Component]:
        """Latency timers: see :class:`~core.registry.contracts.LatencyTimer`."""

    @hookspec
    def audiokd_pruners(self) -> list[Component]:
        """Channel pruners: see :class:`~core.registry.contracts.Pruner`."""

    @hookspec
    def audiokd_doctor(self) -> list[HealthCheck]:
        """Lines for ``python -m core.doctor``: what the plugin needs on this machine, and whether
        it is there (a system library, SoundFonts, ...). Called only by the doctor."""


#: kind name (as used in messages and ``core.list``) -> hook name
KINDS: dict[str, str] = {
    "dataset": "audiokd_datasets",
    "student": "audiokd_students",
    "teacher": "audiokd_teachers",
    "loss": "audiokd_losses",
    "profiler": "audiokd_profilers",
    "timer": "audiokd_timers",
    "pruner": "audiokd_pruners",
}
