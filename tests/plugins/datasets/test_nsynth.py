"""NSynth download plugin: filtering, budget, resume, safety and errors, against a local HTTP server
that serves tiny NSynth-layout archives built here and can misbehave on purpose."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import random
import re
import socket
import tarfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from core.api import Clip, Dataset, UnknownOptionError, UserError
from core.registry import Registry, load_registry
from plugins.datasets import nsynth
from plugins.datasets.common.families import FAMILIES, ClassNameError
from plugins.datasets.common.layout import DatasetError
from plugins.datasets.nsynth import download
from plugins.datasets.nsynth.dataset import NSynthDataset, build_nsynth
from plugins.datasets.nsynth.download import NSynthArchiveError, NSynthDownloadError, download_NSynth
from plugins.datasets.nsynth.options import OPTIONS, NSynthOptionError

SOURCES = ("acoustic", "electronic", "synthetic")
ARCHIVE = "nsynth-{}.jsonwav.tar.gz"
Notes = dict[str, tuple[bytes, dict[str, Any]]]  # note_str -> (wav bytes, examples.json entry)


# --- archives ---------------------------------------------------------------------------------
def make_notes(split: str, counts: dict[str, int], seed: int = 0) -> Notes:
    """``counts[family]`` tiny notes (0.05 s of int16 noise) per family, with full NSynth metadata."""
    rng = np.random.default_rng(seed)
    first_instrument = {"train": 0, "valid": 300, "test": 600}[split]
    notes: Notes = {}
    for family, n in counts.items():
        for k in range(n):
            source, instrument, pitch = k % 3, first_instrument + FAMILIES.index(family) * 20 + k, 40 + k
            instrument_str = f"{family}_{SOURCES[source]}_{instrument:03d}"
            note_str = f"{instrument_str}-{pitch:03d}-100"
            buf = io.BytesIO()
            sf.write(buf, (rng.standard_normal(800) * 3000).astype(np.int16), 16000, format="WAV", subtype="PCM_16")
            notes[note_str] = (
                buf.getvalue(),
                {
                    "note": len(notes),
                    "note_str": note_str,
                    "instrument": instrument,
                    "instrument_str": instrument_str,
                    "pitch": pitch,
                    "velocity": 100,
                    "sample_rate": 16000,
                    "qualities": [k % 2, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                    "qualities_str": ["fast_decay"],
                    "instrument_family": FAMILIES.index(family),
                    "instrument_family_str": family,
                    "instrument_source": source,
                    "instrument_source_str": SOURCES[source],
                },
            )
    return notes


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def build_archive(
    split: str,
    notes: Notes,
    *,
    examples_at: str | None = "middle",
    orphans: Notes | None = None,
    listed_only: Notes | None = None,
    extra: Sequence[tuple[tarfile.TarInfo, bytes | None]] = (),
    order: list[str] | None = None,
    seed: int = 0,
) -> bytes:
    """A ``.tar.gz`` in NSynth's layout.

    WAVs of ``notes`` shuffled (or in ``order``); examples.json at ``examples_at`` (start/middle/end;
    None = absent) describing ``notes`` and ``listed_only`` (entries whose WAV is not in the archive);
    ``orphans`` = WAVs without an entry; ``extra`` members come first, after the folders.
    """
    top = f"nsynth-{split}"
    wavs = {**notes, **(orphans or {})}
    names = list(order) if order is not None else random.Random(seed).sample(sorted(wavs), len(wavs))
    members = [file_member(f"{top}/audio/{n}.wav", wavs[n][0]) for n in names]
    if examples_at is not None:
        listed = {**notes, **(listed_only or {})}
        examples = json.dumps({n: meta for n, (_, meta) in listed.items()}).encode()
        at = {"start": 0, "middle": len(members) // 2, "end": len(members)}[examples_at]
        members.insert(at, file_member(f"{top}/examples.json", examples))
    dirs = []
    for name in (top, f"{top}/audio"):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        dirs.append((info, None))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in [*dirs, *extra, *members]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


SPLIT_NOTES = {
    "train": make_notes("train", {"bass": 6, "string": 6, "synth_lead": 6, "keyboard": 6, "reed": 6}, seed=1),
    "valid": make_notes("valid", {"bass": 3, "string": 3, "synth_lead": 3, "keyboard": 3, "reed": 3}, seed=2),
    "test": make_notes("test", {"bass": 3, "string": 3, "synth_lead": 3, "keyboard": 3, "reed": 3}, seed=3),
}
NOTE_BYTES = len(next(iter(SPLIT_NOTES["test"].values()))[0])
EXAMPLES_AT = {"test": "start", "valid": "middle", "train": "end"}


def standard_archives() -> dict[str, bytes]:
    return {
        ARCHIVE.format(s): build_archive(s, notes, examples_at=EXAMPLES_AT[s], seed=len(s))
        for s, notes in SPLIT_NOTES.items()
    }


# --- a local, scriptable HTTP server ----------------------------------------------------------
class ArchiveServer:
    """Serves ``files`` (name -> bytes) under ``/nsynth/`` with Range and If-Range support (the ETag
    is a hash of the bytes), logging each request.

    Misbehaviour on purpose, each for the next request(s) for ``name`` (an int: the next one; a list:
    one entry per request, in order):
    ``drop_after[name] = n`` sends only n body bytes and closes the connection;
    ``stall_after[name] = n`` sends n body bytes, then nothing while keeping the connection open
    (until the server closes); ``swap_after_drop[name] = data`` serves ``data`` from then on, once a
    request for ``name`` was dropped. ``ignore_range`` answers 200 with the whole file.
    """

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.log: list[dict[str, Any]] = []
        self.drop_after: dict[str, int | list[int]] = {}
        self.stall_after: dict[str, int | list[int]] = {}
        self.swap_after_drop: dict[str, bytes] = {}
        self.ignore_range = False
        self.released = threading.Event()  # ends every stall
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits up to one interval.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/nsynth"

    @staticmethod
    def _next(plan: dict[str, Any], name: str) -> int | None:
        """The misbehaviour planned for this request for ``name``, consumed."""
        todo = plan.get(name)
        if isinstance(todo, list):
            value = todo.pop(0)
            if not todo:
                del plan[name]
            return value
        return plan.pop(name, None)

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        name = req.path.rsplit("/", 1)[-1]
        entry: dict[str, Any] = {"name": name, "range": req.headers.get("Range"), "status": 404, "sent": 0}
        self.log.append(entry)
        data = self.files.get(name)
        if data is None:
            req.send_error(404)
            return
        etag = f'"{hashlib.sha1(data).hexdigest()[:12]}"'
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if_range = req.headers.get("If-Range")
        if match and not self.ignore_range and if_range in (None, etag):
            start, status = int(match.group(1)), 206
            if start >= len(data):
                entry["status"] = 416
                req.send_error(416)
                return
        body = data[start:]
        entry["status"] = status
        req.send_response(status)
        req.send_header("Content-Type", "application/gzip")
        req.send_header("Content-Length", str(len(body)))
        req.send_header("ETag", etag)
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        drop, stall = self._next(self.drop_after, name), self._next(self.stall_after, name)
        limit = drop if drop is not None else stall
        if limit is not None:
            body = body[:limit]
            req.close_connection = True
        try:
            req.wfile.write(body)
            entry["sent"] = len(body)
            if stall is not None:
                self.released.wait(60)  # the socket stays open, silent: the client must time out
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading early
            entry["sent"] = "aborted by the client"
        if drop is not None and name in self.swap_after_drop:
            self.files[name] = self.swap_after_drop.pop(name)

    def sent(self, name: str) -> int:
        """Body bytes sent for ``name`` over all requests."""
        return sum(e["sent"] for e in self.log if e["name"] == name)

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ArchiveServer(standard_archives())
    yield srv
    srv.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nsynth"


# --- helpers ----------------------------------------------------------------------------------
@functools.cache
def registry() -> Registry:
    return load_registry()


def build(
    root: Path, classes: list[str], max_total_size_mb: float, max_per_class: int | None, seed: int, **options: Any
) -> NSynthDataset:
    """NSynth as the core builds it: the options checked against the declared ones, defaults filled in."""
    return registry().build(
        "dataset",
        "NSynth",
        options=options,
        where="data.options.NSynth",
        root=root,
        classes=classes,
        max_total_size_mb=max_total_size_mb,
        max_per_class=max_per_class,
        seed=seed,
    )


def wavs(root: Path, split: str) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in (root / "NSynth" / f"nsynth-{split}" / "audio").glob("*.wav")}


def examples(root: Path, split: str) -> dict[str, Any]:
    return json.loads((root / "NSynth" / f"nsynth-{split}" / "examples.json").read_text())


def state(root: Path) -> dict[str, Any]:
    return json.loads((root / "NSynth" / download.STATE_FILE).read_text())


def stats(root: Path, split: str) -> dict[str, tuple[int, int]]:
    audio = root / "NSynth" / f"nsynth-{split}" / "audio"
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in audio.glob("*.wav")}


def tree(path: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``path`` (relative), leaving out ``skip`` and what it holds."""
    return {str(p.relative_to(path)) for p in path.rglob("*") if skip is None or (skip not in p.parents and p != skip)}


