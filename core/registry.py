"""Component registries: pluggy hook specs fed by the ``audiokd.plugins`` entry-point group.

A plugin package (the built-ins under ``plugins/`` included) declares, in its own packaging metadata::

    [project.entry-points."audiokd.plugins"]
    my_teachers = "my_pkg.teachers"

and the module implements one or more of the hooks below, each returning a list of
:class:`Component`. The core never imports a concrete plugin: it asks the registry for a
component of a kind by name.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any, Callable, Iterable

import attrs
import pluggy

from core.errors import UserError

PROJECT = "audiokd"
ENTRY_POINT_GROUP = "audiokd.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

log = logging.getLogger(__name__)


@attrs.frozen
class Component:
    """One registered component.

    Args:
        name: the name configs use to select it (``model.student.arch=...``).
        factory: callable that builds it; each kind documents the arguments it is called with.
        summary: one line shown by ``python -m core.list``.
    """

    name: str
    factory: Callable[..., Any]
    summary: str = ""


class HookSpecs:
    """One hook per component kind. Each returns the components a plugin module provides."""

    @hookspec
    def audiokd_datasets(self) -> list[Component]:
        """Datasets. ``factory(root, classes, max_total_size_mb, max_per_class, seed, **options)``
        returns an object with ``prepare()``, ``class_names``, ``sample_rate`` and
        ``get_items(split) -> list[(path, label)]`` for split in ``train``/``valid``/``test``."""

    @hookspec
    def audiokd_students(self) -> list[Component]:
        """Student networks. ``factory(num_classes, width_mult, **options)`` returns an
        ``nn.Module`` mapping ``[B, 1, n_mels, frames]`` log-mel to ``[B, num_classes]`` logits."""

    @hookspec
    def audiokd_teachers(self) -> list[Component]:
        """Teacher networks (pretrained transformers or offline stand-ins)."""

    @hookspec
    def audiokd_losses(self) -> list[Component]:
        """Training losses. ``factory(**options)`` returns a callable
        ``loss(logits, target, teacher_logits=None) -> dict`` with a ``total`` term plus
        one entry per term to log."""

    @hookspec
    def audiokd_profilers(self) -> list[Component]:
        """Model cost profilers. MAC counters: ``factory()`` returns an object with
        ``profile(model, example_input) -> Profile`` (params, MACs). Latency profilers: an object
        with ``torch(model, example_input)`` and ``onnx(path, example_input)``, each returning a
        ``Timing`` (median ms per call)."""

    @hookspec
    def audiokd_pruners(self) -> list[Component]:
        """Channel pruners. ``factory(importance, scope, round_to)`` returns an object with
        ``prune(net, example_input, ratio, ignored, calibrate=None)``, which prunes ``net`` in place
        so that ``ratio`` of its prunable channels are gone (``ignored``: modules left whole;
        ``calibrate(net)`` fills ``.grad`` from training batches, for gradient-based importance),
        and the attribute ``removes_channels`` (False when channels are only zeroed)."""


#: kind name (as used in messages and ``core.list``) -> hook name
KINDS: dict[str, str] = {
    "dataset": "audiokd_datasets",
    "student": "audiokd_students",
    "teacher": "audiokd_teachers",
    "loss": "audiokd_losses",
    "profiler": "audiokd_profilers",
    "pruner": "audiokd_pruners",
}


class UnknownComponentError(UserError, LookupError):
    """Raised when a config names a component no plugin registered."""


class PluginLoadError(UserError, RuntimeError):
    """Raised when two plugins register the same name for one kind."""


@attrs.frozen
class Entry:
    kind: str
    component: Component
    package: str  # distribution that registered it
    module: str


@attrs.frozen
class BrokenPlugin:
    entry_point: str
    package: str
    error: str


class Registry:
    """Every component of every kind registered through the entry-point group."""

    def __init__(self, entries: Iterable[Entry], broken: Iterable[BrokenPlugin] = ()) -> None:
        self._by_kind: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for entry in entries:
            table = self._by_kind[entry.kind]
            other = table.get(entry.component.name)
            if other is not None:
                raise PluginLoadError(
                    f"{entry.kind} {entry.component.name!r} is registered twice: by {other.package} "
                    f"({other.module}) and by {entry.package} ({entry.module})"
                )
            table[entry.component.name] = entry
        self.broken = list(broken)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[_check_kind(kind)])

    def entries(self, kind: str) -> list[Entry]:
        table = self._by_kind[_check_kind(kind)]
        return [table[name] for name in sorted(table)]

    def get(self, kind: str, name: str) -> Component:
        table = self._by_kind[_check_kind(kind)]
        if name not in table:
            known = ", ".join(sorted(table)) or "(none)"
            hint = ""
            if self.broken:
                hint = "; plugins that failed to load: " + ", ".join(
                    f"{b.entry_point} from {b.package}" for b in self.broken
                )
            raise UnknownComponentError(
                f"unknown {kind} {name!r}. Registered {kind} names: {known}{hint}. "
                f"List all components with: python -m core.list"
            )
        return table[name].component

    def build(self, kind: str, name: str, /, **kwargs: Any) -> Any:
        return self.get(kind, name).factory(**kwargs)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


def load_registry(group: str = ENTRY_POINT_GROUP) -> Registry:
    """Load every plugin module of the entry-point group and collect their components.

    A plugin module that fails to import is reported (with the distribution that ships it) and
    skipped, so one broken third-party package does not take the others down.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    origin: dict[str, tuple[str, str]] = {}  # plugin name -> (package, module)
    broken: list[BrokenPlugin] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
        package = ep.dist.name if ep.dist is not None else "?"
        if (package, ep.name) in seen:  # the same dist visible twice on sys.path
            continue
        seen.add((package, ep.name))
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
            log.warning("plugin %s from package %s failed to load: %s", ep.name, package, exc)
            broken.append(BrokenPlugin(f"{ep.name} = {ep.value}", package, f"{type(exc).__name__}: {exc}"))
            continue
        plugin_name = f"{package}:{ep.name}"
        if pm.is_registered(module):
            continue
        pm.register(module, name=plugin_name)
        origin[plugin_name] = (package, ep.value)

    entries: list[Entry] = []
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            package, module = origin[impl.plugin_name]
            for component in impl.function() or []:
                if not isinstance(component, Component):
                    raise PluginLoadError(
                        f"{module} (package {package}) returned {type(component).__name__} from "
                        f"{hook_name}; expected core.registry.Component"
                    )
                entries.append(Entry(kind, component, package, module))
    return Registry(entries, broken)
