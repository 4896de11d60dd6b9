"""The render plan: GMNotes' instruments (one per SoundFont and GM program), the split of each, and
which notes to render, within the size budget, in which order. Everything here is fixed by the
:class:`~plugins.datasets.gmnotes.options.RenderSettings`; only SoundFont headers are read."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import attrs
import numpy as np

from plugins.datasets.common.families import FAMILIES, SOURCES
from plugins.datasets.common.layout import SPLITS, DatasetError
from plugins.datasets.gmnotes.constants import BYTES_PER_MB, SAMPLE_RATE, SHARED_SAMPLES_JACCARD, WAV_BYTES
from plugins.datasets.gmnotes.options import RenderSettings
from plugins.datasets.gmnotes.programs import BY_NUMBER, GMProgram
from plugins.datasets.gmnotes.soundfont import Preset, read_presets

log = logging.getLogger(__name__)


@attrs.frozen
class Instrument:
    """One (SoundFont, GM program) pair."""

    index: int  # NSynth's ``instrument`` id
    number: int  # within (family, source): the 3 digits in ``instrument_str``
    soundfont: int  # index into RenderSettings.soundfonts
    gm: GMProgram
    preset_name: str
    sample_set: str
    pitches: tuple[int, ...]

    @property
    def family(self) -> str:
        return self.gm.family

    @property
    def instrument_str(self) -> str:
        return f"{self.gm.family}_{self.gm.source}_{self.number:03d}"


@attrs.frozen
class PlannedNote:
    split: str
    instrument: Instrument
    pitch: int
    velocity: int

    @property
    def note_str(self) -> str:
        return f"{self.instrument.instrument_str}-{self.pitch:03d}-{self.velocity:03d}"

    def entry(self) -> dict[str, Any]:
        """The note's ``examples.json`` entry, with every NSynth field."""
        inst = self.instrument
        return {
            # NSynth's note ids are just unique integers; this one is unique and stable per folder.
            "note": (inst.index * 128 + self.pitch) * 128 + self.velocity,
            "note_str": self.note_str,
            "instrument": inst.index,
            "instrument_str": inst.instrument_str,
            "pitch": self.pitch,
            "velocity": self.velocity,
            "sample_rate": SAMPLE_RATE,
            # NSynth's qualities were annotated by people; none are known for rendered notes, so the
            # vector is all zeros and the list empty (same length and order as NSynth's).
            "qualities": [0] * 10,
            "qualities_str": [],
            "instrument_family": FAMILIES.index(inst.family),
            "instrument_family_str": inst.family,
            "instrument_source": SOURCES.index(inst.gm.source),
            "instrument_source_str": inst.gm.source,
        }


Cell = tuple[str, str]  # (split, family)


@attrs.frozen
class Plan:
    """The instruments, their split and the notes to render, all fixed by the settings.

    Each (split, family) cell has its candidate notes in selection order and a quota; the notes
    kept are the first ``quota`` candidates not known to be silent, so a silent note is replaced
    by the cell's next candidate (deterministically: silence is a property of the note).
    """

    instruments: tuple[Instrument, ...]
    split_of: dict[int, str]  # Instrument.index -> split
    candidates: dict[Cell, tuple[PlannedNote, ...]]
    quota: dict[Cell, int]

    def select(self, silent: Collection[str] = ()) -> list[PlannedNote]:
        """Per cell, the first ``quota`` candidates whose ``note_str`` is not in ``silent``."""
        chosen: list[PlannedNote] = []
        for cell, notes in self.candidates.items():
            audible = (n for n in notes if n.note_str not in silent)
            chosen.extend(itertools.islice(audible, self.quota[cell]))
        return chosen

    @property
    def notes(self) -> list[PlannedNote]:
        """The notes to render before any is known to be silent."""
        return self.select()


