"""GMNotes: an offline dataset in NSynth's exact layout, rendered from General MIDI SoundFonts.

NSynth was made by playing single notes of commercial sample libraries; GMNotes plays single notes
of GM SoundFonts the same way, so the whole pipeline runs with no download::

    <root>/GMNotes/<hash>/nsynth-{train,valid,test}/examples.json   every NSynth field per note
    <root>/GMNotes/<hash>/nsynth-{train,valid,test}/audio/<note_str>.wav
    <root>/GMNotes/<hash>/params.json         the rendering parameters the hash was made of
    <root>/GMNotes/<hash>/instruments.json    instrument_str -> SoundFont, GM program, split, pitches
    <root>/GMNotes/<hash>/silent.txt          notes rendered silent and dropped (so resume skips them)
    <root>/GMNotes/<hash>/.complete           written last; its presence means "nothing to do"

Notes. 4.0 s, 16 kHz, mono, 16-bit PCM; note-on at 0, note-off at 3.0 s, so the last second is the
release; velocities 25/50/75/100/127 and MIDI pitches 21-108 within each program's usable range
(the real instrument's range from :data:`PROGRAMS`, cut to the SoundFont preset's key range).
Reverb and chorus are off. The level is fixed (``GAIN``), not normalised per note, so velocity stays
audible; the rare note that would clip is scaled down to just below full scale. A note whose loudest
50 ms frame is below ``silence_db`` dBFS RMS is dropped (some presets are silent at extreme pitches)
and its place goes to the next candidate note of its (split, family) cell.

Instruments and splits. One instrument = one (SoundFont, GM program). :data:`PROGRAMS` maps GM
programs onto NSynth families and sources; :data:`LEFT_OUT` says why every other program is not
used. Splits are disjoint by instrument, as in NSynth, so valid/test measure generalisation to
unseen instruments. Instruments that cannot be told apart are kept in one split: programs of one
SoundFont whose presets share most of their samples (Jaccard >= 0.5 over sample sets, e.g. FluidR3's
grand/bright/honky-tonk pianos) form one unit, and so do the same programs of SoundFonts derived
from one sample set (``extra_soundfonts: [{path, derived_from}]``, e.g. MuseScore_General from
FluidR3_GM). A unit whose presets span two families (e.g. FluidR3_GM's synth bass 1 and lead 7
play the same samples) always goes to train. Every requested family gets at least one unit in each
split, about ``split_fractions`` of its instruments otherwise; units are assigned per family (seeded
by ``seed`` and the family), so a family's split does not change when other families are requested.

Size. ``max_per_class`` caps notes per family and split, ``notes_per_instrument`` caps notes per
instrument, and ``max_total_size_mb`` (1 MB = 10**6 bytes of WAV) caps the total: every
(split, family) cell first gets one note, then the rest is shared in proportion to the split
fractions and equally among the families of a split, a cell that runs out of notes passing its
share on (water-filling), so no family starves. Within a cell, instruments take turns; each
instrument's notes come in greedy farthest-point order over (pitch, velocity), so any prefix spreads
over the range and the dynamics. All choices are deterministic per seed.

Resume. The folder name is a hash of every rendering parameter (SoundFont names, sizes and sample
sets; the program table rows used; families; pitches; velocities; notes_per_instrument;
max_per_class; budget; seed; split fractions; silence threshold; oversampling; gain), so a changed
parameter renders into a new folder. Each WAV is written to a temp file and renamed; a WAV of the
right size on disk, or a note listed in ``silent.txt``, is not rendered again, so an interrupted
``prepare()`` resumes, and once ``.complete`` exists ``prepare()`` renders nothing.

Renderer: libfluidsynth in-process (through pyfluidsynth), chosen by measurement against the
pip-only tinysoundfont 0.3.7 with ``.venv/bin/python -m benchmarks.render_speed`` (192 notes:
12 programs x 4 pitches x 2 velocities on FluidR3_GM and TimGM6mb, the same protocol for both,
rendered at 32 kHz and decimated; best of three runs on this 2-core machine, which other jobs
shared, so rates moved by up to ~25 % between runs)::

                          render   + WAV + JSON   order effect*   envelope as expected   velocity 50->127
    libfluidsynth 2.3.1   464/s    354/s          0               192 / 192              +16.2 dB
    tinysoundfont 0.3.7   299/s    268/s          0 (391)         192 / 192              +8.1 dB

    rendering straight at 16 kHz (--oversample 1): 1552/s and 950/s, written 1010/s and 614/s.
    * largest change, in 16-bit steps, of a note rendered after other notes. libfluidsynth's 0
      needs a fresh synth per note (below); tinysoundfont's needs 50 ms rendered after "all sound
      off" (391 steps without).

Per note the two agree on the spectrum: correlation of their dB spectrograms, median 0.996 on
FluidR3_GM and 0.989 on TimGM6mb (10th percentiles 0.982 and 0.965). They differ on dynamics:
libfluidsynth applies SoundFont 2.01's default velocity-to-attenuation curve (16.2 dB from
velocity 50 to 127, what the spec's 960 cB concave curve gives), tinysoundfont scales amplitude
linearly (8.1 dB = 20 log10(127/50)); and tinysoundfont is ~25 dB too quiet on MuseScore_General's
piano (shared/MEASURED.md). Both clear the 100 notes/s target (the full default render, 7,809 notes
or 1 GB, took 24-44 s in one process, 180-320 notes/s with WAV and JSON depending on the other jobs
on the two cores, and 13 s with ``num_workers=2``), so libfluidsynth wins on fidelity and on
packaging: pyfluidsynth is already a dependency, while tinysoundfont's declared ``pyaudio``
dependency does not build, so depending on it would break ``uv sync``. pyfluidsynth does not wrap
float output or lending a loaded SoundFont to a second synth, so those calls are bound with ctypes.

Determinism. libfluidsynth reuses voice objects and a reused voice carries some state into the
next note: the first note on a synth differed from later renders of the same note by up to 6 % of
its peak, later ones by up to ~-65 dB re. the peak, so with one long-lived synth a note's bits
depend on what was played before it. Each note is therefore played on a fresh synth (~0.3 ms) that
borrows the SoundFonts loaded once per process: a note renders to the same bits whatever the
order, the worker count or an interruption.

Oversampling. fluidsynth interpolates samples without an anti-aliasing filter, so rendering straight
at 16 kHz folds the samples' content above 8 kHz back into the band. The log-spectral distance to a
96 kHz render decimated to 16 kHz (94 Hz-7.8 kHz, the 192 notes above, same benchmark) is median
1.56 dB / 90th percentile 7.2 dB / max 29.4 dB rendering at 16 kHz, 0.22 / 1.07 / 21.5 dB at
32 kHz and 0.13 / 0.45 / 15.1 dB at 48 kHz. The default ``oversample=2`` renders at 32 kHz and
decimates with a 129-tap Kaiser low-pass (~1.5 ms a note): a quarter of the 16 kHz rendering rate,
still ~3x the target, for most of the gain.
"""

