"""The log-mel cache: same numbers as the front end, reused, keyed by the front-end settings, and
chosen only where no waveform augmentation has to run first."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from core.audio.frontend import LogMelFrontend
from core.data import LogMelSet, build_logmel_cache, build_waveform_cache
from core.engine.model import AudioClassifier, model_inputs


@pytest.fixture
def waves(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(10):
        path = tmp_path / f"clip{i}.wav"
        t = np.arange(16000) / 16000
        sig = 0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t) + 0.01 * rng.standard_normal(16000)
        sf.write(path, sig.astype(np.float32), 16000, subtype="PCM_16")
        items.append((path, i % 3))
    return build_waveform_cache(items, 16000, 16000, tmp_path / "cache", progress=False)


def test_cache_holds_the_front_ends_log_mel(waves):
    fe = LogMelFrontend(n_mels=64)
    mels = build_logmel_cache(waves, fe, batch_size=4)  # several batches
    x, y = mels.batch([0, 7, 3])
    ref = fe.log_mel(waves.batch([0, 7, 3])[0])
    assert x.shape == ref.shape == (3, 64, 101)
    torch.testing.assert_close(x, ref, atol=0.02, rtol=2e-3)  # float16 storage
    assert y.tolist() == [0, 1, 0]
    # the normalised, augmented network input is the same either way (eval mode: no SpecAugment)
    fe.eval()
    torch.testing.assert_close(fe.post(x), fe(waves.batch([0, 7, 3])[0]), atol=0.02, rtol=2e-3)


def test_cache_is_reused_and_keyed_by_front_end_settings(waves):
    first = build_logmel_cache(waves, LogMelFrontend(n_mels=64))
    mtime = first.npy_path.stat().st_mtime_ns
    again = build_logmel_cache(waves, LogMelFrontend(n_mels=64))
    assert again.npy_path == first.npy_path and again.npy_path.stat().st_mtime_ns == mtime
    other = build_logmel_cache(waves, LogMelFrontend(n_mels=64, hop=320))
    assert other.npy_path != first.npy_path and other.mels.shape[2] == 51
    assert not list(first.npy_path.parent.glob(".*tmp*"))  # no temp files left behind


def test_interrupted_build_leaves_no_cache(waves, monkeypatch):
    fe = LogMelFrontend(n_mels=64)
    calls = {"n": 0}
    real = fe.log_mel

    def boom(w):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(w)

    monkeypatch.setattr(fe, "log_mel", boom)
    with pytest.raises(KeyboardInterrupt):
        build_logmel_cache(waves, fe, batch_size=4)
    assert not list(waves.npy_path.parent.glob("logmel-*")) and not list(waves.npy_path.parent.glob(".*"))


@pytest.mark.parametrize(
    "cache_logmel, noise, train_kind, eval_kind",
    [
        (True, False, "logmel", "logmel"),
        (True, True, "wave", "logmel"),  # a waveform augmentation must see waveforms
        (False, False, "wave", "wave"),
    ],
)
def test_model_inputs_choice(compose, waves, cache_logmel, noise, train_kind, eval_kind):
    from core.audio.augment import WaveAugment

    cfg = compose(f"train.cache_logmel={cache_logmel}", f"aug.noise.enabled={noise}")
    model = AudioClassifier(LogMelFrontend.from_config(cfg.aug), torch.nn.Identity(), WaveAugment.from_config(cfg.aug))
    inputs = model_inputs(model, {"train": waves, "valid": waves, "test": waves}, cfg.train.cache_logmel)
    assert inputs["train"].input_kind == train_kind
    assert inputs["valid"].input_kind == inputs["test"].input_kind == eval_kind
    assert isinstance(inputs["valid"], LogMelSet) == (eval_kind == "logmel")


def test_a_log_mel_set_in_device_memory_gives_the_memmaps_batches(waves, tmp_path):
    from benchmarks.synthetic import synthetic_logmel
    from core.data import DeviceLogMel, on_device, place

    cached = synthetic_logmel(tmp_path, clips=12, n_mels=16, frames=21, classes=3)
    cpu = torch.device("cpu")
    held = on_device(cached, cpu, True)
    assert isinstance(held, DeviceLogMel) and held.mels.dtype == torch.float16 and len(held) == 12
    for idx in ([3, 0, 11], [5], list(range(12))):
        x, y = held.batch(idx)
        x0, y0 = cached.batch(idx)
        assert torch.equal(x, x0) and x.dtype == torch.float32 and torch.equal(y, y0)
    # auto (None) keeps host memory off a GPU; false never moves; waveforms never move
    assert on_device(cached, cpu, None) is cached and on_device(cached, cpu, False) is cached
    assert on_device(waves, cpu, True) is waves
    placed = place({"train": cached, "valid": waves}, cpu, True)
    assert isinstance(placed["train"], DeviceLogMel) and placed["valid"] is waves


def test_on_a_gpu_auto_moves_what_fits_and_true_refuses_what_does_not(tmp_path):
    """The budget decides before any device memory is touched (so this runs without a GPU)."""
    from benchmarks.synthetic import synthetic_logmel
    from core.data import on_device
    from core.errors import UserError

    cached = synthetic_logmel(tmp_path, clips=12, n_mels=16, frames=21, classes=3)
    need = 12 * 16 * 21 * 2 + 12 * 8
    gpu = torch.device("cuda")
    budget = [need - 1]
    assert on_device(cached, gpu, None, budget) is cached and budget == [need - 1]  # too big: stays on the host
    with pytest.raises(UserError, match=r"train.data_on_device=true: .*needs 0.00 GB.*set train.data_on_device=null"):
        on_device(cached, gpu, True, budget)