def make_plan(settings: RenderSettings) -> Plan:
    """Instruments of every SoundFont, their split units and splits, and the notes to render.

    Raises:
        DatasetError: a requested family has too few independent instruments for three splits, or
            the budget cannot hold one note per family and split.
    """
    presets = [read_presets(sf.path) for sf in settings.soundfonts]
    instruments = _instruments(settings, presets)
    units = _split_units(settings, presets, instruments)
    split_of = _assign_splits(settings, instruments, units)
    wanted = [i for i in instruments if i.index in split_of]

    # each instrument's notes, best-spread first
    velocities = list(settings.velocities)
    ordered: dict[int, list[tuple[int, int]]] = {}
    for inst in wanted:
        rng = random.Random(f"{settings.seed}:{inst.instrument_str}")
        order = spread_order(list(inst.pitches), velocities, rng)
        ordered[inst.index] = order[: settings.notes_per_instrument]

    # each (split, family) cell's notes, instruments taking turns in a seeded order
    cells: dict[Cell, tuple[PlannedNote, ...]] = {}
    for split in SPLITS:
        for family in settings.families:
            members = [i for i in wanted if split_of[i.index] == split and i.family == family]
            random.Random(f"{settings.seed}:{split}:{family}").shuffle(members)
            turns = _round_robin([[(inst, p, v) for p, v in ordered[inst.index]] for inst in members])
            cells[(split, family)] = tuple(PlannedNote(split, inst, p, v) for inst, p, v in turns)

    caps = {
        key: len(notes) if settings.max_per_class is None else min(len(notes), settings.max_per_class)
        for key, notes in cells.items()
    }
    if settings.max_total_bytes is not None:
        budget = settings.max_total_bytes // WAV_BYTES
        if budget < len(cells):
            raise DatasetError(
                f"data.max_total_size_mb={settings.max_total_bytes / BYTES_PER_MB:g} holds {budget} notes of "
                f"{WAV_BYTES} bytes; GMNotes needs at least one note per family and split "
                f"({len(cells)} notes, {len(cells) * WAV_BYTES / BYTES_PER_MB:.2f} MB)"
            )
        weights = {(s, f): settings.split_fractions[SPLITS.index(s)] for s, f in cells}
        caps = allocate(budget, caps, weights)
    return Plan(tuple(instruments), split_of, cells, caps)


def _instruments(settings: RenderSettings, presets: list[dict[int, Preset]]) -> list[Instrument]:
    """All (SoundFont, program) pairs of the table that the SoundFonts have, numbered NSynth-style.

    Numbering covers every family (not only the requested ones) so that a note keeps its name
    whatever ``data.classes`` says.
    """
    out: list[Instrument] = []
    per_kind: dict[tuple[str, str], int] = {}
    for sf_index, sf in enumerate(settings.soundfonts):
        for program in settings.programs:
            gm = BY_NUMBER[program]
            preset = presets[sf_index].get(program)
            if preset is None:
                log.info("%s has no bank-0 preset for GM program %d (%s); skipped", sf.name, program, gm.name)
                continue
            low = max(settings.pitch_min, gm.low, preset.key_low)
            high = min(settings.pitch_max, gm.high, preset.key_high)
            number = per_kind.get((gm.family, gm.source), 0)
            per_kind[(gm.family, gm.source)] = number + 1
            out.append(
                Instrument(len(out), number, sf_index, gm, preset.name, sf.sample_set, tuple(range(low, high + 1)))
            )
    return out


