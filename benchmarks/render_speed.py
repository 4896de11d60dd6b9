"""Render the same GM notes with libfluidsynth (pyfluidsynth) and tinysoundfont; compare speed and fidelity.

Run from the repository root::

    .venv/bin/python -m benchmarks.render_speed [--soundfonts FluidR3_GM TimGM6mb] [--oversample 2]

Prints, per renderer (speeds: best of three runs): notes/s rendering only; notes/s with each note
written as a 16-bit WAV plus one examples.json (what GMNotes does per note); how much a note's
16-bit samples change when other notes were played before it; how many notes have the expected
envelope (onset within 50 ms; after the note-off at 3 s the level drops by at least 6 dB unless
the note had already died away); and the level step from velocity 50 to 127. Then, per note, the
agreement of the two renderers: correlation of their dB spectrograms and of their long-term
spectra (0-8 kHz), and their level difference per velocity. Last, for libfluidsynth, how far
rendering at 16 kHz times 1, 2 and 3 (decimated to 16 kHz) is from a 96 kHz reference
(log-spectral distance), which is what GMNotes' ``oversample`` option trades against speed.

tinysoundfont is not a project dependency; to include it::

    uv pip install --python .venv --no-deps tinysoundfont==0.3.7   # its pyaudio dependency does not build
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from plugins.datasets.gmnotes.constants import HOLD_SECONDS, NOTE_SAMPLES, NOTE_SECONDS, SAMPLE_RATE
from plugins.datasets.gmnotes.render import FluidRenderer, decimate, loudest_frame_db, to_pcm16, write_wav
from plugins.datasets.gmnotes.soundfont import find_soundfont

TSF_INSTALL = "uv pip install --python .venv --no-deps tinysoundfont==0.3.7"
#: one or two programs per family, lows and highs of each range
PROGRAMS = (0, 4, 11, 19, 24, 33, 40, 52, 56, 65, 73, 81)
PITCHES = (43, 55, 67, 79)
VELOCITIES = (50, 127)
REPEATS = 3

Note = tuple[int, int, int, int]  # soundfont index, program, pitch, velocity
Render = Callable[[int, int, int, int], np.ndarray]


class TinyRenderer:
    """tinysoundfont with the same protocol as GMNotes' FluidRenderer (note-off at 3 s, 4 s,
    mono = mean of the two channels, rendered at 16 kHz x oversample and decimated the same way)."""

    def __init__(self, soundfonts: Sequence[Path], oversample: int) -> None:
        import tinysoundfont  # noqa: PLC0415 - optional

        self.oversample = oversample
        self.rate = SAMPLE_RATE * oversample
        self.synth = tinysoundfont.Synth(samplerate=self.rate)
        self.sfids = [self.synth.sfload(str(p)) for p in soundfonts]

    def render(self, soundfont: int, program: int, pitch: int, velocity: int) -> np.ndarray:
        synth = self.synth
        synth.sounds_off()  # ends the last note with a ~10 ms fade: let it finish before the next
        synth.generate(self.rate // 20)
        synth.program_select(0, self.sfids[soundfont], 0, program)
        hold = int(self.rate * HOLD_SECONDS)
        synth.noteon(0, pitch, velocity)
        first = np.frombuffer(synth.generate(hold), dtype=np.float32)
        synth.noteoff(0, pitch)
        second = np.frombuffer(synth.generate(int(self.rate * NOTE_SECONDS) - hold), dtype=np.float32)
        stereo = np.concatenate([first, second]).reshape(-1, 2)
        return decimate(stereo.mean(axis=1, dtype=np.float32), self.oversample)


def frame_rms(audio: np.ndarray, frame: int = SAMPLE_RATE // 100) -> np.ndarray:
    return np.sqrt((audio[: len(audio) // frame * frame].reshape(-1, frame).astype(np.float64) ** 2).mean(1))


def envelope_ok(audio: np.ndarray) -> bool:
    """Onset within 50 ms, and a drop of >= 6 dB after the note-off (or already died away)."""
    rms = frame_rms(audio) + 1e-12  # 10 ms frames
    db = 20 * np.log10(rms)
    onset_ms = int(np.argmax(db > db.max() - 30)) * 10
    off = int(HOLD_SECONDS * 100)
    held, tail = db[off - 10 : off].mean(), db[-10:].mean()
    decayed = held < db.max() - 40
    return onset_ms <= 50 and (decayed or tail <= held - 6)


def spectrogram_db(audio: np.ndarray) -> np.ndarray:
    """Power spectrogram in dB (64 ms Hann frames, 16 ms hop, 0-8 kHz), floored 80 dB below its peak."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::256] * np.hanning(1024)
    power = np.abs(np.fft.rfft(frames, axis=1)[:, 1:]) ** 2
    return 10 * np.log10(np.maximum(power, power.max() * 1e-8))


