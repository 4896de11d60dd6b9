"""The student's front end in numpy, for deployment beside onnxruntime: no torch where it runs.

Why a deployed model is two pieces: onnxruntime's STFT is slower than torch's on CPU (a 4 s log-mel
front end took 10.7 ms in onnxruntime against 4.0 ms in torch, 1 thread, 2-core AMD EPYC), and the
exported whole-model graph spends most of its time there. So ``task=export`` also writes the
network alone (``<model>.net.onnx``, normalised log-mel in) and the front end's constants
(``<model>.frontend.npz``: window, mel filterbank, normalisation), and :class:`HostLogMel` turns a
waveform into the network's input with numpy's FFT. Its features equal
:class:`~core.audio.frontend.LogMelFrontend`'s in eval mode: the same centred, reflect-padded
frames, power in float64, the same filterbank (read from the file, so it is torchaudio's own, not
recomputed), log with the same floor, the training split's per-bin normalisation. Export checks the
pair (this front end, then onnxruntime) against PyTorch on real clips and times it.

Written by hand because no numpy-only library computes torchaudio's STFT + HTK mel filterbank:
librosa would add numba and scipy and defaults to Slaney mels. This file imports only numpy; copy
it next to the application:

    frontend = HostLogMel.load("student.frontend.npz")
    session = onnxruntime.InferenceSession("student.net.onnx")
    logits = session.run(None, {session.get_inputs()[0].name: frontend(wave)})[0]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class HostLogMel:
    """Mono waveform ``[L]`` (or ``[1, L]``) float at the training sample rate -> the network input
    ``[1, 1, n_mels, 1 + L // hop]`` float32 (see the module docstring)."""

    def __init__(
        self,
        window: np.ndarray,
        filterbank: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        hop: int,
        log_floor: float,
        sample_rate: int,
    ) -> None:
        self.window = np.asarray(window, dtype=np.float64)  # [n_fft], zero-padded to n_fft
        self.filterbank = np.asarray(filterbank, dtype=np.float64)  # [n_fft // 2 + 1, n_mels]
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.hop, self.log_floor, self.sample_rate = int(hop), float(log_floor), int(sample_rate)
        self.n_fft = len(self.window)

    @classmethod
    def load(cls, path: str | Path) -> HostLogMel:
        with np.load(path) as f:
            return cls(
                f["window"], f["filterbank"], f["mean"], f["std"], int(f["hop"]), float(f["log_floor"]), int(f["sr"])
            )

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float64).reshape(-1)
        x = np.pad(x, self.n_fft // 2, mode="reflect")  # centred frames, as torch.stft(center=True)
        frames = np.lib.stride_tricks.sliding_window_view(x, self.n_fft)[:: self.hop]
        spec = np.fft.rfft(frames * self.window, axis=-1)
        power = spec.real**2 + spec.imag**2
        logmel = np.log(np.maximum(power @ self.filterbank, self.log_floor)).astype(np.float32)
        return ((logmel.T - self.mean[:, None]) / self.std[:, None])[None, None].astype(np.float32)


__all__ = ["HostLogMel"]
