"""GMNotes: NSynth layout rendered from GM SoundFonts. Tiny settings (TimGM6mb, a few programs, a
few notes per instrument) keep every render well under a second."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from core.api import Clip, Dataset, HealthCheck, UnknownOptionError, UserError
from core.registry import ENTRY_POINT_GROUP, Registry, load_registry
from plugins.datasets import gmnotes
from plugins.datasets.common.families import FAMILIES, SOURCES
from plugins.datasets.common.layout import SPLITS, DatasetError, split_dir
from plugins.datasets.gmnotes import render
from plugins.datasets.gmnotes.constants import WAV_BYTES
from plugins.datasets.gmnotes.dataset import GMNotesDataset, build_gmnotes
from plugins.datasets.gmnotes.options import OPTIONS, GMNotesOptionError
from plugins.datasets.gmnotes.plan import allocate, spread_order
from plugins.datasets.gmnotes.programs import LEFT_OUT, PROGRAMS
from plugins.datasets.gmnotes.render import FluidRenderer, RenderError, loudest_frame_db
from plugins.datasets.gmnotes.soundfont import SoundFontNotFoundError, find_soundfont

try:
    TIM = find_soundfont("TimGM6mb.sf2")
except SoundFontNotFoundError:  # pragma: no cover - the project's system deps install it
    TIM = None
pytestmark = pytest.mark.skipif(TIM is None, reason="TimGM6mb.sf2 not installed (Debian timgm6mb-soundfont)")

# TimGM6mb programs whose presets share few samples, so each is its own split unit.
KEYBOARD, BRASS, REED = [4, 5, 6], [56, 57, 58], [64, 65, 66]
# One rendering process: tests patch the renderer in this process, and the tiny renders finish
# before a pool would have started.
TINY: dict[str, Any] = {
    "soundfonts": ["TimGM6mb"],
    "programs": KEYBOARD + BRASS + REED,
    "notes_per_instrument": 2,
    "num_workers": 1,
}
NSYNTH_FIELDS = {
    "note",
    "note_str",
    "instrument",
    "instrument_str",
    "pitch",
    "velocity",
    "sample_rate",
    "qualities",
    "qualities_str",
    "instrument_family",
    "instrument_family_str",
    "instrument_source",
    "instrument_source_str",
}
NOTE_STR = re.compile(
    r"^(?P<family>[a-z_]+)_(?P<source>acoustic|electronic|synthetic)_(?P<num>\d{3})"
    r"-(?P<pitch>\d{3})-(?P<velocity>\d{3})$"
)


@functools.cache
def registry() -> Registry:
    return load_registry()


def build_registered(
    root: Path,
    classes: list[str],
    budget_mb: float | None,
    max_per_class: int | None,
    seed: int,
    options: dict[str, Any],
) -> GMNotesDataset:
    """GMNotes as the core builds it: the options checked against the declared ones, defaults filled in."""
    return registry().build(
        "dataset",
        "GMNotes",
        options=options,
        where="data.options.GMNotes",
        root=root,
        classes=classes,
        max_total_size_mb=budget_mb,
        max_per_class=max_per_class,
        seed=seed,
    )


def build(
    root: Path,
    classes: list[str] | None = None,
    budget_mb: float | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    **options: Any,
) -> GMNotesDataset:
    return build_registered(
        root,
        classes if classes is not None else ["keyboard", "brass", "reed"],
        budget_mb,
        max_per_class,
        seed,
        {**TINY, **options},
    )


def examples(ds: GMNotesDataset, split: str) -> dict[str, dict[str, Any]]:
    return json.loads((split_dir(ds.dataset_dir, split) / "examples.json").read_text())


def wavs(ds: GMNotesDataset) -> list[Path]:
    return sorted(ds.dataset_dir.glob("nsynth-*/audio/*.wav"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> GMNotesDataset:
    ds = build(tmp_path_factory.mktemp("gm"))
    ds.prepare()
    return ds


# --- layout and audio -------------------------------------------------------------------------
def test_layout_has_every_nsynth_field(rendered: GMNotesDataset) -> None:
    assert rendered.dataset_dir.parent.name == "GMNotes"
    assert (rendered.dataset_dir / ".complete").is_file()
    for split in SPLITS:
        meta = examples(rendered, split)
        assert meta, split
        for note_str, e in meta.items():
            assert set(e) == NSYNTH_FIELDS
            m = NOTE_STR.match(note_str)
            assert m and e["note_str"] == note_str
            assert e["instrument_str"] == note_str.rsplit("-", 2)[0]
            assert (m["family"], m["source"]) == (e["instrument_family_str"], e["instrument_source_str"])
            assert (int(m["pitch"]), int(m["velocity"])) == (e["pitch"], e["velocity"])
            assert FAMILIES[e["instrument_family"]] == e["instrument_family_str"]
            assert SOURCES[e["instrument_source"]] == e["instrument_source_str"]
            assert e["sample_rate"] == 16000 and e["velocity"] in (25, 50, 75, 100, 127)
            assert 21 <= e["pitch"] <= 108
            assert e["qualities"] == [0] * 10 and e["qualities_str"] == []
            assert all(isinstance(e[k], int) for k in ("note", "instrument", "pitch", "velocity"))
            assert (split_dir(rendered.dataset_dir, split) / "audio" / f"{note_str}.wav").is_file()
    notes = [e["note"] for s in SPLITS for e in examples(rendered, s).values()]
    assert len(notes) == len(set(notes)) == len(wavs(rendered))


def test_wav_format_onset_and_release(rendered: GMNotesDataset) -> None:
    for path in wavs(rendered):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 64000)
        assert path.stat().st_size == WAV_BYTES
        audio, _ = sf.read(path, dtype="float32")
        rms = np.sqrt((audio.reshape(-1, 160).astype(np.float64) ** 2).mean(axis=1)) + 1e-9  # 10 ms
        db = 20 * np.log10(rms)
        assert np.argmax(db > db.max() - 30) <= 5, f"{path.name}: onset later than 50 ms"
        held, tail = rms[280:300].mean(), rms[-20:].mean()  # 2.8-3.0 s vs the last 200 ms
        assert tail < 0.5 * held or held < 0.01 * rms.max(), f"{path.name}: no release after note-off"


def test_splits_are_instrument_disjoint_and_cover_every_family(rendered: GMNotesDataset) -> None:
    instruments = {s: {e["instrument"] for e in examples(rendered, s).values()} for s in SPLITS}
    assert not instruments["train"] & instruments["valid"]
    assert not instruments["train"] & instruments["test"]
    assert not instruments["valid"] & instruments["test"]
    for split in SPLITS:
        families = {e["instrument_family_str"] for e in examples(rendered, split).values()}
        assert families == {"keyboard", "brass", "reed"}, split


def test_get_items_labels_follow_data_classes_order(tmp_path: Path) -> None:
    ds = build(tmp_path, classes=["clarinet", "keyboard"])  # clarinet -> reed, label 0
    ds.prepare()
    assert ds.class_names == ["clarinet", "keyboard"]
    assert json.loads((ds.dataset_dir / "class_map.json").read_text())["families"] == ["reed", "keyboard"]
    for split in SPLITS:
        items = ds.get_items(split)
        meta = examples(ds, split)
        assert {e["instrument_family_str"] for e in meta.values()} == {"reed", "keyboard"}  # class filter
        assert {label for _, label, _ in items} == {0, 1}
        for path, label, _ in items:
            assert meta[path.stem]["instrument_family_str"] == ["reed", "keyboard"][label]


def test_every_clip_is_grouped_by_its_instrument(rendered: GMNotesDataset) -> None:
    assert isinstance(rendered, Dataset)
    for split in SPLITS:
        items = rendered.get_items(split)
        meta = examples(rendered, split)
        assert items and all(isinstance(clip, Clip) for clip in items)
        assert len({clip.group for clip in items}) > 1
        for clip in items:
            assert clip.group == meta[clip.path.stem]["instrument_str"]


# --- splits, sizes, spread --------------------------------------------------------------------
def test_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    def split_of(seed: int) -> dict[str, str]:
        plan = build(tmp_path, seed=seed).plan()
        return {i.instrument_str: plan.split_of[i.index] for i in plan.instruments}

    assert split_of(0) == split_of(0)
    assert split_of(0) != split_of(1)
    assert build(tmp_path, seed=0).plan().notes == build(tmp_path, seed=0).plan().notes


def test_default_soundfonts_give_every_family_instruments_in_every_split(tmp_path: Path) -> None:
    try:
        ds = build_registered(tmp_path, [], 1000.0, None, 0, {})
    except SoundFontNotFoundError:
        pytest.skip("FluidR3_GM.sf2 not installed (Debian fluid-soundfont-gm)")
    plan = ds.plan()
    counts = Counter((plan.split_of[i.index], i.family) for i in plan.instruments if i.index in plan.split_of)
    for family in FAMILIES:
        assert all(counts[(split, family)] >= 1 for split in SPLITS), family
        assert counts[("train", family)] >= 4, family
    per_cell = Counter((n.split, n.instrument.family) for n in plan.notes)
    assert sum(per_cell.values()) * WAV_BYTES <= 1000 * 10**6
    train = [per_cell[("train", f)] for f in FAMILIES]
    assert min(train) >= 0.99 * max(train)  # the budget is shared equally among families


def test_derived_soundfont_instruments_share_a_split(tmp_path: Path) -> None:
    copy = tmp_path / "TimCopy.sf2"
    shutil.copyfile(TIM, copy)
    ds = build(tmp_path, extra_soundfonts=[{"path": str(copy), "derived_from": "TimGM6mb"}])
    plan = ds.plan()
    by_program: dict[int, set[str]] = {}
    for inst in plan.instruments:
        by_program.setdefault(inst.gm.program, set()).add(plan.split_of[inst.index])
    assert all(len(splits) == 1 for splits in by_program.values())
    assert len(plan.instruments) == 2 * len(TINY["programs"])


def test_budget_is_honoured_and_no_family_starves(tmp_path: Path) -> None:
    budget_mb = 12 * WAV_BYTES / 10**6  # 12 notes for 9 (split, family) cells
    ds = build(tmp_path, budget_mb=budget_mb, notes_per_instrument=None)
    ds.prepare()
    assert sum(p.stat().st_size for p in wavs(ds)) <= budget_mb * 10**6
    assert len(wavs(ds)) == 12
    for split in SPLITS:
        families = {e["instrument_family_str"] for e in examples(ds, split).values()}
        assert families == {"keyboard", "brass", "reed"}, split
    with pytest.raises(DatasetError, match="at least one note per family and split"):
        build(tmp_path, budget_mb=8 * WAV_BYTES / 10**6).plan()


def test_max_per_class_is_honoured(tmp_path: Path) -> None:
    ds = build(tmp_path, max_per_class=3, notes_per_instrument=None)
    ds.prepare()
    for split in SPLITS:
        counts = Counter(e["instrument_family_str"] for e in examples(ds, split).values())
        assert set(counts.values()) == {3}, (split, counts)
        assert len(ds.get_items(split)) == 9


def test_notes_per_instrument_spread_over_pitch_and_velocity(tmp_path: Path) -> None:
    plan = build(tmp_path, notes_per_instrument=5).plan()
    per_instrument: dict[str, list[tuple[int, int]]] = {}
    for note in plan.notes:
        per_instrument.setdefault(note.instrument.instrument_str, []).append((note.pitch, note.velocity))
    by_name = {i.instrument_str: i for i in plan.instruments}
    for name, notes in per_instrument.items():
        pitches = by_name[name].pitches
        assert len(notes) == 5
        assert len({v for _, v in notes}) >= 3
        span = pitches[-1] - pitches[0]
        assert max(p for p, _ in notes) - min(p for p, _ in notes) >= 0.5 * span, name

    order = spread_order(list(range(40, 80)), [25, 50, 75, 100, 127], random.Random(0))
    assert sorted(order) == sorted((p, v) for p in range(40, 80) for v in [25, 50, 75, 100, 127])
    assert order == spread_order(list(range(40, 80)), [25, 50, 75, 100, 127], random.Random(0))


def test_allocate_shares_budget_fairly() -> None:
    caps = {("train", "a"): 100, ("train", "b"): 3, ("valid", "a"): 100, ("valid", "b"): 100}
    weights = {("train", "a"): 0.8, ("train", "b"): 0.8, ("valid", "a"): 0.2, ("valid", "b"): 0.2}
    alloc = allocate(50, caps, weights)
    assert sum(alloc.values()) == 50
    assert alloc[("train", "b")] == 3  # capped; its share flows to the others
    assert alloc[("train", "a")] > alloc[("valid", "a")] == alloc[("valid", "b")] >= 1
    assert allocate(4, caps, weights) == {k: 1 for k in caps}  # every cell first gets one note


# --- silence ----------------------------------------------------------------------------------
def test_silent_notes_are_dropped(tmp_path: Path) -> None:
    # TimGM6mb's whistle (78) is silent above MIDI 80; piccolo, flute and ocarina are not.
    ds = build(tmp_path, classes=["flute"], programs=[72, 73, 78, 79], pitch_min=84, notes_per_instrument=3)
    ds.prepare()
    silent = (ds.dataset_dir / "silent.txt").read_text().split()
    kept = {k: e for s in SPLITS for k, e in examples(ds, s).items()}
    assert ds.stats.silent == len(silent) == 3
    whistle = next(i.instrument_str for i in ds.plan().instruments if i.gm.program == 78)
    assert all(name.startswith(f"{whistle}-") for name in silent)
    assert not set(silent) & set(kept) and len(kept) == 9
    assert len(wavs(ds)) == 9
    (ds.dataset_dir / ".complete").unlink()
    ds.prepare()
    assert ds.stats.rendered == 0  # notes known to be silent are not rendered again on resume


def test_silent_notes_give_their_place_to_the_next_candidates(tmp_path: Path) -> None:
    # pitches 72-98: TimGM6mb's whistle is audible up to 80 only; every cell can still fill 30 notes
    ds = build(
        tmp_path,
        classes=["flute"],
        programs=[72, 73, 78, 79],
        pitch_min=72,
        max_per_class=30,
        notes_per_instrument=None,
    )
    ds.prepare()
    assert ds.stats.silent > 0
    assert ds.stats.rendered == ds.stats.planned + ds.stats.silent
    for split in SPLITS:
        assert len(examples(ds, split)) == 30, split
    silent = set((ds.dataset_dir / "silent.txt").read_text().split())
    assert not silent & {k for s in SPLITS for k in examples(ds, s)}


def test_loudest_frame_threshold() -> None:
    quiet = np.zeros(64000, np.float32)
    assert loudest_frame_db(quiet) == -np.inf
    quiet[800:1600] = 0.001  # exactly one 50 ms frame at -60 dBFS
    assert loudest_frame_db(quiet) == pytest.approx(-60, abs=0.01)
    quiet[5] = 0.5  # a click does not make a note audible
    assert loudest_frame_db(quiet) < -30


# --- resume and idempotence -------------------------------------------------------------------
def test_second_prepare_renders_nothing(rendered: GMNotesDataset) -> None:
    def mtimes() -> dict[Path, int]:
        # class_map.json is rewritten on purpose: data.classes may name the families in another order
        return {p: p.stat().st_mtime_ns for p in rendered.dataset_dir.rglob("*") if p.name != "class_map.json"}

    before = mtimes()
    again = GMNotesDataset(rendered.dataset_dir.parents[1], ["keyboard", "brass", "reed"], rendered.settings)
    assert again.dataset_dir == rendered.dataset_dir
    again.prepare()
    assert again.stats.rendered == 0
    assert before == mtimes()


def test_resume_after_losing_wavs_renders_only_those(tmp_path: Path) -> None:
    ds = build(tmp_path)
    ds.prepare()
    files = wavs(ds)
    lost = {p: p.read_bytes() for p in files[::5]}
    kept = {p: p.stat().st_mtime_ns for p in files if p not in lost}
    for p in lost:
        p.unlink()
    (ds.dataset_dir / ".complete").unlink()
    ds.prepare()
    assert ds.stats.rendered == len(lost) and ds.stats.already_done == len(files) - len(lost)
    assert all(p.read_bytes() == data for p, data in lost.items())  # same bits: rendering is deterministic
    assert kept == {p: p.stat().st_mtime_ns for p in kept}
    assert (ds.dataset_dir / ".complete").is_file()


def test_resume_after_interrupted_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = render.render_task
    calls = {"n": 0}

    def crash_after_five(*args: Any) -> Any:
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(render, "render_task", crash_after_five)
    ds = build(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare()
    assert not (ds.dataset_dir / ".complete").exists()
    assert len(wavs(ds)) == 5 and not list(ds.dataset_dir.rglob("*.part"))
    monkeypatch.setattr(render, "render_task", real)
    ds.prepare()
    assert ds.stats.already_done == 5 and ds.stats.rendered == ds.stats.planned - 5
    assert len(wavs(ds)) == ds.stats.planned == 18


def test_wav_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(render.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render.write_wav(tmp_path / "note.wav", np.zeros(64000, np.int16))
    assert list(tmp_path.iterdir()) == []  # neither a half-written WAV nor its temp file


def test_parallel_render_writes_the_same_bytes(tmp_path: Path, rendered: GMNotesDataset) -> None:
    ds = build(tmp_path, num_workers=2)
    ds.prepare()
    assert ds.dataset_dir.name == rendered.dataset_dir.name  # num_workers is not part of the hash
    ours, theirs = wavs(ds), wavs(rendered)
    assert [p.relative_to(ds.dataset_dir) for p in ours] == [p.relative_to(rendered.dataset_dir) for p in theirs]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs))


def test_a_note_renders_the_same_whatever_came_before() -> None:
    with FluidRenderer([TIM]) as renderer:
        first = renderer.render(0, 56, 60, 100)
        renderer.render(0, 5, 40, 127)
        renderer.render(0, 65, 72, 25)
        assert np.array_equal(first, renderer.render(0, 56, 60, 100))


def test_folder_hash_follows_rendering_parameters(tmp_path: Path) -> None:
    base = build(tmp_path).dataset_dir
    assert build(tmp_path, classes=["reed", "brass", "keyboard"]).dataset_dir == base  # label order only
    assert build(tmp_path, num_workers=2).dataset_dir == base
    for changed in (
        build(tmp_path, notes_per_instrument=3),
        build(tmp_path, seed=1),
        build(tmp_path, classes=["keyboard", "brass"]),
        build(tmp_path, velocities=[50, 100]),
        build(tmp_path, max_per_class=4),
        build(tmp_path, budget_mb=5.0),
        build(tmp_path, split_fractions=[0.6, 0.2, 0.2]),
        build(tmp_path, pitch_max=90),
    ):
        assert changed.dataset_dir != base


# --- errors and registration ------------------------------------------------------------------
def test_missing_soundfont_error_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SoundFontNotFoundError) as err:
        build(tmp_path, soundfonts=["NoSuchFont"])
    message = str(err.value)
    assert "NoSuchFont.sf2" in message and "/usr/share/sounds/sf2" in message
    assert "fluid-soundfont-gm timgm6mb-soundfont" in message
    assert isinstance(err.value, UserError)


def test_unknown_option_lists_the_valid_ones(tmp_path: Path) -> None:
    # the core refuses unknown keys against the declared options, before the factory runs
    with pytest.raises(UnknownOptionError) as err:
        build(tmp_path, notes_per_instrumnet=3)
    assert "notes_per_instrumnet" in str(err.value) and "data.options.GMNotes" in str(err.value)
    assert "valid keys" in str(err.value)
    assert all(name in str(err.value) for name in OPTIONS)
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize(
    "options",
    [
        {"split_fractions": [0.5, 0.5]},
        {"split_fractions": [0.8, 0.15, 0.15]},
        {"velocities": [0, 64]},
        {"pitch_min": 90, "pitch_max": 80},
        {"notes_per_instrument": 0},
        {"programs": [118]},
        {"silence_db": 3},
        {"oversample": "two"},
        {"num_workers": 0},
        {"extra_soundfonts": [{"file": "x"}]},
    ],
)
def test_bad_option_values_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(GMNotesOptionError):
        build(tmp_path, **options)


def test_too_few_instruments_for_three_splits(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="family 'brass'"):
        build(tmp_path, programs=KEYBOARD + [56, 57] + REED).plan()


def test_program_table_covers_every_gm_program_once() -> None:
    used = [p.program for p in PROGRAMS]
    assert len(used) == len(set(used))
    assert sorted(used + list(LEFT_OUT)) == list(range(128))
    assert {p.family for p in PROGRAMS} == set(FAMILIES)
    assert all(p.source in SOURCES and 21 <= p.low < p.high <= 108 for p in PROGRAMS)


def test_registered_as_a_dataset_plugin() -> None:
    # the full registry imports every plugin (torch included); the entry point and the hook suffice
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    assert "plugins.datasets.gmnotes" in {ep.value for ep in entry_points}
    [component] = gmnotes.audiokd_datasets()
    assert component.name == "GMNotes" and component.factory is build_gmnotes
    assert component.options is OPTIONS and all(option.help for option in OPTIONS.values())


def test_default_options_are_the_settings_the_project_renders_with(tmp_path: Path) -> None:
    # the defaults are part of the render folder's hash: the same values keep the rendered data
    assert {key: option.default for key, option in OPTIONS.items()} == {
        "soundfonts": ["FluidR3_GM", "TimGM6mb"],
        "extra_soundfonts": [],
        "programs": None,
        "notes_per_instrument": None,
        "velocities": [25, 50, 75, 100, 127],
        "pitch_min": 21,
        "pitch_max": 108,
        "split_fractions": [0.7, 0.15, 0.15],
        "silence_db": -70.0,
        "oversample": 2,
        "num_workers": 2,
    }
    try:
        ds = build_registered(tmp_path, [], 1000, None, 0, {})
    except SoundFontNotFoundError:
        pytest.skip("FluidR3_GM.sf2 not installed (Debian fluid-soundfont-gm)")
    assert ds.num_workers == 2 and ds.settings.oversample == 2 and ds.settings.silence_db == -70.0
    assert [sf.name for sf in ds.settings.soundfonts] == ["FluidR3_GM.sf2", "TimGM6mb.sf2"]


# --- the doctor -------------------------------------------------------------------------------
def test_doctor_reports_soundfonts_and_libfluidsynth() -> None:
    checks = gmnotes.audiokd_doctor()
    assert [check.label for check in checks] == ["SoundFonts", "libfluidsynth"]
    assert all(isinstance(check, HealthCheck) and isinstance(check.ok, bool) and check.detail for check in checks)
    soundfonts, libfluidsynth = checks
    assert "TimGM6mb" in soundfonts.detail  # found by the same discovery as the renderer
    assert libfluidsynth.ok and "libfluidsynth" in libfluidsynth.detail  # the renders above need it
    assert [
        (package, check.label)
        for package, check in registry().health()
        if check.label in ("SoundFonts", "libfluidsynth")
    ] == [("audiokd", "SoundFonts"), ("audiokd", "libfluidsynth")]


def raises(exc: Exception) -> Any:
    def fail(*args: Any) -> Any:
        raise exc

    return fail


def test_doctor_says_what_to_install_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gmnotes, "installed_soundfonts", lambda: [])
    monkeypatch.setattr(render, "_bind_libfluidsynth", raises(RenderError("no lib")))
    soundfonts, libfluidsynth = gmnotes.audiokd_doctor()
    assert soundfonts == HealthCheck(
        "SoundFonts", False, "none found (apt-get install fluid-soundfont-gm timgm6mb-soundfont)"
    )
    assert not libfluidsynth.ok and libfluidsynth.detail == "no lib"

    monkeypatch.setattr(gmnotes, "installed_soundfonts", lambda: [TIM])
    monkeypatch.setattr(render, "_bind_libfluidsynth", raises(OSError("bad ELF")))
    soundfonts, libfluidsynth = gmnotes.audiokd_doctor()
    assert not soundfonts.ok and str(TIM) in soundfonts.detail and "missing FluidR3_GM.sf2" in soundfonts.detail
    assert not libfluidsynth.ok and "bad ELF" in libfluidsynth.detail and "libfluidsynth3" in libfluidsynth.detail

    monkeypatch.setattr(gmnotes, "installed_soundfonts", raises(PermissionError("/usr/share/sounds/sf2")))
    [soundfonts, _] = gmnotes.audiokd_doctor()
    assert not soundfonts.ok and "PermissionError" in soundfonts.detail