def long_term_spectrum_db(audio: np.ndarray) -> np.ndarray:
    """Mean power spectrum of the held part, in dB."""
    power = 10 ** (spectrogram_db(audio[: int(HOLD_SECONDS * SAMPLE_RATE)]) / 10)
    return 10 * np.log10(power.mean(axis=0))


def level_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt((audio.astype(np.float64) ** 2).mean()) + 1e-12))


def timed(render: Render, notes: list[Note], out: Path | None) -> tuple[float, list[np.ndarray]]:
    """Seconds to render ``notes`` (and, with ``out``, write them as GMNotes does)."""
    started = time.perf_counter()
    audio, entries = [], {}
    for k, note in enumerate(notes):
        x = render(*note)
        audio.append(x)
        if out is not None:
            if loudest_frame_db(x) >= -70:
                pcm, _ = to_pcm16(x)
                write_wav(out / f"{k:05d}.wav", pcm)
            entries[f"{k:05d}"] = dict(zip(("soundfont", "program", "pitch", "velocity"), note))
    if out is not None:
        (out / "examples.json").write_text(json.dumps(entries))
    return time.perf_counter() - started, audio


def order_dependence(render: Render, notes: list[Note]) -> int:
    """Largest difference, in 16-bit steps, between a note rendered after different notes."""
    picked = notes[::7][:12]
    first = [to_pcm16(render(*n))[0] for n in picked]
    again = [to_pcm16(render(*n))[0] for n in reversed(picked)][::-1]
    return max(int(np.abs(a.astype(np.int32) - b).max()) for a, b in zip(first, again))


def report(name: str, render: Render, notes: list[Note]) -> list[np.ndarray]:
    render(*notes[0])  # warm-up: first-touch costs are not rendering speed
    # best of three: on a shared machine the fastest run is the one least disturbed by others
    raw_s, audio = min((timed(render, notes, None) for _ in range(REPEATS)), key=lambda r: r[0])
    with tempfile.TemporaryDirectory() as tmp:
        full_s = min(timed(render, notes, Path(tmp))[0] for _ in range(REPEATS))
    ok = sum(envelope_ok(x) for x in audio)
    steps = [level_db(audio[k + 1]) - level_db(audio[k]) for k in range(0, len(notes), 2)]  # 50 -> 127
    order = order_dependence(render, notes)
    print(
        f"{name:<22} {len(notes) / raw_s:8.0f} {len(notes) / full_s:12.0f}   {order:>8}"
        f"   {ok:>4} / {len(notes)}   {np.median(steps):+6.1f} dB"
    )
    return audio


