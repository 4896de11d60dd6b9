"""The READMEs' configuration reference is the configs' own: regenerated and compared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("readme", ["README.md", "README.ko.md"])
def test_config_reference_matches_the_configs(readme):
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / readme).read_text()
    block = re.search(r"<!-- config-reference -->\n(.*?)<!-- /config-reference -->", text, re.S)
    assert block, f"{readme} has no config-reference block"
    assert block.group(1) == module.render(), (
        f"{readme}'s configuration reference is out of date: run .venv/bin/python scripts/config_reference.py "
        f"and paste its output between the config-reference markers"
    )
    assert "|  |" not in block.group(1), "every key needs a comment in configs/*.yaml"
