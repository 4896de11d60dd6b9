"""Files the toolkit writes atomically get the mode a plain write would give them."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from core.engine import checkpoint
from core.util.files import atomic_path, atomic_write_text, temp_file, umask


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(mask):
    assert umask() == mask and umask() == mask


def test_every_atomic_write_gets_the_mode_open_would_give(mask, tmp_path):
    with open(tmp_path / "plain", "w") as fh:  # what a normal tool leaves
        fh.write("x")
    expected = mode(tmp_path / "plain")
    assert expected == 0o666 & ~mask

    atomic_write_text(tmp_path / "text.json", "{}")
    with atomic_path(tmp_path / "cache" / "logits.npy", suffix=".tmp.npy") as tmp:
        np.save(tmp, np.zeros(3))
    checkpoint.save({"w": torch.zeros(2)}, tmp_path / "teacher.pt")
    raw = temp_file(tmp_path / "download.wav")  # the NSynth download and waveform caches
    for path in (tmp_path / "text.json", tmp_path / "cache" / "logits.npy", tmp_path / "teacher.pt", raw):
        assert mode(path) == expected, path


def test_a_failed_write_leaves_neither_temp_file_nor_final_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.npy") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