from __future__ import annotations

import contextlib

import ctypes
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import struct
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from core.errors import UserError
from core.registry import Component, hookimpl
from plugins.datasets.families import FAMILIES, SOURCES, resolve_classes
from core.fsutil import atomic_write_text
from core.progress import StageProgress
from core.soundfonts import soundfont_dirs
from plugins.datasets.layout import SPLITS, DatasetError, NSynthLayoutDataset, split_dir

log = logging.getLogger(__name__)

# --- audio format (NSynth's) ------------------------------------------------------------------
SAMPLE_RATE = 16000
NOTE_SECONDS = 4.0
HOLD_SECONDS = 3.0  # note-off time; the last second is the release
NOTE_SAMPLES = int(SAMPLE_RATE * NOTE_SECONDS)
WAV_HEADER_BYTES = 44
WAV_BYTES = WAV_HEADER_BYTES + 2 * NOTE_SAMPLES  # every note's WAV has exactly this size
BYTES_PER_MB = 10**6
DEFAULT_VELOCITIES: tuple[int, ...] = (25, 50, 75, 100, 127)
DEFAULT_PITCH_RANGE = (21, 108)

# --- rendering constants (all part of the folder hash) ----------------------------------------
#: fluidsynth's synth.gain. With mono = (left + right) / 2, the loudest of ~5,000 notes per SoundFont
#: (every program, 30 pitches, velocities 25 and 127) peaked at 0.63 (FluidR3_GM) and 0.51
#: (TimGM6mb), and none of the 7,809 notes of the default render needed limiting: headroom without
#: wasting 16-bit range.
GAIN = 0.7
#: default silence threshold: loudest 50 ms frame below this RMS (dBFS) = silent note.
DEFAULT_SILENCE_DB = -70.0
SILENCE_FRAME = SAMPLE_RATE // 20
#: presets of one SoundFont sharing at least this fraction of samples (Jaccard) are one unit.
SHARED_SAMPLES_JACCARD = 0.5
#: bump when the rendering code changes what lands on disk.
RENDER_VERSION = 1

DEFAULT_SOUNDFONTS: tuple[str, ...] = ("FluidR3_GM.sf2", "TimGM6mb.sf2")
DEBIAN_PACKAGES = "fluid-soundfont-gm timgm6mb-soundfont"
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


class GMNotesOptionError(UserError, ValueError):
    """A ``data.options.GMNotes`` entry is unknown or has a bad value."""


class SoundFontNotFoundError(DatasetError):
    """A SoundFont named in the options is not on disk."""


class RenderError(DatasetError):
    """libfluidsynth is missing or refused a SoundFont or a program."""


# --- the program table ------------------------------------------------------------------------
@attrs.frozen
class GMProgram:
    """One GM program (0-based) as an NSynth instrument: family, source and usable MIDI range."""

    program: int
    name: str
    family: str
    source: str
    low: int
    high: int


def _p(program: int, name: str, family: str, source: str, low: int, high: int) -> GMProgram:
    return GMProgram(program, name, family, source, low, high)


