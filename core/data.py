"""From ``data.*`` config to cached waveforms: resolve the dataset plugin, prepare it, cache splits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import attrs
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from core.registry import Registry
from core.waveforms import WaveformSet, build_waveform_cache

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@attrs.define
class DataBundle:
    dataset: Any  # the plugin object (prepare / get_items / class_names / class_map)
    class_names: list[str]
    splits: dict[str, WaveformSet]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """The resolved class mapping, one line per class (``0: violin -> string``)."""
        if hasattr(self.dataset, "describe"):
            return self.dataset.describe()
        return "\n".join(f"{i}: {name}" for i, name in enumerate(self.class_names))

    def class_map(self) -> dict[str, Any]:
        if hasattr(self.dataset, "class_map"):
            return self.dataset.class_map()
        return {"classes": self.class_names}


class DataRootError(UserError, OSError):
    """``data.root`` cannot hold the downloads, renders and caches."""


def writable_root(root: Path) -> None:
    """Create ``root`` if needed and prove a file can be written there, before any download or render."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise DataRootError(
            f"data.root={root} is not a writable folder ({exc.strerror or exc}); downloads, renders and "
            f"caches go there. Point data.root at a folder you can write (an NSynth copy elsewhere can "
            f"stay read-only: data.options.NSynth.local_dir)") from exc


def build_dataset(cfg: DictConfig, registry: Registry) -> Any:
    """Instantiate the dataset plugin named by ``data.dataset`` with its own ``data.options`` block."""
    options = OmegaConf.to_container(cfg.data.options, resolve=True) or {}
    mine = options.get(cfg.data.dataset, {}) or {}
    return registry.build(
        "dataset", cfg.data.dataset,
        root=Path(cfg.data.root).expanduser().resolve(),
        classes=list(cfg.data.classes),
        max_total_size_mb=cfg.data.max_total_size_mb,
        max_per_class=cfg.data.max_per_class,
        seed=cfg.data.seed,
        **mine,
    )


def prepare_data(cfg: DictConfig, registry: Registry, *, prepare: bool = True,
                 progress: bool = True) -> DataBundle:
    """Prepare the dataset (download or render) and decode each split once into the waveform cache.

    Args:
        prepare: call the plugin's ``prepare()``; under DDP only rank 0 does, the others wait.
    """
    dataset = build_dataset(cfg, registry)  # checks the plugin's options; writes nothing
    if prepare:
        writable_root(Path(cfg.data.root).expanduser().resolve())
        dataset.prepare()
    class_names = list(dataset.class_names)
    clip_samples = int(round(cfg.data.clip_seconds * cfg.aug.sr))
    cache_dir = Path(cfg.data.root).expanduser().resolve() / ".cache" / "waveforms"
    splits = {}
    for split in SPLITS:
        items = dataset.get_items(split)
        splits[split] = build_waveform_cache(
            items, sr=cfg.aug.sr, clip_samples=clip_samples, cache_dir=cache_dir,
            num_workers=cfg.train.num_workers, progress=progress,
        )
        # entries the dataset listed without their file count as skipped clips too (an optional
        # plugin attribute: ``missing = {split: [paths]}``)
        splits[split].skipped += [(p, "listed in the dataset's index, but the file does not exist")
                                  for p in getattr(dataset, "missing", {}).get(split, [])]
        log.info("%s: %d clips (%d skipped)", split, len(splits[split]), len(splits[split].skipped))
    return DataBundle(dataset=dataset, class_names=class_names, splits=splits)
