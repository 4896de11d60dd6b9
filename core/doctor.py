"""``python -m core.doctor``: is this machine ready? Versions, CUDA, audio I/O, the tracking store, and
each plugin's own needs (SoundFonts, system libraries), asked through the ``audiokd_doctor`` hook."""

from __future__ import annotations

import importlib.metadata
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchvision

from core.registry import load_registry
from core.tracking import resolve_uri


def _line(ok: bool, label: str, detail: str) -> bool:
    mark = "ok  " if ok else "FAIL"
    print(f"[{mark}] {label:<22} {detail}")
    return ok


def check_audio_io() -> tuple[bool, str]:
    """Write a WAV and read it back through torchaudio (torchcodec + FFmpeg)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doctor.wav"
        t = np.arange(16000) / 16000.0
        sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
        try:
            wave, sr = torchaudio.load(str(path))
        except Exception as exc:  # noqa: BLE001 - report whatever the backend raised
            return False, f"torchaudio.load failed: {type(exc).__name__}: {exc} (is FFmpeg installed?)"
        ok = sr == 16000 and wave.shape == (1, 16000) and abs(float(wave.abs().max()) - 0.5) < 0.01
        codec = importlib.metadata.version("torchcodec")
        return ok, f"torchaudio.load -> {tuple(wave.shape)} at {sr} Hz via torchcodec {codec}"


def main() -> int:
    ok = True
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    ok &= _line(True, "torch", torch.__version__)
    ok &= _line(True, "torchaudio", torchaudio.__version__)
    ok &= _line(True, "torchvision", torchvision.__version__)
    cuda = torch.cuda.is_available()
    detail = f"{cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    _line(True, "torch.cuda.is_available()", detail)
    audio_ok, audio_detail = check_audio_io()
    ok &= _line(audio_ok, "audio load test", audio_detail)
    registry = load_registry()
    for package, check in registry.health():
        ok &= _line(check.ok, check.label, f"{check.detail} ({package})")
    for b in registry.broken:
        ok &= _line(False, "plugin", f"{b.entry_point} from {b.package} failed to load: {b.error}")
    ok &= _line(True, "MLflow tracking URI", resolve_uri())
    print("all checks passed" if ok else "some checks FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