#: GM programs used, with the playing range of the real instrument (MIDI note numbers) so that a
#: tuba is not asked for C8. Sources follow NSynth: acoustic = recorded acoustic instrument,
#: electronic = electric/electro-mechanical (electric pianos, organs, guitars, basses),
#: synthetic = synthesiser.
PROGRAMS: tuple[GMProgram, ...] = (
    # Piano 0-7 -> keyboard. Harpsichord and clavinet are keyboards in NSynth too.
    _p(0, "Acoustic Grand Piano", "keyboard", "acoustic", 21, 108),
    _p(1, "Bright Acoustic Piano", "keyboard", "acoustic", 21, 108),
    _p(2, "Electric Grand Piano", "keyboard", "electronic", 28, 100),  # CP-70: 73 keys
    _p(3, "Honky-tonk Piano", "keyboard", "acoustic", 21, 108),
    _p(4, "Electric Piano 1", "keyboard", "electronic", 28, 100),  # Rhodes: 73 keys
    _p(5, "Electric Piano 2", "keyboard", "electronic", 28, 100),
    _p(6, "Harpsichord", "keyboard", "acoustic", 29, 89),
    _p(7, "Clavinet", "keyboard", "electronic", 29, 88),
    # Chromatic percussion 8-15 -> mallet: struck (or, music box, plucked) tuned metal/wood.
    _p(8, "Celesta", "mallet", "acoustic", 60, 108),
    _p(9, "Glockenspiel", "mallet", "acoustic", 79, 108),
    _p(10, "Music Box", "mallet", "acoustic", 60, 96),
    _p(11, "Vibraphone", "mallet", "acoustic", 53, 89),
    _p(12, "Marimba", "mallet", "acoustic", 45, 96),
    _p(13, "Xylophone", "mallet", "acoustic", 65, 108),
    _p(14, "Tubular Bells", "mallet", "acoustic", 60, 77),
    _p(15, "Dulcimer", "mallet", "acoustic", 48, 88),  # hammered dulcimer: strings struck by mallets
    # Organ 16-20 -> organ (accordions 21/23 are left out, see LEFT_OUT).
    _p(16, "Drawbar Organ", "organ", "electronic", 36, 96),
    _p(17, "Percussive Organ", "organ", "electronic", 36, 96),
    _p(18, "Rock Organ", "organ", "electronic", 36, 96),
    _p(19, "Church Organ", "organ", "acoustic", 24, 96),  # pedal down to C1
    _p(20, "Reed Organ", "organ", "acoustic", 41, 89),  # harmonium: played and heard as an organ
    _p(22, "Harmonica", "reed", "acoustic", 60, 96),  # free reed, as the brief's reed list says
    # Guitar 24-31 -> guitar.
    _p(24, "Acoustic Guitar (nylon)", "guitar", "acoustic", 40, 83),
    _p(25, "Acoustic Guitar (steel)", "guitar", "acoustic", 40, 86),
    _p(26, "Electric Guitar (jazz)", "guitar", "electronic", 40, 86),
    _p(27, "Electric Guitar (clean)", "guitar", "electronic", 40, 86),
    _p(28, "Electric Guitar (muted)", "guitar", "electronic", 40, 81),
    _p(29, "Overdriven Guitar", "guitar", "electronic", 40, 86),
    _p(30, "Distortion Guitar", "guitar", "electronic", 40, 86),
    _p(31, "Guitar Harmonics", "guitar", "electronic", 52, 88),
    # Bass 32-39 -> bass.
    _p(32, "Acoustic Bass", "bass", "acoustic", 28, 67),
    _p(33, "Electric Bass (finger)", "bass", "electronic", 28, 67),
    _p(34, "Electric Bass (pick)", "bass", "electronic", 28, 67),
    _p(35, "Fretless Bass", "bass", "electronic", 28, 67),
    _p(36, "Slap Bass 1", "bass", "electronic", 28, 67),
    _p(37, "Slap Bass 2", "bass", "electronic", 28, 67),
    _p(38, "Synth Bass 1", "bass", "synthetic", 24, 67),
    _p(39, "Synth Bass 2", "bass", "synthetic", 24, 67),
    # Strings 40-45 and ensembles 48-51 -> string (harp 46 and timpani 47 are left out).
    _p(40, "Violin", "string", "acoustic", 55, 103),
    _p(41, "Viola", "string", "acoustic", 48, 88),
    _p(42, "Cello", "string", "acoustic", 36, 76),
    _p(43, "Contrabass", "string", "acoustic", 28, 67),
    _p(44, "Tremolo Strings", "string", "acoustic", 28, 96),
    _p(45, "Pizzicato Strings", "string", "acoustic", 28, 96),
    _p(48, "String Ensemble 1", "string", "acoustic", 28, 96),
    _p(49, "String Ensemble 2", "string", "acoustic", 28, 96),
    _p(50, "Synth Strings 1", "string", "synthetic", 36, 96),  # as synth brass -> brass
    _p(51, "Synth Strings 2", "string", "synthetic", 36, 96),
    # Choir and voice 52-54 -> vocal.
    _p(52, "Choir Aahs", "vocal", "acoustic", 40, 84),
    _p(53, "Voice Oohs", "vocal", "acoustic", 40, 84),
    _p(54, "Synth Voice", "vocal", "synthetic", 36, 84),
    # Brass 56-63 -> brass.
    _p(56, "Trumpet", "brass", "acoustic", 54, 82),
    _p(57, "Trombone", "brass", "acoustic", 40, 72),
    _p(58, "Tuba", "brass", "acoustic", 28, 65),
    _p(59, "Muted Trumpet", "brass", "acoustic", 54, 82),
    _p(60, "French Horn", "brass", "acoustic", 34, 77),
    _p(61, "Brass Section", "brass", "acoustic", 36, 84),
    _p(62, "Synth Brass 1", "brass", "synthetic", 36, 96),
    _p(63, "Synth Brass 2", "brass", "synthetic", 36, 96),
    # Reed 64-71 -> reed.
    _p(64, "Soprano Sax", "reed", "acoustic", 56, 87),
    _p(65, "Alto Sax", "reed", "acoustic", 49, 80),
    _p(66, "Tenor Sax", "reed", "acoustic", 44, 75),
    _p(67, "Baritone Sax", "reed", "acoustic", 36, 68),
    _p(68, "Oboe", "reed", "acoustic", 58, 91),
    _p(69, "English Horn", "reed", "acoustic", 52, 81),
    _p(70, "Bassoon", "reed", "acoustic", 34, 75),
    _p(71, "Clarinet", "reed", "acoustic", 50, 91),
    # Pipe 72-79 -> flute: edge-blown (bottle, ocarina and whistle included).
    _p(72, "Piccolo", "flute", "acoustic", 74, 108),
    _p(73, "Flute", "flute", "acoustic", 60, 96),
    _p(74, "Recorder", "flute", "acoustic", 60, 96),
    _p(75, "Pan Flute", "flute", "acoustic", 60, 96),
    _p(76, "Blown Bottle", "flute", "acoustic", 60, 84),
    _p(77, "Shakuhachi", "flute", "acoustic", 55, 84),
    _p(78, "Whistle", "flute", "acoustic", 72, 98),
    _p(79, "Ocarina", "flute", "acoustic", 60, 84),
    # Synth lead 80-86 -> synth_lead (87, bass + lead, is left out).
    _p(80, "Lead 1 (square)", "synth_lead", "synthetic", 36, 96),
    _p(81, "Lead 2 (sawtooth)", "synth_lead", "synthetic", 36, 96),
    _p(82, "Lead 3 (calliope)", "synth_lead", "synthetic", 36, 96),
    _p(83, "Lead 4 (chiff)", "synth_lead", "synthetic", 36, 96),
    _p(84, "Lead 5 (charang)", "synth_lead", "synthetic", 36, 96),
    _p(85, "Lead 6 (voice)", "synth_lead", "synthetic", 36, 96),
    _p(86, "Lead 7 (fifths)", "synth_lead", "synthetic", 36, 96),
    # Ethnic 104-111: only those with a clear NSynth family.
    _p(105, "Banjo", "guitar", "acoustic", 48, 81),  # fretted, plucked
    _p(109, "Bagpipe", "reed", "acoustic", 55, 81),  # double-reed chanter
    _p(110, "Fiddle", "string", "acoustic", 55, 96),  # a violin
    _p(111, "Shanai", "reed", "acoustic", 60, 84),  # double reed
)


