"""``python -m core.list``: every registered component by kind, with the package that provides it."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from core.registry import KINDS, load_registry


def main(argv: list[str] | None = None) -> int:
    registry = load_registry()
    console = Console(width=max(100, Console().width))
    table = Table(title="audiokd components (select them by name in config)")
    for col in ("kind", "name", "package", "description"):
        table.add_column(col)
    for kind in KINDS:
        entries = registry.entries(kind)
        if not entries:
            table.add_row(kind, "-", "", "(none registered)")
        for e in entries:
            table.add_row(kind, e.component.name, e.package, e.component.summary)
    console.print(table)
    for b in registry.broken:
        console.print(f"[red]failed to load[/red] {b.entry_point} (package {b.package}): {b.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
