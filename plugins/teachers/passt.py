"""PaSST teachers (Patchout audio transformer, the ``hear21passt`` architecture) at their native 32 kHz.

``passt_base`` is ``passt_s_swa_p16_128_ap476`` (AudioSet mAP .476), built with
``hear21passt``'s ``get_model(pretrained=False)`` and loaded from the official release file, a
local file or another URL, always through ``torch.load(weights_only=True)``. ``passt_tiny`` is
the same ``PaSST`` class at 4 layers and 192 wide (``get_model`` fixes 768/12 for every arch, so it
is built from the class directly), randomly initialised unless given a checkpoint.

The front end reproduces ``AugmentMelSTFT`` in eval mode (pre-emphasis, 1024-point STFT of
800-sample Hann windows every 320 samples, 128 Kaldi mel bins up to 15 kHz, ``(log + 4.5) / 5``).
A 4 s clip gives 400 frames; PaSST's time position embeddings (99 columns for 10 s) are cropped
to the clip's patch grid, keeping the start as PaSST's own forward does for short clips.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable

import torch
import torchaudio
from hear21passt.models import passt as passt_module
from hear21passt.models.passt import PaSST, get_model
from torch import nn

from core.api import RANDOM_INIT, CheckpointError, Component, Teacher, hookimpl
from plugins.teachers.common import (
    check_common,
    check_positive,
    fit_time_positions,
    load_state_dict_file,
    pick_checkpoint,
    resolve_weights_file,
    set_trainable,
)

Tensor = torch.Tensor

PASST_BASE_ARCH = "passt_s_swa_p16_128_ap476"
#: hear21passt's release URL for ``PASST_BASE_ARCH`` (``default_cfgs`` in hear21passt/models/passt.py).
PASST_BASE_URL = (
    "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt"
)
PASST_TINY = {"embed_dim": 192, "depth": 4, "num_heads": 3}
#: the pretrained classifiers (for AudioSet's 527 classes), replaced by the teacher's own head
_CLASSIFIER_KEYS = ("head.1.", "head_dist.")


class PasstMel(nn.Module):
    """Waveform ``[B, L]`` at ``data_rate`` -> PaSST input ``[B, n_mels, frames]``.

    The same numbers as hear21passt's ``AugmentMelSTFT`` in eval mode (a test checks it), written
    again because that module calls ``torch.stft(return_complex=False)`` (deprecated, to become an
    error), rebuilds its mel matrix on every call, and in ``train()`` randomises fmin/fmax and masks
    time and frequency, which a teacher's targets must not do.
    """

    def __init__(
        self,
        data_rate: int,
        sr: int = 32000,
        n_fft: int = 1024,
        win_length: int = 800,
        hop: int = 320,
        n_mels: int = 128,
        fmin: float = 0.0,
        fmax: float = 15000.0,
    ) -> None:
        super().__init__()
        self.data_rate, self.sr, self.n_fft, self.win_length, self.hop = data_rate, sr, n_fft, win_length, hop
        self.resample = torchaudio.transforms.Resample(data_rate, sr) if data_rate != sr else nn.Identity()
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            n_mels, n_fft, float(sr), fmin, fmax, vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0
        )
        # Kaldi banks stop below Nyquist: a zero column makes them [n_mels, n_fft // 2 + 1].
        self.register_buffer("mel_basis", nn.functional.pad(banks, (0, 1)), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` at ``data_rate``: resampled length (rounded up, as
        torchaudio does), minus one sample for pre-emphasis, then a centred STFT."""
        resampled = math.ceil(num_samples * self.sr / self.data_rate)
        return 1 + (resampled - 1) // self.hop

    def forward(self, wave: Tensor) -> Tensor:
        # Power spectra span ~10 orders of magnitude: keep them out of low-precision autocast.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = self.resample(wave.float())
            x = x[:, 1:] - 0.97 * x[:, :-1]  # pre-emphasis
            spec = torch.stft(
                x,
                self.n_fft,
                hop_length=self.hop,
                win_length=self.win_length,
                window=self.window,
                center=True,
                return_complex=True,
            )
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.mel_basis, power)
            return (torch.log(mel + 1e-5) + 4.5) / 5.0  # PaSST's fixed normalisation


class PaSSTTeacher(Teacher):
    """A distilled ``PaSST`` with its front end and a new K-class head.

    ``embed`` is the mean of the CLS and distillation tokens (PaSST's own pooled feature) through
    the pretrained head's LayerNorm, so the new ``head`` is one ``nn.Linear`` in the place of the
    pretrained ``head.1`` (``head_dist`` is dropped: PaSST's forward never used it for logits).
    """

    def __init__(self, net: PaSST, frontend: PasstMel, data_rate: int, clip_samples: int, num_classes: int) -> None:
        if net.dist_token is None:
            raise CheckpointError("PaSST teachers expect a distilled PaSST (CLS + distillation token)")
        super().__init__(data_rate, clip_samples, net.embed_dim, num_classes)
        self.frontend = frontend
        self.pre_head_norm = net.head[0]
        net.head, net.head_dist = nn.Identity(), None
        self.backbone = net

    @property
    def blocks(self) -> nn.Sequential:
        return self.backbone.blocks

    def embed(self, wave: Tensor) -> Tensor:
        mel = self.frontend(self.fit_clip(wave))
        cls, dist = self.backbone.forward_features(mel.unsqueeze(1))
        return self.pre_head_norm((cls + dist) / 2)