def aliasing(paths: list[Path], notes: list[Note]) -> None:
    """Log-spectral distance (0.1-7.8 kHz, held part) of each oversampling factor from a 96 kHz
    reference, all decimated to 16 kHz the same way."""
    with FluidRenderer(paths, 6) as ref_renderer:
        refs = [long_term_spectrum_db(ref_renderer.render(*n)) for n in notes]
    print(f"\nlibfluidsynth oversampling vs a 96 kHz reference, log-spectral distance in dB ({len(notes)} notes):")
    for factor in (1, 2, 3):
        with FluidRenderer(paths, factor) as renderer:
            started = time.perf_counter()
            audio = [renderer.render(*n) for n in notes]
            rate = len(notes) / (time.perf_counter() - started)
        band = slice(5, 500)  # 15.6 Hz bins from the 2nd: 94 Hz to 7.8 kHz
        lsd = [float(np.sqrt(((long_term_spectrum_db(x)[band] - r[band]) ** 2).mean())) for x, r in zip(audio, refs)]
        print(
            f"  oversample {factor} ({SAMPLE_RATE * factor // 1000} kHz): median {np.median(lsd):.2f}, "
            f"90th pct {np.percentile(lsd, 90):.2f}, max {max(lsd):.2f}; {rate:.0f} notes/s rendering"
        )


def agreement(
    paths: list[Path], notes: list[Note], fluid_audio: list[np.ndarray], tiny_audio: list[np.ndarray]
) -> None:
    """Per SoundFont: how the two renderers' notes compare (audible notes only)."""
    print("\nper-note agreement of the two renderers (audible notes):")
    for s, path in enumerate(paths):
        rows = [
            (n, a, b)
            for n, a, b in zip(notes, fluid_audio, tiny_audio)
            if n[0] == s and min(loudest_frame_db(a), loudest_frame_db(b)) >= -70
        ]
        gram = [float(np.corrcoef(spectrogram_db(a).ravel(), spectrogram_db(b).ravel())[0, 1]) for _, a, b in rows]
        spec = [float(np.corrcoef(long_term_spectrum_db(a), long_term_spectrum_db(b))[0, 1]) for _, a, b in rows]
        level = {v: np.median([level_db(a) - level_db(b) for n, a, b in rows if n[3] == v]) for v in VELOCITIES}
        print(
            f"  {path.name} ({len(rows)} notes): spectrogram correlation median {np.median(gram):.3f} "
            f"(10th pct {np.percentile(gram, 10):.3f}); long-term spectrum correlation median "
            f"{np.median(spec):.3f} (10th pct {np.percentile(spec, 10):.3f}); level libfluidsynth - "
            "tinysoundfont, median: " + ", ".join(f"{d:+.1f} dB at velocity {v}" for v, d in level.items())
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soundfonts", nargs="+", default=["FluidR3_GM", "TimGM6mb"])
    parser.add_argument("--oversample", type=int, default=2)
    parser.add_argument("--no-aliasing", action="store_true", help="skip the oversampling comparison")
    args = parser.parse_args(argv)

    paths = [find_soundfont(name) for name in args.soundfonts]
    notes = [(s, p, pitch, v) for s in range(len(paths)) for p in PROGRAMS for pitch in PITCHES for v in VELOCITIES]
    print(
        f"{len(notes)} notes: {len(PROGRAMS)} programs x {len(PITCHES)} pitches x {len(VELOCITIES)} "
        f"velocities on {', '.join(p.name for p in paths)}; {NOTE_SAMPLES / SAMPLE_RATE:.0f} s each, "
        f"rendered at {SAMPLE_RATE * args.oversample // 1000} kHz, written at 16 kHz\n"
    )
    print(f"{'renderer':<22} {'render/s':>8} {'+WAV+JSON/s':>12}   {'order*':>8}   {'envelope ok':>11}   vel 50->127")

    with FluidRenderer(paths, args.oversample) as fluid:
        fluid_audio = report("libfluidsynth", fluid.render, notes)
    try:
        tiny_audio = report("tinysoundfont", TinyRenderer(paths, args.oversample).render, notes)
    except ImportError:
        print(f"{'tinysoundfont':<22} not installed; to compare, install it with:\n    {TSF_INSTALL}")
        tiny_audio = None
    print("* order: largest difference (16-bit steps) of a note rendered after different notes")
    if tiny_audio is not None:
        agreement(paths, notes, fluid_audio, tiny_audio)
    if not args.no_aliasing:
        aliasing(paths, notes)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
