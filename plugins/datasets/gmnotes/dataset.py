"""The GMNotes dataset: renders what its :class:`~plugins.datasets.gmnotes.plan.Plan` asks for into
NSynth's layout, resumably, and reads it back through the shared layout reader."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from core.api import StageProgress, atomic_write_text
from plugins.datasets.common.families import resolve_classes
from plugins.datasets.common.layout import SPLITS, DatasetError, NSynthLayoutDataset, split_dir
from plugins.datasets.gmnotes.constants import SAMPLE_RATE, WAV_BYTES
from plugins.datasets.gmnotes.options import RenderSettings, parse_options
from plugins.datasets.gmnotes.plan import Plan, PlannedNote, make_plan
from plugins.datasets.gmnotes.render import FluidRenderer, Outcome, Task, open_engine, run_tasks

log = logging.getLogger(__name__)


@attrs.define
class RenderStats:
    """What the last :meth:`GMNotesDataset.prepare` did."""

    planned: int = 0
    already_done: int = 0  # already on disk when this run started
    rendered: int = 0  # rendered in this run (written + silent, replacements of silent notes included)
    silent: int = 0  # dropped in this run
    limited: int = 0  # scaled down to avoid clipping in this run
    seconds: float = 0.0

    @property
    def notes_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


class GMNotesDataset(NSynthLayoutDataset):
    """NSynth-layout notes rendered from GM SoundFonts; :meth:`prepare` renders what is missing.

    Args:
        root: data root; the dataset lives in ``<root>/GMNotes/<hash of settings>``.
        classes: ``data.classes``; only their families are rendered.
        settings: from :func:`parse_options`.
        num_workers: rendering processes (1 = in this process).
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(
        self, root: str | Path, classes: list[str] | None, settings: RenderSettings, num_workers: int = 1
    ) -> None:
        self.settings = settings
        self.num_workers = num_workers
        self.stats = RenderStats()
        super().__init__(
            Path(root).expanduser() / "GMNotes" / settings.digest(), classes, settings.max_per_class, settings.seed
        )

    @property
    def complete_marker(self) -> Path:
        return self.dataset_dir / ".complete"

    def plan(self) -> Plan:
        """The instruments, splits and notes these settings give (reads SoundFont headers only)."""
        return make_plan(self.settings)

    def prepare(self) -> None:
        """Render every planned note not yet on disk, write ``examples.json`` per split, then the
        ``.complete`` marker and the class map. A complete folder is left as it is."""
        self.stats = RenderStats()
        if self.complete_marker.is_file():
            log.info("GMNotes: %s is complete; nothing to render", self.dataset_dir)
            self.write_class_map()
            return
        plan = self.plan()
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dataset_dir / "params.json", json.dumps(self.settings.fingerprint(), indent=2))
        atomic_write_text(self.dataset_dir / "instruments.json", json.dumps(self._instrument_table(plan), indent=2))
        for split in SPLITS:
            audio = split_dir(self.dataset_dir, split) / "audio"
            audio.mkdir(parents=True, exist_ok=True)
            for stale in audio.glob(".*.part"):  # temp files of an interrupted run
                stale.unlink(missing_ok=True)

        silent_log = self.dataset_dir / "silent.txt"
        notes = plan.select(self._silent(silent_log))
        tasks = self._missing(notes)
        self.stats.planned = len(notes)
        self.stats.already_done = len(notes) - len(tasks)
        log.info(
            "GMNotes: %d notes planned in %s, %d already on disk, %d to render",
            len(notes),
            self.dataset_dir,
            self.stats.already_done,
            len(tasks),
        )
        with contextlib.ExitStack() as stack:
            engine: FluidRenderer | ProcessPoolExecutor | None = None
            while tasks:
                if engine is None:  # one renderer / pool for every round: starting one costs seconds
                    paths = [sf.path for sf in self.settings.soundfonts]
                    engine = stack.enter_context(
                        open_engine(paths, self.settings.oversample, self.settings.silence_db, self.num_workers)
                    )
                self._render(engine, tasks, silent_log)
                # a note found silent gives its place to the next candidate of its cell; render those
                notes = plan.select(self._silent(silent_log))
                tasks = self._missing(notes)
        counts = self._write_examples(notes)
        marker = {"notes": counts, "settings": self.settings.digest()}
        atomic_write_text(self.complete_marker, json.dumps(marker, indent=2))  # last: the folder is done
        self.write_class_map()

    # --- helpers ------------------------------------------------------------------------------
    def _wav_path(self, note: PlannedNote) -> Path:
        return split_dir(self.dataset_dir, note.split) / "audio" / f"{note.note_str}.wav"

    def _missing(self, notes: list[PlannedNote]) -> list[Task]:
        """Render tasks of the notes without a whole WAV on disk."""
        tasks: list[Task] = []
        for note in notes:
            path = self._wav_path(note)
            if not (path.is_file() and path.stat().st_size == WAV_BYTES):
                inst = note.instrument
                tasks.append((inst.soundfont, inst.gm.program, note.pitch, note.velocity, str(path)))
        return tasks

    @staticmethod
    def _silent(silent_log: Path) -> set[str]:
        return set(silent_log.read_text(encoding="utf-8").split()) if silent_log.is_file() else set()

    def _render(self, engine: FluidRenderer | ProcessPoolExecutor, tasks: list[Task], silent_log: Path) -> None:
        started = time.perf_counter()
        with (
            StageProgress("GMNotes: rendered", total=len(tasks), noun="notes", logger=log) as progress,
            open(silent_log, "a", encoding="utf-8") as journal,
        ):

            def record(outcomes: list[Outcome]) -> None:
                for path, status, limited in outcomes:
                    self.stats.rendered += 1
                    self.stats.limited += limited
                    if status == "silent":
                        self.stats.silent += 1
                        journal.write(Path(path).stem + "\n")
                journal.flush()
                progress.update(advance=len(outcomes))

            run_tasks(engine, tasks, self.settings.silence_db, record)
        self.stats.seconds += time.perf_counter() - started
        log.info(
            "GMNotes: rendered %d notes in %.1f s (%.0f notes/s); %d silent and dropped, %d scaled "
            "down to avoid clipping",
            self.stats.rendered,
            self.stats.seconds,
            self.stats.notes_per_second,
            self.stats.silent,
            self.stats.limited,
        )

    def _write_examples(self, notes: list[PlannedNote]) -> dict[str, dict[str, int]]:
        """``examples.json`` of each split for ``notes`` (all rendered); returns notes per family."""
        summary: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            entries: dict[str, dict[str, Any]] = {}
            for note in notes:
                if note.split != split:
                    continue
                path = self._wav_path(note)
                if not (path.is_file() and path.stat().st_size == WAV_BYTES):
                    raise DatasetError(f"GMNotes: {path} is missing after rendering")
                entries[note.note_str] = note.entry()
            atomic_write_text(
                split_dir(self.dataset_dir, split) / "examples.json", json.dumps(entries, indent=1, sort_keys=True)
            )
            counts = {f: 0 for f in self.settings.families}
            for entry in entries.values():
                counts[entry["instrument_family_str"]] += 1
            summary[split] = counts
            for family, n in counts.items():
                if n == 0:
                    log.warning("GMNotes: no %s notes in %s (all its candidates were silent)", family, split)
        return summary

    def _instrument_table(self, plan: Plan) -> dict[str, Any]:
        table: dict[str, Any] = {}
        for inst in plan.instruments:
            if inst.index not in plan.split_of:
                continue
            table[inst.instrument_str] = {
                "instrument": inst.index,
                "split": plan.split_of[inst.index],
                "soundfont": self.settings.soundfonts[inst.soundfont].name,
                "sample_set": inst.sample_set,
                "gm_program": inst.gm.program,
                "gm_name": inst.gm.name,
                "preset_name": inst.preset_name,
                "pitch_range": [inst.pitches[0], inst.pitches[-1]],
            }
        return table


