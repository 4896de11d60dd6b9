"""Random and malformed input to the dataset readers: ``examples.json`` (the NSynth download's parser
and the on-disk layout reader behind ``local_dir``) and WAV files (``load_audio`` and the waveform
cache).

Every case ends in a result or in the project's clear error (a ``core.api.UserError``); bad audio
is skipped and counted by the cache. Never an uncaught TypeError, KeyError, IndexError ... Nothing is
written outside the root, and no entry (``../../evil``, an absolute path, a NUL byte) makes a reader
open or even stat a file outside the dataset folder. Each test draws from its own seeded
``random.Random``, so a failure names its case and reproduces.
"""

from __future__ import annotations

import copy
import io
import json
import pathlib
import random
import shutil
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from core.api import AudioError, Clip, UserError, load_audio
from core.data.waveforms import WaveformCacheError, build_waveform_cache
from core.registry import load_registry
from plugins.datasets.common.families import FAMILIES
from plugins.datasets.nsynth.dataset import NSynthDataset
from plugins.datasets.nsynth.download import download_NSynth

SR = 16000
N_SAMPLES = 400
WRONG_VALUES: tuple[Any, ...] = (
    None,
    True,
    -1,
    -(10**30),
    10**30,
    1e308,
    -0.0,
    "",
    "bass",
    [],
    [1, 2],
    {},
    {"a": 1},
    "x" * 300,
    "\x00",
    "../../evil",
)


