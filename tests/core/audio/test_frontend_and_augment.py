"""Log-mel front end and waveform augmentations: shapes, statistics and measured effects."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from omegaconf import OmegaConf

from core.audio.augment import AddNoise, CodecRoundTrip, RandomGain, Reverb, WaveAugment
from core.audio.frontend import LogMelFrontend
from core.errors import ConfigValueError
from tests.conftest import CONFIGS

SR = 16000
#: the ``aug`` group's defaults, from the one place they live
AUG_DEFAULTS = OmegaConf.load(CONFIGS / "aug.yaml")


def aug_config(**groups: dict):
    """The default ``aug`` config group with some of its sub-groups changed."""
    return OmegaConf.merge(AUG_DEFAULTS, groups)


def waves(batch: int = 4, seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with a little noise, different pitch and level per example."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 110.0 * 2 ** (torch.rand(batch, 1, generator=g) * 3)
    level = 0.05 + 0.4 * torch.rand(batch, 1, generator=g)
    tone = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 5))
    return level * (tone / 2 + 0.05 * torch.randn(batch, t.numel(), generator=g))


def db(power_ratio: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(power_ratio)


def power(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(dim=-1)


def best_lag(x: torch.Tensor, y: torch.Tensor, max_lag: int = 2000) -> tuple[int, float]:
    """Lag of y behind x with the highest normalised correlation."""
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        a, b = (x[: x.numel() - lag], y[lag:]) if lag >= 0 else (x[-lag:], y[: y.numel() + lag])
        scores.append(float(a @ b / (a.norm() * b.norm() + 1e-12)))
    i = int(np.argmax(scores))
    return i - max_lag, scores[i]


def masked_rows_and_cols(out: torch.Tensor):
    """Per example: bool [n_mels] of fully masked mel bins, bool [frames] of fully masked frames."""
    zero = out[:, 0] == 0
    return zero.all(dim=2), zero.all(dim=1)


def runs(mask_row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, current = [], 0
    for value in mask_row.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


# --------------------------------------------------------------------------- front end


def test_frontend_shape_for_four_seconds():
    fe = LogMelFrontend.from_config(aug_config())
    x = 0.1 * torch.randn(2, 4 * SR)
    for mode in (fe.train, fe.eval):
        mode()
        out = fe(x)
        assert out.shape == (2, 1, 128, 401) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert fe.num_frames(4 * SR) == 401


def test_frontend_matches_torchaudio_melspectrogram():
    fe = LogMelFrontend(n_fft=512, win_length=400, hop=160, n_mels=64, fmin=50.0, fmax=7000.0).eval()
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR,
        n_fft=512,
        win_length=400,
        hop_length=160,
        f_min=50.0,
        f_max=7000.0,
        n_mels=64,
        power=2.0,
        center=True,
    )
    x = waves(3)
    expected = torch.log(reference(x).clamp_min(fe.log_floor))
    torch.testing.assert_close(fe.log_mel(x), expected, rtol=1e-4, atol=1e-4)
    # Unfitted normalisation is the identity.
    assert not fe.is_fitted
    assert torch.equal(fe(x)[:, 0], fe.log_mel(x))


def test_cpu_chunking_gives_the_same_features():
    x = waves(5)
    whole = LogMelFrontend(n_mels=32, cpu_chunk_samples=10**9).log_mel(x)
    chunked = LogMelFrontend(n_mels=32, cpu_chunk_samples=2 * x.shape[1]).log_mel(x)  # 2 + 2 + 1
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_fit_normalization_standardises_training_features():
    fe = LogMelFrontend(n_mels=64)
    train = waves(16, seed=1)
    fe.fit_normalization([train[:8], train[8:]])  # statistics pooled over batches
    fe.eval()

    feats = fe(train)[:, 0]  # [B, n_mels, frames]
    mean = feats.mean(dim=(0, 2))
    std = feats.std(dim=(0, 2), unbiased=False)
    assert fe.is_fitted
    assert mean.abs().max() < 1e-3
    assert (std - 1).abs().max() < 1e-3

    one_batch = LogMelFrontend(n_mels=64).fit_normalization([(train, torch.zeros(16))])
    torch.testing.assert_close(one_batch.mean, fe.mean)
    torch.testing.assert_close(one_batch.std, fe.std)


def test_normalization_stats_come_from_the_fitted_waves():
    quiet = waves(8, seed=2) * 0.1
    loud = quiet * 10.0  # +20 dB amplitude = +2 ln(10) in log power, same spread
    fe_quiet = LogMelFrontend(n_mels=32).fit_normalization([quiet])
    fe_loud = LogMelFrontend(n_mels=32).fit_normalization([loud])

    # Only bins well above the log floor move by exactly 2 ln 10.
    audible = fe_quiet.mean > math.log(fe_quiet.log_floor) + 3
    assert audible.sum() > 10
    shift = (fe_loud.mean - fe_quiet.mean)[audible]
    torch.testing.assert_close(shift, torch.full_like(shift, 2 * math.log(10.0)), atol=1e-3, rtol=0)

    with pytest.raises(ValueError, match="no batches"):
        LogMelFrontend(n_mels=32).fit_normalization([])


def test_normalization_survives_state_dict():
    fe = LogMelFrontend(n_mels=32).fit_normalization([waves(4)])
    restored = LogMelFrontend(n_mels=32)
    restored.load_state_dict(fe.state_dict())
    assert restored.is_fitted
    x = waves(2, seed=5)
    assert torch.equal(restored.eval()(x), fe.eval()(x))


def test_specaugment_masks_only_in_training_within_max_widths():
    fe = LogMelFrontend(
        n_mels=64, freq_mask=10, time_mask=7, n_freq_masks=1, n_time_masks=1, generator=torch.Generator().manual_seed(0)
    )
    x = waves(64, seconds=0.3)

    fe.eval()
    clean = fe(x)
    assert (clean == 0).sum() == 0

    fe.train()
    out = fe(x)
    freq, time = masked_rows_and_cols(out)
    freq_widths = [sum(runs(row)) for row in freq]
    time_widths = [sum(runs(row)) for row in time]
    assert all(len(runs(row)) <= 1 for row in freq) and all(len(runs(row)) <= 1 for row in time)
    assert max(freq_widths) == 10 and max(time_widths) == 7  # reached, never exceeded
    assert len(set(freq_widths)) > 3 and len(set(time_widths)) > 3  # independent per example
    # Everything not masked is untouched.
    keep = ~(freq[:, :, None] | time[:, None, :])
    assert torch.equal(out[:, 0][keep], clean[:, 0][keep])

    # Several masks per example: at most n * max width.
    fe2 = LogMelFrontend(n_mels=64, freq_mask=5, time_mask=4, n_freq_masks=3, n_time_masks=2)
    freq, time = masked_rows_and_cols(fe2.train()(x))
    assert freq.sum(dim=1).max() <= 15 and time.sum(dim=1).max() <= 8
    assert freq.sum() > 0 and time.sum() > 0

    off = LogMelFrontend(n_mels=64, specaug=False).train()
    assert torch.equal(off(x), clean)


def test_specaugment_is_reproducible_with_a_seeded_generator():
    x = waves(8)

    def run(seed):
        return LogMelFrontend(n_mels=32, generator=torch.Generator().manual_seed(seed)).train()(x)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_random_eq_adds_a_smooth_gain_curve_per_clip_in_training_only():
    """``aug.eq``: in training each drawn clip's log power gets one curve over the mel axis, the same
    in every frame, within +-max_db; others and evaluation are untouched; reproducible by generator."""
    x = LogMelFrontend(n_mels=40).log_mel(waves(64, seconds=0.3))  # unnormalised: the difference is the curve

    def eq(p: float, seed: int = 0, **kw) -> LogMelFrontend:
        g = torch.Generator().manual_seed(seed)
        return LogMelFrontend(n_mels=40, specaug=False, eq_p=p, eq_max_db=6.0, generator=g, **kw)

    curves = (eq(1.0).train().post(x) - eq(0.0).train().post(x))[:, 0]  # [B, n_mels, frames]
    assert torch.allclose(curves, curves[:, :, :1].expand_as(curves), atol=1e-5)  # one gain per mel bin
    db = curves[:, :, 0] * 10 / math.log(10)
    assert db.abs().max() <= 6.0 + 1e-4 and db.abs().max() > 3.0  # within the bound, and uses it
    assert (db.std(dim=1) > 0.1).all()  # a shape across frequency for every clip, not a level shift
    assert len({round(v, 3) for v in db[:, 0].tolist()}) == 64  # its own curve per clip
    assert (db[:, 1:] - db[:, :-1]).abs().max() < 6.0 * 3 * math.pi / 39 + 1e-3  # smooth: bounded slope

    half = (eq(0.5).train().post(x) - eq(0.0).train().post(x))[:, 0, :, 0]
    drawn = half.abs().amax(dim=1) > 0
    assert 16 < drawn.sum() < 48  # p=0.5 of 64 clips
    assert torch.equal(eq(1.0).eval().post(x), eq(0.0).eval().post(x))  # evaluation: no EQ
    assert torch.equal(eq(1.0, seed=3).train().post(x), eq(1.0, seed=3).train().post(x))
    assert not torch.equal(eq(1.0, seed=3).train().post(x), eq(1.0, seed=4).train().post(x))

    on = LogMelFrontend.from_config(aug_config(eq={"enabled": True, "p": 0.7, "max_db": 4.0, "bands": 2}))
    assert (on.eq_p, on.eq_max_db, on.eq_bands) == (0.7, 4.0, 2)
    assert LogMelFrontend.from_config(aug_config()).eq_p == 0.0  # off by default
    with pytest.raises(ValueError, match="eq_p"):
        LogMelFrontend(eq_p=1.5)


def test_frontend_rejects_bad_settings_and_input():
    with pytest.raises(ValueError, match="fmax"):
        LogMelFrontend(sr=16000, fmax=9000.0)
    with pytest.raises(ValueError, match="win_length"):
        LogMelFrontend(n_fft=256, win_length=512)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        LogMelFrontend()(torch.zeros(2, 1, 1600))


# --------------------------------------------------------------------------- waveform augmentations


def test_all_off_is_identity_without_copy():
    aug = WaveAugment.from_config(aug_config()).train()
    x = waves(4)
    assert aug.enabled == [] and aug(x) is x


def test_eval_mode_and_p0_are_identity(tmp_path):
    on = dict(enabled=True, p=1.0)
    cfg = aug_config(noise=on, gain=on, rir=on, codec=on)
    aug = WaveAugment.from_config(cfg)
    assert aug.enabled == ["reverb", "noise", "gain", "codec"]
    x = waves(3)
    assert aug.eval()(x) is x
    assert not torch.equal(aug.train()(x), x)

    off = dict(enabled=True, p=0.0)
    cfg = aug_config(noise=off, gain=off, rir=off, codec=off)
    assert WaveAugment.from_config(cfg).train()(x) is x


def test_noise_hits_the_requested_snr():
    x = waves(32)
    y = AddNoise(p=1.0, snr_db_min=10.0, snr_db_max=20.0).train()(x, torch.Generator().manual_seed(0))
    snr = db(power(x) / power(y - x))
    assert (snr >= 10.0 - 1e-3).all() and (snr <= 20.0 + 1e-3).all()
    assert snr.max() - snr.min() > 3.0  # drawn per example, not one value


def test_noise_colours_have_their_spectra():
    x = torch.full((16, SR), 0.1)
    g = torch.Generator().manual_seed(0)

    def low_to_high_ratio(colour):
        noise = AddNoise(p=1.0, snr_db_min=0.0, snr_db_max=0.0, colors=(colour,)).train()(x, g) - x
        spectrum = torch.fft.rfft(noise).abs().square().mean(dim=0)
        return float(spectrum[1:200].mean() / spectrum[4000:8000].mean())

    assert 0.7 < low_to_high_ratio("white") < 1.4
    assert low_to_high_ratio("pink") > 20.0


def test_gain_within_range():
    x = waves(32)
    y = RandomGain(p=1.0, min_db=-6.0, max_db=3.0).train()(x, torch.Generator().manual_seed(0))
    gain_db = db(power(y) / power(x))
    assert (gain_db >= -6.0 - 1e-3).all() and (gain_db <= 3.0 + 1e-3).all()
    assert gain_db.max() - gain_db.min() > 3.0


def test_probability_selects_a_subset():
    x = waves(200, seconds=0.05)
    y = RandomGain(p=0.3, min_db=1.0, max_db=2.0).train()(x, torch.Generator().manual_seed(0))
    changed = (y != x).any(dim=1)
    assert 30 < int(changed.sum()) < 90
    assert torch.equal(y[~changed], x[~changed])


def write_ir(path, ir: np.ndarray, sr: int = SR):
    subtype = "PCM_16" if str(path).endswith(".flac") else "FLOAT"  # FLAC stores integers only
    sf.write(path, ir.astype(np.float32), sr, subtype=subtype)


def test_reverb_from_a_folder_of_impulse_responses(tmp_path):
    delayed = np.zeros(400)
    delayed[100] = 0.5
    write_ir(tmp_path / "delay100.wav", delayed)
    x = waves(4)

    y = Reverb(p=1.0, sr=SR, ir_dir=tmp_path).train()(x)

    assert y.shape == x.shape
    assert torch.allclose(y[:, :100], torch.zeros(4, 100), atol=1e-6)  # nothing before the delay
    torch.testing.assert_close(
        y[:, 100:], x[:, :-100] * (y.norm(dim=1) / x[:, :-100].norm(dim=1))[:, None], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(power(y), power(x), rtol=1e-4, atol=0)  # level kept


def test_reverb_draws_from_every_ir_in_the_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, delay in (("a.wav", 50), ("sub/b.flac", 200)):
        ir = np.zeros(300)
        ir[delay] = 1.0
        write_ir(tmp_path / name, ir)
    (tmp_path / "notes.txt").write_text("not an IR")
    reverb = Reverb(p=1.0, sr=SR, ir_dir=tmp_path).train()
    assert len(reverb.ir_files) == 2
    x = waves(32, seconds=0.1)
    y = reverb(x, torch.Generator().manual_seed(0))
    delays = [best_lag(x[i], y[i], max_lag=300)[0] for i in range(32)]
    assert set(delays) == {50, 200}


def test_reverb_folder_errors(tmp_path):
    # ConfigValueError is a UserError: the command line prints it without a traceback.
    with pytest.raises(ConfigValueError, match="does not exist"):
        Reverb(p=1.0, ir_dir=tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("no audio here")
    with pytest.raises(ConfigValueError, match=r"holds no \.wav/\.flac"):
        Reverb(p=1.0, ir_dir=tmp_path)


def test_synthetic_reverb_decays_with_rt60():
    # A short burst then silence: the reverberant tail after the burst grows with RT60.
    x = torch.zeros(8, SR)
    x[:, :400] = torch.randn(8, 400, generator=torch.Generator().manual_seed(0))

    def tail_energy(rt60):
        y = Reverb(p=1.0, sr=SR, rt60_min=rt60, rt60_max=rt60).train()(x, torch.Generator().manual_seed(1))
        assert y.shape == x.shape
        torch.testing.assert_close(power(y), power(x), rtol=1e-4, atol=0)
        return float(db(power(y[:, 2400:4000]) / power(y[:, :400])).mean())

    short, long = tail_energy(0.1), tail_energy(0.8)
    # 0.1 s RT60: 60 dB per 0.1 s, so 0.125 s after the burst the tail is ~70 dB down.
    assert short < -50.0
    assert long > short + 30.0


def test_codec_round_trip_keeps_length_and_alignment():
    x = waves(2, seconds=1.0)
    for fmt in ("mp3", "adts"):  # adts has a 1024-sample priming delay to remove
        y = CodecRoundTrip(p=1.0, sr=SR, format=fmt, bit_rate=32000).train()(x)
        assert y.shape == x.shape and not torch.equal(y, x)
        for i in range(2):
            lag, corr = best_lag(x[i], y[i], max_lag=1500)
            assert lag == 0, f"{fmt}: output lags the input by {lag} samples"
            assert corr > 0.8


def test_codec_rejects_unknown_format():
    with pytest.raises(ConfigValueError, match="unsupported codec format 'wma'.*supported: mp3, ogg"):
        CodecRoundTrip(p=1.0, format="wma")


def test_augment_is_reproducible_with_a_seeded_generator(tmp_path):
    on = dict(enabled=True, p=0.7)
    cfg = aug_config(noise=on, gain=on, rir=on)
    x = waves(8)

    def run(seed):
        return WaveAugment.from_config(cfg, generator=torch.Generator().manual_seed(seed)).train()(x)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_bad_probability_is_rejected():
    with pytest.raises(ConfigValueError, match="p=1.5"):
        WaveAugment(noise=aug_config(noise=dict(enabled=True, p=1.5)).noise)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    on = dict(enabled=True, p=1.0)
    cfg = aug_config(noise=on, gain=on, rir=on, codec=on)
    aug = WaveAugment(noise=cfg.noise, gain=cfg.gain, rir=cfg.rir, codec=cfg.codec).cuda().train()
    fe = LogMelFrontend.from_config(aug_config()).cuda()
    x = waves(4, seconds=1.0).cuda()
    fe.fit_normalization([x])
    out = fe.train()(aug(x))
    assert out.is_cuda and out.shape == (4, 1, 128, 101)


@pytest.mark.parametrize("win_length", [None, 800])
def test_the_numpy_host_front_end_computes_the_training_features(tmp_path, win_length):
    """What a deployed model is fed (core/audio/host.py, numpy only, from <model>.frontend.npz)
    equals LogMelFrontend in eval mode, normalisation included, on clips of several lengths."""
    from core.audio.host import HostLogMel
    from core.stages.export import save_host_frontend

    fe = LogMelFrontend(sr=16000, n_fft=1024, win_length=win_length, hop=160, n_mels=64, fmin=20, fmax=8000)
    g = torch.Generator().manual_seed(0)
    fe.fit_normalization([0.1 * torch.randn(4, 16000, generator=g)]).eval()
    host = HostLogMel.load(save_host_frontend(fe, tmp_path / "student.frontend.npz"))
    for samples in (16000, 12345, 64000):
        wave = 0.2 * torch.randn(1, samples, generator=g)
        ref = fe(wave).numpy()
        out = host(wave.numpy())
        assert out.shape == ref.shape == (1, 1, 64, 1 + samples // 160) and out.dtype == np.float32
        assert np.abs(out - ref).max() < 1e-4
    silent = host(np.zeros(16000, np.float32))  # the log floor, then normalised, as in training
    assert np.allclose(silent, fe(torch.zeros(1, 16000)).numpy(), atol=1e-4)
