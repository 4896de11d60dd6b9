"""The configuration: typed schema (:mod:`~core.config.schema`) and value checks
(:mod:`~core.config.validate`); the values themselves live in ``configs/*.yaml``."""

from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from core.config.schema import OPEN_BLOCKS, Config, register_schema
from core.config.validate import ARMS, SPLITS, validate
from core.errors import ConfigValueError


def as_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what checkpoints store and MLflow params flatten)."""
    return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))


def merged(cfg: DictConfig, *changes: Any) -> DictConfig:
    """``cfg`` with ``changes`` (dicts or configs) merged over it: a child run's config."""
    out = OmegaConf.merge(cfg, *changes)
    assert isinstance(out, DictConfig)
    return out


__all__ = [
    "ARMS",
    "OPEN_BLOCKS",
    "SPLITS",
    "Config",
    "ConfigValueError",
    "as_dict",
    "merged",
    "register_schema",
    "validate",
]
