"""Typed config schema (attrs classes, registered with Hydra's ConfigStore as ``schema``).

The YAML files under ``configs/`` fill in values; this schema decides which keys exist and what
type each one has, so ``train.epochs=abc`` or ``train.epoch=5`` stop with Hydra's message naming
the key. Plugin-specific settings live in ``options`` dicts keyed by the component name
(``data.options.GMNotes.soundfonts``) so the core never has to know a concrete plugin.

OmegaConf reads attrs defaults directly: no ``from __future__ import annotations`` (it needs real
types) and no ``attrs.Factory`` (it does not call factories); the shared default instances are
never mutated because OmegaConf copies them into its own nodes.
"""

from typing import Any, Dict, List, Optional

import attrs
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from core.errors import UserError


@attrs.define
class DataConfig:
    dataset: str = "GMNotes"
    root: str = "./data"
    # NSynth family names or common instrument names (violin -> string); empty = every family.
    classes: List[str] = []
    max_total_size_mb: float = 1000.0
    max_per_class: Optional[int] = None
    seed: int = 0
    clip_seconds: float = 4.0
    # Per-dataset settings: options.<dataset name>.<key>; only the selected dataset's block is used.
    options: Dict[str, Any] = {}


@attrs.define
class SpecAugConfig:
    enabled: bool = True
    freq_mask: int = 24  # widest frequency mask, in mel bins
    time_mask: int = 40  # widest time mask, in frames
    n_freq_masks: int = 2
    n_time_masks: int = 2


@attrs.define
class NoiseConfig:
    enabled: bool = False
    p: float = 0.5
    snr_db_min: float = 10.0
    snr_db_max: float = 30.0


@attrs.define
class GainConfig:
    enabled: bool = False
    p: float = 0.5
    min_db: float = -6.0
    max_db: float = 6.0


@attrs.define
class RIRConfig:
    enabled: bool = False
    p: float = 0.5
    dir: Optional[str] = None  # folder of impulse responses (wav/flac); None = synthetic decaying noise
    rt60_min: float = 0.2
    rt60_max: float = 1.0


@attrs.define
class CodecConfig:
    enabled: bool = False
    p: float = 0.5
    format: str = "mp3"
    bit_rate: int = 32000


@attrs.define
class AugConfig:
    sr: int = 16000
    n_fft: int = 1024
    win_length: Optional[int] = None
    hop: int = 160
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 8000.0
    specaug: SpecAugConfig = SpecAugConfig()
    noise: NoiseConfig = NoiseConfig()
    gain: GainConfig = GainConfig()
    rir: RIRConfig = RIRConfig()
    codec: CodecConfig = CodecConfig()


@attrs.define
class StudentConfig:
    arch: str = "mobilenet_v3_small"
    width_mult: float = 0.75
    num_classes: Optional[int] = None  # derived from data.classes when unset
    # torchvision's MobileNetV3 uses momentum 0.01, too slow for short runs (shared/MEASURED.md).
    bn_momentum: float = 0.1
    options: Dict[str, Any] = {}


@attrs.define
class TeacherConfig:
    name: Optional[str] = None
    checkpoint: Optional[str] = None  # hub id, URL or local path; null = the teacher's default weights
    freeze: bool = True
    unfreeze_last_n: int = 0
    options: Dict[str, Any] = {}
    # The teacher stage (core/teaching.py) trains the head (frozen backbone) or the whole teacher:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    ensemble: int = 1  # members trained from seeds seed..seed+ensemble-1; their probabilities averaged
    seed: int = 0  # fixed apart from train.seed, so every student seed distils the same teacher
    # With ensemble >= 2: member m trains without fold m of the training instruments, and each
    # training clip's KD target comes from the member that never heard its instrument.
    cross_fit: bool = False
    cache_dir: Optional[str] = None  # trained teachers and their logits; null = <data.root>/.cache/teachers


