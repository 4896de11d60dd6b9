"""From ``data.*`` config to cached waveforms: resolve the dataset plugin, prepare it, cache splits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from core.data.waveforms import WaveformSet, build_waveform_cache
from core.errors import UserError
from core.registry import Registry
from core.registry.contracts import Clip, Dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@attrs.define
class DataBundle:
    """A prepared dataset: the plugin object, its classes and each split's cached waveforms.
    ``groups[split]`` is the group (instrument) of each kept clip, row for row with the split."""

    dataset: Dataset
    class_names: list[str]
    splits: dict[str, WaveformSet]
    groups: dict[str, np.ndarray]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """The resolved class mapping, one line per class (``0: violin -> string``)."""
        return self.dataset.describe()

    def class_map(self) -> dict[str, Any]:
        return self.dataset.class_map()


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
            f"stay read-only: data.options.NSynth.local_dir)"
        ) from exc


def build_dataset(cfg: Any, registry: Registry) -> Dataset:
    """Instantiate the dataset plugin named by ``data.dataset`` with its own option block
    ``data.options.<name>``; checks the options, writes nothing."""
    data = cfg.data
    options = (data.options or {}).get(data.dataset) or {}
    return registry.build(
        "dataset",
        data.dataset,
        options=options,
        where=f"data.options.{data.dataset}",
        root=Path(data.root).expanduser().resolve(),
        classes=list(data.classes),
        max_total_size_mb=data.max_total_size_mb,
        max_per_class=data.max_per_class,
        seed=data.seed,
    )


def prepare_data(
    cfg: Any, registry: Registry, *, dataset: Dataset | None = None, prepare: bool = True, progress: bool = True
) -> DataBundle:
    """Prepare the dataset (download or render) and decode each split once into the waveform cache,
    at ``aug.sr`` and ``data.clip_seconds`` (``train.num_workers`` decoding threads).

    Args:
        dataset: the plugin object, when the caller built it already (:func:`build_dataset`).
        prepare: call the plugin's ``prepare()``; under DDP only rank 0 does, the others wait.
    """
    data, sample_rate, num_workers = cfg.data, int(cfg.aug.sr), int(cfg.train.num_workers)
    if dataset is None:
        dataset = build_dataset(cfg, registry)  # checks the plugin's options; writes nothing
    root = Path(data.root).expanduser().resolve()
    if prepare:
        writable_root(root)
        dataset.prepare()
    clip_samples = int(round(data.clip_seconds * sample_rate))
    splits: dict[str, WaveformSet] = {}
    groups: dict[str, np.ndarray] = {}
    for split in SPLITS:
        items = [Clip(*item) for item in dataset.get_items(split)]
        waves = build_waveform_cache(
            [(c.path, c.label) for c in items],
            sr=sample_rate,
            clip_samples=clip_samples,
            cache_dir=root / ".cache" / "waveforms",
            num_workers=num_workers,
            progress=progress,
        )
        # entries the dataset listed without their file count as skipped clips too
        waves.skipped += [
            (p, "listed in the dataset's index, but the file does not exist") for p in dataset.missing.get(split, [])
        ]
        group_of = {str(Path(c.path).resolve()): str(c.group) for c in items}
        groups[split] = np.array([group_of[str(Path(p).resolve())] for p in waves.paths])
        splits[split] = waves
        log.info("%s: %d clips (%d skipped)", split, len(waves), len(waves.skipped))
    return DataBundle(dataset=dataset, class_names=list(dataset.class_names), splits=splits, groups=groups)


__all__ = ["SPLITS", "DataBundle", "DataRootError", "build_dataset", "prepare_data", "writable_root"]
