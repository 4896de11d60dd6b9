"""Loading every plugin of the ``audiokd.plugins`` entry-point group into one registry.

A plugin package (the built-ins under ``plugins/`` included) declares, in its own packaging
metadata::

    [project.entry-points."audiokd.plugins"]
    my_teachers = "my_pkg.teachers"

and the module implements one or more hooks of :mod:`core.registry.hookspecs`. The core never
imports a concrete plugin: it asks the registry for a component of a kind by name.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import attrs
import pluggy

from core.errors import UserError
from core.registry.contracts import Component, HealthCheck, Option, check_options
from core.registry.hookspecs import KINDS, PROJECT, HookSpecs

ENTRY_POINT_GROUP = "audiokd.plugins"

log = logging.getLogger(__name__)


class UnknownComponentError(UserError, LookupError):
    """Raised when a config names a component no plugin registered."""


class PluginLoadError(UserError, RuntimeError):
    """Raised when two plugins register the same name for one kind, or a hook returns garbage."""


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

    def __init__(
        self,
        entries: Iterable[Entry],
        broken: Iterable[BrokenPlugin] = (),
        health: Callable[[], list[tuple[str, HealthCheck]]] = list,
    ) -> None:
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
        self._health = health

    def health(self) -> list[tuple[str, HealthCheck]]:
        """(package, check) from every plugin's ``audiokd_doctor`` hook, asked now (only the doctor
        asks: a check may look at the disk or load a library)."""
        return self._health()

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

    def options(
        self,
        kind: str,
        name: str,
        given: Mapping[str, Any] | None,
        where: str,
        core_keys: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``given`` (a config option block, ``where`` its key) checked against the options the
        component declares, with their defaults filled in; unchecked when it declares none.
        ``core_keys`` (name -> default) are keys of the block the core itself reads (a teacher's
        ``clip_seconds``): valid in the message, never in ``given``."""
        component = self.get(kind, name)
        values: dict[str, Any] = plain(given or {})
        if component.options is None:
            return values
        check_options(f"{kind} {name}", where, values, {**(core_keys or {}), **component.options})
        return {**{k: o.default for k, o in component.options.items()}, **values}

    def build(
        self,
        kind: str,
        name: str,
        /,
        *,
        options: Mapping[str, Any] | None = None,
        where: str = "options",
        **kwargs: Any,
    ) -> Any:
        """``factory(**kwargs, **options)``, the options checked and completed by :meth:`options`."""
        return self.get(kind, name).factory(**kwargs, **self.options(kind, name, options, where))


def plain(value: Any) -> Any:
    """Config containers (OmegaConf's included, whose interpolations resolve on access) as plain
    dicts and lists, so a plugin sees the same types whoever built its options."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


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
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            package, module = origin[impl.plugin_name]
            components: list[Any] = cast(list[Any], impl.function()) or []
            for component in components:
                if not isinstance(component, Component) or not _options_ok(component):
                    raise PluginLoadError(
                        f"{module} (package {package}) returned {component!r} from {hook_name}; expected "
                        f"core.api.Component (options: a mapping of names to core.api.Option, or None)"
                    )
                entries.append(Entry(kind, component, package, module))

    def health() -> list[tuple[str, HealthCheck]]:
        return [
            (origin[impl.plugin_name][0], check)
            for impl in pm.hook.audiokd_doctor.get_hookimpls()
            for check in cast(list[HealthCheck], impl.function()) or []
        ]

    return Registry(entries, broken, health)


def _options_ok(component: Component) -> bool:
    return component.options is None or all(isinstance(o, Option) for o in component.options.values())