def _left_out() -> dict[int, str]:
    reasons: dict[int, str] = {
        21: "accordion: free-reed keyboard, between NSynth's organ and reed",
        23: "tango accordion (bandoneon): as accordion",
        46: "orchestral harp: plucked, neither a bowed string nor a guitar",
        47: "timpani: drum",
        55: "orchestra hit: sound effect",
        87: "lead 8 (bass + lead): mixes two families",
        104: "sitar: plucked drone instrument, neither guitar nor string",
        106: "shamisen: plucked lute, neither guitar nor string",
        107: "koto: plucked zither, neither guitar nor string",
        108: "kalimba: plucked lamellophone, neither mallet nor guitar",
    }
    reasons.update({p: "synth pad: no NSynth family" for p in range(88, 96)})
    reasons.update({p: "synth effect: no NSynth family" for p in range(96, 104)})
    reasons.update({p: "percussive: drums and unpitched percussion" for p in range(112, 120)})
    reasons.update({p: "sound effect" for p in range(120, 128)})
    return reasons


#: GM programs not in :data:`PROGRAMS`, with the reason.
LEFT_OUT: dict[int, str] = _left_out()
_TABLE: dict[int, GMProgram] = {p.program: p for p in PROGRAMS}


# --- SoundFonts -------------------------------------------------------------------------------
@attrs.frozen
class SoundFontRef:
    """A SoundFont file to render, and the independent sample set its samples come from."""

    path: Path
    sample_set: str  # the file's own stem, or its ``derived_from``

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def find_soundfont(name: str | os.PathLike[str]) -> Path:
    """A SoundFont by path, or by file name (``.sf2``/``.sf3`` may be left off) in :func:`soundfont_dirs`.

    Raises:
        SoundFontNotFoundError: with the folders searched and the Debian packages of the defaults.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve()
    if given.suffix.lower() in (".sf2", ".sf3"):
        candidates = [given.name]
    else:
        candidates = [f"{given.name}.sf2", f"{given.name}.sf3"]
    searched = soundfont_dirs()
    if given.parent == Path("."):  # a bare name: search the usual folders
        for folder in searched:
            for candidate in candidates:
                if (folder / candidate).is_file():
                    return (folder / candidate).resolve()
    else:
        searched = [given.parent]
    raise SoundFontNotFoundError(
        f"SoundFont {str(name)!r} not found. Looked for {' or '.join(candidates)} in: "
        f"{', '.join(str(d) for d in searched)}. The default SoundFonts come with the Debian/Ubuntu "
        f"packages: sudo apt-get install {DEBIAN_PACKAGES}; or list SoundFont paths in "
        f"data.options.GMNotes.soundfonts (folders in $SOUNDFONT_PATH are searched first)"
    )


@attrs.frozen
class Preset:
    """A bank-0 preset as read from the SoundFont's preset data (no audio is read)."""

    name: str
    key_low: int
    key_high: int
    samples: frozenset[int]


_GEN_INSTRUMENT, _GEN_KEY_RANGE, _GEN_SAMPLE_ID = 41, 43, 53


def read_presets(path: Path) -> dict[int, Preset]:
    """Bank-0 presets of an SF2/SF3 file: name, playable key range and the samples each uses.

    Only the ``pdta`` chunk is read (the sample data is skipped with a seek), so this takes a few
    milliseconds even for FluidR3_GM's 148 MB.
    """
    chunks = _read_pdta(path)
    try:
        phdr = list(struct.iter_unpack("<20sHHHIII", chunks["phdr"]))
        pbag = list(struct.iter_unpack("<HH", chunks["pbag"]))
        pgen = list(struct.iter_unpack("<HBB", chunks["pgen"]))
        inst = list(struct.iter_unpack("<20sH", chunks["inst"]))
        ibag = list(struct.iter_unpack("<HH", chunks["ibag"]))
        igen = list(struct.iter_unpack("<HBB", chunks["igen"]))
    except (KeyError, struct.error) as exc:
        raise DatasetError(f"{path}: malformed SoundFont preset data ({exc})") from exc

    def zones(bags: list[tuple[int, int]], gens: list[tuple[int, int, int]], first: int,
              end: int) -> list[dict[int, tuple[int, int]]]:
        """Generators (operator -> two amount bytes) of the zones ``first .. end - 1``."""
        return [{op: (lo, hi) for op, lo, hi in gens[bags[b][0]:bags[b + 1][0]]} for b in range(first, end)]

    def with_globals(zs: list[dict[int, tuple[int, int]]], terminal: int) -> list[dict[int, tuple[int, int]]]:
        """A leading zone without the terminal generator is global: its generators are defaults
        for the other zones (SF2 2.01, sections 7.3 and 7.9)."""
        if zs and terminal not in zs[0]:
            return [{**zs[0], **z} for z in zs[1:]]
        return zs

    presets: dict[int, Preset] = {}
    for k in range(len(phdr) - 1):  # the last header is the terminal "EOP" record
        raw_name, program, bank, bag = phdr[k][:4]
        if bank != 0:
            continue
        keys: set[int] = set()
        samples: set[int] = set()
        for pz in with_globals(zones(pbag, pgen, bag, phdr[k + 1][3]), _GEN_INSTRUMENT):
            if _GEN_INSTRUMENT not in pz:
                continue
            lo, hi = pz[_GEN_INSTRUMENT]
            i = lo | hi << 8
            p_lo, p_hi = pz.get(_GEN_KEY_RANGE, (0, 127))
            for iz in with_globals(zones(ibag, igen, inst[i][1], inst[i + 1][1]), _GEN_SAMPLE_ID):
                if _GEN_SAMPLE_ID not in iz:
                    continue
                i_lo, i_hi = iz.get(_GEN_KEY_RANGE, (0, 127))
                k_lo, k_hi = max(p_lo, i_lo), min(p_hi, i_hi)
                if k_lo <= k_hi:
                    keys.update(range(k_lo, k_hi + 1))
                    s_lo, s_hi = iz[_GEN_SAMPLE_ID]
                    samples.add(s_lo | s_hi << 8)
        if keys:
            name = raw_name.split(b"\0", 1)[0].decode("latin-1").strip()
            presets[program] = Preset(name, min(keys), max(keys), frozenset(samples))
    return presets


