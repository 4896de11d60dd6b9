"""``data.options.GMNotes``: the options GMNotes declares (each default written once, here) and
their checked form, :class:`RenderSettings`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from core.api import ConfigValueError, Option
from plugins.datasets.common.families import FAMILIES
from plugins.datasets.common.layout import SPLITS
from plugins.datasets.gmnotes.constants import (
    BYTES_PER_MB,
    GAIN,
    HOLD_SECONDS,
    NOTE_SECONDS,
    RENDER_VERSION,
    SAMPLE_RATE,
    SHARED_SAMPLES_JACCARD,
)
from plugins.datasets.gmnotes.programs import BY_NUMBER, LEFT_OUT
from plugins.datasets.gmnotes.soundfont import SoundFontRef, find_soundfont

#: The core checks a user's block against these and passes every one to the factory, defaults
#: filled in. The defaults are the settings the project's results were rendered with: changing one
#: changes the dataset folder's hash, so GMNotes renders again.
OPTIONS: dict[str, Option] = {
    "soundfonts": Option(["FluidR3_GM", "TimGM6mb"], "names found in the system SoundFont folders, or paths"),
    "extra_soundfonts": Option([], "[{path: /x/MuseScore_General.sf3, derived_from: FluidR3_GM}]"),
    "programs": Option(None, "GM program numbers (0-127) to use, a subset of the program table; null = all"),
    "notes_per_instrument": Option(None, "null = every pitch x velocity in range; N = N spread over them"),
    "velocities": Option([25, 50, 75, 100, 127], "MIDI velocities rendered"),
    "pitch_min": Option(21, "lowest MIDI pitch (NSynth: 21)"),
    "pitch_max": Option(108, "highest MIDI pitch (NSynth: 108)"),
    "split_fractions": Option([0.7, 0.15, 0.15], "train / valid / test share of the instruments"),
    "silence_db": Option(-70.0, "loudest-50-ms-frame RMS below this (dBFS) = silent, dropped"),
    "oversample": Option(2, "render at 16 kHz times this and decimate"),
    "num_workers": Option(2, "rendering processes"),
}


class GMNotesOptionError(ConfigValueError):
    """A ``data.options.GMNotes`` entry has a bad value (unknown keys are refused by the core)."""


@attrs.frozen
class RenderSettings:
    """Everything that decides what lands on disk; its :meth:`digest` names the dataset folder."""

    soundfonts: tuple[SoundFontRef, ...]
    families: tuple[str, ...]  # requested families, in NSynth's order
    programs: tuple[int, ...]  # rows of PROGRAMS used
    velocities: tuple[int, ...]
    pitch_min: int
    pitch_max: int
    notes_per_instrument: int | None
    max_per_class: int | None
    max_total_bytes: int | None
    seed: int
    split_fractions: tuple[float, float, float]
    silence_db: float
    oversample: int

    def fingerprint(self) -> dict[str, Any]:
        return {
            "render_version": RENDER_VERSION,
            "audio": {
                "sample_rate": SAMPLE_RATE,
                "seconds": NOTE_SECONDS,
                "hold_seconds": HOLD_SECONDS,
                "gain": GAIN,
                "oversample": self.oversample,
                "silence_db": self.silence_db,
            },
            "soundfonts": [{"name": sf.name, "size": sf.size, "sample_set": sf.sample_set} for sf in self.soundfonts],
            "families": list(self.families),
            "programs": [attrs.asdict(BY_NUMBER[p]) for p in self.programs],
            "shared_samples_jaccard": SHARED_SAMPLES_JACCARD,
            "velocities": list(self.velocities),
            "pitch_range": [self.pitch_min, self.pitch_max],
            "notes_per_instrument": self.notes_per_instrument,
            "max_per_class": self.max_per_class,
            "max_total_bytes": self.max_total_bytes,
            "seed": self.seed,
            "split_fractions": list(self.split_fractions),
        }

    def digest(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _opt_int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise GMNotesOptionError(f"data.options.GMNotes.{key} must be an integer {bounds}, got {value!r}")
    return int(value)


def _opt_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise GMNotesOptionError(f"data.options.GMNotes.{key} must be a list, got {value!r}")
    return list(value)


def _parse_soundfonts(soundfonts: Any, extra: Any) -> tuple[SoundFontRef, ...]:
    refs: list[SoundFontRef] = []
    for entry in _opt_list("soundfonts", soundfonts):
        if not isinstance(entry, (str, os.PathLike)):
            raise GMNotesOptionError(f"data.options.GMNotes.soundfonts entries are paths or file names, got {entry!r}")
        path = find_soundfont(entry)
        refs.append(SoundFontRef(path, path.stem))
    for entry in _opt_list("extra_soundfonts", extra):
        if isinstance(entry, (str, os.PathLike)):
            entry = {"path": entry}
        if not isinstance(entry, Mapping) or "path" not in entry or set(entry) - {"path", "derived_from"}:
            raise GMNotesOptionError(
                f"data.options.GMNotes.extra_soundfonts entries are a path or {{path, derived_from}} "
                f"(derived_from: the SoundFont whose samples it reuses, e.g. FluidR3_GM), got {entry!r}"
            )
        path = find_soundfont(entry["path"])
        base = entry.get("derived_from")
        refs.append(SoundFontRef(path, Path(str(base)).stem if base else path.stem))
    seen: set[Path] = set()
    for ref in refs:  # paths are resolved, so a link such as default-GM.sf2 counts as its target
        if ref.path in seen:
            raise GMNotesOptionError(f"SoundFont {ref.path} is listed twice in data.options.GMNotes")
        seen.add(ref.path)
    if not refs:
        raise GMNotesOptionError("data.options.GMNotes.soundfonts is empty: give at least one SoundFont")
    return tuple(refs)


def parse_options(
    families: Iterable[str],
    max_total_size_mb: float | None,
    max_per_class: int | None,
    seed: int,
    *,
    soundfonts: Any,
    extra_soundfonts: Any,
    programs: Any,
    notes_per_instrument: Any,
    velocities: Any,
    pitch_min: Any,
    pitch_max: Any,
    split_fractions: Any,
    silence_db: Any,
    oversample: Any,
    num_workers: Any,
) -> tuple[RenderSettings, int]:
    """Validate ``data.options.GMNotes`` (every key of :data:`OPTIONS`, as the core passes them) and
    the ``data.*`` values; returns (settings, num_workers).

    Raises:
        GMNotesOptionError: a bad value.
        SoundFontNotFoundError: a SoundFont is not on disk.
    """
    refs = _parse_soundfonts(soundfonts, extra_soundfonts)

    programs = (
        sorted(BY_NUMBER)
        if programs is None
        else sorted({_opt_int("programs", p, 0, 127) for p in _opt_list("programs", programs)})
    )
    for p in programs:
        if p not in BY_NUMBER:
            raise GMNotesOptionError(
                f"GM program {p} is not used by GMNotes ({LEFT_OUT.get(p)}); "
                f"usable programs: {', '.join(str(q) for q in sorted(BY_NUMBER))}"
            )

    velocities = sorted({_opt_int("velocities", v, 1, 127) for v in _opt_list("velocities", velocities)})
    pitch_min = _opt_int("pitch_min", pitch_min, 0, 127)
    pitch_max = _opt_int("pitch_max", pitch_max, 0, 127)
    if not velocities or pitch_min > pitch_max:
        raise GMNotesOptionError(
            f"data.options.GMNotes: need velocities and pitch_min <= pitch_max, got "
            f"velocities={velocities}, pitch_min={pitch_min}, pitch_max={pitch_max}"
        )
    if notes_per_instrument is not None:
        notes_per_instrument = _opt_int("notes_per_instrument", notes_per_instrument, 1)

    fractions = split_fractions
    if isinstance(fractions, Mapping):
        if set(fractions) != set(SPLITS):
            raise GMNotesOptionError(
                f"data.options.GMNotes.split_fractions as a mapping needs exactly "
                f"the keys {', '.join(SPLITS)}, got {dict(fractions)!r}"
            )
        fractions = [fractions[s] for s in SPLITS]
    fractions = _opt_list("split_fractions", fractions)
    if (
        len(fractions) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in fractions)
        or abs(sum(fractions) - 1.0) > 1e-6
    ):
        raise GMNotesOptionError(
            f"data.options.GMNotes.split_fractions must be three positive numbers "
            f"(train, valid, test) summing to 1, got {fractions!r}"
        )

    if isinstance(silence_db, bool) or not isinstance(silence_db, (int, float)) or not silence_db < 0:
        raise GMNotesOptionError(
            f"data.options.GMNotes.silence_db must be a negative number (dBFS), got {silence_db!r}"
        )
    oversample = _opt_int("oversample", oversample, 1, 6)
    num_workers = _opt_int("num_workers", num_workers, 1)

    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise GMNotesOptionError(f"data.max_per_class must be a positive integer or null, got {max_per_class!r}")
    max_total_bytes = None
    if max_total_size_mb is not None:
        if (
            isinstance(max_total_size_mb, bool)
            or not isinstance(max_total_size_mb, (int, float))
            or not max_total_size_mb > 0
        ):
            raise GMNotesOptionError(
                f"data.max_total_size_mb must be a positive number or null, got {max_total_size_mb!r}"
            )
        max_total_bytes = int(max_total_size_mb * BYTES_PER_MB)

    fams = set(families)
    settings = RenderSettings(
        soundfonts=refs,
        families=tuple(f for f in FAMILIES if f in fams),
        programs=tuple(programs),
        velocities=tuple(velocities),
        pitch_min=pitch_min,
        pitch_max=pitch_max,
        notes_per_instrument=notes_per_instrument,
        max_per_class=max_per_class,
        max_total_bytes=max_total_bytes,
        seed=int(seed),
        split_fractions=tuple(float(f) for f in fractions),
        silence_db=float(silence_db),
        oversample=oversample,
    )
    return settings, num_workers
