"""PaSST teachers: a tiny ``PaSST`` state_dict (10 s layout) is served from a loopback HTTP
server and read from disk through the same ``torch.load(weights_only=True)`` path; the front end
is checked against hear21passt's own ``AugmentMelSTFT``."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from hear21passt.models.passt import PaSST
from hear21passt.models.preprocess import AugmentMelSTFT

from core.errors import UserError
from plugins.teachers.common import cache_dir
from plugins.teachers.passt import (
    PASST_BASE_URL,
    PASST_TINY,
    PasstMel,
    audiokd_teachers,
    build_passt_base,
    build_passt_tiny,
)

REPO = Path(__file__).resolve().parents[3]
SR = 16000
CLIP = 4 * SR


def waves(batch: int, samples: int = CLIP, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def tiny_state(embed_dim: int = PASST_TINY["embed_dim"]) -> dict[str, torch.Tensor]:
    """A tiny distilled PaSST in the release layout: 10 s (998 frames, 99 time positions), 527 classes."""
    torch.manual_seed(1)
    net = PaSST(
        img_size=(128, 998),
        stride=(10, 10),
        in_chans=1,
        num_classes=527,
        distilled=True,
        **{**PASST_TINY, "embed_dim": embed_dim},
    )
    return net.state_dict()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUDIOKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def served(file_server) -> tuple[str, Path, dict[str, torch.Tensor]]:
    """(URL, local path, state) of one saved tiny state_dict, served by ``file_server``."""
    state = tiny_state()
    path = file_server.root / "passt-tiny.pt"
    torch.save(state, path)
    return f"{file_server.url}/passt-tiny.pt", path, state


def test_url_and_local_file_load_the_same_weights(served, file_server, private_cache: Path) -> None:
    url, path, _ = served
    from_url = build_passt_tiny(5, checkpoint=url).eval()
    from_file = build_passt_tiny(5, checkpoint=str(path)).eval()
    from_file.head.load_state_dict(from_url.head.state_dict())  # heads are new and random
    batch = waves(2)
    with torch.no_grad():
        torch.testing.assert_close(from_url(batch), from_file(batch), rtol=0, atol=0)
    cached = list((private_cache / "teachers").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("-passt-tiny.pt")  # no temp file left behind
    build_passt_tiny(5, checkpoint=url)
    assert file_server.gets == ["/passt-tiny.pt"]  # the second build used the cache


def test_checkpoint_is_fitted_to_4s_and_the_head_replaced(served, capsys: pytest.CaptureFixture) -> None:
    _, path, state = served
    teacher = build_passt_tiny(5, checkpoint=str(path)).eval()
    net = teacher.backbone
    assert net.patch_embed.grid_size == (12, 40)  # 400 frames for 4 s at hop 320, 32 kHz
    # PaSST keeps the first time positions for short clips (its own forward crops the same way)
    torch.testing.assert_close(net.time_new_pos_embed, state["time_new_pos_embed"][..., :40])
    torch.testing.assert_close(net.blocks[3].mlp.fc2.weight, state["blocks.3.mlp.fc2.weight"])
    torch.testing.assert_close(teacher.pre_head_norm.weight, state["head.0.weight"])
    assert teacher.head.in_features == teacher.feature_dim == 192 and teacher.head.out_features == 5
    assert net.head_dist is None and not any(p.shape[0] == 527 for p in teacher.parameters())
    with torch.no_grad():
        random = build_passt_tiny(5).eval()
        assert not torch.allclose(teacher.embed(waves(2)), random.embed(waves(2)))
        assert teacher(waves(3)).shape == (3, 5) and teacher.embed(waves(3)).shape == (3, 192)
    assert capsys.readouterr().out == ""  # hear21passt's first-forward shape prints are switched off


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling would call pathlib.Path.touch(marker)
            return pathlib.Path.touch, (marker,)

    path = tmp_path / "evil.pt"
    torch.save({**tiny_state(), "extra": Payload()}, path)
    with pytest.raises(UserError, match=r"weights_only=True.*Unsupported global") as info:
        build_passt_tiny(5, checkpoint=str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"refusing checkpoint .*broken.pt"):
        build_passt_tiny(5, checkpoint=str(path))


def test_non_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(UserError, match="not a state_dict"):
        build_passt_tiny(5, checkpoint=str(path))


def test_unreachable_url_names_it_and_the_local_fix() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/passt.pt"
    with pytest.raises(UserError) as info:
        build_passt_tiny(5, checkpoint=url)
    assert url in str(info.value) and "model.teacher.checkpoint=/path/to/passt.pt" in str(info.value)


def test_missing_file_on_the_server_is_reported(file_server) -> None:
    url = f"{file_server.url}/absent.pt"
    with pytest.raises(UserError, match="404"):
        build_passt_tiny(5, checkpoint=url)
    assert not (cache_dir() / "teachers").exists() or not any((cache_dir() / "teachers").iterdir())


def test_default_checkpoint_is_the_release_url(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as info:
        build_passt_base(5)
    assert PASST_BASE_URL in str(info.value) and "model.teacher.checkpoint=" in str(info.value)


def test_missing_local_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.pt"):
        build_passt_tiny(5, checkpoint=str(tmp_path / "nope.pt"))


def test_feature_dim_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(tiny_state(embed_dim=96), path)
    with pytest.raises(UserError, match=r"feature dimension 96.*192 wide"):
        build_passt_tiny(5, checkpoint=str(path))


def test_front_end_matches_hear21passt_augment_mel_stft() -> None:
    # get_basic_model's settings; fmax=None with fmax_aug_range=2000 means 15 kHz
    reference = AugmentMelSTFT(
        n_mels=128,
        sr=32000,
        win_length=800,
        hopsize=320,
        n_fft=1024,
        freqm=48,
        timem=192,
        htk=False,
        fmin=0.0,
        fmax=None,
        norm=1,
        fmin_aug_range=10,
        fmax_aug_range=2000,
    ).eval()
    batch = waves(2, 4 * 32000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its stft(return_complex=False) and cuda.amp deprecations
        expected = reference(batch)
    ours = PasstMel(32000)
    torch.testing.assert_close(ours(batch), expected, atol=1e-5, rtol=1e-5)
    assert ours.train()(batch).equal(ours.eval()(batch))  # no augmentation in a teacher's targets
    assert PasstMel(SR)(waves(2)).shape == (2, 128, 400) and PasstMel(SR).num_frames(CLIP) == 400


@pytest.mark.parametrize("n", [0, 2])
def test_freeze_trains_only_the_head_and_the_last_n_blocks(n: int) -> None:
    teacher = build_passt_tiny(5, unfreeze_last_n=n)
    expected = {"head.weight", "head.bias"}
    if n:
        expected |= {
            name
            for name, _ in teacher.named_parameters()
            if name.startswith(("backbone.blocks.2.", "backbone.blocks.3."))
        }
        expected |= {"backbone.norm.weight", "backbone.norm.bias", "pre_head_norm.weight", "pre_head_norm.bias"}
    assert {name for name, p in teacher.named_parameters() if p.requires_grad} == expected
    with pytest.raises(UserError, match=r"\[0, 4\]"):
        build_passt_tiny(5, unfreeze_last_n=5)


def test_unknown_option_lists_the_valid_ones(compose) -> None:
    from core.registry import load_registry
    from core.stages.teacher import TeacherPlan

    with pytest.raises(UserError, match=r"arch.*valid keys: clip_seconds"):
        TeacherPlan.from_config(
            compose("model.teacher.name=passt_tiny", "+model.teacher.options.arch=passt_l"), load_registry()
        )


def test_base_builds_at_random_through_get_model(capsys: pytest.CaptureFixture) -> None:
    teacher = build_passt_base(3, checkpoint="none")
    assert len(teacher.blocks) == 12 and teacher.feature_dim == 768
    assert teacher.backbone.time_new_pos_embed.shape == (1, 768, 1, 40)
    assert capsys.readouterr().out == ""  # get_model's print of the whole network is kept out of the logs


def test_hook_registers_both_names() -> None:
    components = {c.name: c for c in audiokd_teachers()}
    assert set(components) == {"passt_base", "passt_tiny"}
    assert components["passt_tiny"].factory(4).head.out_features == 4


def test_importing_the_plugins_opens_no_connection() -> None:
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise SystemExit('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import plugins.teachers.ast, plugins.teachers.passt\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