def _read_pdta(path: Path) -> dict[str, bytes]:
    """The sub-chunks of the RIFF ``LIST pdta`` chunk, by id."""
    data = None
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise DatasetError(f"{path} is not a SoundFont (no RIFF sfbk header)")
        end = 8 + struct.unpack("<I", head[4:8])[0]
        while data is None and fh.tell() + 8 <= end:
            cid, size = struct.unpack("<4sI", fh.read(8))
            if cid == b"LIST" and fh.read(4) == b"pdta":
                data = fh.read(size - 4)
            elif cid == b"LIST":  # INFO or sdta (the samples): skip
                fh.seek(size - 4 + (size & 1), os.SEEK_CUR)
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    if data is None:
        raise DatasetError(f"{path}: SoundFont without preset data (no pdta chunk)")
    chunks: dict[str, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4].decode("latin-1"), struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks[cid] = data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)
    return chunks


# --- options ----------------------------------------------------------------------------------
OPTION_NAMES: tuple[str, ...] = (
    "soundfonts", "extra_soundfonts", "programs", "notes_per_instrument", "velocities", "pitch_min",
    "pitch_max", "split_fractions", "silence_db", "oversample", "num_workers",
)


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
            "audio": {"sample_rate": SAMPLE_RATE, "seconds": NOTE_SECONDS, "hold_seconds": HOLD_SECONDS,
                      "gain": GAIN, "oversample": self.oversample, "silence_db": self.silence_db},
            "soundfonts": [{"name": sf.name, "size": sf.size, "sample_set": sf.sample_set}
                           for sf in self.soundfonts],
            "families": list(self.families),
            "programs": [attrs.asdict(_TABLE[p]) for p in self.programs],
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
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
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
            raise GMNotesOptionError(f"data.options.GMNotes.soundfonts entries are paths or file names, "
                                     f"got {entry!r}")
        path = find_soundfont(entry)
        refs.append(SoundFontRef(path, path.stem))
    for entry in _opt_list("extra_soundfonts", extra):
        if isinstance(entry, (str, os.PathLike)):
            entry = {"path": entry}
        if not isinstance(entry, Mapping) or "path" not in entry or set(entry) - {"path", "derived_from"}:
            raise GMNotesOptionError(
                f"data.options.GMNotes.extra_soundfonts entries are a path or {{path, derived_from}} "
                f"(derived_from: the SoundFont whose samples it reuses, e.g. FluidR3_GM), got {entry!r}")
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


