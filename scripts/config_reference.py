"""Print the configuration reference (every key of the composed default config, its default and
the comment beside it in configs/*.yaml) as Markdown tables, one per group, then the options of
every built-in component (its config key, its default and help, as the plugin declares them).

README.md and README.ko.md hold its output between ``<!-- config-reference -->`` markers;
tests/test_docs.py fails when they drift from the configs. Regenerate with
``.venv/bin/python scripts/config_reference.py``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FILES = ["config.yaml", "data.yaml", "model.yaml", "train.yaml", "aug.yaml"]
KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def comments() -> dict[str, str]:
    """``dotted.key -> comment`` from the inline comments of the config files."""
    out: dict[str, str] = {}
    for name in FILES:
        lines = (CONFIGS / name).read_text().splitlines()
        package = next((ln.split("@package", 1)[1].strip() for ln in lines[:3] if "@package" in ln), "_global_")
        stack: list[tuple[int, str]] = []
        for line in lines:
            m = KEY.match(line)
            if not m or line.lstrip().startswith("#"):
                continue
            indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            path = ".".join(k for _, k in stack)
            if package != "_global_":
                path = f"{package}.{path}"
            if "#" in rest:
                out[path] = rest.split("#", 1)[1].strip()
    return out


def leaves(node, path=""):
    from core.config import OPEN_BLOCKS

    if isinstance(node, DictConfig) and len(node) and path not in OPEN_BLOCKS:
        for key in node.keys():
            yield from leaves(node._get_node(key), f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def plugin_options() -> str:
    """One table of every option the built-in components declare, under its config key."""
    from core.registry import load_registry
    from core.registry.contracts import OPTION_BLOCKS

    registry = load_registry()
    rows = []
    for kind, block in OPTION_BLOCKS.items():
        for entry in registry.entries(kind) if block else []:
            if entry.package != "audiokd":
                continue
            for key, option in (entry.component.options or {}).items():
                shown = json.dumps(option.default) if not isinstance(option.default, str) else option.default
                where = f"{block.replace('<name>', entry.component.name)}.{key}"
                rows.append(
                    f"| `{where}` | {kind} `{entry.component.name}` | `{shown}` | "
                    f"{option.help.replace('|', chr(92) + '|')} |"
                )
    return (
        "**plugin options** (declared by each built-in component; `python -m core.list --options` lists them "
        "with any installed plugin's)\n\n| key | component | default | notes |\n|---|---|---|---|\n" + "\n".join(rows)
    )


def render() -> str:
    from core.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config")
    notes = comments()
    groups: dict[str, list[str]] = {}
    for path, node in leaves(cfg):
        if path.startswith("hydra"):
            continue
        group = path.split(".")[0] if "." in path else "(top level)"
        value = (
            OmegaConf.to_container(node) if isinstance(node, DictConfig) or OmegaConf.is_list(node) else node._value()
        )
        shown = json.dumps(value) if not isinstance(value, str) else value
        note = notes.get(path, "").replace("|", "\\|")
        groups.setdefault(group, []).append(f"| `{path}` | `{shown}` | {note} |")
    parts = []
    for group, rows in groups.items():
        parts.append(f"**{group}**\n\n| key | default | notes |\n|---|---|---|\n" + "\n".join(rows))
    parts.append(plugin_options())
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(render())