def mb(n_notes: float) -> float:
    return n_notes * NOTE_BYTES / download.BYTES_PER_MB


# --- tests ------------------------------------------------------------------------------------
def test_family_of_parses_families_with_underscores():
    assert download.family_of("synth_lead_synthetic_000-060-100") == "synth_lead"
    assert download.family_of("bass_electronic_018-022-100") == "bass"
    assert download.family_of("kazoo_acoustic_000-060-100") is None
    assert download.family_of("bass_acoustic_000") is None


def test_class_filter_keeps_requested_families_and_their_full_entries(server, tmp_path):
    out = download_NSynth(tmp_path, ["violin", "synth_lead", "bass"], 100.0, base_url=server.base_url, progress=False)
    assert out == tmp_path / "NSynth"
    for split, notes in SPLIT_NOTES.items():
        expected = {n for n, (_, m) in notes.items() if m["instrument_family_str"] in ("string", "synth_lead", "bass")}
        got = wavs(tmp_path, split)
        assert set(got) == expected, split
        assert all(got[n] == notes[n][0] for n in got)
        assert examples(tmp_path, split) == {n: notes[n][1] for n in expected}
        assert state(tmp_path)["splits"][split]["status"] == "complete"
    assert not (tmp_path / "NSynth" / ".partial").exists()