def parse_options(families: Iterable[str], max_total_size_mb: float | None, max_per_class: int | None,
                  seed: int, options: Mapping[str, Any]) -> tuple[RenderSettings, int]:
    """Validate ``data.options.GMNotes`` and the ``data.*`` values; returns (settings, num_workers).

    Raises:
        GMNotesOptionError: an unknown key (the message lists the valid ones) or a bad value.
        SoundFontNotFoundError: a SoundFont is not on disk.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise GMNotesOptionError(f"unknown data.options.GMNotes key(s): {', '.join(unknown)}; "
                                 f"valid keys: {', '.join(OPTION_NAMES)}")
    o = dict(options)
    soundfonts = _parse_soundfonts(o.get("soundfonts", DEFAULT_SOUNDFONTS), o.get("extra_soundfonts", []))

    programs = sorted(_TABLE) if o.get("programs") is None else sorted(
        {_opt_int("programs", p, 0, 127) for p in _opt_list("programs", o["programs"])})
    for p in programs:
        if p not in _TABLE:
            raise GMNotesOptionError(f"GM program {p} is not used by GMNotes ({LEFT_OUT.get(p)}); "
                                     f"usable programs: {', '.join(str(q) for q in sorted(_TABLE))}")

    velocities = sorted({_opt_int("velocities", v, 1, 127)
                         for v in _opt_list("velocities", o.get("velocities", DEFAULT_VELOCITIES))})
    pitch_min = _opt_int("pitch_min", o.get("pitch_min", DEFAULT_PITCH_RANGE[0]), 0, 127)
    pitch_max = _opt_int("pitch_max", o.get("pitch_max", DEFAULT_PITCH_RANGE[1]), 0, 127)
    if not velocities or pitch_min > pitch_max:
        raise GMNotesOptionError(f"data.options.GMNotes: need velocities and pitch_min <= pitch_max, got "
                                 f"velocities={velocities}, pitch_min={pitch_min}, pitch_max={pitch_max}")
    npi = o.get("notes_per_instrument")
    notes_per_instrument = None if npi is None else _opt_int("notes_per_instrument", npi, 1)

    fractions = o.get("split_fractions", DEFAULT_SPLIT_FRACTIONS)
    if isinstance(fractions, Mapping):
        if set(fractions) != set(SPLITS):
            raise GMNotesOptionError(f"data.options.GMNotes.split_fractions as a mapping needs exactly "
                                     f"the keys {', '.join(SPLITS)}, got {dict(fractions)!r}")
        fractions = [fractions[s] for s in SPLITS]
    fractions = _opt_list("split_fractions", fractions)
    if (len(fractions) != 3 or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0
                                       for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6):
        raise GMNotesOptionError(f"data.options.GMNotes.split_fractions must be three positive numbers "
                                 f"(train, valid, test) summing to 1, got {fractions!r}")

    silence_db = o.get("silence_db", DEFAULT_SILENCE_DB)
    if isinstance(silence_db, bool) or not isinstance(silence_db, (int, float)) or not silence_db < 0:
        raise GMNotesOptionError(f"data.options.GMNotes.silence_db must be a negative number (dBFS), "
                                 f"got {silence_db!r}")
    oversample = _opt_int("oversample", o.get("oversample", 2), 1, 6)
    num_workers = _opt_int("num_workers", o.get("num_workers", 1), 1)

    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, int)
                                      or max_per_class < 1):
        raise GMNotesOptionError(f"data.max_per_class must be a positive integer or null, "
                                 f"got {max_per_class!r}")
    max_total_bytes = None
    if max_total_size_mb is not None:
        if isinstance(max_total_size_mb, bool) or not isinstance(max_total_size_mb, (int, float)) \
                or not max_total_size_mb > 0:
            raise GMNotesOptionError(f"data.max_total_size_mb must be a positive number or null, "
                                     f"got {max_total_size_mb!r}")
        max_total_bytes = int(max_total_size_mb * BYTES_PER_MB)

    fams = set(families)
    settings = RenderSettings(
        soundfonts=soundfonts, families=tuple(f for f in FAMILIES if f in fams), programs=tuple(programs),
        velocities=tuple(velocities), pitch_min=pitch_min, pitch_max=pitch_max,
        notes_per_instrument=notes_per_instrument, max_per_class=max_per_class,
        max_total_bytes=max_total_bytes, seed=int(seed), split_fractions=tuple(float(f) for f in fractions),
        silence_db=float(silence_db), oversample=oversample,
    )
    return settings, num_workers


# --- instruments, splits and the note plan ----------------------------------------------------
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
        ordered[inst.index] = order[:settings.notes_per_instrument]

    # each (split, family) cell's notes, instruments taking turns in a seeded order
    cells: dict[Cell, tuple[PlannedNote, ...]] = {}
    for split in SPLITS:
        for family in settings.families:
            members = [i for i in wanted if split_of[i.index] == split and i.family == family]
            random.Random(f"{settings.seed}:{split}:{family}").shuffle(members)
            turns = _round_robin([[(inst, p, v) for p, v in ordered[inst.index]] for inst in members])
            cells[(split, family)] = tuple(PlannedNote(split, inst, p, v) for inst, p, v in turns)

    caps = {key: len(notes) if settings.max_per_class is None else min(len(notes), settings.max_per_class)
            for key, notes in cells.items()}
    if settings.max_total_bytes is not None:
        budget = settings.max_total_bytes // WAV_BYTES
        if budget < len(cells):
            raise DatasetError(
                f"data.max_total_size_mb={settings.max_total_bytes / BYTES_PER_MB:g} holds {budget} notes of "
                f"{WAV_BYTES} bytes; GMNotes needs at least one note per family and split "
                f"({len(cells)} notes, {len(cells) * WAV_BYTES / BYTES_PER_MB:.2f} MB)")
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
            gm = _TABLE[program]
            preset = presets[sf_index].get(program)
            if preset is None:
                log.info("%s has no bank-0 preset for GM program %d (%s); skipped", sf.name, program, gm.name)
                continue
            low = max(settings.pitch_min, gm.low, preset.key_low)
            high = min(settings.pitch_max, gm.high, preset.key_high)
            number = per_kind.get((gm.family, gm.source), 0)
            per_kind[(gm.family, gm.source)] = number + 1
            out.append(Instrument(len(out), number, sf_index, gm, preset.name, sf.sample_set,
                                  tuple(range(low, high + 1))))
    return out


def _split_units(settings: RenderSettings, presets: list[dict[int, Preset]],
                 instruments: list[Instrument]) -> dict[int, str]:
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
            for b in used[a_pos + 1:]:
                sa, sb = presets[sf_index][a].samples, presets[sf_index][b].samples
                if len(sa & sb) >= SHARED_SAMPLES_JACCARD * len(sa | sb):
                    parent[find((sf.sample_set, a))] = find((sf.sample_set, b))
    return {i.index: "{}:{}".format(*find((i.sample_set, i.gm.program))) for i in instruments}


def _assign_splits(settings: RenderSettings, instruments: list[Instrument],
                   units: dict[int, str]) -> dict[int, str]:
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
                f"extra_soundfonts) or programs, widen the pitch range, or drop the class")
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


# --- rendering --------------------------------------------------------------------------------
def _bind_libfluidsynth() -> ctypes.CDLL:
    """libfluidsynth as located by pyfluidsynth, with the prototypes used here.

    A private CDLL handle, so the prototypes set here do not touch pyfluidsynth's own.
    """
    try:
        import fluidsynth  # noqa: PLC0415 - loads the C library; only when rendering
    except ImportError as exc:
        raise RenderError(f"GMNotes renders with libfluidsynth, which could not be loaded ({exc}). "
                          f"Install it: sudo apt-get install libfluidsynth3 (Debian/Ubuntu) or "
                          f"brew install fluid-synth (macOS)") from exc
    lib = ctypes.CDLL(fluidsynth.lib)
    p, i, d, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
    for name, restype, argtypes in (
        ("new_fluid_settings", p, []), ("delete_fluid_settings", None, [p]),
        ("fluid_settings_setint", i, [p, s, i]), ("fluid_settings_setnum", i, [p, s, d]),
        ("new_fluid_synth", p, [p]), ("delete_fluid_synth", None, [p]),
        ("fluid_synth_sfload", i, [p, s, i]), ("fluid_synth_get_sfont_by_id", p, [p, i]),
        ("fluid_synth_add_sfont", i, [p, p]), ("fluid_synth_remove_sfont", i, [p, p]),
        ("fluid_synth_program_select", i, [p, i, i, i, i]),
        ("fluid_synth_noteon", i, [p, i, i, i]), ("fluid_synth_noteoff", i, [p, i, i]),
        ("fluid_synth_write_float", i, [p, i, p, i, i, p, i, i]),
        ("fluid_set_log_function", p, [i, p, p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_FLUID_WARN = 2


@functools.lru_cache(maxsize=None)
def _lowpass(factor: int) -> np.ndarray:
    """Kaiser-windowed sinc low-pass for decimating by ``factor`` to 16 kHz: passes to ~6.7 kHz and
    stops (~-80 dB) from ~7.9 kHz, so almost nothing above the new Nyquist folds back."""
    taps = 64 * factor + 1
    cutoff = 7300.0 / (SAMPLE_RATE * factor)  # cycles per input sample
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.6)
    return (h / h.sum()).astype(np.float32)


def decimate(audio: np.ndarray, factor: int) -> np.ndarray:
    """Audio rendered at ``16 kHz * factor`` -> 16 kHz (linear phase, aligned: onset stays at 0)."""
    if factor == 1:
        return audio
    taps = _lowpass(factor)
    delay = (len(taps) - 1) // 2
    return np.convolve(audio, taps)[delay:delay + len(audio):factor]


class FluidRenderer:
    """Renders single notes with libfluidsynth, in-process.

    The SoundFonts are loaded once into an owner synth; each note is played on a fresh synth that
    borrows them (see "Determinism" in the module docstring). Use as a context manager.

    Args:
        soundfonts: SF2/SF3 paths; ``render`` takes an index into this list.
        oversample: render at ``16 kHz * oversample`` and decimate (see "Oversampling").
    """

    def __init__(self, soundfonts: Sequence[Path], oversample: int = 2) -> None:
        self._lib = lib = _bind_libfluidsynth()
        self.oversample = oversample
        self.rate = SAMPLE_RATE * oversample
        self._settings = lib.new_fluid_settings()
        for key, value in ((b"synth.reverb.active", 0), (b"synth.chorus.active", 0),
                           (b"synth.midi-channels", 16), (b"synth.polyphony", 64), (b"synth.cpu-cores", 1),
                           (b"synth.threadsafe-api", 0)):
            lib.fluid_settings_setint(self._settings, key, value)
        lib.fluid_settings_setnum(self._settings, b"synth.sample-rate", float(self.rate))
        lib.fluid_settings_setnum(self._settings, b"synth.gain", GAIN)
        self._owner = lib.new_fluid_synth(self._settings)
        self._sfonts: list[int] = []
        for path in soundfonts:
            sfid = lib.fluid_synth_sfload(self._owner, str(path).encode(), 0)
            if sfid < 0:
                self.close()
                raise RenderError(f"libfluidsynth could not load the SoundFont {path}")
            self._sfonts.append(lib.fluid_synth_get_sfont_by_id(self._owner, sfid))
        n = int(self.rate * NOTE_SECONDS)
        self._left = np.zeros(n, np.float32)
        self._right = np.zeros(n, np.float32)

    def render(self, soundfont: int, program: int, pitch: int, velocity: int) -> np.ndarray:
        """One note as float32 mono at 16 kHz, 4 s, note-off at 3 s; full scale is 1.0."""
        lib = self._lib
        sfont = self._sfonts[soundfont]
        synth = lib.new_fluid_synth(self._settings)
        try:
            sfid = lib.fluid_synth_add_sfont(synth, sfont)
            if lib.fluid_synth_program_select(synth, 0, sfid, 0, program) != 0:
                raise RenderError(f"SoundFont #{soundfont} has no bank-0 preset {program}")
            hold = int(self.rate * HOLD_SECONDS)
            rest = len(self._left) - hold
            left, right = self._left.ctypes.data, self._right.ctypes.data
            lib.fluid_synth_noteon(synth, 0, pitch, velocity)
            lib.fluid_synth_write_float(synth, hold, left, 0, 1, right, 0, 1)
            lib.fluid_synth_noteoff(synth, 0, pitch)
            lib.fluid_synth_write_float(synth, rest, left + 4 * hold, 0, 1, right + 4 * hold, 0, 1)
        finally:
            # Removing the borrowed SoundFont resets the synth's channels, which logs a "no preset"
            # warning per channel; nothing is wrong, so warnings are muted for these two calls.
            previous = lib.fluid_set_log_function(_FLUID_WARN, None, None)
            lib.fluid_synth_remove_sfont(synth, sfont)  # before delete, which would free it
            lib.delete_fluid_synth(synth)
            lib.fluid_set_log_function(_FLUID_WARN, previous, None)
        mono = (self._left + self._right) * np.float32(0.5)  # a new array: the buffers are reused
        return decimate(mono, self.oversample)

    def close(self) -> None:
        if getattr(self, "_owner", None):
            self._lib.delete_fluid_synth(self._owner)  # frees the SoundFonts it loaded
            self._owner = None
        if getattr(self, "_settings", None):
            self._lib.delete_fluid_settings(self._settings)
            self._settings = None

    def __enter__(self) -> FluidRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loudest_frame_db(audio: np.ndarray) -> float:
    """RMS of the loudest 50 ms frame, in dBFS (-inf for digital silence)."""
    usable = len(audio) // SILENCE_FRAME * SILENCE_FRAME
    frames = audio[:usable].reshape(-1, SILENCE_FRAME).astype(np.float64)
    rms = float(np.sqrt((frames ** 2).mean(axis=1).max()))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def to_pcm16(audio: np.ndarray) -> tuple[np.ndarray, bool]:
    """float -> int16; a note that would clip is scaled to just below full scale (returns True)."""
    peak = float(np.abs(audio).max())
    limited = peak > 32767 / 32768
    scaled = audio * np.float32(32767 * (0.999 / peak if limited else 1.0))
    return np.rint(scaled, out=scaled).astype("<i2"), limited


def wav_header(num_samples: int) -> bytes:
    """The canonical 44-byte header of a 16 kHz mono 16-bit PCM WAV."""
    data = 2 * num_samples
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1,
                       SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16, b"data", data)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    """Write ``pcm`` (int16) as a WAV via a temp file in the same folder + rename, so a WAV on disk
    is always whole.

    No fsync per note (it would cost more than rendering): a WAV cut short by a power loss has
    the wrong size, and resume renders it again.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(wav_header(len(pcm)))
            fh.write(np.ascontiguousarray(pcm, dtype="<i2").data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# A task is (soundfont index, GM program, pitch, velocity, WAV path); its outcome is
# (WAV path, "written" | "silent", limited).
Task = tuple[int, int, int, int, str]
Outcome = tuple[str, str, bool]


def render_task(renderer: FluidRenderer, task: Task, silence_db: float) -> Outcome:
    """Render one planned note and write its WAV, unless it is silent."""
    soundfont, program, pitch, velocity, path = task
    audio = renderer.render(soundfont, program, pitch, velocity)
    if loudest_frame_db(audio) < silence_db:
        return path, "silent", False
    pcm, limited = to_pcm16(audio)
    write_wav(Path(path), pcm)
    return path, "written", limited


_worker: dict[str, Any] = {}


def _worker_init(soundfonts: list[Path], oversample: int, silence_db: float) -> None:
    _worker["renderer"] = FluidRenderer(soundfonts, oversample)
    _worker["silence_db"] = silence_db


def _worker_run(tasks: list[Task]) -> list[Outcome]:
    return [render_task(_worker["renderer"], t, _worker["silence_db"]) for t in tasks]


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


# --- the dataset ------------------------------------------------------------------------------
class GMNotesDataset(NSynthLayoutDataset):
    """NSynth-layout notes rendered from GM SoundFonts; :meth:`prepare` renders what is missing.

    Args:
        root: data root; the dataset lives in ``<root>/GMNotes/<hash of settings>``.
        classes: ``data.classes``; only their families are rendered.
        settings: from :func:`parse_options`.
        num_workers: rendering processes (1 = in this process).
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, root: str | Path, classes: list[str] | None, settings: RenderSettings,
                 num_workers: int = 1) -> None:
        self.settings = settings
        self.num_workers = num_workers
        self.stats = RenderStats()
        super().__init__(Path(root).expanduser() / "GMNotes" / settings.digest(), classes,
                         settings.max_per_class, settings.seed)

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
        atomic_write_text(self.dataset_dir / "params.json",
                          json.dumps(self.settings.fingerprint(), indent=2))
        atomic_write_text(self.dataset_dir / "instruments.json",
                          json.dumps(self._instrument_table(plan), indent=2))
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
        log.info("GMNotes: %d notes planned in %s, %d already on disk, %d to render",
                 len(notes), self.dataset_dir, self.stats.already_done, len(tasks))
        with contextlib.ExitStack() as stack:
            engine: FluidRenderer | ProcessPoolExecutor | None = None
            while tasks:
                if engine is None:  # one renderer / pool for every round: starting one costs seconds
                    engine = stack.enter_context(self._engine())
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

    def _engine(self) -> FluidRenderer | ProcessPoolExecutor:
        """The in-process renderer, or (num_workers > 1) a pool of rendering processes."""
        paths = [sf.path for sf in self.settings.soundfonts]
        if self.num_workers <= 1:
            return FluidRenderer(paths, self.settings.oversample)
        # spawn, not fork: the parent may run rich's refresh thread (and torch's pools). An
        # executor, not a Pool: a worker that dies raises BrokenProcessPool instead of being
        # respawned forever (e.g. a script without an ``if __name__ == "__main__"`` guard).
        context = multiprocessing.get_context("spawn")
        init = (paths, self.settings.oversample, self.settings.silence_db)
        return ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_worker_init,
                                   initargs=init)

    def _render(self, engine: FluidRenderer | ProcessPoolExecutor, tasks: list[Task], silent_log: Path) -> None:
        started = time.perf_counter()
        with StageProgress("GMNotes: rendered", total=len(tasks), noun="notes", logger=log) as progress, open(silent_log, "a", encoding="utf-8") as journal:
            def record(outcomes: list[Outcome]) -> None:
                for path, status, limited in outcomes:
                    self.stats.rendered += 1
                    self.stats.limited += limited
                    if status == "silent":
                        self.stats.silent += 1
                        journal.write(Path(path).stem + "\n")
                journal.flush()
                progress.update(advance=len(outcomes))

            if isinstance(engine, FluidRenderer):
                for task in tasks:
                    record([render_task(engine, task, self.settings.silence_db)])
            else:
                futures = [engine.submit(_worker_run, tasks[k:k + 32]) for k in range(0, len(tasks), 32)]
                try:
                    for future in as_completed(futures):
                        record(future.result())
                except BrokenProcessPool as exc:
                    raise RenderError(
                        "GMNotes: a rendering worker died. Workers are spawned and re-import the "
                        "main module, so a script that calls prepare() must do so under "
                        "`if __name__ == '__main__':`; or set data.options.GMNotes.num_workers=1"
                    ) from exc
                except BaseException:
                    for future in futures:  # stop after the chunks already running
                        future.cancel()
                    raise
        self.stats.seconds += time.perf_counter() - started
        log.info("GMNotes: rendered %d notes in %.1f s (%.0f notes/s); %d silent and dropped, %d scaled "
                 "down to avoid clipping", self.stats.rendered, self.stats.seconds,
                 self.stats.notes_per_second, self.stats.silent, self.stats.limited)

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
            atomic_write_text(split_dir(self.dataset_dir, split) / "examples.json",
                              json.dumps(entries, indent=1, sort_keys=True))
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
                "instrument": inst.index, "split": plan.split_of[inst.index],
                "soundfont": self.settings.soundfonts[inst.soundfont].name, "sample_set": inst.sample_set,
                "gm_program": inst.gm.program, "gm_name": inst.gm.name, "preset_name": inst.preset_name,
                "pitch_range": [inst.pitches[0], inst.pitches[-1]],
            }
        return table


def build_gmnotes(root: str | Path, classes: list[str] | None, max_total_size_mb: float | None,
                  max_per_class: int | None, seed: int, **options: Any) -> GMNotesDataset:
    """Factory of the ``GMNotes`` dataset; ``options`` come from ``data.options.GMNotes``.

    Options:
        soundfonts: paths or file names (searched in the usual SoundFont folders); default
            ``FluidR3_GM.sf2`` and ``TimGM6mb.sf2``.
        extra_soundfonts: more SoundFonts, each a path or ``{path, derived_from}`` where
            ``derived_from`` names the SoundFont whose samples it reuses (same split per program).
        programs: GM program numbers (0-127) to use, a subset of :data:`PROGRAMS`; default all.
        notes_per_instrument: at most this many notes per instrument, spread over pitch and velocity.
        velocities: default 25, 50, 75, 100, 127.
        pitch_min, pitch_max: MIDI range, default 21-108, further cut per program.
        split_fractions: train, valid, test (list or mapping), by instrument; default 0.7/0.15/0.15.
        silence_db: loudest-50-ms-frame RMS below this (dBFS) = silent, dropped; default -70.
        oversample: render at 16 kHz times this and decimate; default 2.
        num_workers: rendering processes; default 1.
    """
    families = [family for _, family in resolve_classes(classes)]
    settings, num_workers = parse_options(families, max_total_size_mb, max_per_class, seed, options)
    return GMNotesDataset(root, classes, settings, num_workers)


@hookimpl
def audiokd_datasets() -> list[Component]:
    return [Component("GMNotes", build_gmnotes,
                      "offline built-in: NSynth-layout notes rendered from General MIDI SoundFonts")]
