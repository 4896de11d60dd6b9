"""The decoded-waveform cache.

Decoding is the slow part of reading audio (``soundfile`` 0.33 ms per 4 s WAV, ``torchaudio.load``
~10 ms, measured on 2 CPU cores), and resampling costs more. :func:`build_waveform_cache` decodes
every clip once, at the model's sample rate and clip length, into an int16 memory-mapped
``.npy``; later epochs and later runs with the same files read rows from that array and never
touch an audio file again.

Cache layout under ``cache_dir`` (``<key>`` hashes every path, size, mtime and label plus the
sample rate and clip length)::

    waves-<key>.npy    int16 [N, clip_samples], samples * 32768
    waves-<key>.json   manifest: sr, clip length, kept paths and labels, skipped files

The manifest is written last and both files are renamed into place atomically, so a build that
dies half-way leaves at most temp files behind, never a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.audio.io import AudioError, PathLike, fit_length, load_audio
from core.errors import UserError
from core.util.files import atomic_write_text, temp_file
from core.util.progress import StageProgress

log = logging.getLogger(__name__)

#: Bump when the stored format or the decoding changes, so old caches stop matching.
#: 2: truncated WAVs and implausible sample rates are skipped; odd rates resample approximately.
CACHE_VERSION = 2

_INT16_SCALE = 32768.0


class WaveformCacheError(UserError, RuntimeError):
    """The cache cannot be built (no items, or every file was skipped)."""


class WaveformSet(Dataset):
    """Decoded clips backed by the cache's int16 memmap.

    Also a ``torch.utils.data.Dataset`` yielding ``(wave [L] float32, label int64)``. The memmap
    is opened lazily and dropped when pickled, so DataLoader workers (fork or spawn) each
    reopen the file instead of receiving a copy of the array.

    Attributes:
        labels: int64 ``[N]``.
        paths: the source file of each row.
        sr: sample rate of the stored clips.
        skipped: ``(path, reason)`` of each item left out while building.
        npy_path: the ``.npy`` file holding the rows.
    """

    #: keyword under which the training loop hands a batch of this set to the model
    input_kind = "wave"

    def __init__(self, npy_path: Path, labels: np.ndarray, paths: list[str], sr: int, skipped: list[tuple[str, str]]):
        self.npy_path = Path(npy_path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.paths = list(paths)
        self.sr = int(sr)
        self.skipped = list(skipped)
        self._waves: np.memmap | None = None

    @property
    def waves(self) -> np.memmap:
        """int16 ``[N, L]`` memmap (read-only), opened on first use in each process."""
        if self._waves is None:
            self._waves = np.load(self.npy_path, mmap_mode="r")
        return self._waves

    @property
    def clip_samples(self) -> int:
        return int(self.waves.shape[1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave = torch.from_numpy(self.waves[index].astype(np.float32)).mul_(1.0 / _INT16_SCALE)
        return wave, torch.tensor(self.labels[index], dtype=torch.int64)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reads several rows at once.

        Returns:
            ``(waves float32 [B, L] in [-1, 1), labels int64 [B])``.
        """
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        waves = torch.from_numpy(self.waves[idx].astype(np.float32)).mul_(1.0 / _INT16_SCALE)
        return waves, torch.from_numpy(self.labels[idx])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_waves"] = None  # never pickle the mapped array; workers reopen the file
        return state

    def __repr__(self) -> str:
        return f"WaveformSet(n={len(self)}, sr={self.sr}, skipped={len(self.skipped)}, npy={str(self.npy_path)!r})"


def cache_key(items: Sequence[tuple[PathLike, int]], sr: int, clip_samples: int) -> str:
    """Hash of every (path, size, mtime_ns, label) plus sr and clip length.

    A file that is replaced or touched changes its size or mtime and so the key; a missing file
    hashes as size/mtime -1 (it will be skipped, and reappearing changes the key).
    """
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|sr={sr}|n={clip_samples}|count={len(items)}\n".encode())
    for path, label in items:
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except (OSError, ValueError):  # ValueError: a NUL byte in the path, which cannot exist
            size, mtime = -1, -1
        h.update(f"{path}\0{size}\0{mtime}\0{int(label)}\n".encode())
    return h.hexdigest()[:24]


