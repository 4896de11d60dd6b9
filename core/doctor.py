"""``python -m core.doctor``: is this machine ready? Versions, CUDA, audio I/O, SoundFonts, MLflow."""

from __future__ import annotations

import importlib.metadata
import sys
import tempfile
from pathlib import Path

def _line(ok: bool, label: str, detail: str) -> bool:
    mark = "ok  " if ok else "FAIL"
    print(f"[{mark}] {label:<22} {detail}")
    return ok


def check_audio_io() -> tuple[bool, str]:
    """Write a WAV and read it back through torchaudio (torchcodec + FFmpeg)."""
    import numpy as np
    import soundfile as sf
    import torchaudio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doctor.wav"
        t = np.arange(16000) / 16000.0
        sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
        try:
            wave, sr = torchaudio.load(str(path))
        except Exception as exc:  # noqa: BLE001 - report whatever the backend raised
            return False, f"torchaudio.load failed: {type(exc).__name__}: {exc} (is FFmpeg installed?)"
        ok = sr == 16000 and wave.shape == (1, 16000) and abs(float(wave.abs().max()) - 0.5) < 0.01
        return ok, f"torchaudio.load -> {tuple(wave.shape)} at {sr} Hz via torchcodec {importlib.metadata.version('torchcodec')}"


def main() -> int:
    import torch
    import torchaudio
    import torchvision

    from core.soundfonts import installed_soundfonts
    from core.tracking import resolve_uri

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
    fonts = installed_soundfonts()
    names = {f.name for f in fonts}
    needed = {"FluidR3_GM.sf2", "TimGM6mb.sf2"}
    ok &= _line(needed <= names, "SoundFonts",
                ", ".join(str(f) for f in fonts) or "none found (apt-get install fluid-soundfont-gm timgm6mb-soundfont)")
    ok &= _line(True, "MLflow tracking URI", resolve_uri())
    print("all checks passed" if ok else "some checks FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
