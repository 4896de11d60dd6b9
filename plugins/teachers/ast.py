"""AST teachers (Audio Spectrogram Transformer, Hugging Face ``transformers``).

``ast_base`` loads ``MIT/ast-finetuned-audioset-10-10-0.4593`` (or any ``save_pretrained``
directory or hub id); ``ast_tiny`` is a 4-layer, 192-wide AST, randomly initialised unless given a
checkpoint, for offline runs and tests.

The teacher computes its own input from the waveform: Kaldi fbank (128 bins, 25 ms Hann
window, 10 ms shift) at the checkpoint's rate, normalised with the checkpoint feature extractor's
mean and std, exactly as ``ASTFeatureExtractor`` does. Pretrained AST expects 1024 frames (10 s);
a 4 s clip gives 398, so the time position embeddings are cropped to the clip's patch grid (the
original AST recipe for short inputs) instead of padding every clip to 1024 frames, which cost
2.6x the forward time (AST-base on 2 CPU threads: 1.0 s per 4 s clip at 400 frames, 2.6 s at 1024).
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn
from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

from core.api import RANDOM_INIT, CheckpointError, Component, ConfigValueError, Teacher, hookimpl
from plugins.teachers.common import check_common, check_positive, fit_time_positions, pick_checkpoint, set_trainable

Tensor = torch.Tensor

AST_BASE_CHECKPOINT = "MIT/ast-finetuned-audioset-10-10-0.4593"
#: ``ast_tiny``'s random-init architecture (33 ms per 4 s clip on 2 CPU threads).
AST_TINY = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768}


class KaldiFbank(nn.Module):
    """Waveform ``[B, L]`` -> AST input ``[B, max_length, num_mel_bins]``, as ``ASTFeatureExtractor``
    computes it, in torch: resample to the model's rate, Kaldi fbank per clip, zero-pad or crop
    to ``max_length`` frames, then ``(x - mean) / (2 * std)``."""

    def __init__(
        self, data_rate: int, model_rate: int, num_mel_bins: int, max_length: int, mean: float, std: float
    ) -> None:
        super().__init__()
        self.model_rate, self.num_mel_bins, self.max_length = model_rate, num_mel_bins, max_length
        self.mean, self.std = float(mean), float(std)
        self.resample = (
            torchaudio.transforms.Resample(data_rate, model_rate) if data_rate != model_rate else nn.Identity()
        )

    @staticmethod
    def num_frames(num_samples: int, sample_rate: int) -> int:
        """Frames of a clip: 25 ms windows every 10 ms, only whole windows (Kaldi ``snip_edges``)."""
        window, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
        return 1 + (num_samples - window) // shift if num_samples >= window else 0

    def forward(self, wave: Tensor) -> Tensor:
        # Log filterbank energies span orders of magnitude: keep them out of low-precision autocast.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            wave = self.resample(wave.float())
            feats = torch.stack([self._fbank(clip) for clip in wave])
            return (feats - self.mean) / (2 * self.std)

    def _fbank(self, clip: Tensor) -> Tensor:
        fbank = torchaudio.compliance.kaldi.fbank(
            clip[None], sample_frequency=self.model_rate, window_type="hanning", num_mel_bins=self.num_mel_bins
        )
        missing = self.max_length - fbank.shape[0]
        if missing > 0:
            return nn.functional.pad(fbank, (0, 0, 0, missing))
        return fbank[: self.max_length]


class ASTTeacher(Teacher):
    """An ``ASTForAudioClassification`` with its front end and a new K-class head.

    ``embed`` is AST's pooled output (mean of the CLS and distillation tokens after the final
    norm) passed through the pretrained classifier's LayerNorm, so the new ``head`` is one
    ``nn.Linear`` in the place of the pretrained one.
    """

    def __init__(
        self,
        model: ASTForAudioClassification,
        frontend: KaldiFbank,
        data_rate: int,
        clip_samples: int,
        num_classes: int,
    ) -> None:
        super().__init__(data_rate, clip_samples, model.config.hidden_size, num_classes)
        self.frontend = frontend
        self.backbone = model.audio_spectrogram_transformer
        self.pre_head_norm = model.classifier.layernorm

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    def embed(self, wave: Tensor) -> Tensor:
        pooled = self.backbone(self.frontend(self.fit_clip(wave))).pooler_output
        return self.pre_head_norm(pooled)


def fit_ast_positions(model: ASTForAudioClassification, max_length: int) -> None:
    """Fit the model's position embeddings (and ``config.max_length``) to ``max_length`` frames:
    the patch grid's time axis is cropped around its centre, or interpolated when longer."""
    config = model.config
    embeddings = model.audio_spectrogram_transformer.embeddings
    f_dim, t_dim = embeddings.get_shape(config)
    new_t = (max_length - config.patch_size) // config.time_stride + 1
    if new_t < 1:
        raise ConfigValueError(
            f"AST needs clips of at least {config.patch_size} fbank frames, got "
            f"{max_length}: raise model.teacher.options.clip_seconds"
        )
    pos = embeddings.position_embeddings.detach()  # [1, 2 + F*T, D]: CLS, distillation, patches
    tokens, grid = pos[:, :2], pos[:, 2:]
    # Patches are flattened frequency-major (f * T + t), see ASTPatchEmbeddings.
    grid = grid.reshape(1, f_dim, t_dim, -1).permute(0, 3, 1, 2)  # [1, D, F, T]
    grid = fit_time_positions(grid, new_t, crop="center")
    grid = grid.permute(0, 2, 3, 1).reshape(1, f_dim * new_t, -1)
    embeddings.position_embeddings = nn.Parameter(torch.cat([tokens, grid], dim=1).contiguous())
    config.max_length = max_length


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at its import.
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host takes a TCP connection within ``timeout`` seconds. Without network,
    ``from_pretrained`` retries every file with back-off before it fails (57 s for AST's feature
    extractor alone, measured on a machine whose DNS fails at once); this probe fails in
    milliseconds there. Behind a proxy the hub client is left to try (a direct probe would lie)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    url = _hub_endpoint()
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(cls: Any, checkpoint: str, teacher: str) -> Any:
    """``cls.from_pretrained(checkpoint)`` with failures turned into a :class:`CheckpointError`
    that says how to use a local copy. A hub id is read from the local hub cache when it is there
    (no network call); otherwise, without network, the error comes at once."""
    local = Path(checkpoint).expanduser()
    looks_local = checkpoint.startswith(("/", ".", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise CheckpointError(
            f"teacher {teacher}: checkpoint directory {checkpoint!r} does not exist. "
            f"Make one with save_pretrained (see below) or give a hub id"
        )
    try:
        if looks_local:
            return cls.from_pretrained(str(local), local_files_only=True)
        try:
            return cls.from_pretrained(checkpoint, local_files_only=True)  # already in the hub cache
        except (OSError, ValueError):
            offline = "HF_HUB_OFFLINE is set" if _hub_offline() else None
            if offline or not _hub_reachable():
                why = offline or f"{_hub_endpoint().netloc} cannot be reached"
                raise OSError(f"it is not in the local hub cache and {why}") from None
        return cls.from_pretrained(checkpoint)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"teacher {teacher}: could not load {cls.__name__} from checkpoint {checkpoint!r}: "
            f"{str(err).strip().splitlines()[0]}\nTo use a local copy, on a machine with network run:\n"
            f"  ASTForAudioClassification.from_pretrained({checkpoint!r}).save_pretrained('DIR')\n"
            f"  ASTFeatureExtractor.from_pretrained({checkpoint!r}).save_pretrained('DIR')\n"
            f"then copy DIR here and set model.teacher.checkpoint=/path/to/DIR"
        ) from err


def _hub_endpoint() -> urllib.parse.ParseResult:
    """The hub's address as the hub client reads it (``HF_ENDPOINT``, at call time)."""
    from huggingface_hub import constants

    return urllib.parse.urlparse(constants.ENDPOINT)


def build_ast(
    num_classes: int,
    checkpoint: str | None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    *,
    random_config: ASTConfig | None = None,
    name: str = "ast",
    clip_seconds: float = 4.0,
) -> ASTTeacher:
    """Build an AST teacher for ``clip_seconds`` clips at ``sample_rate``.

    Args:
        num_classes: K; the head is a new ``nn.Linear(hidden_size, K)``.
        checkpoint: hub id or ``save_pretrained`` directory holding the model and its feature
            extractor; ``None`` (or ``"none"``) builds ``random_config`` with random weights and the feature
            extractor's default (AudioSet) normalisation.
        freeze, unfreeze_last_n: see :func:`plugins.teachers.common.set_trainable`.
        sample_rate: rate of the waveforms given to ``forward``.
        random_config: architecture for ``checkpoint=None``.
        name: the registered name, for messages.
        clip_seconds: the clip length the position embeddings fit.
    """
    check_common(name, num_classes, sample_rate)
    opts = check_positive(name, {"clip_seconds": clip_seconds})
    checkpoint = pick_checkpoint(checkpoint, None)
    if checkpoint is None:
        if random_config is None:
            raise CheckpointError(f"teacher {name} has no default architecture: set model.teacher.checkpoint")
        extractor = ASTFeatureExtractor()
        model = ASTForAudioClassification(random_config)
    else:
        extractor = _from_pretrained(ASTFeatureExtractor, checkpoint, name)
        model = _from_pretrained(ASTForAudioClassification, checkpoint, name)
        if extractor.num_mel_bins != model.config.num_mel_bins:
            raise CheckpointError(
                f"teacher {name}: checkpoint {checkpoint!r} pairs a feature extractor with "
                f"{extractor.num_mel_bins} mel bins and a model expecting "
                f"{model.config.num_mel_bins}"
            )
    model_rate = int(extractor.sampling_rate)
    max_length = KaldiFbank.num_frames(round(opts["clip_seconds"] * model_rate), model_rate)
    fit_ast_positions(model, max_length)
    frontend = KaldiFbank(
        sample_rate, model_rate, model.config.num_mel_bins, max_length, mean=extractor.mean, std=extractor.std
    )
    teacher = ASTTeacher(model, frontend, sample_rate, round(opts["clip_seconds"] * sample_rate), num_classes)
    teacher.source = checkpoint if checkpoint is not None else RANDOM_INIT
    set_trainable(
        teacher, teacher.blocks, [teacher.backbone.layernorm, teacher.pre_head_norm], freeze, unfreeze_last_n, name
    )
    return teacher


def build_ast_base(
    num_classes: int,
    checkpoint: str | None = None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
) -> ASTTeacher:
    """AudioSet-finetuned AST-base (12 layers, 768 wide); ``checkpoint=None`` loads
    :data:`AST_BASE_CHECKPOINT`, ``"none"`` builds it with random weights."""
    return build_ast(
        num_classes,
        pick_checkpoint(checkpoint, AST_BASE_CHECKPOINT),
        freeze,
        unfreeze_last_n,
        sample_rate,
        random_config=ASTConfig(),
        name="ast_base",
        clip_seconds=clip_seconds,
    )


def build_ast_tiny(
    num_classes: int,
    checkpoint: str | None = None,
    freeze: bool = True,
    unfreeze_last_n: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
) -> ASTTeacher:
    """A 4-layer, 192-wide AST: random weights unless ``checkpoint`` names a saved one."""
    return build_ast(
        num_classes,
        pick_checkpoint(checkpoint, None),
        freeze,
        unfreeze_last_n,
        sample_rate,
        random_config=ASTConfig(**AST_TINY),
        name="ast_tiny",
        clip_seconds=clip_seconds,
    )


@hookimpl
def audiokd_teachers() -> list[Component]:
    return [
        Component(
            "ast_base",
            build_ast_base,
            f"AST-base from transformers ({AST_BASE_CHECKPOINT}), Kaldi fbank, new K-class head",
            {},
        ),
        Component(
            "ast_tiny",
            build_ast_tiny,
            "4-layer/192-wide AST, random init unless a checkpoint is given (offline runs, tests)",
            {},
        ),
    ]


__all__ = [
    "AST_BASE_CHECKPOINT",
    "AST_TINY",
    "ASTTeacher",
    "KaldiFbank",
    "build_ast",
    "build_ast_base",
    "build_ast_tiny",
    "fit_ast_positions",
]