def load_passt_weights(net: PaSST, state: dict[str, Tensor], source: str, name: str) -> None:
    """Load a PaSST state_dict into ``net``, all but the pretrained classifiers.

    The checkpoint's time position embeddings are fitted to ``net``'s patch grid; every other
    tensor must match in name and shape, else a :class:`CheckpointError` lists the differences.
    """
    width = state.get("cls_token")
    if width is not None and width.shape[-1] != net.embed_dim:
        raise CheckpointError(
            f"teacher {name}: checkpoint {source} has feature dimension {width.shape[-1]}, "
            f"but {name} is {net.embed_dim} wide; choose the teacher that matches it"
        )
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(_CLASSIFIER_KEYS)}
    state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_KEYS)}
    key = "time_new_pos_embed"
    if key in state and key in own and state[key].shape[:-1] == own[key].shape[:-1]:
        state[key] = fit_time_positions(state[key], own[key].shape[-1], crop="start")
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape (checkpoint vs model)", wrong),
            )
            if items
        ]
        raise CheckpointError(
            f"teacher {name}: checkpoint {source} does not fit the {name} architecture; " + "; ".join(problems)
        )
    net.load_state_dict(state, strict=False)  # strict on everything but the classifiers, checked above


def _base_net(num_classes: int, input_tdim: int) -> PaSST:
    # get_model prints the whole network (~9 KB) to stdout; keep run logs readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return get_model(arch=PASST_BASE_ARCH, pretrained=False, n_classes=num_classes, input_tdim=input_tdim)


def _tiny_net(num_classes: int, input_tdim: int) -> PaSST:
    return PaSST(
        img_size=(128, input_tdim),
        patch_size=16,
        stride=(10, 10),
        in_chans=1,
        num_classes=num_classes,
        distilled=True,
        **PASST_TINY,
    )


def build_passt(
    num_classes: int,
    checkpoint: str | None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    *,
    make_net: Callable[[int, int], PaSST] = _base_net,
    name: str = "passt",
    clip_seconds: float = 4.0,
) -> PaSSTTeacher:
    """Build a PaSST teacher for ``clip_seconds`` clips at ``sample_rate``.

    Args:
        num_classes: K; the head is a new ``nn.Linear(embed_dim, K)``.
        checkpoint: http(s) URL (downloaded once to ``$AUDIOKD_CACHE`` or ``~/.cache/audiokd``),
            local ``torch.save``-d state_dict, or ``None`` (or ``"none"``) for random weights.
        freeze, unfreeze_last_n: see :func:`plugins.teachers.common.set_trainable`.
        sample_rate: rate of the waveforms given to ``forward`` (resampled to 32 kHz inside).
        make_net: ``(num_classes, input_tdim) -> PaSST`` architecture.
        name: the registered name, for messages.
        clip_seconds: the clip length the position embeddings fit.
    """
    check_common(name, num_classes, sample_rate)
    opts = check_positive(name, {"clip_seconds": clip_seconds})
    # hear21passt prints tensor shapes on a forward while this module global is set (it is cleared
    # only by PaSST.forward, which the teacher does not call).
    passt_module.first_RUN = False
    # Read the weights first: a missing or refused file fails before the network is built.
    checkpoint, state = pick_checkpoint(checkpoint, None), None
    if checkpoint is not None:
        state = load_state_dict_file(resolve_weights_file(checkpoint, name), checkpoint)
    clip_samples = round(opts["clip_seconds"] * sample_rate)
    frontend = PasstMel(sample_rate)
    net = make_net(num_classes, frontend.num_frames(clip_samples))
    if state is not None:
        load_passt_weights(net, state, checkpoint, name)
    teacher = PaSSTTeacher(net, frontend, sample_rate, clip_samples, num_classes)
    teacher.source = checkpoint if checkpoint is not None else RANDOM_INIT
    set_trainable(
        teacher, teacher.blocks, [teacher.backbone.norm, teacher.pre_head_norm], freeze, unfreeze_last_n, name
    )
    return teacher


def build_passt_base(
    num_classes: int,
    checkpoint: str | None = None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
) -> PaSSTTeacher:
    """PaSST-S (12 layers, 768 wide); ``checkpoint=None`` loads :data:`PASST_BASE_URL`, ``"none"``
    builds it with random weights."""
    return build_passt(
        num_classes,
        pick_checkpoint(checkpoint, PASST_BASE_URL),
        freeze,
        unfreeze_last_n,
        sample_rate,
        make_net=_base_net,
        name="passt_base",
        clip_seconds=clip_seconds,
    )


def build_passt_tiny(
    num_classes: int,
    checkpoint: str | None = None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
) -> PaSSTTeacher:
    """A 4-layer, 192-wide PaSST: random weights unless ``checkpoint`` names a saved state_dict."""
    return build_passt(
        num_classes,
        pick_checkpoint(checkpoint, None),
        freeze,
        unfreeze_last_n,
        sample_rate,
        make_net=_tiny_net,
        name="passt_tiny",
        clip_seconds=clip_seconds,
    )


@hookimpl
def audiokd_teachers() -> list[Component]:
    return [
        Component(
            "passt_base",
            build_passt_base,
            "PaSST-S (hear21passt, AudioSet .476) at 32 kHz, own mel front end, new K-class head",
            {},
        ),
        Component(
            "passt_tiny",
            build_passt_tiny,
            "4-layer/192-wide PaSST, random init unless a checkpoint is given (offline runs, tests)",
            {},
        ),
    ]


__all__ = [
    "PASST_BASE_ARCH",
    "PASST_BASE_URL",
    "PASST_TINY",
    "PaSSTTeacher",
    "PasstMel",
    "build_passt",
    "build_passt_base",
    "build_passt_tiny",
    "load_passt_weights",
]
