"""The NSynth dataset: notes downloaded under ``<root>/NSynth`` or read in place from a copy on disk,
through the shared NSynth-layout reader."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.api import atomic_write_text
from plugins.datasets.common.layout import DatasetError, NSynthLayoutDataset, split_dir
from plugins.datasets.nsynth.download import download_NSynth, fetch_order
from plugins.datasets.nsynth.options import budget_bytes, check_base_url, check_retries, check_timeout


class NSynthDataset(NSynthLayoutDataset):
    """NSynth notes of the requested families: downloaded under ``<root>/NSynth`` (partial,
    size-budgeted, resumable) or read in place from ``local_dir``.

    Args:
        root: data root (``data.root``).
        classes, max_per_class, seed: as in :class:`NSynthLayoutDataset`.
        max_total_size_mb: download budget (unused with ``local_dir``).
        base_url: where the ``nsynth-<split>.jsonwav.tar.gz`` archives are.
        local_dir: an NSynth copy on disk holding ``nsynth-train/`` etc.; nothing is downloaded.
        splits: splits to download (or to expect in ``local_dir``).
        timeout: seconds without a byte from the server before an attempt counts as failed.
        retries: reconnections per archive after a dropped or stalled download.

    The options have no defaults here: the core passes every one, defaults from
    :data:`~plugins.datasets.nsynth.options.OPTIONS` filled in.
    """

    sample_rate: int = 16000

    def __init__(
        self,
        root: str | Path,
        classes: list[str] | None,
        max_total_size_mb: float,
        max_per_class: int | None,
        seed: int,
        *,
        base_url: str,
        local_dir: str | Path | None,
        splits: Iterable[str],
        timeout: float,
        retries: int,
    ) -> None:
        self.root = Path(root).expanduser()
        self.local_dir = Path(local_dir).expanduser() if local_dir else None
        super().__init__(self.local_dir or self.root / "NSynth", list(classes or []), max_per_class, seed)
        if self.local_dir is None:
            budget_bytes(max_total_size_mb)  # fail at build time, not after a long setup
        self.max_total_size_mb = max_total_size_mb
        self.base_url = check_base_url(base_url)
        self.splits = fetch_order(splits)
        self.timeout = check_timeout(timeout)
        self.retries = check_retries(retries)

    def prepare(self) -> None:
        """Download what is missing (or check ``local_dir``), then write the class map."""
        if self.local_dir is None:
            download_NSynth(
                self.root,
                self.class_names,
                self.max_total_size_mb,
                self.base_url,
                self.splits,
                self.timeout,
                retries=self.retries,
            )
        else:
            self._check_local_dir()
        self.write_class_map()

    def write_class_map(self) -> Path:
        """The class map goes under ``<root>/NSynth``, also with ``local_dir``: a copy on disk may
        be shared or read-only, so it is never written to."""
        if self.local_dir is None:
            return super().write_class_map()
        path = self.root / "NSynth" / "class_map.json"
        atomic_write_text(path, json.dumps(self.class_map(), indent=2))
        return path

    def _check_local_dir(self) -> None:
        assert self.local_dir is not None
        missing = [s for s in self.splits if not (split_dir(self.local_dir, s) / "examples.json").is_file()]
        if missing:
            raise DatasetError(
                f"data.options.NSynth.local_dir={str(self.local_dir)!r} has no "
                f"{', '.join(f'nsynth-{s}/examples.json' for s in missing)}; it must be the folder that "
                f"holds nsynth-train/, nsynth-valid/ and nsynth-test/ as extracted from NSynth's jsonwav "
                f"archives (or set data.options.NSynth.splits to the splits it has)"
            )


def build_nsynth(
    root: str | Path,
    classes: list[str] | None,
    max_total_size_mb: float,
    max_per_class: int | None,
    seed: int,
    **options: Any,
) -> NSynthDataset:
    """Factory of the ``NSynth`` dataset; ``options`` come from ``data.options.NSynth``, every key
    of :data:`~plugins.datasets.nsynth.options.OPTIONS` (the core fills in their defaults)."""
    return NSynthDataset(root, classes, max_total_size_mb, max_per_class, seed, **options)
