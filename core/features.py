"""Log-mel front end and waveform augmentations, as modules that know train from eval.

Both run batched on the waveforms' device (CPU or CUDA) inside the training step, so the cached
int16 waveforms (``core.waveforms``) are the only thing read from disk, and every epoch sees
fresh augmentations. Augmentation happens only in ``train()`` mode; ``eval()`` is deterministic.

Pipeline::

    wave [B, L] --WaveAugment--> wave [B, L] --LogMelFrontend--> [B, 1, n_mels, frames]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch
import torchaudio
from torch import nn

from core.config import ConfigValueError
from core.errors import UserError
from core.waveforms import AudioError, fit_length, load_audio

Tensor = torch.Tensor


def _rand(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Uniform [0, 1) on ``device``; drawn from ``generator`` (on its own device) when given.

    Drawing on the generator's device keeps a CPU generator usable for CUDA batches, at the
    cost of a small copy; without one the global RNG of ``device`` is used (no copy).
    """
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randn(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _uniform(low: float, high: float, n: int, generator: Optional[torch.Generator],
             device: torch.device) -> Tensor:
    return low + (high - low) * _rand((n,), generator, device)


def _check_batch(wave: Tensor, who: str) -> None:
    if wave.ndim != 2 or not wave.is_floating_point():
        raise ValueError(f"{who} expects a float waveform batch [B, L], got {tuple(wave.shape)} "
                         f"{wave.dtype}")


# --------------------------------------------------------------------------- front end


class LogMelFrontend(nn.Module):
    """Waveform batch -> normalised log-mel ``[B, 1, n_mels, frames]`` with SpecAugment.

    Mel power spectrogram (torchaudio's ``MelSpectrogram`` with power 2 and its defaults: Hann
    window, reflect-padded centred frames, so ``frames = 1 + L // hop``, HTK mel scale) -> natural log
    with a floor -> per-mel-bin standardisation -> SpecAugment (training mode only).

    Normalisation statistics come from :meth:`fit_normalization` and live in buffers
    (``mean``, ``std``, ``fitted``), so they travel with ``state_dict``. Before fitting the
    normalisation is the identity (mean 0, std 1), so the module is usable for shape checks and
    quick runs; check :attr:`is_fitted` where unnormalised features would be a bug.

    Args:
        sr: sample rate of the input waveforms.
        n_fft: FFT size.
        win_length: window length (``None`` = ``n_fft``).
        hop: hop in samples.
        n_mels: mel bins.
        fmin, fmax: mel filterbank range in Hz.
        specaug: apply SpecAugment in training mode.
        freq_mask: widest frequency mask, in mel bins.
        time_mask: widest time mask, in frames.
        n_freq_masks, n_time_masks: masks of each kind per example.
        log_floor: power floor before the log; 1e-5 is ~98 dB below a full-scale sine's bin,
            and keeps zero padding from becoming an extreme outlier.
        cpu_chunk_samples: on CPU, compute the spectrogram for about this many input samples
            at a time (4 clips of 4 s at 16 kHz; at least one clip), see ``log_mel``.
        generator: RNG for the masks (reproducible augmentation); ``None`` = global RNG.
    """

    def __init__(
        self,
        sr: int = 16000,
        n_fft: int = 1024,
        win_length: Optional[int] = None,
        hop: int = 160,
        n_mels: int = 128,
        fmin: float = 20.0,
        fmax: float = 8000.0,
        specaug: bool = True,
        freq_mask: int = 24,
        time_mask: int = 40,
        n_freq_masks: int = 2,
        n_time_masks: int = 2,
        log_floor: float = 1e-5,
        cpu_chunk_samples: int = 2**18,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        for name, value in (("sr", sr), ("n_fft", n_fft), ("win_length", win_length), ("hop", hop),
                            ("n_mels", n_mels), ("log_floor", log_floor),
                            ("cpu_chunk_samples", cpu_chunk_samples)):
            if value <= 0:
                raise ConfigValueError(f"LogMelFrontend: {name}={value} must be > 0")
        if win_length > n_fft:
            raise ConfigValueError(f"LogMelFrontend: win_length={win_length} must be <= n_fft={n_fft}")
        if not 0 <= fmin < fmax <= sr / 2:
            raise ConfigValueError(f"LogMelFrontend: need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, "
                             f"fmax={fmax}, sr={sr}")
        for name, value in (("freq_mask", freq_mask), ("time_mask", time_mask),
                            ("n_freq_masks", n_freq_masks), ("n_time_masks", n_time_masks)):
            if value < 0:
                raise ConfigValueError(f"LogMelFrontend: {name}={value} must be >= 0")

        self.sr, self.hop, self.n_mels, self.log_floor = sr, hop, n_mels, log_floor
        self.cpu_chunk_samples = cpu_chunk_samples
        self.specaug = specaug
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.n_freq_masks, self.n_time_masks = n_freq_masks, n_time_masks
        self.generator = generator
        # torchaudio's MelSpectrogram split in two so the power is re^2 + im^2: its own power
        # step (complex abs, then pow) made the whole transform ~2x slower on CPU (54 vs 28 ms
        # per 32 x 4 s batch, same output).
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, win_length=win_length, hop_length=hop, power=None, center=True,
            pad_mode="reflect",
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=n_mels, sample_rate=sr, f_min=fmin, f_max=fmax, n_stft=n_fft // 2 + 1,
        )
        self.spectrogram.double()  # see _log_mel
        self.mel_scale.double()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.register_buffer("fitted", torch.tensor(False))

    @classmethod
    def from_config(cls, aug: Any, generator: Optional[torch.Generator] = None) -> "LogMelFrontend":
        """Builds from an ``AugConfig``-like object (attrs or OmegaConf): ``sr``, ``n_fft``,
        ``win_length``, ``hop``, ``n_mels``, ``fmin``, ``fmax`` and ``specaug.*``."""
        s = aug.specaug
        return cls(sr=aug.sr, n_fft=aug.n_fft, win_length=aug.win_length, hop=aug.hop,
                   n_mels=aug.n_mels, fmin=aug.fmin, fmax=aug.fmax, specaug=s.enabled,
                   freq_mask=s.freq_mask, time_mask=s.time_mask, n_freq_masks=s.n_freq_masks,
                   n_time_masks=s.n_time_masks, generator=generator)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` (centred STFT)."""
        return 1 + num_samples // self.hop

    def log_mel(self, wave: Tensor) -> Tensor:
        """Unnormalised, unaugmented log-mel ``[B, n_mels, frames]``."""
        _check_batch(wave, "LogMelFrontend")
        clips_per_chunk = max(1, self.cpu_chunk_samples // max(1, wave.shape[1]))
        if wave.device.type == "cpu" and wave.shape[0] > clips_per_chunk:
            # A whole batch's complex spectrogram (52 MB for 32 x 4 s) is fresh memory on every
            # call, and its page faults cost more than the FFTs: ~70 ms per 32 x 4 s batch,
            # against ~22 ms in chunks of 4 clips that the allocator reuses (2 threads).
            return torch.cat([self._log_mel(chunk) for chunk in wave.split(clips_per_chunk)])
        return self._log_mel(wave)

    def _log_mel(self, wave: Tensor) -> Tensor:
        # Power spectra span ~10 orders of magnitude, more than float32 resolves: a frame's quiet
        # bins near the log floor come out of a float32 FFT as rounding noise, which differs
        # between FFT implementations (torch vs onnxruntime: up to 2e-2 in normalised log-mel and
        # 5e-4 in logits on real clips). In float64 both agree to 0 after the cast back, for
        # ~1 ms more per 4 s clip on CPU. Also kept out of bf16/fp16 autocast.
        if self.spectrogram.window.dtype != torch.float64:  # a .float()/.half() of the module
            self.spectrogram.double()
            self.mel_scale.double()
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = self.spectrogram(wave.double())
            power = spec.real.square() + spec.imag.square()
            return torch.log(self.mel_scale(power).clamp_min(self.log_floor)).float()

    def forward(self, wave: Tensor) -> Tensor:
        """``wave [B, L]`` -> ``[B, 1, n_mels, 1 + L // hop]``."""
        return self.post(self.log_mel(wave))

    def post(self, x: Tensor) -> Tensor:
        """Log-mel ``[B, n_mels, frames]`` (from :meth:`log_mel` or a :class:`LogMelSet`) ->
        normalised, SpecAugmented (training only) ``[B, 1, n_mels, frames]``."""
        x = (x.float() - self.mean[:, None]) / self.std[:, None]
        if self.training and self.specaug:
            x = self._spec_augment(x)
        return x.unsqueeze(1)

    def signature(self) -> str:
        """Everything :meth:`log_mel` depends on, for cache keys."""
        spec, mel = self.spectrogram, self.mel_scale
        return (f"sr={self.sr}|n_fft={spec.n_fft}|win={spec.win_length}|hop={self.hop}|"
                f"n_mels={self.n_mels}|fmin={mel.f_min}|fmax={mel.f_max}|floor={self.log_floor}|float64")

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Union[Tensor, tuple, list]]) -> "LogMelFrontend":
        """Sets the per-mel-bin mean/std from training waveforms.

        Pass the training split only: whatever is passed here defines the statistics. The
        statistics pool every frame of every clip, are accumulated in float64 on the module's
        device, and ignore SpecAugment and train/eval mode.

        Args:
            batches: iterable of ``[B, L]`` waveform tensors, or of ``(waves, ...)`` tuples as a
                DataLoader over a :class:`~core.waveforms.WaveformSet` yields.

        Returns:
            ``self``.
        """
        device = self.mean.device
        return self.fit_normalization_logmel(
            self.log_mel((b[0] if isinstance(b, (tuple, list)) else b).to(device)) for b in batches)

    @torch.no_grad()
    def fit_normalization_logmel(self, batches: Iterable[Union[Tensor, tuple, list]]) -> "LogMelFrontend":
        """Like :meth:`fit_normalization`, from log-mel batches ``[B, n_mels, frames]`` (e.g. a
        :class:`LogMelSet` of the training split)."""
        device = self.mean.device
        total = torch.zeros(self.n_mels, dtype=torch.float64, device=device)
        total_sq = torch.zeros_like(total)
        count = 0
        for batch in batches:
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device).double()
            total += x.sum(dim=(0, 2))
            total_sq += x.square().sum(dim=(0, 2))
            count += x.shape[0] * x.shape[2]
        if count == 0:
            raise ValueError("fit_normalization got no batches")
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        # A bin that never varies (e.g. always at the floor) would divide by ~0.
        std = var.sqrt().clamp_min(1e-5)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.fitted.fill_(True)
        return self

    def _spec_augment(self, x: Tensor) -> Tensor:
        """Zeroes random frequency and time bands, independently per example.

        Zero is the training mean once normalisation is fitted, so masked regions look like
        "average" energy rather than silence.
        """
        b, n_freq, n_time = x.shape
        freq = self._band_mask(b, n_freq, self.freq_mask, self.n_freq_masks, x.device)
        time = self._band_mask(b, n_time, self.time_mask, self.n_time_masks, x.device)
        return x.masked_fill(freq[:, :, None] | time[:, None, :], 0.0)

    def _band_mask(self, batch: int, size: int, max_width: int, n_masks: int,
                   device: torch.device) -> Tensor:
        """``[batch, size]`` bool: ``n_masks`` bands per row, each of width uniform in [0, max_width]."""
        max_width = min(max_width, size)
        pos = torch.arange(size, device=device)
        mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        if max_width == 0:
            return mask
        for _ in range(n_masks):
            u = _rand((2, batch), self.generator, device)
            width = (u[0] * (max_width + 1)).long().clamp_max(max_width)
            start = (u[1] * (size - width + 1)).long()
            mask |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
        return mask

    def extra_repr(self) -> str:
        return (f"spectrum=float64, specaug={self.specaug}, freq_mask={self.freq_mask}x{self.n_freq_masks}, "
                f"time_mask={self.time_mask}x{self.n_time_masks}, fitted={self.is_fitted}")


# --------------------------------------------------------------------------- waveform augmentations


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
        _check_batch(wave, type(self).__name__)
        chosen = _rand((wave.shape[0],), generator, wave.device) < self.p
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

    def __init__(self, p: float = 0.5, snr_db_min: float = 10.0, snr_db_max: float = 30.0,
                 colors: tuple[str, ...] = COLORS):
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
        snr_db = _uniform(self.snr_db_min, self.snr_db_max, b, generator, wave.device)
        pink_share = self.colors.count("pink") / len(self.colors)  # 0, 1/2 or 1
        pink = _rand((b,), generator, wave.device) < pink_share
        noise = _gaussian_noise(b, n, pink, generator, wave.device).to(wave.dtype)
        signal_power = wave.square().mean(dim=1, keepdim=True)
        noise_power = noise.square().mean(dim=1, keepdim=True).clamp_min(1e-20)
        scale = torch.sqrt(signal_power / noise_power * 10.0 ** (-snr_db[:, None] / 10.0))
        return wave + scale * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, snr_db=[{self.snr_db_min}, {self.snr_db_max}], colors={self.colors}"


def _gaussian_noise(b: int, n: int, pink: Tensor, generator: Optional[torch.Generator],
                    device: torch.device) -> Tensor:
    """``[b, n]`` Gaussian noise, white or (where ``pink``) with 1/f power, DC removed.

    Synthesised in the frequency domain (random complex spectrum, one inverse FFT), so both
    colours cost one FFT for the whole batch instead of generating and then filtering.
    """
    bins = n // 2 + 1
    spectrum = torch.view_as_complex(_randn((b, bins, 2), generator, device))
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
        gain_db = _uniform(self.min_db, self.max_db, wave.shape[0], generator, wave.device)
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

    def __init__(self, p: float = 0.5, sr: int = 16000, ir_dir: Optional[Union[str, Path]] = None,
                 rt60_min: float = 0.2, rt60_max: float = 1.0):
        super().__init__(p)
        if not 0.0 < rt60_min <= rt60_max:
            raise ConfigValueError(f"Reverb: need 0 < rt60_min <= rt60_max, got [{rt60_min}, {rt60_max}]")
        self.sr = int(sr)
        self.rt60_min, self.rt60_max = float(rt60_min), float(rt60_max)
        self.ir_dir = None if ir_dir is None else Path(ir_dir)
        self.ir_files: list[Path] = [] if self.ir_dir is None else self._find_irs(self.ir_dir)
        # Non-persistent: moves with .to(device) but is not part of checkpoints.
        self.register_buffer("irs", self._load_irs(self.ir_files) if self.ir_files else None,
                             persistent=False)

    @classmethod
    def _find_irs(cls, ir_dir: Path) -> list[Path]:
        if not ir_dir.is_dir():
            raise ConfigValueError(f"Reverb: RIR folder {ir_dir} (aug.rir.dir) does not exist or is "
                                   f"not a folder")
        files = sorted(f for f in ir_dir.rglob("*") if f.is_file() and f.suffix.lower() in cls.IR_SUFFIXES)
        if not files:
            raise ConfigValueError(f"Reverb: RIR folder {ir_dir} (aug.rir.dir) holds no "
                                   f"{'/'.join(cls.IR_SUFFIXES)} files")
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
            pick = (_rand((b,), generator, wave.device) * n_irs).long().clamp_max(n_irs - 1)
            # .to is a no-op once the module was moved with the data.
            irs = self.irs.to(device=wave.device, dtype=wave.dtype)[pick]
        else:
            irs = self._synthetic(b, generator, wave.device).to(wave.dtype)
        wet = _fft_convolve(wave, irs)
        rms_in = wave.square().mean(dim=1, keepdim=True).sqrt()
        rms_out = wet.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
        return wet * (rms_in / rms_out)

    def _synthetic(self, b: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
        rt60 = _uniform(self.rt60_min, self.rt60_max, b, generator, device)
        n = max(2, math.ceil(self.rt60_max * self.sr))
        t = torch.arange(n, device=device) / self.sr
        # Amplitude envelope exp(-a t) is 60 dB down at t = RT60: a = 3 ln(10) / RT60.
        envelope = torch.exp(-3.0 * math.log(10.0) * t[None, :] / rt60[:, None])
        tail = _randn((b, n), generator, device) * envelope
        tail[:, 0] = 0.0
        tail = tail / tail.norm(dim=1, keepdim=True).clamp_min(1e-12)
        tail[:, 0] = 1.0
        return tail

    def extra_repr(self) -> str:
        source = f"ir_dir={str(self.ir_dir)!r} ({len(self.ir_files)} IRs)" if self.ir_dir else \
            f"synthetic rt60=[{self.rt60_min}, {self.rt60_max}]"
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
        "mp3": None,     # MPEG-1/2 Layer III (libmp3lame)
        "ogg": None,     # Vorbis
        "opus": 48000,   # Opus in Ogg
        "webm": 48000,   # Opus in WebM
        "mp4": None,     # AAC
        "adts": None,    # raw AAC stream (no edit list: 1024 samples of priming delay)
        "flac": None,    # lossless; useful as a control
    }

    def __init__(self, p: float = 0.5, sr: int = 16000, format: str = "mp3", bit_rate: int = 32000):
        super().__init__(p)
        if format not in self.FORMATS:
            raise ConfigValueError(f"CodecRoundTrip: unsupported codec format {format!r} (aug.codec.format); "
                                   f"supported: "
                             f"{', '.join(self.FORMATS)}")
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
                raise CodecError(f"CodecRoundTrip: {self.format} at {self.bit_rate} bit/s does not "
                                   f"reproduce its input (correlation {corr:.2f} with a noise probe)")
            self._delays[n] = lag
        return self._delays[n]

    def _encode_decode(self, clip: Tensor) -> Tensor:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder

        try:
            encoded = AudioEncoder(clip, sample_rate=self.sr).to_tensor(
                self.format, bit_rate=self.bit_rate, sample_rate=self.FORMATS[self.format])
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
    xcorr = torch.fft.irfft(torch.fft.rfft(delayed, n=size) * torch.fft.rfft(reference, n=size).conj(),
                            n=size)
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
        noise, gain, rir, codec: objects with the attributes of ``core.config.NoiseConfig``,
            ``GainConfig``, ``RIRConfig``, ``CodecConfig`` (attrs instances or OmegaConf nodes);
            ``None`` = off.
        generator: RNG for every random choice (reproducible augmentation); ``None`` = global RNG.
    """

    def __init__(self, sr: int = 16000, noise: Any = None, gain: Any = None, rir: Any = None,
                 codec: Any = None, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.sr = int(sr)
        self.generator = generator
        self.augs = nn.ModuleDict()
        if _enabled(rir):
            self.augs["reverb"] = Reverb(rir.p, sr=sr, ir_dir=rir.dir, rt60_min=rir.rt60_min,
                                         rt60_max=rir.rt60_max)
        if _enabled(noise):
            self.augs["noise"] = AddNoise(noise.p, snr_db_min=noise.snr_db_min, snr_db_max=noise.snr_db_max)
        if _enabled(gain):
            self.augs["gain"] = RandomGain(gain.p, min_db=gain.min_db, max_db=gain.max_db)
        if _enabled(codec):
            self.augs["codec"] = CodecRoundTrip(codec.p, sr=sr, format=codec.format, bit_rate=codec.bit_rate)

    @classmethod
    def from_config(cls, aug: Any, generator: Optional[torch.Generator] = None) -> "WaveAugment":
        """Builds from an ``AugConfig``-like object: ``sr`` and the ``noise``, ``gain``, ``rir``,
        ``codec`` sub-configs."""
        return cls(sr=aug.sr, noise=aug.noise, gain=aug.gain, rir=aug.rir, codec=aug.codec,
                   generator=generator)

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


__all__ = [
    "AddNoise",
    "CodecError",
    "CodecRoundTrip",
    "LogMelFrontend",
    "RandomGain",
    "RandomWaveAug",
    "Reverb",
    "WaveAugment",
]


class LogMelSet(torch.utils.data.Dataset):
    """Cached, unnormalised log-mel of a :class:`~core.waveforms.WaveformSet` (float16 memmap).

    Log-mel is a fixed function of the waveform, so with no waveform augmentation it would be
    recomputed identically every epoch; on 2 CPU cores that was ~16 % of a training step. The set
    stores it once; normalisation and SpecAugment still run per batch (``LogMelFrontend.post``).
    float16 keeps log-power to ~0.004 at the top of its range, far below the normalised scale.
    """

    input_kind = "logmel"

    def __init__(self, npy_path: Path, waves: Any) -> None:
        self.npy_path = Path(npy_path)
        self.labels = waves.labels
        self.paths = waves.paths
        self.skipped = waves.skipped
        self._mels: Optional[np.memmap] = None

    @property
    def mels(self) -> np.memmap:
        if self._mels is None:
            self._mels = np.load(self.npy_path, mmap_mode="r")
        return self._mels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.mels[index].astype(np.float32)), torch.tensor(self.labels[index])

    def batch(self, indices: Any) -> tuple[Tensor, Tensor]:
        """``(log-mel float32 [B, n_mels, frames], labels int64 [B])``."""
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.mels[idx].astype(np.float32)), torch.from_numpy(self.labels[idx])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mels"] = None  # workers reopen the file instead of receiving the array
        return state


@torch.no_grad()
def build_logmel_cache(waves: Any, frontend: LogMelFrontend, batch_size: int = 64) -> LogMelSet:
    """Compute ``frontend.log_mel`` of every clip once, next to the waveform cache, or reuse it.

    The file name hashes the waveform cache's name and :meth:`LogMelFrontend.signature`, so a
    changed clip set or front-end setting gets a new file. Written under a temporary name and
    renamed when complete, so an interrupted build is never mistaken for a cache.
    """
    import hashlib

    from core.fsutil import atomic_path

    key = hashlib.sha256(f"{waves.npy_path.name}|{frontend.signature()}".encode()).hexdigest()[:24]
    final = waves.npy_path.parent / f"logmel-{key}.npy"
    n, frames = len(waves), frontend.num_frames(waves.clip_samples)
    if final.is_file():
        arr = np.load(final, mmap_mode="r")
        if arr.shape == (n, frontend.n_mels, frames) and arr.dtype == np.float16:
            return LogMelSet(final, waves)
    device = frontend.mean.device
    with atomic_path(final, suffix=".tmp.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, frontend.n_mels, frames))
        for start in range(0, n, batch_size):
            wave, _ = waves.batch(range(start, min(n, start + batch_size)))
            out[start:start + len(wave)] = frontend.log_mel(wave.to(device)).cpu().numpy().astype(np.float16)
        out.flush()
        del out
    return LogMelSet(final, waves)