def _split_units(
    settings: RenderSettings, presets: list[dict[int, Preset]], instruments: list[Instrument]
) -> dict[int, str]:
    """Instrument index -> unit key; the instruments of one unit always share a split.

    Programs are linked when, in any SoundFont of one sample set, their presets share at least
    :data:`SHARED_SAMPLES_JACCARD` of their samples; a unit is a connected (sample set, program)
    component, so it also gathers a program's instruments from SoundFonts derived from one set.
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(node: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for sf_index, sf in enumerate(settings.soundfonts):
        used = [p for p in settings.programs if p in presets[sf_index]]
        for a_pos, a in enumerate(used):
            find((sf.sample_set, a))
            for b in used[a_pos + 1 :]:
                sa, sb = presets[sf_index][a].samples, presets[sf_index][b].samples
                if len(sa & sb) >= SHARED_SAMPLES_JACCARD * len(sa | sb):
                    parent[find((sf.sample_set, a))] = find((sf.sample_set, b))
    return {i.index: "{}:{}".format(*find((i.sample_set, i.gm.program))) for i in instruments}


def _assign_splits(settings: RenderSettings, instruments: list[Instrument], units: dict[int, str]) -> dict[int, str]:
    """Instrument index -> split, for instruments of the requested families that have notes."""
    playable = [i for i in instruments if i.pitches]
    members: dict[str, list[Instrument]] = {}
    for inst in playable:
        members.setdefault(units[inst.index], []).append(inst)
    split_of: dict[int, str] = {}
    for family in settings.families:
        mine = sorted(u for u, insts in members.items() if any(i.family == family for i in insts))
        # a unit that spans families would put one sample set under two labels in two splits
        shared = [u for u in mine if len({i.family for i in members[u]}) > 1]
        single = [u for u in mine if u not in shared]
        random.Random(f"{settings.seed}:{family}").shuffle(single)
        if len(single) < 2 or len(single) + len(shared) < 3:
            names = sorted(i.instrument_str for u in mine for i in members[u] if i.family == family)
            raise DatasetError(
                f"GMNotes: family {family!r} has {len(mine)} independent instrument group(s) "
                f"({', '.join(names) or 'no instruments'}) with the selected SoundFonts, programs and "
                f"pitch range; train, valid and test need one each, and valid/test need groups whose "
                f"samples no other family uses. Add SoundFonts (data.options.GMNotes.soundfonts or "
                f"extra_soundfonts) or programs, widen the pitch range, or drop the class"
            )
        total = sum(1 for u in mine for i in members[u] if i.family == family)
        chosen: dict[str, list[str]] = {"valid": [], "test": []}
        for split in ("valid", "test"):
            target = settings.split_fractions[SPLITS.index(split)] * total
            count = 0
            # leave a unit for the other held-out split and, without shared units, one for train
            keep = (1 if split == "valid" else 0) + (0 if shared else 1)
            while single and len(single) > keep and (not chosen[split] or count < target):
                unit = single.pop(0)
                chosen[split].append(unit)
                count += len(members[unit])
        for unit in mine:
            split = next((s for s, us in chosen.items() if unit in us), "train")
            for inst in members[unit]:
                if inst.family == family:
                    split_of[inst.index] = split
    return split_of


def spread_order(pitches: list[int], velocities: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """All (pitch, velocity) pairs in greedy farthest-point order, so every prefix is spread out.

    Pitch and velocity are each scaled to [0, 1]; the first pair and ties are chosen by ``rng``.
    """
    grid = [(p, v) for p in pitches for v in velocities]
    if not grid:
        return []
    rng.shuffle(grid)
    p_lo, p_span = min(pitches), max(1, max(pitches) - min(pitches))
    v_rank = {v: i / max(1, len(velocities) - 1) for i, v in enumerate(sorted(velocities))}
    xy = np.array([((p - p_lo) / p_span, v_rank[v]) for p, v in grid])
    dist = np.full(len(grid), np.inf)
    order: list[int] = []
    pick = 0
    for _ in range(len(grid)):
        order.append(pick)
        dist = np.minimum(dist, ((xy - xy[pick]) ** 2).sum(axis=1))
        dist[pick] = -1.0
        pick = int(np.argmax(dist))  # the first maximum: ties go by the shuffled order
    return [grid[i] for i in order]


def _round_robin(lists: list[list[Any]]) -> Iterator[Any]:
    """The first item of each list, then the second of each, and so on."""
    for k in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if k < len(x):
                yield x[k]


def allocate(budget: int, caps: Mapping[Any, int], weights: Mapping[Any, float]) -> dict[Any, int]:
    """Share ``budget`` notes among cells: one each first, then in proportion to ``weights``.

    A cell never gets more than its cap; what a capped cell cannot take is shared among the others.
    Deterministic: remainders go to the largest fractional shares, ties in key order.
    """
    alloc = {k: min(1, caps[k]) for k in caps}
    left = budget - sum(alloc.values())
    active = sorted(k for k in caps if alloc[k] < caps[k])
    while left > 0 and active:
        total = sum(weights[k] for k in active)
        share = {k: left * weights[k] / total for k in active}
        full = [k for k in active if alloc[k] + share[k] >= caps[k]]
        if full:
            for k in full:
                left -= caps[k] - alloc[k]
                alloc[k] = caps[k]
            active = [k for k in active if k not in full]
            continue
        floors = {k: int(share[k]) for k in active}
        for k in active:
            alloc[k] += floors[k]
        rest = left - sum(floors.values())
        for k in sorted(active, key=lambda k: -(share[k] - floors[k]))[:rest]:
            alloc[k] += 1
        left = 0
    return alloc
