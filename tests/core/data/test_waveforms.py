"""Audio loading and the decoded-waveform cache, on tiny files written in tmp_path."""

import json
import logging
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader

from core.audio import io as audio_io
from core.audio.io import AudioError, fit_length, load_audio
from core.data import waveforms
from core.data.waveforms import WaveformCacheError, WaveformSet, build_waveform_cache
from core.errors import UserError

SR = 16000
CLIP = 4000  # 0.25 s keeps every file tiny


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * sr / wave.numel()


def write_int16(path: Path, samples: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, samples.astype(np.int16), sr, subtype="PCM_16")
    return path


def make_items(root: Path, n: int = 6, seed: int = 0) -> list[tuple[Path, int]]:
    """int16 mono WAVs, some shorter and some longer than CLIP, labels i % 3."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        length = CLIP // 2 if i % 2 else CLIP + 1000
        samples = rng.integers(-20000, 20000, size=length)
        items.append((write_int16(root / f"clip{i}.wav", samples), i % 3))
    return items


def expected_rows(items) -> torch.Tensor:
    rows = []
    for path, _ in items:
        data, _ = sf.read(path, dtype="int16")
        rows.append(fit_length(torch.from_numpy(data.astype(np.float32) / 32768.0), CLIP))
    return torch.stack(rows)


class DecodeCounter:
    """Wraps load_audio, counting calls; optionally raises on call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None, exc: BaseException | None = None):
        self.calls = 0
        self.fail_at, self.exc = fail_at, exc

    def __call__(self, path, target_sr):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.exc
        return load_audio(path, target_sr)


# --------------------------------------------------------------------------- load_audio


@pytest.mark.parametrize("file_sr", [44100, 32000])
def test_load_audio_resamples_stereo_to_mono(tmp_path, file_sr):
    left = tone(440.0, 0.5, file_sr, amp=0.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), file_sr, subtype="FLOAT")

    wave = load_audio(path, SR)

    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.numel() == SR // 2  # 0.5 s at 16 kHz
    assert abs(dominant_freq(wave, SR) - 440.0) <= 2.0  # resampled, not just cropped
    # Channel mean: a 0.5 sine with a silent channel becomes a 0.25 sine.
    assert abs(float(wave[800:-800].abs().max()) - 0.25) < 0.01


def test_load_audio_decodes_flac_exactly(tmp_path):
    samples = np.random.default_rng(1).integers(-30000, 30000, size=3000).astype(np.int16)
    path = tmp_path / "a.flac"
    sf.write(path, samples, SR, subtype="PCM_16")

    wave = load_audio(path, SR)

    assert torch.equal(wave, torch.from_numpy(samples.astype(np.float32) / 32768.0))


def test_load_audio_decodes_other_formats_with_ffmpeg(tmp_path):
    from torchcodec.encoders import AudioEncoder

    path = tmp_path / "a.mp3"
    AudioEncoder(torch.from_numpy(tone(1000.0, 0.5, SR)), sample_rate=SR).to_file(path, bit_rate=64000)

    wave = load_audio(path, 8000)

    assert abs(wave.numel() - 4000) <= 1200  # mp3 frames pad the end
    assert abs(dominant_freq(wave, 8000) - 1000.0) <= 20.0