def test_budget_is_shared_across_splits_and_classes(server, tmp_path):
    budget_mb = mb(31)  # test and valid get about 3 notes: one per class
    download_NSynth(tmp_path, ["bass", "string", "reed"], budget_mb, base_url=server.base_url, progress=False)
    budget = int(budget_mb * download.BYTES_PER_MB)
    total = sum(len(w) for s in SPLIT_NOTES for w in wavs(tmp_path, s).values())
    assert 0 < total <= budget
    for split in SPLIT_NOTES:
        families = {examples(tmp_path, split)[n]["instrument_family_str"] for n in wavs(tmp_path, split)}
        assert families == {"bass", "string", "reed"}, split
    # Budgets as documented: test 10 %, valid 10 % of what test left, train the rest.
    splits = state(tmp_path)["splits"]
    assert splits["test"]["budget_bytes"] == int(budget * 0.1)
    assert splits["valid"]["budget_bytes"] == int((budget - splits["test"]["kept_bytes"]) * 0.1 / 0.9)
    assert splits["train"]["budget_bytes"] == (budget - splits["test"]["kept_bytes"] - splits["valid"]["kept_bytes"])
    assert all(r["kept_bytes"] <= r["budget_bytes"] for r in splits.values())


def test_class_with_few_notes_donates_its_share_and_reading_stops_early(tmp_path):
    notes = make_notes("train", {"bass": 1, "string": 10, "keyboard": 10}, seed=4)
    rest = random.Random(0).sample([n for n in notes if not n.startswith("bass")], 20)
    order = [n for n in notes if n.startswith("bass")] + rest
    archive = build_archive("train", notes, examples_at="start", order=order)
    srv = ArchiveServer({ARCHIVE.format("train"): archive})
    try:
        download_NSynth(
            tmp_path, ["bass", "string", "keyboard"], mb(9), base_url=srv.base_url, splits=["train"], progress=False
        )
    finally:
        srv.close()
    kept = examples(tmp_path, "train")
    per_family = {
        f: sum(1 for m in kept.values() if m["instrument_family_str"] == f) for f in ("bass", "string", "keyboard")
    }
    # Equal shares would be 3 notes each; bass has only 1, so string and keyboard share its leftover.
    assert per_family == {"bass": 1, "string": 4, "keyboard": 4}
    record = state(tmp_path)["splits"]["train"]
    assert record["kept_bytes"] <= record["budget_bytes"]
    assert record["read_bytes"] < record["archive_bytes"]  # stopped once every class was full


