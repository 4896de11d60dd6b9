"""Reading a dataset stored in NSynth's on-disk layout.

``<dataset dir>/nsynth-<split>/examples.json`` plus ``<dataset dir>/nsynth-<split>/audio/<note_str>.wav``
for split in train/valid/test. Both dataset plugins (NSynth downloaded or on disk, GMNotes rendered)
write this layout, so one reader serves both.

``examples.json`` may come from anywhere (a copy on disk, a mirror), so it is read defensively: an
entry is used only if its key is a plain ``note_str`` (letters, digits, ``_`` and ``-``: never a path,
so no entry can make the reader touch a file outside ``audio/``) and its value is an object whose
``instrument_family_str`` is an NSynth family. Other entries are skipped and counted in one warning.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from core.api import Clip, UserError, atomic_write_text
from plugins.datasets.common.families import FAMILIES, mapping_text, resolve_classes

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_ALIASES = {"val": "valid", "validation": "valid"}
#: What a ``note_str`` may hold: it names ``audio/<note_str>.wav``, so no separators, dots or NULs.
NOTE_STR_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")


class DatasetError(UserError, RuntimeError):
    """The dataset on disk is missing, malformed, or empty after filtering."""


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)} (or 'val')")
    return split


def split_dir(dataset_dir: Path, split: str) -> Path:
    return Path(dataset_dir) / f"nsynth-{canonical_split(split)}"


def instrument_of(note_str: str) -> str:
    """The instrument a ``note_str`` belongs to: the name without its pitch and velocity fields
    (``bass_synthetic_033-050-100`` -> ``bass_synthetic_033``), which is NSynth's ``instrument_str``."""
    return note_str.rsplit("-", 2)[0]


def entry_problem(note_str: str, entry: Any) -> str | None:
    """Why the ``examples.json`` entry ``note_str: entry`` cannot be used, or None if it can."""
    name = _shown(note_str)
    if not NOTE_STR_RE.fullmatch(note_str):
        return f"{name} is not a note_str (letters, digits, _ and - only, as in bass_synthetic_033-050-100)"
    if not isinstance(entry, dict):
        return f"{name}: the entry is a JSON {json_type(entry)}, not an object"
    if "instrument_family_str" not in entry:
        return f"{name}: the entry has no instrument_family_str"
    family = entry["instrument_family_str"]
    if not isinstance(family, str) or family not in FAMILIES:
        shown = _shown(family) if isinstance(family, str) else f"a JSON {json_type(family)}"
        return f"{name}: instrument_family_str is {shown}; valid: {', '.join(FAMILIES)}"
    return None


def _shown(text: str, limit: int = 80) -> str:
    """``repr`` of a name from a file, cut short: a key may be megabytes of garbage."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string ...), for messages."""
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


class NSynthLayoutDataset:
    """Base for datasets stored in NSynth's layout; subclasses implement :meth:`prepare`.

    Args:
        dataset_dir: folder holding ``nsynth-{train,valid,test}``.
        classes: ``data.classes`` (family or instrument names; empty = all families).
        max_per_class: keep at most this many notes per class and split (deterministic per seed).
        seed: seed for that selection.
    """

    sample_rate: int = 16000

    def __init__(self, dataset_dir: Path, classes: list[str] | None, max_per_class: int | None, seed: int) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.resolved = resolve_classes(classes)
        self.max_per_class = max_per_class
        self.seed = seed
        #: per split, the WAV paths ``examples.json`` lists but the folder lacks (set by get_examples);
        #: the engine counts them with the clips it could not decode
        self.missing: dict[str, list[str]] = {}

    # --- what the core uses -------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Label names in label order (the requested names, e.g. ``violin``)."""
        return [req for req, _ in self.resolved]

    @property
    def families(self) -> list[str]:
        return [fam for _, fam in self.resolved]

    def class_map(self) -> dict[str, Any]:
        return {
            "classes": self.class_names,
            "families": self.families,
            "index": {req: i for i, (req, _) in enumerate(self.resolved)},
            "mapping": mapping_text(self.resolved),
        }

    def describe(self) -> str:
        return mapping_text(self.resolved)

    def prepare(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_items(self, split: str) -> list[Clip]:
        """A :class:`Clip` (wav path, label, instrument) for every kept note of ``split``, sorted by
        path. The group is the instrument, so the core never puts one instrument in two folds."""
        return [Clip(path, label, instrument_of(path.stem)) for path, label, _ in self.get_examples(split)]

    def get_examples(self, split: str) -> list[tuple[Path, int, dict[str, Any]]]:
        """Like :meth:`get_items`, with each note's ``examples.json`` entry."""
        sdir = split_dir(self.dataset_dir, split)
        meta = self.read_examples(sdir)
        label_of = {fam: i for i, fam in enumerate(self.families)}
        per_class: dict[int, list[tuple[Path, int, dict[str, Any]]]] = {i: [] for i in label_of.values()}
        missing: list[str] = []
        for note_str, entry in sorted(meta.items()):
            family = entry["instrument_family_str"]  # read_examples checked it is a family name
            if family not in label_of:
                continue
            path = sdir / "audio" / f"{note_str}.wav"
            if not path.is_file():
                missing.append(str(path))
                continue
            per_class[label_of[family]].append((path, label_of[family], entry))
        self.missing[split] = missing
        if missing:
            log.warning("%s: %d entries of examples.json have no WAV file; skipped", sdir, len(missing))
        rng = random.Random(self.seed)
        kept: list[tuple[Path, int, dict[str, Any]]] = []
        for rows in per_class.values():
            if self.max_per_class is not None and len(rows) > self.max_per_class:
                rows = sorted(rng.sample(rows, self.max_per_class), key=lambda r: r[0])
            kept.extend(rows)
        if not kept:
            raise DatasetError(
                f"{sdir}: no notes of the requested classes ({', '.join(self.class_names)}) "
                f"were found; check data.classes and data.root"
            )
        return sorted(kept, key=lambda r: r[0])

    def write_class_map(self) -> Path:
        path = self.dataset_dir / "class_map.json"
        atomic_write_text(path, json.dumps(self.class_map(), indent=2))
        return path

    @staticmethod
    def read_examples(sdir: Path) -> dict[str, dict[str, Any]]:
        """The usable entries of ``sdir/examples.json`` (see the module docstring); the others are
        skipped with one warning that counts them and names the first.

        Raises:
            DatasetError: the file is missing, unreadable, not JSON, or not one JSON object.
        """
        path = sdir / "examples.json"
        if not path.is_file():
            raise DatasetError(f"{path} not found: the dataset is not prepared at this root")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DatasetError(f"{path} cannot be read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path} is not UTF-8 text ({exc}); it must be NSynth's examples.json, "
                f"one JSON object keyed by note_str"
            ) from exc
        # ValueError also covers JSONDecodeError and integers too long to convert; RecursionError,
        # absurdly deep nesting.
        except (ValueError, RecursionError) as exc:
            raise DatasetError(
                f"{path} is not valid JSON ({exc}); it must be NSynth's examples.json, "
                f"one JSON object keyed by note_str"
            ) from exc
        if not isinstance(meta, dict):
            raise DatasetError(f"{path} holds a JSON {json_type(meta)}; it must be one JSON object keyed by note_str")
        usable: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for note_str, entry in meta.items():
            if (problem := entry_problem(note_str, entry)) is None:
                usable[note_str] = entry
            else:
                problems.append(problem)
        if problems:
            log.warning("%s: %d of %d entries skipped, e.g. %s", path, len(problems), len(meta), problems[0])
        return usable