def test_load_audio_errors_name_file_and_reason(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(2000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    header_only = tmp_path / "header.wav"
    write_int16(tmp_path / "full.wav", np.zeros(100))
    header_only.write_bytes((tmp_path / "full.wav").read_bytes()[:44])
    bad_mp3 = tmp_path / "bad.mp3"
    bad_mp3.write_bytes(os.urandom(2000))

    cases = {
        garbage: "cannot decode",
        empty: "empty",
        header_only: "no audio samples",
        bad_mp3: "cannot decode",
        tmp_path / "missing.wav": "does not exist",
    }
    for path, reason in cases.items():
        with pytest.raises(AudioError, match=reason) as info:
            load_audio(path, SR)
        assert str(path) in str(info.value)
        assert info.value.path == str(path)
        assert isinstance(info.value, UserError)  # reported without a traceback


def test_load_audio_refuses_a_truncated_wav(tmp_path):
    full = write_int16(tmp_path / "full.wav", np.arange(1000) - 500).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full[: len(full) - 600])  # header intact, the last 300 samples missing
    assert len(sf.read(cut)[0]) == 700  # libsndfile alone would quietly return what is there
    with pytest.raises(AudioError, match=r"truncated: the WAV header declares 2000 bytes .* holds 1400"):
        load_audio(cut, SR)
    # A streamed WAV whose header could not be patched (data size 0xFFFFFFFF) is not truncated.
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(full[:40] + struct.pack("<I", 0xFFFFFFFF) + full[44:])
    assert load_audio(streamed, SR).numel() == 1000


def wav_with_rate(path: Path, sr: int, samples: np.ndarray) -> Path:
    """A 16-bit mono WAV whose header declares ``sr`` (soundfile refuses to write absurd rates)."""
    pcm = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, (sr * 2) & 0xFFFFFFFF, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_load_audio_refuses_implausible_sample_rates(tmp_path):
    samples = np.arange(100) * 50
    for sr in (1, 999, 768_001, 2**31 - 1):
        with pytest.raises(AudioError, match=rf"implausible sample rate {sr} Hz.*valid: 1000-768000 Hz"):
            load_audio(wav_with_rate(tmp_path / f"{sr}.wav", sr, samples), SR)


def test_odd_sample_rate_resamples_quickly_and_correctly(tmp_path):
    # 44101:16000 does not reduce: an exact sinc kernel would need 2.8 GB (about 16 s for 0.5 s of audio).
    sr = 44101
    path = wav_with_rate(tmp_path / "odd.wav", sr, tone(440.0, 0.5, sr) * 32767)
    started = time.monotonic()
    wave = load_audio(path, SR)
    assert time.monotonic() - started < 2.0
    assert abs(wave.numel() - SR // 2) <= 2
    assert abs(dominant_freq(wave, SR) - 440.0) <= 2.0
    # Ratios that reduce to small terms are resampled exactly as torchaudio does.
    x = torch.from_numpy(tone(440.0, 0.1, 44100))
    assert torch.equal(audio_io.resample(x, 44100, SR), AF.resample(x, 44100, SR))


def test_fit_length_pads_and_crops():
    wave = torch.arange(1.0, 6.0)
    assert torch.equal(fit_length(wave, 3), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(fit_length(wave, 7), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]))
    assert fit_length(wave, 5) is wave
    assert fit_length(torch.ones(2, 4), 6).shape == (2, 6)


# --------------------------------------------------------------------------- cache


def test_cache_round_trips_int16_exactly(tmp_path):
    items = make_items(tmp_path / "audio")
    ws = build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=False)

    assert isinstance(ws, WaveformSet) and len(ws) == len(items)
    assert ws.waves.dtype == np.int16 and ws.waves.shape == (len(items), CLIP)
    assert ws.sr == SR and ws.clip_samples == CLIP and ws.skipped == []
    assert ws.paths == [os.path.abspath(p) for p, _ in items]
    expected = expected_rows(items)
    waves, labels = ws.batch(np.arange(len(items)))
    assert waves.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(waves, expected)
    assert labels.tolist() == [label for _, label in items]
    wave, label = ws[3]
    assert torch.equal(wave, expected[3]) and int(label) == items[3][1]
    # Unsorted tensor indices work too.
    waves, labels = ws.batch(torch.tensor([4, 0]))
    assert torch.equal(waves, expected[[4, 0]]) and labels.tolist() == [items[4][1], items[0][1]]


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    items = make_items(tmp_path / "audio")
    first = build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=False)
    stamp = first.npy_path.stat().st_mtime_ns
    expected = expected_rows(items)

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio was decoded although the cache is complete")

    monkeypatch.setattr(waveforms, "load_audio", no_decoding)
    monkeypatch.setattr(audio_io.sf, "read", no_decoding)
    second = build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=False)

    assert second.npy_path == first.npy_path and second.npy_path.stat().st_mtime_ns == stamp
    assert torch.equal(second.batch(range(len(items)))[0], expected)


def test_cache_key_covers_sr_length_labels_and_file_changes(tmp_path, monkeypatch):
    items = make_items(tmp_path / "audio")
    cache = tmp_path / "cache"
    base = build_waveform_cache(items, SR, CLIP, cache, progress=False)
    relabelled = [(p, label + 1) for p, label in items]
    assert build_waveform_cache(items, SR, CLIP + 1, cache, progress=False).npy_path != base.npy_path
    assert build_waveform_cache(items, 8000, CLIP, cache, progress=False).npy_path != base.npy_path
    assert build_waveform_cache(relabelled, SR, CLIP, cache, progress=False).npy_path != base.npy_path

    # Rewrite one file with new content and a new mtime: the cache must be rebuilt from disk.
    path = items[2][0]
    new_samples = np.full(CLIP, 1234, dtype=np.int16)
    write_int16(path, new_samples)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counter = DecodeCounter()
    monkeypatch.setattr(waveforms, "load_audio", counter)
    rebuilt = build_waveform_cache(items, SR, CLIP, cache, progress=False)

    assert rebuilt.npy_path != base.npy_path
    assert counter.calls == len(items)
    assert torch.equal(rebuilt.batch([2])[0][0], torch.full((CLIP,), 1234 / 32768.0))