@pytest.mark.parametrize("examples_at", ["middle", "end"])
def test_resume_after_dropped_connection_fetches_only_the_rest(tmp_path, examples_at):
    notes = SPLIT_NOTES["train"]
    archive = build_archive("train", notes, examples_at=examples_at, seed=7)
    name = ARCHIVE.format("train")
    budget_mb, classes = mb(10), ["bass", "string", "keyboard"]  # ~3 of the 6 notes per class fit
    cut = int(len(archive) * 0.4)
    srv = ArchiveServer({name: archive})
    srv.drop_after[name] = cut
    root = tmp_path / "resumed"
    try:
        with pytest.raises(NSynthDownloadError, match="run again to resume"):  # retries=0: no retry
            download_NSynth(
                root, classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False, retries=0
            )
        record = state(root)["splits"]["train"]
        assert record["status"] == "partial" and record["files"]
        assert (root / "NSynth" / ".partial" / f"{name}.part").stat().st_size == cut
        assert not (root / "NSynth" / "nsynth-train" / "examples.json").exists()
        before = stats(root, "train")
        assert set(before) == set(record["files"])
        stale = root / "NSynth" / "nsynth-train" / "audio" / ".bass_x.wav.k3j2.part"  # as if killed mid-write
        stale.write_bytes(b"half")

        n_requests = len(srv.log)
        download_NSynth(root, classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False)
        assert srv.log[n_requests:] == [
            {"name": name, "range": f"bytes={cut}-", "status": 206, "sent": len(archive) - cut}
        ]
        after = stats(root, "train")
        assert {n: after[n] for n in before} == before  # finished files were not written again
        assert not stale.exists()

        clean = tmp_path / "clean"
        download_NSynth(clean, classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    assert wavs(root, "train") == wavs(clean, "train")
    assert examples(root, "train") == examples(clean, "train")
    assert sum(len(w) for w in wavs(root, "train").values()) <= budget_mb * download.BYTES_PER_MB
    assert not (root / "NSynth" / ".partial").exists()


def test_resume_when_server_ignores_range_restarts_without_rewriting(tmp_path):
    notes = SPLIT_NOTES["train"]
    archive = build_archive("train", notes, examples_at="end", seed=8)
    name = ARCHIVE.format("train")
    srv = ArchiveServer({name: archive})
    srv.drop_after[name] = cut = len(archive) // 2
    srv.ignore_range = True
    try:
        with pytest.raises(NSynthDownloadError):
            download_NSynth(
                tmp_path, ["reed", "bass"], 100.0, base_url=srv.base_url, splits=["train"], progress=False, retries=0
            )
        before = stats(tmp_path, "train")
        assert before
        n_requests = len(srv.log)
        download_NSynth(tmp_path, ["reed", "bass"], 100.0, base_url=srv.base_url, splits=["train"], progress=False)
        assert srv.log[n_requests:] == [{"name": name, "range": f"bytes={cut}-", "status": 200, "sent": len(archive)}]
    finally:
        srv.close()
    after = stats(tmp_path, "train")
    assert {n: after[n] for n in before} == before
    expected = {n for n, (_, m) in notes.items() if m["instrument_family_str"] in ("reed", "bass")}
    assert set(wavs(tmp_path, "train")) == expected


def clean_copy(tmp_path: Path, archive: bytes, classes: list[str], budget_mb: float) -> Path:
    """The same split downloaded by a server that never misbehaves: what every resume must equal."""
    srv = ArchiveServer({ARCHIVE.format("train"): archive})
    try:
        download_NSynth(tmp_path / "clean", classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    return tmp_path / "clean"


def assert_contiguous(srv: ArchiveServer, name: str, size: int) -> None:
    """Every request asked for the byte after the last one received: nothing was sent twice."""
    at = 0
    for entry in srv.log:
        assert entry["range"] == (f"bytes={at}-" if at else None), srv.log
        at += entry["sent"]
    assert at == srv.sent(name) == size


def test_dropped_connection_is_retried_in_the_same_run_from_where_it_stopped(tmp_path, caplog):
    archive = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=13)
    name = ARCHIVE.format("train")
    classes, budget_mb = ["bass", "reed"], 100.0
    srv = ArchiveServer({name: archive})
    srv.drop_after[name] = [len(archive) // 3, len(archive) // 3]  # two drops, then a whole answer
    caplog.set_level(logging.WARNING, logger=download.__name__)
    try:
        download_NSynth(tmp_path / "root", classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    assert [e["status"] for e in srv.log] == [200, 206, 206]
    assert_contiguous(srv, name, len(archive))
    assert "retry 1 of 5" in caplog.text and "retry 2 of 5" in caplog.text
    clean = clean_copy(tmp_path, archive, classes, budget_mb)
    assert wavs(tmp_path / "root", "train") == wavs(clean, "train")
    assert examples(tmp_path / "root", "train") == examples(clean, "train")


def test_stalled_download_times_out_and_resumes_with_a_range_request(tmp_path):
    archive = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=14)
    name = ARCHIVE.format("train")
    classes, budget_mb = ["string", "synth_lead"], 100.0
    srv = ArchiveServer({name: archive})
    srv.stall_after[name] = stall = int(len(archive) * 0.45)
    started = time.monotonic()
    try:
        download_NSynth(
            tmp_path / "root", classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False, timeout=1.0
        )
    finally:
        srv.close()
    elapsed = time.monotonic() - started
    assert elapsed < 10  # one 1 s timeout and an immediate retry, not a hang
    assert srv.log == [
        {"name": name, "range": None, "status": 200, "sent": stall},
        {"name": name, "range": f"bytes={stall}-", "status": 206, "sent": len(archive) - stall},
    ]
    expected = {n for n, (_, m) in SPLIT_NOTES["train"].items() if m["instrument_family_str"] in classes}
    got = wavs(tmp_path / "root", "train")
    assert set(got) == expected and all(got[n] == SPLIT_NOTES["train"][n][0] for n in got)
    assert examples(tmp_path / "root", "train") == {n: SPLIT_NOTES["train"][n][1] for n in expected}
    assert state(tmp_path / "root")["splits"]["train"]["status"] == "complete"


def test_retries_run_out_with_an_error_naming_url_cause_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_retry_wait", lambda attempt: 0.0)
    archive = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=15)
    name = ARCHIVE.format("train")
    srv = ArchiveServer({name: archive})
    srv.stall_after[name] = [stall := len(archive) // 4, 0, 0]  # stalls again at once on each retry
    url = f"{srv.base_url}/{name}"
    try:
        with pytest.raises(NSynthDownloadError) as info:
            download_NSynth(
                tmp_path,
                ["bass"],
                100.0,
                base_url=srv.base_url,
                splits=["train"],
                progress=False,
                timeout=0.5,
                retries=2,
            )
        message = str(info.value)
        assert url in message and "stalled: no data for 0.5 s" in message
        assert "after that and 2 retries" in message and "run again to resume" in message
        assert [e["range"] for e in srv.log] == [None, f"bytes={stall}-", f"bytes={stall}-"]
        part = tmp_path / "NSynth" / ".partial" / f"{name}.part"
        assert part.read_bytes() == archive[:stall]  # kept for the rerun
        assert state(tmp_path)["splits"]["train"]["status"] == "partial"
        assert not (tmp_path / "NSynth" / "nsynth-train" / "examples.json").exists()

        download_NSynth(tmp_path, ["bass"], 100.0, base_url=srv.base_url, splits=["train"], progress=False)
        assert srv.log[-1] == {"name": name, "range": f"bytes={stall}-", "status": 206, "sent": len(archive) - stall}
    finally:
        srv.close()
    assert set(wavs(tmp_path, "train")) == {n for n in SPLIT_NOTES["train"] if n.startswith("bass_")}
    assert not part.exists()


def test_retry_delays_grow_and_are_bounded():
    assert [download._retry_wait(n) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 30, 30, 30]


def test_retry_when_server_ignores_range_skips_what_it_has(tmp_path):
    archive = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=16)
    name = ARCHIVE.format("train")
    srv = ArchiveServer({name: archive})
    srv.drop_after[name] = cut = len(archive) // 2
    srv.ignore_range = True
    try:
        download_NSynth(tmp_path, ["keyboard"], 100.0, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    assert [(e["range"], e["status"]) for e in srv.log] == [(None, 200), (f"bytes={cut}-", 200)]
    got = wavs(tmp_path, "train")
    assert set(got) == {n for n in SPLIT_NOTES["train"] if n.startswith("keyboard_")}
    assert all(got[n] == SPLIT_NOTES["train"][n][0] for n in got)


def test_archive_changed_on_the_server_during_a_retry_is_not_spliced(tmp_path):
    old = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=17)
    new = build_archive("train", SPLIT_NOTES["train"], examples_at="start", seed=18)
    name = ARCHIVE.format("train")
    srv = ArchiveServer({name: old})
    srv.drop_after[name] = len(old) // 2
    srv.swap_after_drop[name] = new
    try:
        with pytest.raises(NSynthArchiveError, match=r"changed on the server.*run again"):
            download_NSynth(tmp_path, ["bass"], 100.0, base_url=srv.base_url, splits=["train"], progress=False)
        assert srv.log[1]["status"] == 200  # If-Range: the new archive came whole
        assert not (tmp_path / "NSynth" / ".partial" / f"{name}.part").exists()
        download_NSynth(tmp_path, ["bass"], 100.0, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    got = wavs(tmp_path, "train")
    assert set(got) == {n for n in SPLIT_NOTES["train"] if n.startswith("bass_")}
    assert all(got[n] == SPLIT_NOTES["train"][n][0] for n in got)


def test_budget_holds_across_repeated_interruptions_and_nothing_is_fetched_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_retry_wait", lambda attempt: 0.0)
    # examples.json last: every byte must be read, so the bytes sent can be counted exactly.
    archive = build_archive("train", SPLIT_NOTES["train"], examples_at="end", seed=19)
    name = ARCHIVE.format("train")
    classes, budget_mb = ["bass", "string", "keyboard"], mb(7)  # about 2 of 6 notes per class
    budget = int(budget_mb * download.BYTES_PER_MB)
    step = len(archive) // 5
    srv = ArchiveServer({name: archive})
    srv.drop_after[name] = [step] * 4
    root = tmp_path / "root"
    audio = root / "NSynth" / "nsynth-train" / "audio"
    part = root / "NSynth" / ".partial" / f"{name}.part"
    try:
        # Three runs cut short (the third uses its one retry on the third drop and fails on the fourth).
        for retries in (0, 0, 1):
            with pytest.raises(NSynthDownloadError, match="run again to resume"):
                download_NSynth(
                    root, classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False, retries=retries
                )
            on_disk = {p.stem: p.stat().st_size for p in audio.glob("*.wav")}
            assert 0 < sum(on_disk.values()) <= budget
            assert on_disk == state(root)["splits"]["train"]["files"]  # every WAV is accounted for
            assert not list(audio.glob(".*")) and not (audio.parent / "examples.json").exists()
            assert part.stat().st_size == srv.sent(name)  # the .part holds exactly what was received
        assert len(srv.log) == 4
        download_NSynth(root, classes, budget_mb, base_url=srv.base_url, splits=["train"], progress=False)
    finally:
        srv.close()
    assert_contiguous(srv, name, len(archive))  # 5 requests, no byte sent twice
    assert len(srv.log) == 5
    kept = wavs(root, "train")
    assert 0 < sum(len(w) for w in kept.values()) <= budget
    assert {examples(root, "train")[n]["instrument_family_str"] for n in kept} == set(classes)
    clean = clean_copy(tmp_path, archive, classes, budget_mb)
    assert kept == wavs(clean, "train") and examples(root, "train") == examples(clean, "train")
    assert not part.exists()


def test_complete_download_makes_no_request(server, tmp_path):
    download_NSynth(tmp_path, ["bass", "reed"], 100.0, base_url=server.base_url, progress=False)
    n_requests = len(server.log)
    assert n_requests == 3
    download_NSynth(tmp_path, ["bass", "reed"], 100.0, base_url=server.base_url, progress=False)
    download_NSynth(tmp_path, ["reed"], 100.0, base_url=server.base_url, progress=False)  # a subset: reused
    dataset = build(tmp_path, ["bass", "reed"], 100.0, None, 0, base_url=server.base_url)
    dataset.prepare()
    assert len(server.log) == n_requests


def test_another_budget_on_a_complete_download_is_refused_not_reused(server, tmp_path):
    """The data would not be what the run logs (data.max_total_size_mb): refused, as on a partial one."""
    download_NSynth(tmp_path, ["bass", "reed"], 100.0, base_url=server.base_url, progress=False)
    n_requests = len(server.log)
    for budget in (50.0, 200.0):
        with pytest.raises(DatasetError) as err:
            download_NSynth(tmp_path, ["bass", "reed"], budget, base_url=server.base_url, progress=False)
        assert "a budget of 100 MB" in str(err.value) and f"with {budget:g} MB" in str(err.value)
        assert "another data.root" in str(err.value)
    assert len(server.log) == n_requests  # refused before any request


def test_other_settings_on_a_partial_download_are_refused(server, tmp_path):
    server.drop_after[ARCHIVE.format("test")] = 100
    with pytest.raises(NSynthDownloadError):
        download_NSynth(tmp_path, ["bass"], 1.0, base_url=server.base_url, progress=False, retries=0)
    with pytest.raises(DatasetError, match="made for families bass"):
        download_NSynth(tmp_path, ["bass", "reed"], 1.0, base_url=server.base_url, progress=False)


def test_unsafe_members_are_refused_and_nothing_is_written_outside_root(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    notes = make_notes("test", {"bass": 2, "string": 2}, seed=5)
    # Notes listed in examples.json whose only "audio" is an unsafe member bearing their name.
    decoys = make_notes("valid", {"bass": 3}, seed=6)
    sym, hard, dev = (tarfile.TarInfo(f"nsynth-test/audio/{n}.wav") for n in decoys)
    sym.type, sym.linkname = tarfile.SYMTYPE, str(outside / "target.wav")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../evil.wav"
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    evil_dir = tarfile.TarInfo("../evil_dir")
    evil_dir.type = tarfile.DIRTYPE
    payload = b"RIFF-evil"
    extra = [
        file_member("../evil.wav", payload),
        file_member(str(outside / "abs_evil.wav"), payload),
        file_member("nsynth-test/audio/../../../evil2.wav", payload),
        (sym, None),
        (hard, None),
        (dev, None),
        (evil_dir, None),
    ]
    archive = build_archive("test", notes, examples_at="middle", listed_only=decoys, extra=extra)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:  # the archive really holds these names
        assert {"../evil.wav", str(outside / "abs_evil.wav"), "../evil_dir"} <= set(tar.getnames())

    root = tmp_path / "root"
    srv = ArchiveServer({ARCHIVE.format("test"): archive})
    outside_before = tree(tmp_path, root)
    caplog.set_level(logging.WARNING, logger=download.__name__)
    try:
        download_NSynth(root, [], 100.0, base_url=srv.base_url, splits=["test"], progress=False)
    finally:
        srv.close()
    assert tree(tmp_path, root) == outside_before
    assert not list(tmp_path.rglob("*evil*"))
    assert set(wavs(root, "test")) == set(notes)
    assert set(examples(root, "test")) == set(notes)
    assert state(root)["splits"]["test"]["refused"] == 7
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for info, _ in extra:
        assert repr(info.name) in warned
    assert "symlink" in warned and "hard link" in warned and "device" in warned


def test_notes_without_an_entry_are_not_kept(tmp_path):
    notes = make_notes("test", {"bass": 3}, seed=9)
    orphans = make_notes("valid", {"bass": 2}, seed=10)  # valid's instrument ids: distinct note_strs
    archive = build_archive("test", notes, examples_at="end", orphans=orphans)
    srv = ArchiveServer({ARCHIVE.format("test"): archive})
    try:
        download_NSynth(tmp_path, ["bass"], 100.0, base_url=srv.base_url, splits=["test"], progress=False)
    finally:
        srv.close()
    assert set(wavs(tmp_path, "test")) == set(notes)
    assert examples(tmp_path, "test") == {n: m for n, (_, m) in notes.items()}


def test_archive_without_examples_json_is_an_error(tmp_path):
    archive = build_archive("test", SPLIT_NOTES["test"], examples_at=None)
    srv = ArchiveServer({ARCHIVE.format("test"): archive})
    try:
        with pytest.raises(NSynthArchiveError, match=r"without nsynth-test/examples\.json"):
            download_NSynth(tmp_path, ["bass"], 100.0, base_url=srv.base_url, splits=["test"], progress=False)
    finally:
        srv.close()
    assert state(tmp_path)["splits"]["test"]["status"] == "partial"
    assert not (tmp_path / "NSynth" / "nsynth-test" / "examples.json").exists()


@pytest.mark.parametrize("keep", [0.6, -4], ids=["mid-member", "gzip-trailer"])
def test_truncated_archive_is_a_clear_error_and_leaves_no_complete_looking_file(server, tmp_path, keep):
    name = ARCHIVE.format("train")
    # examples.json lists a note the archive lacks, so every class stays open and the whole
    # archive is read, down to the gzip trailer.
    missing = make_notes("valid", {"bass": 1}, seed=11)
    full = build_archive("train", SPLIT_NOTES["train"], examples_at="end", listed_only=missing)
    # The file itself is cut (Content-Length agrees): in a note, or only the gzip CRC trailer.
    server.files[name] = full[: int(len(full) * keep) if keep > 0 else keep]
    with pytest.raises(
        NSynthArchiveError,
        match=rf"{name} is truncated.*notes written so far are kept.*"
        rf"run again",
    ):
        download_NSynth(tmp_path, [], 100.0, base_url=server.base_url, splits=["train"], progress=False)
    assert not (tmp_path / "NSynth" / "nsynth-train" / "examples.json").exists()
    audio = tmp_path / "NSynth" / "nsynth-train" / "audio"
    got = wavs(tmp_path, "train")
    assert got and all(got[n] == SPLIT_NOTES["train"][n][0] for n in got)  # only whole notes
    assert not list(audio.glob(".*"))  # no temp file left either
    assert state(tmp_path)["splits"]["train"]["status"] == "partial"
    assert not (tmp_path / "NSynth" / ".partial" / f"{name}.part").exists()  # not resumable: discarded
    # With the archive repaired, a rerun completes.
    server.files[name] = full
    download_NSynth(tmp_path, [], 100.0, base_url=server.base_url, splits=["train"], progress=False)
    assert set(wavs(tmp_path, "train")) == set(SPLIT_NOTES["train"])


@pytest.mark.parametrize("where", ["deflate-data", "crc-trailer"])
def test_corrupt_archive_is_a_clear_error_and_leaves_nothing_that_looks_complete(server, tmp_path, where):
    name = ARCHIVE.format("train")
    missing = make_notes("valid", {"bass": 1}, seed=11)  # keeps every class open: the whole archive is read
    full = build_archive("train", SPLIT_NOTES["train"], examples_at="end", listed_only=missing)
    bad = bytearray(full)
    if where == "deflate-data":
        at = len(full) // 2
        bad[at : at + 64] = random.Random(0).randbytes(64)
    else:  # every byte decodes; only the CRC32 in the gzip trailer disagrees
        bad[-8:-4] = bytes(b ^ 0xFF for b in bad[-8:-4])
    assert len(bad) == len(full)
    server.files[name] = bytes(bad)
    nsdir = tmp_path / "NSynth"
    for _ in range(2):  # a second run takes nothing of the first as done, and fails the same way
        with pytest.raises(
            NSynthArchiveError,
            match=r"is corrupt near byte \d+ .*notes written from it were "
            r"deleted.*Run again",
        ) as info:
            download_NSynth(tmp_path, [], 100.0, base_url=server.base_url, splits=["train"], progress=False)
        assert f"{server.base_url}/{name}" in str(info.value)
        assert not (nsdir / "nsynth-train" / "examples.json").exists()
        assert not list((nsdir / "nsynth-train" / "audio").iterdir())  # no note, no temp file
        assert not (nsdir / ".partial" / f"{name}.part").exists()
        record = state(tmp_path)["splits"]["train"]
        assert record["status"] == "partial" and record["files"] == {}
    server.files[name] = full  # repaired: a rerun completes
    download_NSynth(tmp_path, [], 100.0, base_url=server.base_url, splits=["train"], progress=False)
    got = wavs(tmp_path, "train")
    assert set(got) == set(SPLIT_NOTES["train"]) and all(got[n] == SPLIT_NOTES["train"][n][0] for n in got)


def test_non_gzip_answer_is_a_clear_error(server, tmp_path):
    server.files[ARCHIVE.format("test")] = b"<html>please log in</html>"
    with pytest.raises(NSynthArchiveError, match="is corrupt near byte"):
        download_NSynth(tmp_path, ["bass"], 100.0, base_url=server.base_url, splits=["test"], progress=False)


def test_unsupported_scheme_is_refused_before_anything_happens(tmp_path):
    with pytest.raises(NSynthOptionError, match=r"'ftp'.*valid schemes: http, https, file"):
        download_NSynth(tmp_path / "root", ["bass"], 10.0, base_url="ftp://example.org/nsynth")
    with pytest.raises(NSynthOptionError, match="valid schemes"):
        build(tmp_path / "root", ["bass"], 10.0, None, 0, base_url="nsynth.example.org")
    assert not (tmp_path / "root").exists()


def test_unreachable_server_names_the_url_and_the_alternatives(tmp_path):
    url = closed_port_url()
    with pytest.raises(NSynthDownloadError) as info:
        download_NSynth(tmp_path, ["bass"], 10.0, base_url=url, splits=["test"], timeout=5, progress=False)
    assert isinstance(info.value, UserError)  # reported without a traceback
    message = str(info.value)
    assert f"{url}/nsynth-test.jsonwav.tar.gz" in message
    assert "data.options.NSynth.local_dir" in message and "base_url" in message


def test_http_error_names_the_status(server, tmp_path):
    server.files.clear()
    with pytest.raises(NSynthDownloadError, match=r"HTTP 404.*check data.options.NSynth.base_url"):
        download_NSynth(tmp_path, ["bass"], 10.0, base_url=server.base_url, splits=["test"], progress=False)


def test_file_url_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in standard_archives().items():
        (mirror / name).write_bytes(data)
    download_NSynth(tmp_path / "root", ["keyboard"], 100.0, base_url=mirror.as_uri(), progress=False)
    expected = {n for n, (_, m) in SPLIT_NOTES["valid"].items() if m["instrument_family_str"] == "keyboard"}
    assert set(wavs(tmp_path / "root", "valid")) == expected


def test_plugin_get_items_follow_the_requested_label_order(server, tmp_path):
    dataset = build(tmp_path, ["violin", "bass"], 100.0, None, 0, base_url=server.base_url)
    assert dataset.sample_rate == 16000 and dataset.class_names == ["violin", "bass"]
    dataset.prepare()
    items = dataset.get_items("train")
    family_of_label = {0: "string", 1: "bass"}
    assert {label for _, label, _ in items} == {0, 1}
    for path, label, _ in items:
        assert path.parent == tmp_path / "NSynth" / "nsynth-train" / "audio"
        assert download.family_of(path.stem) == family_of_label[label]
    assert len(items) == 12
    class_map = json.loads((tmp_path / "NSynth" / "class_map.json").read_text())
    assert class_map["classes"] == ["violin", "bass"] and class_map["families"] == ["string", "bass"]


def write_local_copy(copy: Path) -> Path:
    """An NSynth copy on disk (``nsynth-<split>/examples.json`` + ``audio/``) of :data:`SPLIT_NOTES`."""
    for split, notes in SPLIT_NOTES.items():
        audio = copy / f"nsynth-{split}" / "audio"
        audio.mkdir(parents=True)
        for note, (wav, _) in notes.items():
            (audio / f"{note}.wav").write_bytes(wav)
        entries = {n: m for n, (_, m) in notes.items()}
        (copy / f"nsynth-{split}" / "examples.json").write_text(json.dumps(entries))
    return copy


def test_local_dir_is_used_in_place_without_download(tmp_path):
    copy = write_local_copy(tmp_path / "nsynth_copy")
    before = tree(copy)
    root = tmp_path / "root"
    dataset = build(root, ["reed", "synth"], 0.001, None, 0, local_dir=str(copy), base_url=closed_port_url())
    dataset.prepare()  # the closed port would fail any download
    items = dataset.get_items("test")
    assert {label for _, label, _ in items} == {0, 1}
    assert all(p.parent == copy / "nsynth-test" / "audio" for p, _, _ in items)
    assert all(download.family_of(p.stem) == ("reed", "synth_lead")[label] for p, label, _ in items)
    assert tree(copy) == before  # nothing written into the copy
    assert json.loads((root / "NSynth" / "class_map.json").read_text())["classes"] == ["reed", "synth"]
    assert not (root / "NSynth" / download.STATE_FILE).exists()

    with pytest.raises(DatasetError, match=r"nsynth-train/examples\.json"):
        build(root, ["reed"], 1.0, None, 0, local_dir=str(copy / "nsynth-train")).prepare()


def test_unknown_class_and_option_errors(tmp_path):
    with pytest.raises(ClassNameError, match="unknown class 'kazoo'"):
        download_NSynth(tmp_path, ["kazoo"], 10.0, base_url=closed_port_url())
    with pytest.raises(ClassNameError, match="Valid names"):
        build(tmp_path, ["bass", "kazoo"], 10.0, None, 0)
    # unknown keys are refused by the core, against the options NSynth declares
    with pytest.raises(
        UnknownOptionError,
        match=r"unknown option\(s\) for dataset NSynth in data\.options\.NSynth: "
        r"bogus; valid keys: base_url \(default",
    ) as info:
        build(tmp_path, ["bass"], 10.0, None, 0, bogus=1)
    assert all(
        f"{key} (default" in str(info.value) for key in ("base_url", "local_dir", "retries", "splits", "timeout")
    )
    assert isinstance(info.value, UserError)
    with pytest.raises(NSynthOptionError, match="max_total_size_mb must be a positive"):
        download_NSynth(tmp_path, ["bass"], 0, base_url=closed_port_url())
    with pytest.raises(NSynthOptionError, match="unknown split 'dev'"):
        build(tmp_path, ["bass"], 10.0, None, 0, splits=["train", "dev"])
    for bad in (0, -1, "abc", float("nan"), float("inf"), True, None):
        with pytest.raises(NSynthOptionError, match=r"timeout must be a positive number of seconds"):
            build(tmp_path, ["bass"], 10.0, None, 0, timeout=bad)
    for bad in (-1, 1.5, "3", True, None):
        with pytest.raises(NSynthOptionError, match=r"retries must be a whole number >= 0"):
            build(tmp_path, ["bass"], 10.0, None, 0, retries=bad)
    with pytest.raises(NSynthOptionError, match="retries"):
        download_NSynth(tmp_path, ["bass"], 10.0, base_url=closed_port_url(), retries=-2)
    assert build(tmp_path, ["bass"], 10.0, None, 0, retries=0, timeout="2.5").timeout == 2.5
    assert not (tmp_path / "NSynth").exists()


def test_class_budget_never_exceeds_its_budget():
    rng = random.Random(0)
    for _ in range(200):
        families = rng.sample(FAMILIES, rng.randint(1, 5))
        budget = download._ClassBudget(families, rng.randint(0, 5000))
        notes = [(rng.choice(families), rng.randint(1, 600)) for _ in range(rng.randint(0, 40))]
        meta_at = rng.randint(0, len(notes))
        for i, (family, size) in enumerate(notes):
            if i == meta_at:
                budget.set_unseen({f: sum(1 for g, _ in notes[i:] if g == f) for f in families})
            budget.offer(family, size)
            if i >= meta_at:
                budget.saw(family)
            assert sum(budget.kept.values()) <= budget.budget


def test_hook_registers_the_factory():
    (component,) = nsynth.audiokd_datasets()
    assert component.name == "NSynth" and component.factory is build_nsynth
    assert component.options is OPTIONS and all(option.help for option in OPTIONS.values())
    assert {key: option.default for key, option in OPTIONS.items()} == {
        "base_url": "http://download.magenta.tensorflow.org/datasets/nsynth",
        "local_dir": None,
        "timeout": 30.0,
        "retries": 5,
        "splits": ["train", "valid", "test"],
    }


def test_every_clip_is_grouped_by_its_instrument(server, tmp_path):
    copy = write_local_copy(tmp_path / "nsynth_copy")
    downloaded = build(tmp_path / "root", [], 100.0, None, 0, base_url=server.base_url)
    downloaded.prepare()
    for dataset, folder in (
        (downloaded, tmp_path / "root" / "NSynth"),
        (build(tmp_path / "root", [], 1.0, None, 0, local_dir=str(copy)), copy),
    ):
        assert isinstance(dataset, Dataset)
        for split in ("train", "valid", "test"):
            items = dataset.get_items(split)
            meta = json.loads((folder / f"nsynth-{split}" / "examples.json").read_text())
            assert items and all(isinstance(clip, Clip) for clip in items)
            assert len({clip.group for clip in items}) > 1
            for clip in items:
                assert clip.group == meta[clip.path.stem]["instrument_str"]


def test_rich_progress_on_a_terminal(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    download_NSynth(tmp_path, ["bass"], 100.0, base_url=server.base_url, splits=["test"], progress=True)
    assert "nsynth-test" in capsys.readouterr().err