@attrs.define
class KDConfig:
    enabled: bool = False
    T: float = 3.0
    alpha: float = 0.7
    mode: str = "offline"


@attrs.define
class ModelConfig:
    student: StudentConfig = StudentConfig()
    teacher: TeacherConfig = TeacherConfig()
    kd: KDConfig = KDConfig()


@attrs.define
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    loss: str = "ce"
    amp: bool = True
    amp_dtype: str = "bf16"
    channels_last: bool = True
    grad_clip: Optional[float] = None
    # DataLoader worker processes. 0 by default: a batch is a memmap slice (~1 ms), and on 2 CPU
    # cores workers only contend with the model (make bench: ratio 0.44 with 2 workers, 0.79 without).
    num_workers: int = 0
    cache_logmel: bool = True  # cache each clip's log-mel once (used unless a waveform aug is on)
    threads: Optional[int] = None  # torch intra-op threads on CPU; None = torch's default
    seed: int = 0
    device: str = "auto"
    resume: Optional[str] = None  # path to a last.pt, or "auto" for the newest unfinished run
    out_dir: str = "outputs"
    eval_batch_size: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None


@attrs.define
class TrackingConfig:
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "NSynth-Student-Baseline"
    run_name: Optional[str] = None
    log_checkpoints: bool = True


@attrs.define
class CompareConfig:
    seeds: List[int] = [0, 1, 2]  # train.seed of each student-only / KD pair
    # arms trained per seed: student (CE), kd, pruned_kd / pruned (the kd / student run's best
    # checkpoint pruned with prune.* and fine-tuned with KD / CE for prune.epochs)
    arms: List[str] = ["student", "kd"]


@attrs.define
class PruneConfig:
    """Structured pruning of a trained student, then fine-tuning (``task=prune``, core/pruning.py)."""
    # pruner plugin: structural (torch-pruning DepGraph, channels removed) | mask (torch.nn.utils.prune:
    # zeroed channels, same MACs; kept for comparison) | any registered pruner
    method: str = "structural"
    ratio: float = 0.5  # fraction of each layer's channels removed (scope=global: of all channels)
    importance: str = "l1"  # l1 | l2 (weight magnitude) | taylor (|weight x gradient| on training batches)
    scope: str = "uniform"  # uniform: the same ratio in every layer | global: ranked across layers
    round_to: Optional[int] = 8  # kept channel counts are multiples of this (odd counts trained ~1.7x slower)
    steps: int = 1  # prune -> fine-tune rounds; the fine-tune epochs are split evenly between them
    # module names of the student network (model.net) never pruned; its output layer never is anyway
    ignored: List[str] = []
    # the trained student to prune: a checkpoint (.pt), its run folder, or an MLflow run id
    source: Optional[str] = None
    epochs: Optional[int] = None  # fine-tune epochs; null = train.epochs
    calib_batches: int = 4  # training batches whose gradients the taylor importance reads
    # after each prune round, re-estimate every BatchNorm's running statistics on this many training
    # batches (exact average, no gradients) before scoring/fine-tuning; 0 = off
    recalibrate_bn: int = 0


@attrs.define
class ExportConfig:
    """ONNX export, onnxruntime parity and latency (core/export.py)."""
    enabled: bool = True  # compare/pareto runs export and time their models at the end
    # students to export with task=export: checkpoints (.pt), run folders or MLflow run ids
    sources: List[str] = []
    teacher: bool = True  # task=export: also time the configured teacher (model.teacher.name)
    opset: int = 18
    parity_clips: int = 8  # real test clips compared between PyTorch and onnxruntime
    tolerance: float = 1e-4  # max abs logit difference allowed
    latency_profiler: str = "latency"
    latency_runs: int = 50  # timed runs per model and backend (median reported)
    latency_warmup: int = 10
    latency_threads: int = 1


