"""Typed config schema (attrs classes, registered with Hydra's ConfigStore as ``schema``).

The schema says which keys exist and what type each one has, so ``train.epochs=abc`` or
``train.epoch=5`` stop with Hydra's message naming the key. It holds no values: every default lives
once, in ``configs/*.yaml``, beside the comment the README's configuration reference is generated
from (a test composes the defaults and fails on any key left unset).

Plugin option blocks (``data.options.<dataset>``, ``model.student.options``,
``model.teacher.options``, ``prune.options``) are open: their keys and defaults belong to the
plugin (``core.registry.contracts.Option``), which refuses unknown keys itself, before any data
work, and fills in its defaults.

OmegaConf reads attrs classes directly: no ``from __future__ import annotations`` (it needs real
types) and no ``attrs.Factory`` (it does not call factories).
"""

from typing import Any, Optional

import attrs
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

#: option blocks whose keys the plugins own (see the module docstring)
OPEN_BLOCKS = ("data.options", "model.student.options", "model.teacher.options", "prune.options")


@attrs.define
class DataConfig:
    dataset: str = MISSING
    root: str = MISSING
    classes: list[str] = MISSING
    max_total_size_mb: float = MISSING
    max_per_class: Optional[int] = MISSING
    seed: int = MISSING
    clip_seconds: float = MISSING
    options: dict[str, Any] = MISSING


@attrs.define
class SpecAugConfig:
    enabled: bool = MISSING
    freq_mask: int = MISSING
    time_mask: int = MISSING
    n_freq_masks: int = MISSING
    n_time_masks: int = MISSING


@attrs.define
class EQConfig:
    enabled: bool = MISSING
    p: float = MISSING
    max_db: float = MISSING
    bands: int = MISSING


@attrs.define
class NoiseConfig:
    enabled: bool = MISSING
    p: float = MISSING
    snr_db_min: float = MISSING
    snr_db_max: float = MISSING


@attrs.define
class GainConfig:
    enabled: bool = MISSING
    p: float = MISSING
    min_db: float = MISSING
    max_db: float = MISSING


@attrs.define
class RIRConfig:
    enabled: bool = MISSING
    p: float = MISSING
    dir: Optional[str] = MISSING
    rt60_min: float = MISSING
    rt60_max: float = MISSING


@attrs.define
class CodecConfig:
    enabled: bool = MISSING
    p: float = MISSING
    format: str = MISSING
    bit_rate: int = MISSING


@attrs.define
class AugConfig:
    sr: int = MISSING
    n_fft: int = MISSING
    win_length: Optional[int] = MISSING
    hop: int = MISSING
    n_mels: int = MISSING
    fmin: float = MISSING
    fmax: float = MISSING
    specaug: SpecAugConfig = SpecAugConfig()
    eq: EQConfig = EQConfig()
    noise: NoiseConfig = NoiseConfig()
    gain: GainConfig = GainConfig()
    rir: RIRConfig = RIRConfig()
    codec: CodecConfig = CodecConfig()


@attrs.define
class StudentConfig:
    arch: str = MISSING
    width_mult: float = MISSING
    num_classes: Optional[int] = MISSING
    bn_momentum: float = MISSING
    options: dict[str, Any] = MISSING


@attrs.define
class TeacherConfig:
    name: Optional[str] = MISSING
    checkpoint: Optional[str] = MISSING
    freeze: bool = MISSING
    unfreeze_last_n: int = MISSING
    options: dict[str, Any] = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    ensemble: int = MISSING
    seed: int = MISSING
    cross_fit: bool = MISSING
    crop_seconds: Optional[float] = MISSING
    mixup: Optional[float] = MISSING
    cache_dir: Optional[str] = MISSING


@attrs.define
class KDConfig:
    enabled: bool = MISSING
    T: float = MISSING
    alpha: float = MISSING
    mode: str = MISSING


@attrs.define
class ModelConfig:
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    kd: KDConfig = KDConfig()


@attrs.define
class TrainConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    optimizer: str = MISSING
    scheduler: str = MISSING
    loss: str = MISSING
    amp: bool = MISSING
    amp_dtype: str = MISSING
    channels_last: bool = MISSING
    grad_clip: Optional[float] = MISSING
    num_workers: int = MISSING
    cache_logmel: bool = MISSING
    data_on_device: Optional[bool] = MISSING
    threads: Optional[int] = MISSING
    seed: int = MISSING
    device: str = MISSING
    resume: Optional[str] = MISSING
    out_dir: str = MISSING
    eval_batch_size: Optional[int] = MISSING
    max_steps_per_epoch: Optional[int] = MISSING
    crop_seconds: Optional[float] = MISSING
    mixup: Optional[float] = MISSING
    ema: Optional[float] = MISSING


@attrs.define
class TrackingConfig:
    uri: Optional[str] = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING
    log_checkpoints: bool = MISSING


@attrs.define
class CompareConfig:
    seeds: list[int] = MISSING
    arms: list[str] = MISSING
    resplit: bool = MISSING
    baseline: Optional[str] = MISSING


@attrs.define
class PruneConfig:
    """Structured pruning of a trained student, then fine-tuning (``task=prune``)."""

    method: str = MISSING
    ratio: float = MISSING
    importance: str = MISSING
    scope: str = MISSING
    round_to: Optional[int] = MISSING
    steps: int = MISSING
    ignored: list[str] = MISSING
    source: Optional[str] = MISSING
    epochs: Optional[int] = MISSING
    calib_batches: int = MISSING
    recalibrate_bn: int = MISSING
    options: dict[str, Any] = MISSING


@attrs.define
class ExportConfig:
    """ONNX export, onnxruntime parity and latency."""

    enabled: bool = MISSING
    sources: list[str] = MISSING
    teacher: bool = MISSING
    opset: int = MISSING
    parity_clips: int = MISSING
    tolerance: float = MISSING
    latency_profiler: str = MISSING
    latency_runs: int = MISSING
    latency_warmup: int = MISSING
    latency_threads: int = MISSING


@attrs.define
class ParetoConfig:
    """``task=pareto``: accuracy vs MACs/latency over student widths x prune ratios, with and without KD."""

    widths: list[float] = MISSING
    ratios: list[float] = MISSING
    kd: list[bool] = MISSING


@attrs.define
class EvaluateConfig:
    """``task=evaluate``: score a trained student on the configured dataset."""

    source: Optional[str] = MISSING
    splits: list[str] = MISSING


@attrs.define
class Config:
    name: str = MISSING
    task: str = MISSING
    profilers: list[str] = MISSING
    data: DataConfig = DataConfig()
    aug: AugConfig = AugConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    compare: CompareConfig = CompareConfig()
    prune: PruneConfig = PruneConfig()
    export: ExportConfig = ExportConfig()
    pareto: ParetoConfig = ParetoConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def register_schema() -> None:
    """Store the schema as Hydra's ``schema`` config, its plugin option blocks open."""
    schema = OmegaConf.structured(Config)
    for key in OPEN_BLOCKS:
        parent, _, leaf = key.rpartition(".")
        OmegaConf.set_struct(OmegaConf.select(schema, parent)._get_node(leaf), False)
    ConfigStore.instance().store(name="schema", node=schema)


__all__ = ["Config", "MISSING", "OPEN_BLOCKS", "register_schema"]
