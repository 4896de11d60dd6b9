"""Audio decoding: any file to a mono float32 waveform at the model's sample rate.

Decoding is the slow part of reading audio (measured on 2 CPU cores: ``soundfile`` 0.33 ms per 4 s
16-bit WAV, ``torchaudio.load`` via torchcodec ~10 ms), so WAV/FLAC/OGG/AIFF go through
``soundfile`` and only other formats through FFmpeg. The decoded-waveform cache
(:mod:`core.data.waveforms`) calls this once per clip.
"""

from __future__ import annotations

import math
import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from core.errors import UserError

PathLike = Union[str, os.PathLike]

#: Suffixes libsndfile decodes; everything else goes through torchcodec (FFmpeg).
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"})

#: Sample rates a file may declare. Outside this range the header is garbage (or not audio at
#: all), and resampling it would allocate absurd amounts of memory (2**31 Hz needs terabytes).
MIN_FILE_SR = 1_000
MAX_FILE_SR = 768_000

#: Largest term of the reduced resampling ratio. The sinc kernel has ``new * (orig + ...)`` taps
#: for the reduced ratio ``orig:new``: 441:160 (44.1 -> 16 kHz) is tiny, but 44101 Hz reduces to
#: 44101:16000, a 2.8 GB kernel and 16 s for 100 samples. Such ratios are approximated by the
#: nearest one with terms up to this bound (pitch off by well under 0.1 %).
_MAX_RATIO_TERM = 1000

#: WAV ``data`` sizes that writers use when the length is unknown (streamed output), so a file
#: holding less than that is not truncated.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


class AudioError(UserError, RuntimeError):
    """An audio file could not be decoded into usable samples.

    Attributes:
        path: the file.
        reason: why, in a few words.
    """

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_audio(path: PathLike, target_sr: int) -> torch.Tensor:
    """Decodes an audio file to a mono float32 waveform at ``target_sr``.

    WAV/FLAC/OGG/AIFF are read with ``soundfile`` (much faster than FFmpeg for these); other
    formats (mp3, m4a, ...) with torchcodec. Channels are averaged; a different sample rate is
    resampled with ``torchaudio.functional.resample``.

    Args:
        path: the audio file.
        target_sr: sample rate of the returned waveform.

    Returns:
        float32 tensor ``[L]``, nominally in [-1, 1] (resampling may overshoot slightly).

    Raises:
        AudioError: the file is missing, empty, corrupt, truncated (a WAV holding less data than
            its header declares), holds no samples or non-finite ones, or declares a sample rate
            outside ``MIN_FILE_SR``..``MAX_FILE_SR``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")

    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            data, sr = sf.read(path, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, ValueError, MemoryError) as e:
            raise AudioError(path, f"cannot decode ({e})") from e
        # [L, C] -> [L]: the channel mean is a copy, so the tensor owns its memory.
        wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))
    else:
        wave, sr = _decode_ffmpeg(path)

    if wave.numel() == 0:
        raise AudioError(path, "no audio samples (empty or truncated file)")
    # libsndfile quietly decodes what is there when a WAV is cut short; a clip missing its end
    # would be padded with silence and trained on as if whole.
    if (short := _wav_shortfall(path)) is not None:
        declared, present = short
        raise AudioError(
            path,
            f"truncated: the WAV header declares {declared} bytes of audio data but "
            f"the file holds {present}; copy or download it again",
        )
    if not MIN_FILE_SR <= sr <= MAX_FILE_SR:
        raise AudioError(
            path,
            f"implausible sample rate {sr} Hz in the header (valid: "
            f"{MIN_FILE_SR}-{MAX_FILE_SR} Hz); the file is corrupt",
        )
    if not torch.isfinite(wave).all():
        raise AudioError(path, "contains NaN or infinite samples")
    if sr != target_sr:
        wave = resample(wave, int(sr), int(target_sr))
    return wave.contiguous()


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` along the last dimension, with a bounded cost.

    A ratio whose reduced terms exceed ``_MAX_RATIO_TERM`` (e.g. 44101:16000) is replaced by the
    nearest ratio within that bound, so the sinc kernel stays small (at most ~1M taps).
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_sr} -> {new_sr}")
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    if max(orig, new) > _MAX_RATIO_TERM:
        # Bound the larger term: approximate small/large with a denominator <= the bound.
        if new > orig:
            ratio = Fraction(orig, new).limit_denominator(_MAX_RATIO_TERM)
            orig, new = ratio.numerator, ratio.denominator
        else:
            ratio = Fraction(new, orig).limit_denominator(_MAX_RATIO_TERM)
            new, orig = ratio.numerator, ratio.denominator
        if orig == 0 or new == 0:
            raise ValueError(f"cannot resample {orig_sr} Hz to {new_sr} Hz: ratio beyond 1:{_MAX_RATIO_TERM}")
    return AF.resample(wave, orig_freq=orig, new_freq=new)


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF WAV's data chunk when the file holds less than its
    header declares; None when it is complete, not a RIFF WAV, or declares an unknown length."""
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
                return None
            order = "<" if head[:4] == b"RIFF" else ">"
            size = os.fstat(fh.fileno()).st_size
            for _ in range(1000):  # a real header has a handful of chunks before the data
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                (length,) = struct.unpack(f"{order}I", chunk[4:])
                if chunk[:4] == b"data":
                    present = size - fh.tell()
                    if length in _WAV_UNKNOWN_SIZES or length <= present:
                        return None
                    return length, present
                fh.seek(length + (length & 1), os.SEEK_CUR)
    except OSError:
        return None  # whatever is wrong was already reported by the decoder, or was not
    return None


def _decode_ffmpeg(path: Path) -> tuple[torch.Tensor, int]:
    # Imported here: torchcodec loads the FFmpeg libraries on import, which the common
    # WAV/FLAC path never needs.
    from torchcodec.decoders import AudioDecoder

    try:
        samples = AudioDecoder(str(path)).get_all_samples()
    except Exception as e:  # torchcodec raises RuntimeError/ValueError with FFmpeg's message
        raise AudioError(path, f"cannot decode ({e})") from e
    return samples.data.mean(dim=0), int(samples.sample_rate)


def fit_length(wave: torch.Tensor, n: int) -> torch.Tensor:
    """Crops (keeping the start) or zero-pads the end of the last dimension to exactly ``n``.

    The start is kept because the onset of a note or event carries most of its identity.
    Returns ``wave`` itself when it already has length ``n``.
    """
    length = wave.shape[-1]
    if length == n:
        return wave
    if length > n:
        return wave[..., :n]
    return torch.nn.functional.pad(wave, (0, n - length))


__all__ = ["AudioError", "fit_length", "load_audio", "resample"]
