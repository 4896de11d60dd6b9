"""``python -m core.list [--options]``: every registered component by kind, with the package that
provides it; ``--options`` adds each component's options (config key, default, help)."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from core.registry import KINDS, load_registry
from core.registry.contracts import OPTION_BLOCKS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.list", description=__doc__.split("\n\n")[0])
    parser.add_argument("--options", action="store_true", help="list each component's options too")
    args = parser.parse_args(argv)
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
    if args.options:
        options = Table(title="component options (set them under the config key shown)")
        for col in ("component", "config key", "default", "help"):
            options.add_column(col)
        for kind, block in OPTION_BLOCKS.items():
            if block is None:
                continue
            for e in registry.entries(kind):
                for key, option in (e.component.options or {}).items():
                    options.add_row(
                        f"{kind} {e.component.name}",
                        f"{block.replace('<name>', e.component.name)}.{key}",
                        repr(option.default),
                        option.help,
                    )
        console.print(options)
    for b in registry.broken:
        console.print(f"[red]failed to load[/red] {b.entry_point} (package {b.package}): {b.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