def build_gmnotes(
    root: str | Path,
    classes: list[str] | None,
    max_total_size_mb: float | None,
    max_per_class: int | None,
    seed: int,
    **options: Any,
) -> GMNotesDataset:
    """Factory of the ``GMNotes`` dataset; ``options`` come from ``data.options.GMNotes``, every key
    of :data:`~plugins.datasets.gmnotes.options.OPTIONS` (the core fills in their defaults).

    Options:
        soundfonts: paths or file names (searched in the usual SoundFont folders).
        extra_soundfonts: more SoundFonts, each a path or ``{path, derived_from}`` where
            ``derived_from`` names the SoundFont whose samples it reuses (same split per program).
        programs: GM program numbers (0-127) to use, a subset of
            :data:`~plugins.datasets.gmnotes.programs.PROGRAMS`; null = all.
        notes_per_instrument: at most this many notes per instrument, spread over pitch and velocity.
        velocities: MIDI velocities rendered.
        pitch_min, pitch_max: MIDI range, further cut per program.
        split_fractions: train, valid, test (list or mapping), by instrument.
        silence_db: loudest-50-ms-frame RMS below this (dBFS) = silent, dropped.
        oversample: render at 16 kHz times this and decimate.
        num_workers: rendering processes.
    """
    families = [family for _, family in resolve_classes(classes)]
    settings, num_workers = parse_options(families, max_total_size_mb, max_per_class, seed, **options)
    return GMNotesDataset(root, classes, settings, num_workers)