def test_cache_skips_and_reports_bad_files(tmp_path, caplog):
    items = make_items(tmp_path / "audio", n=4)
    corrupt = tmp_path / "audio" / "corrupt.wav"
    corrupt.write_bytes(os.urandom(500))
    empty = tmp_path / "audio" / "empty.wav"
    empty.write_bytes(b"")
    silent = write_int16(tmp_path / "audio" / "silent.wav", np.zeros(CLIP))
    whole = write_int16(tmp_path / "audio" / "truncated.wav", np.full(CLIP, 3000)).read_bytes()
    truncated = tmp_path / "audio" / "truncated.wav"
    truncated.write_bytes(whole[: 44 + CLIP])  # a valid header, half of the data chunk
    missing = tmp_path / "audio" / "missing.wav"  # listed, never written
    mixed = [
        items[0],
        (corrupt, 7),
        items[1],
        (empty, 8),
        (silent, 9),
        items[2],
        (truncated, 10),
        (missing, 11),
        items[3],
    ]

    with caplog.at_level(logging.WARNING, logger="core.data.waveforms"):
        ws = build_waveform_cache(mixed, SR, CLIP, tmp_path / "cache", progress=False)

    assert len(ws) == 4 and ws.waves.shape == (4, CLIP)
    assert ws.labels.tolist() == [label for _, label in items]
    assert torch.equal(ws.batch(range(4))[0], expected_rows(items))
    reasons = dict(ws.skipped)
    assert set(reasons) == {str(corrupt), str(empty), str(silent), str(truncated), str(missing)}
    assert "cannot decode" in reasons[str(corrupt)]
    assert "empty" in reasons[str(empty)]
    assert "silent" in reasons[str(silent)]
    assert "truncated" in reasons[str(truncated)] and f"declares {2 * CLIP} bytes" in reasons[str(truncated)]
    assert "does not exist" in reasons[str(missing)]
    assert "skipped 5 of 9" in caplog.text
    for path in (corrupt, truncated, missing):
        assert f"{path}: {reasons[str(path)]}" in caplog.text
    # The skip list survives a reload from the manifest.
    again = build_waveform_cache(mixed, SR, CLIP, tmp_path / "cache", progress=False)
    assert again.skipped == ws.skipped


def test_cache_raises_when_everything_is_skipped(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(WaveformCacheError, match="all 1 files were skipped"):
        build_waveform_cache([(bad, 0)], SR, CLIP, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(WaveformCacheError, match="no items"):
        build_waveform_cache([], SR, CLIP, tmp_path / "cache", progress=False)


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    items = make_items(tmp_path / "audio")
    cache = tmp_path / "cache"
    monkeypatch.setattr(waveforms, "load_audio", DecodeCounter(fail_at=3, exc=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        build_waveform_cache(items, SR, CLIP, cache, progress=False)
    assert list(cache.iterdir()) == []  # no array, no manifest, no temp files

    # Dying after the array is in place but before the manifest: not complete either.
    monkeypatch.setattr(waveforms, "load_audio", load_audio)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(waveforms, "atomic_write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        build_waveform_cache(items, SR, CLIP, cache, progress=False)
    assert not list(cache.glob("*.json"))

    monkeypatch.undo()
    counter = DecodeCounter()
    monkeypatch.setattr(waveforms, "load_audio", counter)
    ws = build_waveform_cache(items, SR, CLIP, cache, progress=False)
    assert counter.calls == len(items)  # rebuilt, not trusted
    assert torch.equal(ws.batch(range(len(items)))[0], expected_rows(items))
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]


def test_threaded_build_matches_serial(tmp_path):
    items = make_items(tmp_path / "audio", n=9)
    serial = build_waveform_cache(items, SR, CLIP, tmp_path / "c0", num_workers=0, progress=False)
    threaded = build_waveform_cache(items, SR, CLIP, tmp_path / "c2", num_workers=2, progress=False)
    assert np.array_equal(np.asarray(serial.waves), np.asarray(threaded.waves))
    assert threaded.labels.tolist() == serial.labels.tolist() and threaded.paths == serial.paths


def test_progress_without_tty_logs_lines(tmp_path, caplog):
    items = make_items(tmp_path / "audio", n=3)
    with caplog.at_level(logging.INFO, logger="core.data.waveforms"):
        build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=True)
    assert "decoded 3/3 audio files" in caplog.text


def test_dataset_pickles_without_the_array_and_works_in_dataloader_workers(tmp_path):
    items = make_items(tmp_path / "audio", n=10)
    ws = build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=False)
    _ = ws.waves  # opened in the parent
    blob = pickle.dumps(ws)
    assert len(blob) < ws.waves.nbytes / 4  # the rows are not in the pickle
    clone = pickle.loads(blob)
    assert torch.equal(clone.batch([1, 2])[0], ws.batch([1, 2])[0])

    loader = DataLoader(ws, batch_size=3, shuffle=False, num_workers=2)
    waves, labels = zip(*loader)
    assert torch.equal(torch.cat(waves), expected_rows(items))
    assert torch.cat(labels).tolist() == [label for _, label in items]


def test_manifest_lists_kept_items(tmp_path):
    items = make_items(tmp_path / "audio", n=3)
    ws = build_waveform_cache(items, SR, CLIP, tmp_path / "cache", progress=False)
    manifest = json.loads(ws.npy_path.with_suffix(".json").read_text())
    assert manifest["n"] == 3 and manifest["sr"] == SR and manifest["clip_samples"] == CLIP
    assert manifest["paths"] == ws.paths and manifest["labels"] == ws.labels.tolist()
