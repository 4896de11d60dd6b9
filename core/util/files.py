"""Atomic file writes: a reader (or a resumed run) never sees half a file under its final name.

Temp files come from :func:`tempfile.mkstemp`, which creates them readable by their owner only
(0600); :func:`temp_file` gives them the mode a plain ``open(path, "w")`` would (0666 less the
umask, 0644 or 0664 usually), so a shared cache or data root stays readable by the user's group.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's umask. ``os.umask`` has no getter: it is set and at once restored (reading
    ``/proc/self/status`` instead would be a file access outside the data root on every write)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def temp_file(final: Path, suffix: str = ".part") -> Path:
    """A new empty temp file beside ``final`` (same folder, so ``os.replace`` is an atomic rename),
    unique per process and call, with the mode a normal file write gets."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temp path beside ``final``; it is renamed onto ``final`` when the block succeeds
    and removed when it raises (a full disk or Ctrl-C included), leaving any previous file intact."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
