"""Where SoundFonts are looked for: by the GMNotes renderer and by ``core.doctor``'s report."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def soundfont_dirs() -> list[Path]:
    """Folders searched for a SoundFont given by file name, in order."""
    dirs = [Path(p) for p in os.environ.get("SOUNDFONT_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) for p in ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts",
                               "/usr/local/share/soundfonts", "/usr/local/share/sounds/sf2",
                               "/opt/homebrew/share/soundfonts")]
    dirs.append(Path.home() / ".local/share/soundfonts")
    # pretty_midi ships TimGM6mb.sf2 inside its package; find_spec locates it without importing it.
    spec = importlib.util.find_spec("pretty_midi")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent)
    return dirs


def installed_soundfonts() -> list[Path]:
    """Every ``.sf2``/``.sf3`` file in :func:`soundfont_dirs`."""
    found: list[Path] = []
    for d in soundfont_dirs():
        if d.is_dir():
            found += sorted(f for f in d.iterdir() if f.suffix.lower() in (".sf2", ".sf3") and f.is_file())
    return found