def build_waveform_cache(
    items: Sequence[tuple[PathLike, int]],
    sr: int,
    clip_samples: int,
    cache_dir: PathLike,
    num_workers: int = 0,
    progress: bool = True,
    skip_silent: bool = True,
) -> WaveformSet:
    """Decodes ``items`` once into an int16 memmap under ``cache_dir``, or reuses it.

    Each clip is loaded with :func:`load_audio` at ``sr``, cropped/padded with
    :func:`fit_length`, clipped to [-1, 1] and stored as ``round(x * 32768)``: exact for mono
    16-bit sources at ``sr``. Files that cannot be decoded, hold no samples, or (with
    ``skip_silent``) are digital silence after quantisation are skipped and reported in
    ``WaveformSet.skipped`` and a log warning.

    Args:
        items: ``(path, label)`` pairs.
        sr: target sample rate.
        clip_samples: length of every stored clip.
        cache_dir: folder for the cache files (created if missing).
        num_workers: decoding threads (libsndfile, FFmpeg and torch resampling release the
            GIL); 0 decodes in this thread. Worth it with spare cores and slow decoders: on
            2 cores, 16-bit WAVs decode no faster with 2 threads (0.6-1.7 ms per 4 s file).
        progress: show progress (a rich bar on a TTY, log lines otherwise).
        skip_silent: skip clips whose samples are all zero (they carry no label information).

    Raises:
        WaveformCacheError: ``items`` is empty, or every item was skipped.
    """
    if not items:
        raise WaveformCacheError("no items to cache")
    if sr <= 0 or clip_samples <= 0:
        raise ValueError(f"sr and clip_samples must be > 0, got sr={sr}, clip_samples={clip_samples}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(items, sr, clip_samples)
    npy_path = cache_dir / f"waves-{key}.npy"
    manifest_path = cache_dir / f"waves-{key}.json"

    cached = _open_cache(npy_path, manifest_path, key, clip_samples)
    if cached is not None:
        log.info("waveform cache hit: %s (%d clips)", npy_path, len(cached))
        return cached

    log.info("building waveform cache %s: %d files at %d Hz, %d samples each", npy_path, len(items), sr, clip_samples)
    kept_paths, kept_labels, skipped = _decode_all(
        items, sr, clip_samples, npy_path, num_workers, progress, skip_silent
    )
    _report_skipped(skipped, len(items))
    manifest = {
        "version": CACHE_VERSION,
        "key": key,
        "sr": int(sr),
        "clip_samples": int(clip_samples),
        "n": len(kept_paths),
        "paths": kept_paths,
        "labels": kept_labels,
        "skipped": [list(s) for s in skipped],
    }
    atomic_write_text(manifest_path, json.dumps(manifest))
    return WaveformSet(npy_path, np.asarray(kept_labels, dtype=np.int64), kept_paths, sr, skipped)


def _open_cache(npy_path: Path, manifest_path: Path, key: str, clip_samples: int) -> WaveformSet | None:
    """Returns the cached set if its manifest and array are complete and consistent."""
    if not (manifest_path.is_file() and npy_path.is_file()):
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        waves = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable waveform cache %s (%s); rebuilding", manifest_path, e)
        return None
    expected = (manifest.get("n"), clip_samples)
    if (
        manifest.get("version") != CACHE_VERSION
        or manifest.get("key") != key
        or waves.dtype != np.int16
        or waves.shape != expected
    ):
        log.warning("ignoring inconsistent waveform cache %s; rebuilding", manifest_path)
        return None
    skipped = [(str(p), str(r)) for p, r in manifest["skipped"]]
    return WaveformSet(
        npy_path, np.asarray(manifest["labels"], dtype=np.int64), manifest["paths"], manifest["sr"], skipped
    )


def _decode_clip(path: str, sr: int, clip_samples: int, skip_silent: bool) -> np.ndarray | str:
    """One clip as int16 ``[clip_samples]``, or the reason it is skipped."""
    try:
        wave = load_audio(path, sr)
    except AudioError as e:
        return e.reason
    except Exception as e:  # an unexpected decoder failure must not abort a long build
        return f"{type(e).__name__}: {e}"
    wave = fit_length(wave, clip_samples).clamp(-1.0, 1.0)
    # x * 32768 is exact for 16-bit sources; +1.0 (only reachable by clipping) saturates.
    row = torch.round(wave * _INT16_SCALE).clamp(-32768, 32767).to(torch.int16).numpy()
    if skip_silent and not row.any():
        return "silent (all samples zero)"
    return row


def _decode_all(
    items: Sequence[tuple[PathLike, int]],
    sr: int,
    clip_samples: int,
    npy_path: Path,
    num_workers: int,
    progress: bool,
    skip_silent: bool,
) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Decodes every item into a temp .npy, then renames it to ``npy_path``.

    Kept rows are written in order to the front of an ``[N, L]`` temp array; if anything was
    skipped, the kept rows are copied into a right-sized file (skips are rare, so the copy is
    the exception).
    """
    paths = [os.path.abspath(p) for p, _ in items]
    labels = [int(label) for _, label in items]
    tmp_paths: list[Path] = []
    try:
        tmp = _temp_path(npy_path)
        tmp_paths.append(tmp)
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(len(items), clip_samples))
        kept_paths: list[str] = []
        kept_labels: list[int] = []
        skipped: list[tuple[str, str]] = []
        results = _map_decode(paths, sr, clip_samples, num_workers, skip_silent)
        decoding = StageProgress("decoded", noun="audio files", enabled=progress, logger=log)
        for i, result in enumerate(decoding.track(results, len(paths))):
            if isinstance(result, str):
                skipped.append((paths[i], result))
                continue
            rows[len(kept_paths)] = result
            kept_paths.append(paths[i])
            kept_labels.append(labels[i])
        if not kept_paths:
            reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
            raise WaveformCacheError(f"all {len(items)} files were skipped, none could be cached (first: {reasons})")
        if len(kept_paths) < len(items):
            compact = _temp_path(npy_path)
            tmp_paths.append(compact)
            out = np.lib.format.open_memmap(compact, mode="w+", dtype=np.int16, shape=(len(kept_paths), clip_samples))
            out[:] = rows[: len(kept_paths)]
            out.flush()
            del out
            tmp = compact
        rows.flush()
        del rows
        os.replace(tmp, npy_path)
        return kept_paths, kept_labels, skipped
    finally:
        for p in tmp_paths:
            p.unlink(missing_ok=True)


def _map_decode(
    paths: list[str], sr: int, clip_samples: int, num_workers: int, skip_silent: bool
) -> Iterator[np.ndarray | str]:
    """Decoded rows in input order, from this thread or a thread pool."""
    if num_workers <= 0:
        for p in paths:
            yield _decode_clip(p, sr, clip_samples, skip_silent)
        return
    # Threads rather than processes: the decoders and torch release the GIL, results need no
    # pickling, and a monkeypatched or reconfigured load_audio is seen by every worker.
    # Bounded submission keeps at most a few clips per worker in memory.
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        window = 4 * num_workers
        pending: deque[Future] = deque()
        for p in paths:
            pending.append(pool.submit(_decode_clip, p, sr, clip_samples, skip_silent))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _report_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    shown = "\n".join(f"  {p}: {r}" for p, r in skipped[:10])
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    log.warning("skipped %d of %d audio files:\n%s%s", len(skipped), total, shown, more)


def _temp_path(final: Path) -> Path:
    return temp_file(final, suffix=".tmp.npy")


__all__ = ["WaveformCacheError", "WaveformSet", "build_waveform_cache", "cache_key"]