# --- inputs -----------------------------------------------------------------------------------
def wav_bytes(seed: int, n: int = N_SAMPLES) -> bytes:
    buf = io.BytesIO()
    samples = (np.random.default_rng(seed).standard_normal(n) * 3000).astype(np.int16)
    sf.write(buf, samples, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def entry(note_str: str, family: str) -> dict[str, Any]:
    return {
        "note": 1,
        "note_str": note_str,
        "instrument": 3,
        "instrument_str": note_str.rsplit("-", 2)[0],
        "pitch": 60,
        "velocity": 100,
        "sample_rate": SR,
        "qualities": [0] * 10,
        "qualities_str": [],
        "instrument_family": FAMILIES.index(family),
        "instrument_family_str": family,
        "instrument_source": 0,
        "instrument_source_str": "acoustic",
    }


#: Notes whose WAVs exist: two families, so a requested class always has a candidate.
GOOD = {f"{family}_acoustic_00{i}-060-100": family for i, family in enumerate(("bass", "reed", "bass", "reed"))}


def evil_names(outside: Path) -> list[str]:
    """Keys that would name ``<outside>/evil.wav`` (which exists) if joined into a path."""
    return [
        "../../../outside/evil",
        "../../evil",
        "..",
        "bass_acoustic_000-060-100/../../../outside/evil",
        str(outside / "evil"),
        "bass_acoustic_000-060-100\x00",
        "a\x00/../../evil",
        "./bass",
        "a\\..\\b",
        "bass acoustic",
        "ünïcode_000-060-100",
        "x" * 5000,
        "",
    ]


def wrong_value(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(WRONG_VALUES))  # a fresh object: no entry may contain itself


def mutated_entries(rng: random.Random, outside: Path) -> dict[str, Any]:
    """Valid entries for the notes on disk, then a few random kinds of damage."""
    entries: dict[str, Any] = {n: entry(n, f) for n, f in GOOD.items()}
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(7)
        note = rng.choice(sorted(entries))
        if kind == 0:  # a field missing
            if isinstance(entries[note], dict) and entries[note]:
                del entries[note][rng.choice(sorted(entries[note]))]
        elif kind == 1:  # a field of the wrong type or out of range
            if isinstance(entries[note], dict):
                entries[note][rng.choice(sorted(entry(note, "bass")))] = wrong_value(rng)
        elif kind == 2:  # the entry itself not an object
            entries[note] = wrong_value(rng)
        elif kind == 3:  # a family that does not exist, or of another case
            if isinstance(entries[note], dict):
                entries[note]["instrument_family_str"] = rng.choice(["kazoo", "Bass", "bass ", "synth", "", "string"])
        elif kind == 4:  # a name that is a path, or not a name
            entries[rng.choice(evil_names(outside))] = entry("bass_acoustic_000-060-100", "bass")
        elif kind == 5:  # listed, but no WAV
            entries[f"bass_electronic_{rng.randrange(1000):03d}-0{rng.randint(10, 99)}-025"] = entry(
                "bass_electronic_000-060-025", "bass"
            )
        else:  # an unknown family in the name
            entries[f"kazoo_acoustic_{rng.randrange(1000):03d}-060-100"] = entry("x", "bass")
    return entries


def examples_json_cases(rng: random.Random, outside: Path, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` (label, file content) pairs: random bytes, broken JSON, wrong types, damaged entries."""
    valid = json.dumps({k: entry(k, f) for k, f in GOOD.items()}).encode()
    fixed: list[tuple[str, bytes]] = [
        ("empty file", b""),
        ("top-level array", b"[]"),
        ("top-level string", b'"x"'),
        ("top-level number", b"3"),
        ("top-level null", b"null"),
        ("top-level true", b"true"),
        ("empty object", b"{}"),
        ("huge integer", b'{"bass_acoustic_000-060-100": ' + b"9" * 5000 + b"}"),
        ("huge integer in a field", valid.replace(b'"pitch": 60', b'"pitch": ' + b"9" * 5000)),
        ("deep nesting", b"[" * 200_000 + b"]" * 200_000),
        ("NaN and Infinity", valid.replace(b'"velocity": 100', b'"velocity": NaN').replace(b"16000", b"-Infinity")),
        (
            "latin-1",
            json.dumps(
                {"bass_acoustic_000-060-100": {"instrument_family_str": "bass", "x": "caf\u00e9"}}, ensure_ascii=False
            ).encode("latin-1"),
        ),
        ("utf-16", valid.decode().encode("utf-16")),
        ("utf-8 BOM", b"\xef\xbb\xbf" + valid),
        ("NUL byte", valid[:20] + b"\x00" + valid[20:]),
        (
            "duplicate keys",
            b'{"bass_acoustic_000-060-100": 1, "bass_acoustic_000-060-100": '
            + json.dumps(entry("bass_acoustic_000-060-100", "bass")).encode()
            + b"}",
        ),
        (
            "escaped NUL in a key",
            b'{"bass_acoustic_000-060-100\\u0000": '
            + json.dumps(entry("bass_acoustic_000-060-100", "bass")).encode()
            + b"}",
        ),
        ("lone surrogate", b'{"\\ud800": {"instrument_family_str": "bass"}}'),
    ]
    yield from fixed
    for i in range(n - len(fixed)):
        kind = i % 4
        if kind == 0:
            yield f"random bytes #{i}", rng.randbytes(rng.choice([1, 7, 100, 3000]))
        elif kind == 1:
            yield f"truncated JSON #{i}", valid[: rng.randrange(1, len(valid))]
        elif kind == 2:
            text = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                text[rng.randrange(len(text))] = rng.randrange(256)
            yield f"flipped bytes #{i}", bytes(text)
        else:
            yield f"damaged entries #{i}", json.dumps(mutated_entries(rng, outside)).encode()


def wav_cases(rng: random.Random, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` (label, file content) pairs of malformed WAVs (and a few valid ones)."""
    base = wav_bytes(0)
    assert base[12:16] == b"fmt " and base[36:40] == b"data"  # the 44-byte header soundfile writes
    fields = {
        "riff size": (4, "I"),
        "fmt size": (16, "I"),
        "format tag": (20, "H"),
        "channels": (22, "H"),
        "sample rate": (24, "I"),
        "byte rate": (28, "I"),
        "block align": (32, "H"),
        "bits per sample": (34, "H"),
        "data size": (40, "I"),
    }
    special = {
        "format tag": [0, 2, 3, 6, 7, 0x11, 0x50, 0x55, 0xFFFE, 0xFFFF],  # PCM is 1
        "channels": [0, 2, 255, 0xFFFF],
        "sample rate": [0, 1, 999, 44101, 768_001, 2**31 - 1, 2**32 - 1],
        "bits per sample": [0, 1, 7, 8, 12, 24, 32, 64, 0xFFFF],
        "data size": [0, 1, 799, 801, 10**6, 2**31, 0xFFFFFFFF],  # 800 is right
        "fmt size": [0, 2, 14, 18, 40, 2**32 - 1],
        "riff size": [0, 4, 2**32 - 1],
        "block align": [0, 1, 3, 0xFFFF],
        "byte rate": [0, 1, 2**32 - 1],
    }
    yield "valid", base
    yield "valid, 8 kHz", base[:24] + struct.pack("<II", 8000, 16000) + base[32:]
    for i in range(n - 2):
        kind = i % 5
        if kind == 0:
            yield (
                f"random bytes #{i}",
                b"RIFF" + rng.randbytes(rng.choice([0, 4, 40, 500]))
                if i % 2
                else rng.randbytes(rng.choice([1, 44, 900])),
            )
        elif kind == 1:
            cut = rng.choice([rng.randrange(1, 44), rng.randrange(44, len(base))])
            yield f"truncated at byte {cut}", base[:cut]
        elif kind in (2, 3):
            data = bytearray(base)
            names = rng.sample(sorted(fields), rng.randint(1, 2))
            for name in names:
                offset, fmt = fields[name]
                limit = 2 ** (8 * struct.calcsize(fmt))
                value = rng.choice(special[name]) if rng.random() < 0.7 else rng.randrange(limit)
                struct.pack_into(f"<{fmt}", data, offset, value)
            yield f"{' and '.join(names)} changed", bytes(data)
        else:
            # A chunk of a random size inserted before the data, or bytes flipped in the header.
            if i % 2:
                size = rng.choice([0, 3, 100, 2**31, 2**32 - 1])
                yield (
                    f"extra chunk of declared size {size}",
                    base[:36] + b"junk" + struct.pack("<I", size) + rng.randbytes(8) + base[36:],
                )
            else:
                data = bytearray(base)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(44)] = rng.randrange(256)
                yield f"header bytes flipped #{i}", bytes(data)


# --- watching the file system -----------------------------------------------------------------
def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``top`` outside ``skip``, with size and mtime (a rewrite shows)."""
    return {
        str(p.relative_to(top)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in top.rglob("*")
        if p != skip and skip not in p.parents
    }


class Touched:
    """Records every path that ``Path.stat`` (behind ``is_file``/``exists``) or ``Path.open``
    (behind ``read_text``/``read_bytes``) is called on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        for name in ("stat", "open"):
            original = getattr(pathlib.Path, name)
            monkeypatch.setattr(pathlib.Path, name, self._spy(original))

    def _spy(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def spy(path: pathlib.Path, *args: Any, **kwargs: Any) -> Any:
            self.paths.append(path)
            return original(path, *args, **kwargs)

        return spy

    def outside(self, *allowed: Path) -> list[str]:
        out = []
        for path in self.paths:
            text = str(path)
            if "\x00" in text or not any(_within(path, top) for top in allowed):
                out.append(repr(text))
        return out


def _within(path: Path, top: Path) -> bool:
    # Lexically, and after resolving: ``a/../../x`` and a symlink both count as outside.
    resolved = Path(path).resolve()
    return ".." not in Path(path).parts and (resolved == top.resolve() or top.resolve() in resolved.parents)


def nsynth_builder() -> Callable[..., NSynthDataset]:
    """``build(root, classes, max_total_size_mb, **options)``: NSynth as the core builds it (declared
    defaults filled in). The registry is loaded here, so that no file-access spy sees it read the
    installed packages' metadata."""
    registry = load_registry()

    def build(root: Path, classes: list[str], max_total_size_mb: float, **options: Any) -> NSynthDataset:
        return registry.build(
            "dataset",
            "NSynth",
            options=options,
            where="data.options.NSynth",
            root=root,
            classes=classes,
            max_total_size_mb=max_total_size_mb,
            max_per_class=None,
            seed=0,
        )

    return build


def run_case(label: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or the UserError it raised; any other exception fails the test naming the case."""
    try:
        return fn()
    except UserError as exc:
        assert str(exc), label
        return exc
    except Exception as exc:  # noqa: BLE001 - what the test is looking for
        pytest.fail(f"case {label!r}: uncaught {type(exc).__name__}: {exc}"[:2000])


# --- tests ------------------------------------------------------------------------------------
def test_local_dir_reader_survives_malformed_examples_json(tmp_path, monkeypatch):
    rng = random.Random(20240611)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.wav").write_bytes(wav_bytes(99))  # what the ../ names point at
    copy = tmp_path / "copy"
    audio = copy / "nsynth-test" / "audio"
    audio.mkdir(parents=True)
    for i, note in enumerate(GOOD):
        (audio / f"{note}.wav").write_bytes(wav_bytes(i))
    root = tmp_path / "root"
    build = nsynth_builder()
    outcomes: dict[str, int] = {}
    for label, content in examples_json_cases(rng, outside, 160):
        (copy / "nsynth-test" / "examples.json").write_bytes(content)
        before = snapshot(tmp_path, root)
        classes = rng.choice([["bass"], ["bass", "reed"], [], ["violin"]])
        with monkeypatch.context() as patch:
            touched = Touched(patch)
            result = run_case(label, lambda classes=classes: _load_local(build, root, copy, classes))
        assert not touched.outside(copy, root), f"case {label!r} touched {touched.outside(copy, root)[:3]}"
        assert snapshot(tmp_path, root) == before, f"case {label!r} wrote outside root"
        if not isinstance(result, UserError):
            assert result and all(_within(p, audio) and p.is_file() for p, _, _ in result), label
            assert all(p.stem in GOOD for p, _, _ in result), label
        outcomes[type(result).__name__] = outcomes.get(type(result).__name__, 0) + 1
    # Both outcomes occur: the cases are not all rejected up front, nor all accepted.
    assert outcomes.get("list", 0) >= 20 and outcomes.get("DatasetError", 0) >= 20, outcomes


def _load_local(build: Callable[..., NSynthDataset], root: Path, copy: Path, classes: list[str]) -> list[Clip]:
    dataset = build(root, classes, 1.0, local_dir=str(copy), splits=["test"])
    dataset.prepare()
    return dataset.get_items("test")


def test_download_parser_survives_malformed_examples_json(tmp_path):
    rng = random.Random(7)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.wav").write_bytes(wav_bytes(99))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    wavs = {note: wav_bytes(i) for i, note in enumerate(GOOD)}
    build = nsynth_builder()
    outcomes: dict[str, int] = {}
    for n, (label, content) in enumerate(examples_json_cases(rng, outside, 90)):
        archive = mirror / "nsynth-test.jsonwav.tar.gz"
        archive.write_bytes(_archive(content, wavs, examples_first=bool(n % 2)))
        root = tmp_path / f"root{n}"
        before = snapshot(tmp_path, root)
        result = run_case(
            label,
            lambda root=root: download_NSynth(
                root, [], 100.0, base_url=mirror.as_uri(), splits=["test"], progress=False
            ),
        )
        if not isinstance(result, UserError):
            result = run_case(label, lambda root=root: build(root, [], 100.0, splits=["test"]).get_items("test"))
        if not isinstance(result, UserError):
            got = {p.stem for p, _, _ in result}
            assert got <= set(GOOD), label
            for path, _, _ in result:
                assert path.read_bytes() == wavs[path.stem], label
        assert snapshot(tmp_path, root) == before, f"case {label!r} wrote outside root"
        outcomes[type(result).__name__] = outcomes.get(type(result).__name__, 0) + 1
        shutil.rmtree(root)  # keeps the snapshots small
    assert outcomes.get("list", 0) >= 10 and outcomes.get("NSynthArchiveError", 0) >= 10, outcomes


def _archive(examples: bytes, wavs: dict[str, bytes], examples_first: bool) -> bytes:
    members = [(f"nsynth-test/audio/{note}.wav", data) for note, data in wavs.items()]
    members.insert(0 if examples_first else len(members), ("nsynth-test/examples.json", examples))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_load_audio_and_cache_survive_malformed_wavs(tmp_path):
    rng = random.Random(1234)
    root = tmp_path / "root"
    folder = root / "wavs"
    folder.mkdir(parents=True)
    items: list[tuple[Path, int]] = []
    errors: dict[str, str] = {}
    decoded = 0
    before = snapshot(tmp_path, root)
    for i, (label, content) in enumerate(wav_cases(rng, 220)):
        path = folder / f"case{i:03d}.wav"
        path.write_bytes(content)
        result = run_case(label, lambda path=path: load_audio(path, SR))
        if isinstance(result, UserError):
            assert isinstance(result, AudioError) and result.path == str(path) and result.reason, label
            errors[str(path)] = result.reason
        else:
            assert result.dtype == torch.float32 and result.ndim == 1 and result.numel() > 0, label
            assert torch.isfinite(result).all(), label
            # Bounded output: at most the file's bytes, as 8-bit mono at the lowest valid rate, upsampled.
            assert result.numel() <= len(content) * SR // 1000 + 16, label
            decoded += 1
        items.append((path, i % 3))
    assert decoded >= 10 and len(errors) >= 100, (decoded, len(errors))
    assert any("truncated" in r for r in errors.values()) and any("sample rate" in r for r in errors.values())

    # The same files through the cache, plus a missing one and a name no file system holds.
    items += [(folder / "missing.wav", 0), (Path(str(folder / "nul\x00.wav")), 1)]
    cache = run_case("cache", lambda: build_waveform_cache(items, SR, N_SAMPLES, root / "cache", progress=False))
    assert not isinstance(cache, WaveformCacheError), cache
    skipped = dict(cache.skipped)
    assert {p for p in errors} <= set(skipped)
    assert "does not exist" in skipped[str(folder / "missing.wav")]
    assert len(cache) + len(skipped) == len(items) and len(cache) >= 10
    assert snapshot(tmp_path, root) == before
