"""Rendering notes: libfluidsynth bound with ctypes (:class:`FluidRenderer`), decimation to 16 kHz,
the silence test, 16-bit WAV writing, and running render tasks in this process or a worker pool.
Why libfluidsynth, a fresh synth per note and oversampling: see the package docstring."""

from __future__ import annotations

import ctypes
import functools
import math
import multiprocessing
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from plugins.datasets.common.layout import DatasetError
from plugins.datasets.gmnotes.constants import GAIN, HOLD_SECONDS, NOTE_SECONDS, SAMPLE_RATE, SILENCE_FRAME

#: the Debian/Ubuntu package of the library the renderer binds
LIBFLUIDSYNTH_PACKAGE = "libfluidsynth3"


class RenderError(DatasetError):
    """libfluidsynth is missing or refused a SoundFont or a program."""


def _bind_libfluidsynth() -> ctypes.CDLL:
    """libfluidsynth as located by pyfluidsynth, with the prototypes used here.

    A private CDLL handle, so the prototypes set here do not touch pyfluidsynth's own.
    """
    try:
        import fluidsynth  # noqa: PLC0415 - loads the C library; only when rendering
    except ImportError as exc:
        raise RenderError(
            f"GMNotes renders with libfluidsynth, which could not be loaded ({exc}). "
            f"Install it: sudo apt-get install {LIBFLUIDSYNTH_PACKAGE} (Debian/Ubuntu) or "
            f"brew install fluid-synth (macOS)"
        ) from exc
    lib = ctypes.CDLL(fluidsynth.lib)
    p, i, d, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
    for name, restype, argtypes in (
        ("new_fluid_settings", p, []),
        ("delete_fluid_settings", None, [p]),
        ("fluid_settings_setint", i, [p, s, i]),
        ("fluid_settings_setnum", i, [p, s, d]),
        ("new_fluid_synth", p, [p]),
        ("delete_fluid_synth", None, [p]),
        ("fluid_synth_sfload", i, [p, s, i]),
        ("fluid_synth_get_sfont_by_id", p, [p, i]),
        ("fluid_synth_add_sfont", i, [p, p]),
        ("fluid_synth_remove_sfont", i, [p, p]),
        ("fluid_synth_program_select", i, [p, i, i, i, i]),
        ("fluid_synth_noteon", i, [p, i, i, i]),
        ("fluid_synth_noteoff", i, [p, i, i]),
        ("fluid_synth_write_float", i, [p, i, p, i, i, p, i, i]),
        ("fluid_set_log_function", p, [i, p, p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def libfluidsynth_status() -> tuple[bool, str]:
    """Whether the renderer can bind libfluidsynth, with the library and its version, or why not and
    what to install: for the doctor, so it never raises."""
    try:
        lib = _bind_libfluidsynth()
        version = lib.fluid_version_str
        version.restype, version.argtypes = ctypes.c_char_p, []
        return True, f"{lib._name} {version().decode()}"
    except RenderError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken install shows as a failed line, not a crash
        return False, (
            f"cannot be loaded ({type(exc).__name__}: {exc}); install it: sudo apt-get install {LIBFLUIDSYNTH_PACKAGE}"
        )


_FLUID_WARN = 2


@functools.cache
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
    return np.convolve(audio, taps)[delay : delay + len(audio) : factor]


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
        for key, value in (
            (b"synth.reverb.active", 0),
            (b"synth.chorus.active", 0),
            (b"synth.midi-channels", 16),
            (b"synth.polyphony", 64),
            (b"synth.cpu-cores", 1),
            (b"synth.threadsafe-api", 0),
        ):
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
    rms = float(np.sqrt((frames**2).mean(axis=1).max()))
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
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        data,
    )


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


def open_engine(
    soundfonts: list[Path], oversample: int, silence_db: float, num_workers: int
) -> FluidRenderer | ProcessPoolExecutor:
    """The in-process renderer, or (num_workers > 1) a pool of rendering processes; a context manager
    either way."""
    if num_workers <= 1:
        return FluidRenderer(soundfonts, oversample)
    # spawn, not fork: the parent may run rich's refresh thread (and torch's pools). An
    # executor, not a Pool: a worker that dies raises BrokenProcessPool instead of being
    # respawned forever (e.g. a script without an ``if __name__ == "__main__"`` guard).
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_worker_init, initargs=(soundfonts, oversample, silence_db)
    )


def run_tasks(
    engine: FluidRenderer | ProcessPoolExecutor,
    tasks: list[Task],
    silence_db: float,
    record: Callable[[list[Outcome]], None],
) -> None:
    """Render ``tasks`` on ``engine`` (from :func:`open_engine`), handing each batch of outcomes to
    ``record`` as it completes."""
    if isinstance(engine, FluidRenderer):
        for task in tasks:
            record([render_task(engine, task, silence_db)])
        return
    futures = [engine.submit(_worker_run, tasks[k : k + 32]) for k in range(0, len(tasks), 32)]
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
