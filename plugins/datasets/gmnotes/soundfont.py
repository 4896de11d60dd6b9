"""SoundFont files: where they are looked for (by the renderer, and by the doctor's report), finding
one by name, and reading the bank-0 presets a file holds without loading its samples."""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import attrs

from plugins.datasets.common.layout import DatasetError

#: the Debian/Ubuntu packages of the default SoundFonts (FluidR3_GM.sf2, TimGM6mb.sf2)
DEBIAN_PACKAGES = "fluid-soundfont-gm timgm6mb-soundfont"


class SoundFontNotFoundError(DatasetError):
    """A SoundFont named in the options is not on disk."""


def soundfont_dirs() -> list[Path]:
    """Folders searched for a SoundFont given by file name, in order."""
    dirs = [Path(p) for p in os.environ.get("SOUNDFONT_PATH", "").split(os.pathsep) if p]
    dirs += [
        Path(p)
        for p in (
            "/usr/share/sounds/sf2",
            "/usr/share/sounds/sf3",
            "/usr/share/soundfonts",
            "/usr/local/share/soundfonts",
            "/usr/local/share/sounds/sf2",
            "/opt/homebrew/share/soundfonts",
        )
    ]
    dirs.append(Path.home() / ".local/share/soundfonts")
    # pretty_midi ships TimGM6mb.sf2 inside its package; find_spec locates it without importing it.
    spec = importlib.util.find_spec("pretty_midi")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent)
    return dirs


def installed_soundfonts() -> list[Path]:
    """Every ``.sf2``/``.sf3`` file in :func:`soundfont_dirs`."""
    found: list[Path] = []
    for d in soundfont_dirs():
        if d.is_dir():
            found += sorted(f for f in d.iterdir() if f.suffix.lower() in (".sf2", ".sf3") and f.is_file())
    return found


@attrs.frozen
class SoundFontRef:
    """A SoundFont file to render, and the independent sample set its samples come from."""

    path: Path
    sample_set: str  # the file's own stem, or its ``derived_from``

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def find_soundfont(name: str | os.PathLike[str]) -> Path:
    """A SoundFont by path, or by file name (``.sf2``/``.sf3`` may be left off) in :func:`soundfont_dirs`.

    Raises:
        SoundFontNotFoundError: with the folders searched and the Debian packages of the defaults.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve()
    if given.suffix.lower() in (".sf2", ".sf3"):
        candidates = [given.name]
    else:
        candidates = [f"{given.name}.sf2", f"{given.name}.sf3"]
    searched = soundfont_dirs()
    if given.parent == Path("."):  # a bare name: search the usual folders
        for folder in searched:
            for candidate in candidates:
                if (folder / candidate).is_file():
                    return (folder / candidate).resolve()
    else:
        searched = [given.parent]
    raise SoundFontNotFoundError(
        f"SoundFont {str(name)!r} not found. Looked for {' or '.join(candidates)} in: "
        f"{', '.join(str(d) for d in searched)}. The default SoundFonts come with the Debian/Ubuntu "
        f"packages: sudo apt-get install {DEBIAN_PACKAGES}; or list SoundFont paths in "
        f"data.options.GMNotes.soundfonts (folders in $SOUNDFONT_PATH are searched first)"
    )


@attrs.frozen
class Preset:
    """A bank-0 preset as read from the SoundFont's preset data (no audio is read)."""

    name: str
    key_low: int
    key_high: int
    samples: frozenset[int]


_GEN_INSTRUMENT, _GEN_KEY_RANGE, _GEN_SAMPLE_ID = 41, 43, 53


def read_presets(path: Path) -> dict[int, Preset]:
    """Bank-0 presets of an SF2/SF3 file: name, playable key range and the samples each uses.

    Only the ``pdta`` chunk is read (the sample data is skipped with a seek), so this takes a few
    milliseconds even for FluidR3_GM's 148 MB.
    """
    chunks = _read_pdta(path)
    try:
        phdr = list(struct.iter_unpack("<20sHHHIII", chunks["phdr"]))
        pbag = list(struct.iter_unpack("<HH", chunks["pbag"]))
        pgen = list(struct.iter_unpack("<HBB", chunks["pgen"]))
        inst = list(struct.iter_unpack("<20sH", chunks["inst"]))
        ibag = list(struct.iter_unpack("<HH", chunks["ibag"]))
        igen = list(struct.iter_unpack("<HBB", chunks["igen"]))
    except (KeyError, struct.error) as exc:
        raise DatasetError(f"{path}: malformed SoundFont preset data ({exc})") from exc

    def zones(
        bags: list[tuple[int, int]], gens: list[tuple[int, int, int]], first: int, end: int
    ) -> list[dict[int, tuple[int, int]]]:
        """Generators (operator -> two amount bytes) of the zones ``first .. end - 1``."""
        return [{op: (lo, hi) for op, lo, hi in gens[bags[b][0] : bags[b + 1][0]]} for b in range(first, end)]

    def with_globals(zs: list[dict[int, tuple[int, int]]], terminal: int) -> list[dict[int, tuple[int, int]]]:
        """A leading zone without the terminal generator is global: its generators are defaults
        for the other zones (SF2 2.01, sections 7.3 and 7.9)."""
        if zs and terminal not in zs[0]:
            return [{**zs[0], **z} for z in zs[1:]]
        return zs

    presets: dict[int, Preset] = {}
    for k in range(len(phdr) - 1):  # the last header is the terminal "EOP" record
        raw_name, program, bank, bag = phdr[k][:4]
        if bank != 0:
            continue
        keys: set[int] = set()
        samples: set[int] = set()
        for pz in with_globals(zones(pbag, pgen, bag, phdr[k + 1][3]), _GEN_INSTRUMENT):
            if _GEN_INSTRUMENT not in pz:
                continue
            lo, hi = pz[_GEN_INSTRUMENT]
            i = lo | hi << 8
            p_lo, p_hi = pz.get(_GEN_KEY_RANGE, (0, 127))
            for iz in with_globals(zones(ibag, igen, inst[i][1], inst[i + 1][1]), _GEN_SAMPLE_ID):
                if _GEN_SAMPLE_ID not in iz:
                    continue
                i_lo, i_hi = iz.get(_GEN_KEY_RANGE, (0, 127))
                k_lo, k_hi = max(p_lo, i_lo), min(p_hi, i_hi)
                if k_lo <= k_hi:
                    keys.update(range(k_lo, k_hi + 1))
                    s_lo, s_hi = iz[_GEN_SAMPLE_ID]
                    samples.add(s_lo | s_hi << 8)
        if keys:
            name = raw_name.split(b"\0", 1)[0].decode("latin-1").strip()
            presets[program] = Preset(name, min(keys), max(keys), frozenset(samples))
    return presets


def _read_pdta(path: Path) -> dict[str, bytes]:
    """The sub-chunks of the RIFF ``LIST pdta`` chunk, by id."""
    data = None
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise DatasetError(f"{path} is not a SoundFont (no RIFF sfbk header)")
        end = 8 + struct.unpack("<I", head[4:8])[0]
        while data is None and fh.tell() + 8 <= end:
            cid, size = struct.unpack("<4sI", fh.read(8))
            if cid == b"LIST" and fh.read(4) == b"pdta":
                data = fh.read(size - 4)
            elif cid == b"LIST":  # INFO or sdta (the samples): skip
                fh.seek(size - 4 + (size & 1), os.SEEK_CUR)
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    if data is None:
        raise DatasetError(f"{path}: SoundFont without preset data (no pdta chunk)")
    chunks: dict[str, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4].decode("latin-1"), struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunks[cid] = data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return chunks
