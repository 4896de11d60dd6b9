"""Reading a dataset stored in NSynth's on-disk layout.

``<dataset dir>/nsynth-<split>/examples.json`` plus ``<dataset dir>/nsynth-<split>/audio/<note_str>.wav``
for split in train/valid/test. Both dataset plugins (NSynth downloaded or on disk, GMNotes rendered)
write this layout, so one reader serves both.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.fsutil import atomic_write_text
from plugins.datasets.families import mapping_text, resolve_classes

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_SPLIT_ALIASES = {"val": "valid", "validation": "valid"}


class DatasetError(UserError, RuntimeError):
    """The dataset on disk is missing, malformed, or empty after filtering."""


def canonical_split(split: str) -> str:
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)} (or 'val')")
    return split


def split_dir(dataset_dir: Path, split: str) -> Path:
    return Path(dataset_dir) / f"nsynth-{canonical_split(split)}"


class NSynthLayoutDataset:
    """Base for datasets stored in NSynth's layout; subclasses implement :meth:`prepare`.

    Args:
        dataset_dir: folder holding ``nsynth-{train,valid,test}``.
        classes: ``data.classes`` (family or instrument names; empty = all families).
        max_per_class: keep at most this many notes per class and split (deterministic per seed).
        seed: seed for that selection.
    """

    sample_rate: int = 16000

    def __init__(self, dataset_dir: Path, classes: list[str] | None, max_per_class: int | None,
                 seed: int) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.resolved = resolve_classes(classes)
        self.max_per_class = max_per_class
        self.seed = seed

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

    def get_items(self, split: str) -> list[tuple[Path, int]]:
        """``(wav path, label)`` for every kept note of ``split``, sorted by path."""
        return [(path, label) for path, label, _ in self.get_examples(split)]

    def get_examples(self, split: str) -> list[tuple[Path, int, dict[str, Any]]]:
        """Like :meth:`get_items`, with each note's ``examples.json`` entry."""
        sdir = split_dir(self.dataset_dir, split)
        meta = self.read_examples(sdir)
        label_of = {fam: i for i, fam in enumerate(self.families)}
        per_class: dict[int, list[tuple[Path, int, dict[str, Any]]]] = {i: [] for i in label_of.values()}
        missing = 0
        for note_str, entry in sorted(meta.items()):
            family = entry.get("instrument_family_str")
            if family not in label_of:
                continue
            path = sdir / "audio" / f"{note_str}.wav"
            if not path.is_file():
                missing += 1
                continue
            per_class[label_of[family]].append((path, label_of[family], entry))
        if missing:
            log.warning("%s: %d entries of examples.json have no WAV file; skipped", sdir, missing)
        rng = random.Random(self.seed)
        kept: list[tuple[Path, int, dict[str, Any]]] = []
        for label, rows in per_class.items():
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
        path = sdir / "examples.json"
        if not path.is_file():
            raise DatasetError(f"{path} not found: the dataset is not prepared at this root")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise DatasetError(f"{path} must hold one JSON object keyed by note_str")
        return {k: v for k, v in meta.items() if isinstance(v, dict)}
