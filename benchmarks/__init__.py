"""Measurements (not tests): each module is ``python -m benchmarks.<name> [hydra overrides]``
(``benchmarks.synthetic`` takes its own flags and needs neither Hydra nor a dataset).

Hydra is imported by :func:`bench_config` only, so that the package itself imports on a machine
with only torch (where ``benchmarks.synthetic`` measures the GPU path).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def bench_config(experiment: str, argv: list[str], steps: int) -> tuple[DictConfig, list[str]]:
    """The composed, validated config of ``experiment`` plus ``argv`` overrides, with epochs cut to
    ``steps`` batches and ``train.threads`` applied; returns it with the override list."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from core.config import register_schema, validate

    register_schema()
    overrides = [f"experiment={experiment}", *argv]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    with open_dict(cfg):
        cfg.train.max_steps_per_epoch = steps
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return cfg, overrides