@attrs.define
class ParetoConfig:
    """``task=pareto``: accuracy vs MACs/latency over student widths x prune ratios, with and without KD."""
    widths: List[float] = [0.5, 0.75, 1.0]
    ratios: List[float] = [0.3, 0.5, 0.7]
    kd: List[bool] = [False, True]


@attrs.define
class Config:
    name: str = "default"
    # what core.run does: train (one run), profile (params/MACs table), compare (student-only vs KD)
    task: str = "train"
    # profiler plugins whose params/MACs every training run logs (python -m core.list shows them)
    profilers: List[str] = ["thop", "flop_counter"]
    data: DataConfig = DataConfig()
    aug: AugConfig = AugConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    compare: CompareConfig = CompareConfig()
    prune: PruneConfig = PruneConfig()
    export: ExportConfig = ExportConfig()
    pareto: ParetoConfig = ParetoConfig()


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("train", "profile", "compare", "prune", "export", "pareto"),
    "prune.importance": ("l1", "l2", "taylor"),
    "prune.scope": ("uniform", "global"),
    "train.optimizer": ("adamw", "adam", "sgd"),
    "train.scheduler": ("cosine", "none"),
    "train.amp_dtype": ("bf16", "fp16"),
    "model.kd.mode": ("offline", "online"),
}


class ConfigValueError(UserError, ValueError):
    """A config value has the right type but is not allowed."""


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: choices and ranges."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    positive = ["train.epochs", "train.batch_size", "train.lr", "aug.sr", "aug.n_fft", "aug.hop",
                "aug.n_mels", "model.student.width_mult", "data.max_total_size_mb", "data.clip_seconds"]
    for key in positive:
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise ConfigValueError(f"{key}={value!r} must be > 0")
    if cfg.data.max_per_class is not None and cfg.data.max_per_class <= 0:
        raise ConfigValueError(f"data.max_per_class={cfg.data.max_per_class} must be > 0 or null")
    if cfg.task == "compare" and not cfg.compare.seeds:
        raise ConfigValueError("compare.seeds is empty: give at least one seed, e.g. compare.seeds=[0,1,2]")
    if cfg.task == "compare" and {"kd", "pruned_kd"} & set(cfg.compare.arms) and not cfg.model.teacher.name:
        raise ConfigValueError("task=compare trains student-only and KD runs: set model.teacher.name")
    _validate_prune(cfg)
    t = cfg.model.teacher
    if t.epochs < 0:
        raise ConfigValueError(f"model.teacher.epochs={t.epochs} must be >= 0")
    if t.lr <= 0:
        raise ConfigValueError(f"model.teacher.lr={t.lr} must be > 0")
    if t.batch_size < 2:
        raise ConfigValueError(f"model.teacher.batch_size={t.batch_size} must be >= 2 (BatchNorm)")
    if t.ensemble < 1:
        raise ConfigValueError(f"model.teacher.ensemble={t.ensemble} must be >= 1")
    if t.cross_fit and t.ensemble < 2:
        raise ConfigValueError(f"model.teacher.cross_fit=true needs model.teacher.ensemble >= 2 (one member "
                               f"per fold), got ensemble={t.ensemble}")
    if t.cross_fit and cfg.model.kd.mode == "online":
        raise ConfigValueError("model.teacher.cross_fit=true gives each training clip the logits of the member "
                               "that did not train on it, which is an offline table: use model.kd.mode=offline")
    if cfg.model.kd.enabled and not t.name:
        raise ConfigValueError("model.kd.enabled=true needs a teacher: set model.teacher.name "
                               "(python -m core.list shows the registered teachers)")
    if not 0.0 <= cfg.model.kd.alpha <= 1.0:
        raise ConfigValueError(f"model.kd.alpha={cfg.model.kd.alpha} must be within [0, 1]")
    if cfg.model.kd.T <= 0:
        raise ConfigValueError(f"model.kd.T={cfg.model.kd.T} must be > 0")
    if not cfg.aug.fmin < cfg.aug.fmax <= cfg.aug.sr / 2:
        raise ConfigValueError(
            f"need aug.fmin < aug.fmax <= aug.sr/2, got fmin={cfg.aug.fmin}, fmax={cfg.aug.fmax}, sr={cfg.aug.sr}"
        )
    for name in ("noise", "gain", "rir", "codec"):
        p = cfg.aug[name].p
        if not 0.0 <= p <= 1.0:
            raise ConfigValueError(f"aug.{name}.p={p} must be within [0, 1]")


