"""AST teachers: a tiny random AST saved with ``save_pretrained`` is loaded back through
``build_ast`` (the hub is never reached), and its front end, position embeddings, head and
freezing are checked against what was saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

from core.errors import UserError
from plugins.teachers.ast import (
    AST_BASE_CHECKPOINT,
    AST_TINY,
    KaldiFbank,
    audiokd_teachers,
    build_ast,
    build_ast_base,
    build_ast_tiny,
)
from plugins.teachers.common import fit_time_positions

SR = 16000
CLIP = 4 * SR
# A saved AST keeps the pretrained layout: 1024 frames -> a 12 x 101 patch grid.
SAVED_F, SAVED_T = 12, 101
MEAN, STD = -3.25, 2.5  # not the AudioSet defaults, so the test sees where they come from


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AST (1024-frame layout, random non-zero position embeddings) and its feature
    extractor, written with ``save_pretrained``."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ast-tiny")
    model = ASTForAudioClassification(ASTConfig(**AST_TINY, max_length=1024, num_labels=7))
    with torch.no_grad():
        model.audio_spectrogram_transformer.embeddings.position_embeddings.normal_()
    model.save_pretrained(out)
    ASTFeatureExtractor(mean=MEAN, std=STD, max_length=1024).save_pretrained(out)
    return out


def waves(batch: int, samples: int = CLIP, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def trainable(teacher: torch.nn.Module) -> set[str]:
    return {name for name, p in teacher.named_parameters() if p.requires_grad}


def test_checkpoint_loads_and_gives_k_logits_from_waveforms(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir)).eval()
    with torch.no_grad():
        logits, emb = teacher(waves(3)), teacher.embed(waves(3))
    assert logits.shape == (3, 5) and emb.shape == (3, 192)
    assert teacher.feature_dim == 192
    assert isinstance(teacher.head, torch.nn.Linear) and teacher.head.out_features == 5
    assert torch.allclose(logits, teacher.head(emb), atol=1e-5)
    # the saved 7-class classifier is gone; the backbone weights are the saved ones
    saved = ASTForAudioClassification.from_pretrained(ast_dir)
    assert not any(p.shape[0] == 7 for p in teacher.parameters())
    torch.testing.assert_close(
        teacher.blocks[2].attention.q_proj.weight, saved.audio_spectrogram_transformer.layers[2].attention.q_proj.weight
    )


def test_position_embeddings_are_cropped_to_the_4s_patch_grid(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir))
    config = teacher.backbone.config
    assert config.max_length == 398  # 4 s at 16 kHz: 1 + (64000 - 400) // 160 Kaldi frames
    new_t = (398 - 16) // 10 + 1
    assert new_t == 39
    pos = teacher.backbone.embeddings.position_embeddings
    assert pos.shape == (1, 2 + SAVED_F * new_t, 192)

    saved = ASTForAudioClassification.from_pretrained(ast_dir).audio_spectrogram_transformer
    saved_pos = saved.embeddings.position_embeddings.detach()
    assert torch.equal(pos[:, :2], saved_pos[:, :2])  # CLS and distillation positions unchanged
    grid = saved_pos[0, 2:].reshape(SAVED_F, SAVED_T, -1)
    start = SAVED_T // 2 - new_t // 2  # the original AST recipe keeps the centre columns
    torch.testing.assert_close(pos[0, 2:].reshape(SAVED_F, new_t, -1), grid[:, start : start + new_t])
    assert teacher.frontend(waves(2)).shape == (2, 398, 128)


def test_longer_clips_interpolate_the_position_grid(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir), clip_seconds=12.0)
    new_t = (1198 - 16) // 10 + 1
    assert teacher.backbone.config.max_length == 1198
    assert teacher.backbone.embeddings.position_embeddings.shape == (1, 2 + SAVED_F * new_t, 192)


def test_fit_time_positions_crops_or_interpolates() -> None:
    grid = torch.arange(101.0).expand(1, 2, 3, 101)
    assert fit_time_positions(grid, 101, crop="center") is grid
    assert fit_time_positions(grid, 39, crop="center")[0, 0, 0].tolist() == list(range(31, 70))
    assert fit_time_positions(grid, 39, crop="start")[0, 0, 0].tolist() == list(range(39))
    longer = fit_time_positions(grid, 150, crop="center")
    assert longer.shape == (1, 2, 3, 150)
    assert bool((longer.diff(dim=-1) > 0).all()) and 0 <= longer.min() and longer.max() <= 100


def test_front_end_matches_the_checkpoints_feature_extractor(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir))
    assert (teacher.frontend.mean, teacher.frontend.std) == (MEAN, STD)
    extractor = ASTFeatureExtractor.from_pretrained(ast_dir)
    extractor.max_length = 398
    batch = waves(2)
    expected = extractor([w.numpy() for w in batch], sampling_rate=SR, return_tensors="pt").input_values
    torch.testing.assert_close(teacher.frontend(batch), expected, atol=1e-4, rtol=1e-5)


def test_other_data_rates_are_resampled_and_clips_fitted(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir), sample_rate=8000).eval()
    assert teacher.clip_samples == 32000
    with torch.no_grad():
        assert teacher.frontend(waves(2, 32000)).shape == (2, 398, 128)
        # a short clip is zero-padded to 4 s, a long one cropped: both give logits
        assert teacher(waves(2, 20000)).shape == (2, 5)
        assert teacher(waves(2, 50000)).shape == (2, 5)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_freeze_trains_only_the_head_and_the_last_n_blocks(ast_dir: Path, n: int) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir), freeze=True, unfreeze_last_n=n)
    expected = {"head.weight", "head.bias"}
    if n:
        expected |= {
            name
            for name, _ in teacher.named_parameters()
            if any(name.startswith(f"backbone.layers.{i}.") for i in range(4 - n, 4))
        }
        expected |= {
            "backbone.layernorm.weight",
            "backbone.layernorm.bias",
            "pre_head_norm.weight",
            "pre_head_norm.bias",
        }
    assert trainable(teacher) == expected


def test_unfrozen_teacher_trains_everything(ast_dir: Path) -> None:
    teacher = build_ast(5, checkpoint=str(ast_dir), freeze=False)
    assert trainable(teacher) == {name for name, _ in teacher.named_parameters()}


@pytest.mark.parametrize(
    "kwargs", [dict(unfreeze_last_n=5), dict(unfreeze_last_n=-1), dict(freeze=False, unfreeze_last_n=1)]
)
def test_bad_unfreeze_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(UserError, match="unfreeze_last_n"):
        build_ast_tiny(5, **kwargs)


def test_unknown_option_lists_the_valid_ones(compose) -> None:
    from core.registry import load_registry
    from core.stages.teacher import TeacherPlan

    with pytest.raises(UserError, match=r"clip_secs.*valid keys: clip_seconds"):
        TeacherPlan.from_config(
            compose("model.teacher.name=ast_tiny", "+model.teacher.options.clip_secs=4.0"), load_registry()
        )
    with pytest.raises(UserError, match="clip_seconds"):
        build_ast_tiny(5, clip_seconds=-1)


def test_missing_hub_checkpoint_offline_names_it_and_the_local_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        build_ast_base(5, checkpoint="audiokd-tests/no-such-ast")
    message = str(info.value)
    assert "audiokd-tests/no-such-ast" in message
    assert "save_pretrained" in message and "model.teacher.checkpoint=/path/to/DIR" in message


def test_missing_local_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(UserError, match=str(missing)):
        build_ast(5, checkpoint=str(missing))


def test_directory_without_feature_extractor_is_refused(tmp_path: Path) -> None:
    ASTForAudioClassification(ASTConfig(**AST_TINY)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="ASTFeatureExtractor"):
        build_ast(5, checkpoint=str(tmp_path))


def test_tiny_builds_offline_with_audioset_normalisation() -> None:
    teacher = build_ast_tiny(5).eval()
    defaults = ASTFeatureExtractor()
    assert (teacher.frontend.mean, teacher.frontend.std) == (defaults.mean, defaults.std)
    assert len(teacher.blocks) == 4 and teacher.feature_dim == 192
    with torch.no_grad():
        assert teacher(waves(2)).shape == (2, 5)


def test_base_builds_at_random_with_the_pretrained_layout() -> None:
    teacher = build_ast_base(3, checkpoint="none")
    assert len(teacher.blocks) == 12 and teacher.feature_dim == 768
    assert teacher.backbone.embeddings.position_embeddings.shape == (1, 2 + 12 * 39, 768)


def test_hook_registers_both_names() -> None:
    components = {c.name: c for c in audiokd_teachers()}
    assert set(components) == {"ast_base", "ast_tiny"}
    assert AST_BASE_CHECKPOINT in components["ast_base"].summary
    assert components["ast_tiny"].factory(4).head.out_features == 4


def test_kaldi_frame_count() -> None:
    assert KaldiFbank.num_frames(CLIP, SR) == 398
    assert KaldiFbank.num_frames(399, SR) == 0
    assert KaldiFbank.num_frames(10 * SR, SR) == 998


def test_a_hub_id_without_network_fails_at_once_with_the_local_copy_recipe(monkeypatch, tmp_path) -> None:
    """No HF_HUB_OFFLINE and a hub that does not answer (a closed port on 127.0.0.1, as a machine
    without network sees huggingface.co): the hub client's retries took 57 s here; the probe fails
    at once."""
    import socket
    import time

    from huggingface_hub import constants

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    started = time.perf_counter()
    with pytest.raises(UserError) as info:
        build_ast_base(5, checkpoint="audiokd-tests/no-such-ast")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert f"127.0.0.1:{port} cannot be reached" in message and "not in the local hub cache" in message
    assert "save_pretrained" in message and "model.teacher.checkpoint=/path/to/DIR" in message


def test_a_hub_id_in_the_local_hub_cache_loads_without_network(monkeypatch, tmp_path) -> None:
    """A model the hub client cached earlier is read from the cache, with no network call."""
    from huggingface_hub import constants

    from plugins.teachers import ast as ast_plugin

    repo = tmp_path / "hub" / "models--audiokd-tests--cached-ast"
    snapshot = repo / "snapshots" / ("0" * 40)
    ASTForAudioClassification(ASTConfig(**AST_TINY)).save_pretrained(snapshot)
    ASTFeatureExtractor().save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(ast_plugin, "_hub_reachable", lambda: pytest.fail("the cache should have answered"))
    teacher = build_ast_base(5, checkpoint="audiokd-tests/cached-ast")
    assert teacher.source == "audiokd-tests/cached-ast" and len(teacher.blocks) == AST_TINY["num_hidden_layers"]
