"""Log-mel front end: a module that knows train from eval.

It runs batched on the waveforms' device (CPU or CUDA) inside the training step; SpecAugment
happens only in ``train()`` mode, ``eval()`` is deterministic.

    wave [B, L] --(core.audio.augment.WaveAugment)--> wave [B, L] --LogMelFrontend--> [B, 1, n_mels, frames]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional, Union

import torch
import torchaudio
from torch import nn

from core.audio.rng import check_batch, rand
from core.errors import ConfigValueError

Tensor = torch.Tensor


# --------------------------------------------------------------------------- front end


class LogMelFrontend(nn.Module):
    """Waveform batch -> normalised log-mel ``[B, 1, n_mels, frames]`` with SpecAugment.

    Mel power spectrogram (torchaudio's ``MelSpectrogram`` with power 2 and its defaults: Hann
    window, reflect-padded centred frames, so ``frames = 1 + L // hop``, HTK mel scale) -> natural log
    with a floor -> [random EQ] -> per-mel-bin standardisation -> SpecAugment (training mode only).

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
        eq_p: probability per example of a random EQ in training (0 = off): a smooth gain curve
            over the mel axis, the sum of ``eq_bands`` cosines with uniform random weights, within
            ``+-eq_max_db`` dB, added to the log power (timbre variation; cached log-mel included).
        log_floor: power floor before the log; 1e-5 is ~98 dB below a full-scale sine's bin,
            and keeps zero padding from becoming an extreme outlier.
        cpu_chunk_samples: on CPU, compute the spectrogram for about this many input samples
            at a time (4 clips of 4 s at 16 kHz; at least one clip), see ``log_mel``.
        generator: RNG for the masks (reproducible augmentation); ``None`` = global RNG.
    """

    mean: Tensor
    std: Tensor
    fitted: Tensor

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
        eq_p: float = 0.0,
        eq_max_db: float = 6.0,
        eq_bands: int = 3,
        log_floor: float = 1e-5,
        cpu_chunk_samples: int = 2**18,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        for name, value in (
            ("sr", sr),
            ("n_fft", n_fft),
            ("win_length", win_length),
            ("hop", hop),
            ("n_mels", n_mels),
            ("log_floor", log_floor),
            ("cpu_chunk_samples", cpu_chunk_samples),
        ):
            if value <= 0:
                raise ConfigValueError(f"LogMelFrontend: {name}={value} must be > 0")
        if win_length > n_fft:
            raise ConfigValueError(f"LogMelFrontend: win_length={win_length} must be <= n_fft={n_fft}")
        if not 0 <= fmin < fmax <= sr / 2:
            raise ConfigValueError(
                f"LogMelFrontend: need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sr}"
            )
        for name, value in (
            ("freq_mask", freq_mask),
            ("time_mask", time_mask),
            ("n_freq_masks", n_freq_masks),
            ("n_time_masks", n_time_masks),
            ("eq_max_db", eq_max_db),
        ):
            if value < 0:
                raise ConfigValueError(f"LogMelFrontend: {name}={value} must be >= 0")

        self.sr, self.hop, self.n_mels, self.log_floor = sr, hop, n_mels, log_floor
        self.cpu_chunk_samples = cpu_chunk_samples
        self.specaug = specaug
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.n_freq_masks, self.n_time_masks = n_freq_masks, n_time_masks
        if not 0.0 <= eq_p <= 1.0 or eq_bands < 1:
            raise ConfigValueError(f"LogMelFrontend: need eq_p in [0, 1] and eq_bands >= 1, got {eq_p}, {eq_bands}")
        self.eq_p, self.eq_max_db, self.eq_bands = eq_p, eq_max_db, eq_bands
        self.generator = generator
        # torchaudio's MelSpectrogram split in two so the power is re^2 + im^2: its own power
        # step (complex abs, then pow) made the whole transform ~2x slower on CPU (54 vs 28 ms
        # per 32 x 4 s batch, same output).
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop,
            power=None,
            center=True,
            pad_mode="reflect",
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=n_mels,
            sample_rate=sr,
            f_min=fmin,
            f_max=fmax,
            n_stft=n_fft // 2 + 1,
        )
        self.spectrogram.double()  # see _log_mel
        self.mel_scale.double()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.register_buffer("fitted", torch.tensor(False))

    @classmethod
    def from_config(cls, aug: Any, generator: Optional[torch.Generator] = None) -> LogMelFrontend:
        """Builds from an ``AugConfig``-like object (attrs or OmegaConf): ``sr``, ``n_fft``,
        ``win_length``, ``hop``, ``n_mels``, ``fmin``, ``fmax``, ``specaug.*`` and ``eq.*``."""
        s, eq = aug.specaug, aug.eq
        return cls(
            sr=aug.sr,
            n_fft=aug.n_fft,
            win_length=aug.win_length,
            hop=aug.hop,
            n_mels=aug.n_mels,
            fmin=aug.fmin,
            fmax=aug.fmax,
            specaug=s.enabled,
            freq_mask=s.freq_mask,
            time_mask=s.time_mask,
            n_freq_masks=s.n_freq_masks,
            n_time_masks=s.n_time_masks,
            eq_p=float(eq.p) if eq.enabled else 0.0,
            eq_max_db=float(eq.max_db),
            eq_bands=int(eq.bands),
            generator=generator,
        )

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` (centred STFT)."""
        return 1 + num_samples // self.hop

    def log_mel(self, wave: Tensor) -> Tensor:
        """Unnormalised, unaugmented log-mel ``[B, n_mels, frames]``."""
        check_batch(wave, "LogMelFrontend")
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
        x = x.float()
        if self.training and self.eq_p > 0:
            x = x + self._eq_curves(x.shape[0], x.device)[:, :, None]
        x = (x - self.mean[:, None]) / self.std[:, None]
        if self.training and self.specaug:
            x = self._spec_augment(x)
        return x.unsqueeze(1)

    def signature(self) -> str:
        """Everything :meth:`log_mel` depends on, for cache keys."""
        spec, mel = self.spectrogram, self.mel_scale
        return (
            f"sr={self.sr}|n_fft={spec.n_fft}|win={spec.win_length}|hop={self.hop}|"
            f"n_mels={self.n_mels}|fmin={mel.f_min}|fmax={mel.f_max}|floor={self.log_floor}|float64"
        )

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Union[Tensor, tuple, list]]) -> LogMelFrontend:
        """Sets the per-mel-bin mean/std from training waveforms.

        Pass the training split only: whatever is passed here defines the statistics. The
        statistics pool every frame of every clip, are accumulated in float64 on the module's
        device, and ignore SpecAugment and train/eval mode.

        Args:
            batches: iterable of ``[B, L]`` waveform tensors, or of ``(waves, ...)`` tuples as a
                DataLoader over a :class:`~core.data.waveforms.WaveformSet` yields.

        Returns:
            ``self``.
        """
        device = self.mean.device
        return self.fit_normalization_logmel(
            self.log_mel((b[0] if isinstance(b, (tuple, list)) else b).to(device)) for b in batches
        )

    @torch.no_grad()
    def fit_normalization_logmel(self, batches: Iterable[Union[Tensor, tuple, list]]) -> LogMelFrontend:
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

    def _eq_curves(self, batch: int, device: torch.device) -> Tensor:
        """``[batch, n_mels]`` random EQ curves in natural-log power units (0 where not drawn).

        Written here because torchaudio's ``equalizer_biquad`` filters a waveform with one fixed
        band, while the training batch is often cached log-mel; a gain curve is a sum in log power.
        """
        k = self.eq_bands
        u = rand((batch, k + 1), self.generator, device)
        mel = torch.linspace(0.0, 1.0, self.n_mels, device=device)
        basis = torch.cos(math.pi * torch.arange(1, k + 1, device=device)[:, None] * mel[None, :])  # [k, n_mels]
        db = self.eq_max_db * ((2.0 * u[:, :k] - 1.0) / k) @ basis  # weights sum to <= 1 in size: within +-max_db
        return torch.where(u[:, k:] < self.eq_p, db * (math.log(10.0) / 10.0), torch.zeros_like(db))

    def _spec_augment(self, x: Tensor) -> Tensor:
        """Zeroes random frequency and time bands, independently per example.

        Zero is the training mean once normalisation is fitted, so masked regions look like
        "average" energy rather than silence.
        """
        b, n_freq, n_time = x.shape
        freq = self._band_mask(b, n_freq, self.freq_mask, self.n_freq_masks, x.device)
        time = self._band_mask(b, n_time, self.time_mask, self.n_time_masks, x.device)
        return x.masked_fill(freq[:, :, None] | time[:, None, :], 0.0)

    def _band_mask(self, batch: int, size: int, max_width: int, n_masks: int, device: torch.device) -> Tensor:
        """``[batch, size]`` bool: ``n_masks`` bands per row, each of width uniform in [0, max_width]."""
        max_width = min(max_width, size)
        pos = torch.arange(size, device=device)
        mask = torch.zeros(batch, size, dtype=torch.bool, device=device)
        if max_width == 0:
            return mask
        for _ in range(n_masks):
            u = rand((2, batch), self.generator, device)
            width = (u[0] * (max_width + 1)).long().clamp_max(max_width)
            start = (u[1] * (size - width + 1)).long()
            mask |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
        return mask

    def extra_repr(self) -> str:
        return (
            f"spectrum=float64, specaug={self.specaug}, freq_mask={self.freq_mask}x{self.n_freq_masks}, "
            f"time_mask={self.time_mask}x{self.n_time_masks}, eq_p={self.eq_p}, fitted={self.is_fitted}"
        )


__all__ = ["LogMelFrontend"]