ARMS = ("student", "kd", "pruned", "pruned_kd")


def _validate_prune(cfg: DictConfig) -> None:
    p, e = cfg.prune, cfg.export
    if not 0.0 < p.ratio < 1.0:
        raise ConfigValueError(f"prune.ratio={p.ratio} must be within (0, 1): the fraction of channels removed")
    if p.steps < 1:
        raise ConfigValueError(f"prune.steps={p.steps} must be >= 1")
    if p.round_to is not None and p.round_to < 1:
        raise ConfigValueError(f"prune.round_to={p.round_to} must be >= 1 or null")
    if p.epochs is not None and p.epochs < p.steps:
        raise ConfigValueError(f"prune.epochs={p.epochs} must be >= prune.steps={p.steps} (each prune round is "
                               f"followed by at least one fine-tune epoch)")
    if p.recalibrate_bn < 0:
        raise ConfigValueError(f"prune.recalibrate_bn={p.recalibrate_bn} must be >= 0 (0 = off)")
    if p.calib_batches < 1:
        raise ConfigValueError(f"prune.calib_batches={p.calib_batches} must be >= 1")
    if cfg.task == "prune" and not p.source:
        raise ConfigValueError("task=prune needs prune.source: a student checkpoint (.pt), its run folder "
                               "(outputs/<name>/<time>) or an MLflow run id")
    if cfg.task == "prune" and p.epochs is None and cfg.train.epochs < p.steps:
        raise ConfigValueError(f"train.epochs={cfg.train.epochs} must be >= prune.steps={p.steps}")
    for arm in cfg.compare.arms:
        if arm not in ARMS:
            raise ConfigValueError(f"compare.arms: unknown arm {arm!r}; choose from: {', '.join(ARMS)}")
    if "pruned_kd" in cfg.compare.arms and "kd" not in cfg.compare.arms:
        raise ConfigValueError("compare.arms: pruned_kd prunes the kd arm's student: add kd to compare.arms")
    if "pruned" in cfg.compare.arms and "student" not in cfg.compare.arms:
        raise ConfigValueError("compare.arms: pruned prunes the student arm's student: add student to compare.arms")
    if cfg.task == "export" and not e.sources:
        raise ConfigValueError("task=export needs export.sources: student checkpoints (.pt), run folders or "
                               "MLflow run ids, e.g. export.sources=[outputs/demo/<time>/kd-seed0]")
    for key in ("parity_clips", "latency_runs", "latency_threads", "opset"):
        if e[key] < 1:
            raise ConfigValueError(f"export.{key}={e[key]} must be >= 1")
    if e.latency_warmup < 0 or e.tolerance <= 0:
        raise ConfigValueError("export.latency_warmup must be >= 0 and export.tolerance > 0")
    for w in cfg.pareto.widths:
        if w <= 0:
            raise ConfigValueError(f"pareto.widths: {w} must be > 0")
    for r in cfg.pareto.ratios:
        if not 0.0 < r < 1.0:
            raise ConfigValueError(f"pareto.ratios: {r} must be within (0, 1)")
    if cfg.task in ("pareto",) and not cfg.model.teacher.name and any(cfg.pareto.kd):
        raise ConfigValueError("pareto.kd includes true: set model.teacher.name")


__all__ = ["Config", "MISSING", "register_schema", "validate", "ConfigValueError"]
