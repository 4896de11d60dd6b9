"""Audio: decoding (:mod:`~core.audio.io`), the log-mel front end (:mod:`~core.audio.frontend`) and
waveform augmentations (:mod:`~core.audio.augment`), as modules that know train from eval."""

from core.audio.augment import WaveAugment
from core.audio.frontend import LogMelFrontend
from core.audio.io import AudioError, fit_length, load_audio, resample

__all__ = ["AudioError", "LogMelFrontend", "WaveAugment", "fit_length", "load_audio", "resample"]
