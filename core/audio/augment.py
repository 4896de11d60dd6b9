"""Waveform augmentations, as modules that know train from eval.

Each runs batched on the waveforms' device inside the training step, so every epoch sees fresh
augmentations of the cached waveforms; in ``eval()`` mode (or with nothing enabled) the input is
returned unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from core.audio.io import AudioError, fit_length, load_audio
from core.audio.rng import check_batch, rand, randn, uniform
from core.errors import ConfigValueError, UserError

Tensor = torch.Tensor


class RandomWaveAug(nn.Module):
    """Base of the waveform augmentations: each example is transformed with probability ``p``,
    only in training mode; otherwise the input tensor itself is returned (no copy)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigValueError(f"{type(self).__name__}: p={p} must be within [0, 1]")
        self.p = float(p)

    def forward(self, wave: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if not self.training or self.p == 0.0:
            return wave
        check_batch(wave, type(self).__name__)
        chosen = rand((wave.shape[0],), generator, wave.device) < self.p
        return self.transform(wave, chosen, generator)

    def transform(self, wave: Tensor, chosen: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Default: transform the whole batch (cheap, no host sync) and keep the chosen rows."""
        return torch.where(chosen[:, None], self.apply_all(wave, generator), wave)

    def apply_all(self, wave: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AddNoise(RandomWaveAug):
    """Adds white or pink Gaussian noise at an SNR uniform in ``[snr_db_min, snr_db_max]``.

    The SNR is relative to each clip's own mean power, so quiet clips get quiet noise; a silent
    clip stays silent.

    Args:
        colors: noise colours to draw from, uniformly per example ("white", "pink").
    """

    COLORS = ("white", "pink")

    def __init__(
        self, p: float = 0.5, snr_db_min: float = 10.0, snr_db_max: float = 30.0, colors: tuple[str, ...] = COLORS
    ):
        super().__init__(p)
        if snr_db_min > snr_db_max:
            raise ConfigValueError(f"AddNoise: snr_db_min={snr_db_min} > snr_db_max={snr_db_max}")
        colors = tuple(dict.fromkeys(colors))  # drop repeats: each colour is equally likely
        if not colors or set(colors) - set(self.COLORS):
            raise ConfigValueError(f"AddNoise: colors={colors!r}; choose from {', '.join(self.COLORS)}")
        self.snr_db_min, self.snr_db_max = float(snr_db_min), float(snr_db_max)
        self.colors = colors

    def apply_all(self, wave: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        b, n = wave.shape
        snr_db = uniform(self.snr_db_min, self.snr_db_max, b, generator, wave.device)
        pink_share = self.colors.count("pink") / len(self.colors)  # 0, 1/2 or 1
        pink = rand((b,), generator, wave.device) < pink_share
        noise = _gaussian_noise(b, n, pink, generator, wave.device).to(wave.dtype)
        signal_power = wave.square().mean(dim=1, keepdim=True)
        noise_power = noise.square().mean(dim=1, keepdim=True).clamp_min(1e-20)
        scale = torch.sqrt(signal_power / noise_power * 10.0 ** (-snr_db[:, None] / 10.0))
        return wave + scale * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, snr_db=[{self.snr_db_min}, {self.snr_db_max}], colors={self.colors}"


def _gaussian_noise(b: int, n: int, pink: Tensor, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """``[b, n]`` Gaussian noise, white or (where ``pink``) with 1/f power, DC removed.

    Synthesised in the frequency domain (random complex spectrum, one inverse FFT), so both
    colours cost one FFT for the whole batch instead of generating and then filtering.
    """
    bins = n // 2 + 1
    spectrum = torch.view_as_complex(randn((b, bins, 2), generator, device))
    f = torch.arange(bins, device=device, dtype=torch.float32).clamp_min(1.0)
    amplitude = torch.where(pink[:, None], f.rsqrt()[None, :], 1.0)  # power 1/f or flat
    amplitude[:, 0] = 0.0
    return torch.fft.irfft(spectrum * amplitude, n=n, dim=-1)


class RandomGain(RandomWaveAug):
    """Multiplies each chosen clip by a gain uniform in ``[min_db, max_db]`` dB.

    No clipping: the samples may leave [-1, 1], which the log-mel front end handles; a codec
    stage after it clips its own input.
    """

    def __init__(self, p: float = 0.5, min_db: float = -6.0, max_db: float = 6.0):
        super().__init__(p)
        if min_db > max_db:
            raise ConfigValueError(f"RandomGain: min_db={min_db} > max_db={max_db}")
        self.min_db, self.max_db = float(min_db), float(max_db)

    def apply_all(self, wave: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        gain_db = uniform(self.min_db, self.max_db, wave.shape[0], generator, wave.device)
        return wave * 10.0 ** (gain_db[:, None] / 20.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, gain_db=[{self.min_db}, {self.max_db}]"


class Reverb(RandomWaveAug):
    """Convolves with a room impulse response (FFT convolution, output length unchanged).

    The IR is drawn per example from the ``.wav``/``.flac`` files under ``ir_dir`` (searched
    recursively, loaded once at ``sr``, mono), or, without ``ir_dir``, synthesised: a direct-path
    impulse plus Gaussian noise decaying by 60 dB over an RT60 uniform in
    ``[rt60_min, rt60_max]``, tail energy equal to the direct path's (0 dB direct-to-reverberant
    ratio). The IR is used as recorded, so a pre-delay in the file delays the signal. Each
    output is rescaled to the RMS of its input, so reverberation changes the sound, not the level.

    Args:
        p: probability per example.
        sr: sample rate of the waveforms (IR files are resampled to it).
        ir_dir: folder of impulse responses; ``None`` = synthetic.
        rt60_min, rt60_max: range of the synthetic RT60, in seconds.
    """

    IR_SUFFIXES = (".wav", ".flac")
    irs: Optional[Tensor]

    def __init__(
        self,
        p: float = 0.5,
        sr: int = 16000,
        ir_dir: Optional[Union[str, Path]] = None,
        rt60_min: float = 0.2,
        rt60_max: float = 1.0,
    ):
        super().__init__(p)
        if not 0.0 < rt60_min <= rt60_max:
            raise ConfigValueError(f"Reverb: need 0 < rt60_min <= rt60_max, got [{rt60_min}, {rt60_max}]")
        self.sr = int(sr)
        self.rt60_min, self.rt60_max = float(rt60_min), float(rt60_max)
        self.ir_dir = None if ir_dir is None else Path(ir_dir)
        self.ir_files: list[Path] = [] if self.ir_dir is None else self._find_irs(self.ir_dir)
        # Non-persistent: moves with .to(device) but is not part of checkpoints.
        self.register_buffer("irs", self._load_irs(self.ir_files) if self.ir_files else None, persistent=False)

    @classmethod
    def _find_irs(cls, ir_dir: Path) -> list[Path]:
        if not ir_dir.is_dir():
            raise ConfigValueError(f"Reverb: RIR folder {ir_dir} (aug.rir.dir) does not exist or is not a folder")
        files = sorted(f for f in ir_dir.rglob("*") if f.is_file() and f.suffix.lower() in cls.IR_SUFFIXES)
        if not files:
            raise ConfigValueError(
                f"Reverb: RIR folder {ir_dir} (aug.rir.dir) holds no {'/'.join(cls.IR_SUFFIXES)} files"
            )
        return files

    def _load_irs(self, files: list[Path]) -> Tensor:
        """``[n_files, longest]`` bank, shorter IRs zero-padded (padding adds no energy)."""
        irs = []
        for f in files:
            ir = load_audio(f, self.sr)
            if not ir.abs().max() > 0:
                raise AudioError(f, "impulse response is silent")
            irs.append(ir)
        bank = torch.zeros(len(irs), max(len(ir) for ir in irs))
        for i, ir in enumerate(irs):
            bank[i, : len(ir)] = ir
        return bank

    def apply_all(self, wave: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        b = wave.shape[0]
        if self.irs is not None:
            n_irs = self.irs.shape[0]
            pick = (rand((b,), generator, wave.device) * n_irs).long().clamp_max(n_irs - 1)
            # .to is a no-op once the module was moved with the data.
            irs = self.irs.to(device=wave.device, dtype=wave.dtype)[pick]
        else:
            irs = self._synthetic(b, generator, wave.device).to(wave.dtype)
        wet = _fft_convolve(wave, irs)
        rms_in = wave.square().mean(dim=1, keepdim=True).sqrt()
        rms_out = wet.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
        return wet * (rms_in / rms_out)

    def _synthetic(self, b: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
        rt60 = uniform(self.rt60_min, self.rt60_max, b, generator, device)
        n = max(2, math.ceil(self.rt60_max * self.sr))
        t = torch.arange(n, device=device) / self.sr
        # Amplitude envelope exp(-a t) is 60 dB down at t = RT60: a = 3 ln(10) / RT60.
        envelope = torch.exp(-3.0 * math.log(10.0) * t[None, :] / rt60[:, None])
        tail = randn((b, n), generator, device) * envelope
        tail[:, 0] = 0.0
        tail = tail / tail.norm(dim=1, keepdim=True).clamp_min(1e-12)
        tail[:, 0] = 1.0
        return tail

    def extra_repr(self) -> str:
        source = (
            f"ir_dir={str(self.ir_dir)!r} ({len(self.ir_files)} IRs)"
            if self.ir_dir
            else f"synthetic rt60=[{self.rt60_min}, {self.rt60_max}]"
        )
        return f"p={self.p}, {source}"


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: as fast as a power of two per point, and often much
    shorter (4 s + 1 s of IR at 16 kHz: 80,000 instead of 131,072; 3x faster here)."""
    size = n
    while True:
        rest = size
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return size
        size += 1


def _fft_convolve(wave: Tensor, irs: Tensor) -> Tensor:
    """Row-wise linear convolution ``wave[i] * irs[i]``, cropped to ``wave``'s length."""
    n = wave.shape[-1]
    size = _fft_size(n + irs.shape[-1] - 1)  # the full output: no circular wrap-around
    spectrum = torch.fft.rfft(wave, n=size, dim=-1) * torch.fft.rfft(irs, n=size, dim=-1)
    return torch.fft.irfft(spectrum, n=size, dim=-1)[..., :n]


class CodecError(UserError, RuntimeError):
    """This FFmpeg build cannot round-trip audio through the configured codec."""


class CodecRoundTrip(RandomWaveAug):
    """Encodes and decodes each chosen clip through a lossy codec in memory (torchcodec/FFmpeg).

    Runs on the CPU, one clip at a time (FFmpeg has no batched or GPU path): per 4 s clip at
    16 kHz, 6-8 ms for mp3, 9-11 ms for Vorbis, 19-22 ms for AAC, 23-50 ms for Opus (2 threads).
    The output has the input's length and alignment: the codec's delay is measured once per
    clip length by cross-correlating a noise probe, then removed. Input samples are clipped to
    [-1, 1] first, as an encoder fed 16-bit PCM would see them.

    Args:
        p: probability per example.
        sr: sample rate of the waveforms.
        format: one of :attr:`FORMATS`.
        bit_rate: target bit rate in bit/s (the encoder picks its nearest supported rate).
    """

    #: Container format -> sample rate to encode at (None = the input's). Opus only stores
    #: 48 kHz timing, and torchcodec mis-times Opus encoded from other rates.
    FORMATS: dict[str, Optional[int]] = {
        "mp3": None,  # MPEG-1/2 Layer III (libmp3lame)
        "ogg": None,  # Vorbis
        "opus": 48000,  # Opus in Ogg
        "webm": 48000,  # Opus in WebM
        "mp4": None,  # AAC
        "adts": None,  # raw AAC stream (no edit list: 1024 samples of priming delay)
        "flac": None,  # lossless; useful as a control
    }

    def __init__(self, p: float = 0.5, sr: int = 16000, format: str = "mp3", bit_rate: int = 32000):
        super().__init__(p)
        if format not in self.FORMATS:
            raise ConfigValueError(
                f"CodecRoundTrip: unsupported codec format {format!r} (aug.codec.format); "
                f"supported: "
                f"{', '.join(self.FORMATS)}"
            )
        if bit_rate <= 0:
            raise ConfigValueError(f"CodecRoundTrip: bit_rate={bit_rate} must be > 0")
        self.sr, self.format, self.bit_rate = int(sr), format, int(bit_rate)
        self._delays: dict[int, int] = {}
        # Fail now, with a clear message, if this FFmpeg build lacks the encoder.
        self.delay(self.sr)

    def transform(self, wave: Tensor, chosen: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        indices = chosen.nonzero().flatten().tolist()
        if not indices:
            return wave
        out = wave.clone()
        for i in indices:
            out[i] = self.round_trip(wave[i])
        return out

    def round_trip(self, clip: Tensor) -> Tensor:
        """One clip ``[L]`` through the codec, aligned and cropped/padded back to ``[L]``."""
        n = clip.shape[-1]
        decoded = self._encode_decode(clip.detach().float().cpu().clamp(-1.0, 1.0))
        return _shift(decoded, self.delay(n), n).to(device=clip.device, dtype=clip.dtype)

    def delay(self, n: int) -> int:
        """Samples by which the decoded output lags the input, for clips of ``n`` samples."""
        if n not in self._delays:
            probe = torch.from_numpy(np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1)
            decoded = self._encode_decode(probe)
            lag, corr = _best_lag(probe, decoded, max_lag=min(4096, n - 1))
            if corr < 0.3:
                raise CodecError(
                    f"CodecRoundTrip: {self.format} at {self.bit_rate} bit/s does not "
                    f"reproduce its input (correlation {corr:.2f} with a noise probe)"
                )
            self._delays[n] = lag
        return self._delays[n]

    def _encode_decode(self, clip: Tensor) -> Tensor:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder

        try:
            encoded = AudioEncoder(clip, sample_rate=self.sr).to_tensor(
                self.format, bit_rate=self.bit_rate, sample_rate=self.FORMATS[self.format]
            )
            # Decode straight back to the input rate and mono; FFmpeg resamples if needed.
            samples = AudioDecoder(encoded, sample_rate=self.sr, num_channels=1).get_all_samples()
        except Exception as e:  # FFmpeg errors arrive as RuntimeError/ValueError
            raise CodecError(f"CodecRoundTrip: {self.format} at {self.bit_rate} bit/s failed: {e}") from e
        return samples.data[0]

    def extra_repr(self) -> str:
        return f"p={self.p}, format={self.format!r}, bit_rate={self.bit_rate}"


def _best_lag(reference: Tensor, delayed: Tensor, max_lag: int) -> tuple[int, float]:
    """Lag in ``[-max_lag, max_lag]`` maximising the cross-correlation, and its normalised value."""
    size = 1 << (reference.numel() + delayed.numel()).bit_length()
    xcorr = torch.fft.irfft(torch.fft.rfft(delayed, n=size) * torch.fft.rfft(reference, n=size).conj(), n=size)
    lags = torch.cat([torch.arange(0, max_lag + 1), torch.arange(-max_lag, 0)])
    values = xcorr[lags % size]
    best = int(values.argmax())
    norm = (reference.norm() * delayed.norm()).clamp_min(1e-12)
    return int(lags[best]), float(values[best] / norm)


def _shift(decoded: Tensor, lag: int, n: int) -> Tensor:
    """``decoded`` advanced by ``lag`` samples (delayed when negative), as exactly ``n`` samples."""
    if lag >= 0:
        return fit_length(decoded[lag:], n)
    return fit_length(torch.nn.functional.pad(decoded, (-lag, 0)), n)


class WaveAugment(nn.Module):
    """Switchable waveform augmentations, applied in a fixed, physically motivated order.

    ``reverb`` (the room) -> ``noise`` (background and microphone) -> ``gain`` (recording level)
    -> ``codec`` (storage or transmission). Each is off unless its config says ``enabled``, and
    each picks examples with its own probability ``p``. In eval mode, or with nothing enabled,
    ``forward`` returns its input tensor unchanged (no copy).

    Args:
        sr: sample rate of the waveforms.
        noise, gain, rir, codec: objects with the attributes of ``core.config.schema.NoiseConfig``,
            ``GainConfig``, ``RIRConfig``, ``CodecConfig`` (attrs instances or OmegaConf nodes);
            ``None`` = off.
        generator: RNG for every random choice (reproducible augmentation); ``None`` = global RNG.
    """

    def __init__(
        self,
        sr: int = 16000,
        noise: Any = None,
        gain: Any = None,
        rir: Any = None,
        codec: Any = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        self.sr = int(sr)
        self.generator = generator
        self.augs = nn.ModuleDict()
        if _enabled(rir):
            self.augs["reverb"] = Reverb(rir.p, sr=sr, ir_dir=rir.dir, rt60_min=rir.rt60_min, rt60_max=rir.rt60_max)
        if _enabled(noise):
            self.augs["noise"] = AddNoise(noise.p, snr_db_min=noise.snr_db_min, snr_db_max=noise.snr_db_max)
        if _enabled(gain):
            self.augs["gain"] = RandomGain(gain.p, min_db=gain.min_db, max_db=gain.max_db)
        if _enabled(codec):
            self.augs["codec"] = CodecRoundTrip(codec.p, sr=sr, format=codec.format, bit_rate=codec.bit_rate)

    @classmethod
    def from_config(cls, aug: Any, generator: Optional[torch.Generator] = None) -> WaveAugment:
        """Builds from an ``AugConfig``-like object: ``sr`` and the ``noise``, ``gain``, ``rir``,
        ``codec`` sub-configs."""
        return cls(sr=aug.sr, noise=aug.noise, gain=aug.gain, rir=aug.rir, codec=aug.codec, generator=generator)

    @property
    def enabled(self) -> list[str]:
        """Names of the active augmentations, in application order."""
        return list(self.augs.keys())

    def forward(self, wave: Tensor) -> Tensor:
        if not self.training or len(self.augs) == 0:
            return wave
        for aug in self.augs.values():
            wave = aug(wave, self.generator)
        return wave


def _enabled(cfg: Any) -> bool:
    return cfg is not None and bool(cfg.enabled)


__all__ = ["AddNoise", "CodecError", "CodecRoundTrip", "RandomGain", "RandomWaveAug", "Reverb", "WaveAugment"]
