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
piano (rendering the same notes with both on this kind of 2-core machine: on FluidR3_GM and TimGM6mb
their spectra correlate 0.93-0.94, on MuseScore_General the piano comes out ~25 dB quieter).
Both clear the 100 notes/s target (the full default render, 7,809 notes or 1 GB, took 24-44 s in one
process, 180-320 notes/s with WAV and JSON depending on the other jobs on the two cores, and 13 s
with ``num_workers=2``), so libfluidsynth wins on fidelity and on packaging: pyfluidsynth is already
a dependency, while tinysoundfont's declared ``pyaudio`` dependency does not build, so depending on
it would break ``uv sync``. pyfluidsynth does not wrap float output or lending a loaded SoundFont to
a second synth, so those calls are bound with ctypes.

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

Modules. :mod:`.constants` (the audio format and rendering constants), :mod:`.programs` (the GM
program table), :mod:`.soundfont` (finding SoundFonts, reading their presets), :mod:`.options`
(``data.options.GMNotes`` and :class:`~.options.RenderSettings`), :mod:`.plan` (instruments, splits,
notes), :mod:`.render` (libfluidsynth, DSP, WAV files, workers), :mod:`.dataset`
(:class:`~.dataset.GMNotesDataset`); this module registers it and reports to the doctor.
"""

from __future__ import annotations

from core.api import Component, HealthCheck, hookimpl
from plugins.datasets.gmnotes.dataset import GMNotesDataset, build_gmnotes
from plugins.datasets.gmnotes.options import OPTIONS
from plugins.datasets.gmnotes.render import libfluidsynth_status
from plugins.datasets.gmnotes.soundfont import DEBIAN_PACKAGES, installed_soundfonts


@hookimpl
def audiokd_datasets() -> list[Component]:
    return [
        Component(
            "GMNotes",
            build_gmnotes,
            "offline built-in: NSynth-layout notes rendered from General MIDI SoundFonts",
            options=OPTIONS,
        )
    ]


@hookimpl
def audiokd_doctor() -> list[HealthCheck]:
    return [soundfonts_check(), libfluidsynth_check()]


def soundfonts_check() -> HealthCheck:
    """Are the default SoundFonts in the system SoundFont folders? (The Debian packages install them
    as ``.sf2``.) Only folders are listed: nothing is loaded."""
    try:
        fonts = installed_soundfonts()
    except Exception as exc:  # noqa: BLE001 - an unreadable folder is a failed line, not a crash
        return HealthCheck("SoundFonts", False, f"cannot list the SoundFont folders ({type(exc).__name__}: {exc})")
    needed = [f"{name}.sf2" for name in OPTIONS["soundfonts"].default]
    missing = [name for name in needed if name not in {f.name for f in fonts}]
    install = f"apt-get install {DEBIAN_PACKAGES}"
    if not fonts:
        return HealthCheck("SoundFonts", False, f"none found ({install})")
    detail = ", ".join(str(f) for f in fonts)
    if missing:
        detail += f"; missing {', '.join(missing)} ({install})"
    return HealthCheck("SoundFonts", not missing, detail)


def libfluidsynth_check() -> HealthCheck:
    """Can the renderer load libfluidsynth?"""
    ok, detail = libfluidsynth_status()
    return HealthCheck("libfluidsynth", ok, detail)


__all__ = ["GMNotesDataset", "audiokd_datasets", "audiokd_doctor", "build_gmnotes"]
