"""Component registries: pluggy hooks fed by the ``audiokd.plugins`` entry-point group.

:mod:`~core.registry.hookspecs` names the hooks, :mod:`~core.registry.contracts` says what each
kind provides, :mod:`~core.registry.loader` loads the installed plugins. Plugins import all of it
through :mod:`core.api`.
"""

from core.registry.contracts import Component, Option, UnknownOptionError
from core.registry.hookspecs import KINDS, hookimpl
from core.registry.loader import (
    ENTRY_POINT_GROUP,
    BrokenPlugin,
    Entry,
    PluginLoadError,
    Registry,
    UnknownComponentError,
    load_registry,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "BrokenPlugin",
    "Component",
    "Entry",
    "Option",
    "PluginLoadError",
    "Registry",
    "UnknownComponentError",
    "UnknownOptionError",
    "hookimpl",
    "load_registry",
]
