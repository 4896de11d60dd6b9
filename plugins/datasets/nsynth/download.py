"""The partial, resumable, size-budgeted download of NSynth's archives and their safe extraction
into NSynth's layout. What it keeps, how it shares the budget, resumes, retries, and what it refuses
is written in the package docstring (:mod:`plugins.datasets.nsynth`)."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import math
import os
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from core.api import StageProgress, UserError, atomic_write_text, temp_file
from plugins.datasets.common.families import FAMILIES, resolve_classes
from plugins.datasets.common.layout import SPLITS, DatasetError, canonical_split, entry_problem, json_type, split_dir
from plugins.datasets.nsynth.options import (
    BYTES_PER_MB,
    OPTIONS,
    NSynthOptionError,
    budget_bytes,
    check_base_url,
    check_retries,
    check_timeout,
)

log = logging.getLogger(__name__)

STATE_FILE = "download_state.json"
#: Share of the byte budget each split gets; valid and test are small held-out sets.
SPLIT_WEIGHTS: dict[str, float] = {"train": 0.8, "valid": 0.1, "test": 0.1}
#: The small splits first, so the budget they leave unused flows to train.
FETCH_ORDER: tuple[str, ...] = ("test", "valid", "train")

_CHUNK = 1 << 16
_STATE_VERSION = 1
_STATE_SAVE_EVERY_S = 2.0  # rewriting the state after every note would be quadratic in notes
_PROGRESS_LOG_EVERY_S = 15.0
_RETRY_WAIT_MAX_S = 30.0
_NOTE_RE = re.compile(rf"({'|'.join(sorted(FAMILIES, key=len, reverse=True))})_[a-z]+_\d+-\d+-\d+")
_LOCAL_DIR_HINT = (
    "If you have NSynth on disk, set data.options.NSynth.local_dir to the folder holding "
    "nsynth-train/, nsynth-valid/ and nsynth-test/; or set data.options.NSynth.base_url to a mirror."
)


class NSynthDownloadError(UserError, RuntimeError):
    """The archive could not be fetched (server unreachable, HTTP error, connection lost).
    Whatever was read is kept: running again resumes."""


class NSynthArchiveError(NSynthDownloadError):
    """An archive is corrupt, truncated, or has no ``examples.json``; its partial data was discarded."""


class _TransientError(NSynthDownloadError):
    """A failure worth retrying: the connection was refused, reset, timed out, or the server had a
    temporary problem (HTTP 408, 429, 5xx). ``what`` says what happened, without the hints."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what}. {_LOCAL_DIR_HINT}")


def archive_url(base_url: str, split: str) -> str:
    return f"{base_url.rstrip('/')}/nsynth-{canonical_split(split)}.jsonwav.tar.gz"


def family_of(note_str: str) -> str | None:
    """The family of a ``note_str`` (``synth_lead_synthetic_000-060-100`` -> ``synth_lead``), or None."""
    match = _NOTE_RE.fullmatch(note_str)
    return match.group(1) if match else None


def download_NSynth(
    root: str | Path,
    classes: Iterable[str] | None,
    max_total_size_mb: float,
    base_url: str = OPTIONS["base_url"].default,
    splits: Iterable[str] = OPTIONS["splits"].default,
    timeout: float = OPTIONS["timeout"].default,
    progress: bool = True,
    retries: int = OPTIONS["retries"].default,
) -> Path:
    """Download the notes of ``classes`` from NSynth's archives into ``<root>/NSynth``.

    Resumes an interrupted download; splits already complete are not fetched again.

    Args:
        root: data root; the dataset goes to ``<root>/NSynth``.
        classes: NSynth families or instrument names (see ``common/families.py``); empty = all families.
        max_total_size_mb: cap on the bytes of kept WAVs over all splits (1 MB = 10**6 bytes).
        base_url: folder URL holding ``nsynth-<split>.jsonwav.tar.gz`` (http, https or file).
        splits: which of train/valid/test to fetch.
        timeout: seconds without a byte from the server (connecting, or mid-download) before the
            attempt counts as failed; a stalled download is then retried.
        progress: show a progress bar (on a terminal) or periodic log lines.
        retries: how many times a dropped or stalled download of one archive is reopened where it
            stopped before giving up (0 = never); a rerun resumes in any case.

    Returns:
        ``<root>/NSynth``.

    Raises:
        NSynthOptionError: a bad argument or URL scheme. ``ClassNameError``: an unknown class name.
        NSynthDownloadError: the server could not be reached or failed, or the connection
            kept failing after ``retries`` retries (rerun to resume).
        NSynthArchiveError: an archive is broken. DatasetError: ``<root>/NSynth`` holds a
            download made for other classes or another budget.
    """
    check_base_url(base_url)
    families = [fam for _, fam in resolve_classes(list(classes or []))]
    budget = budget_bytes(max_total_size_mb)
    timeout = check_timeout(timeout)
    retries = check_retries(retries)
    wanted = fetch_order(splits)
    out_dir = Path(root).expanduser() / "NSynth"
    state = _State(out_dir / STATE_FILE)
    if state.covers(families, wanted, budget):
        log.info("NSynth: %s already downloaded in %s", ", ".join(wanted), out_dir)
        return out_dir
    state.claim(families, budget)
    for split in wanted:
        record = state.split(split)
        if record is not None and record["status"] == "complete":
            continue
        if record is None:
            record = state.start_split(split, wanted)
        _SplitFetch(
            split, archive_url(base_url, split), out_dir, families, record, state, timeout, retries, progress
        ).run()
    return out_dir


def _retry_wait(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): at once, then 1, 2, 4 ... s."""
    return 0.0 if attempt <= 1 else min(2.0 ** (attempt - 2), _RETRY_WAIT_MAX_S)


def fetch_order(splits: Iterable[str]) -> list[str]:
    """The requested splits, checked, in the order they are fetched."""
    names = [splits] if isinstance(splits, str) else list(splits)
    try:
        chosen = {canonical_split(str(s)) for s in names}
    except ValueError as exc:
        raise NSynthOptionError(f"data.options.NSynth.splits: {exc}") from None
    if not chosen:
        raise NSynthOptionError(f"data.options.NSynth.splits is empty; valid: {', '.join(SPLITS)}")
    return [s for s in FETCH_ORDER if s in chosen]


# --- progress state ---------------------------------------------------------------------------
class _State:
    """``download_state.json``: what the download was made for, and each split's progress.

    Per split: ``status`` (partial/complete), ``budget_bytes``, ``files`` (note_str -> bytes of
    each WAV written), ``kept_bytes``, ``archive_bytes``, ``read_bytes`` (compressed bytes read by
    the last run), ``validator`` (ETag or Last-Modified, sent as If-Range on resume), ``refused``
    (unsafe members seen).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": _STATE_VERSION, "request": None, "splits": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON and UTF-8 errors
                raise DatasetError(f"{path} is unreadable ({exc}); delete it to restart the download") from exc
            if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
                raise DatasetError(f"{path} was written by another version; delete it to restart the download")
            if not isinstance(data.get("splits"), dict) or not isinstance(data.get("request"), (dict, type(None))):
                raise DatasetError(f"{path} is damaged; delete it to restart the download")
            self.data = data
        self._saved_at = -math.inf

    def split(self, split: str) -> dict[str, Any] | None:
        return self.data["splits"].get(split)

    def covers(self, families: list[str], wanted: list[str], budget: int) -> bool:
        """True if every wanted split is complete, holds (at least) these families and was fetched
        with this budget (another budget is refused by :meth:`claim`, complete or not: the data would
        not be what the run logs)."""
        request = self.data["request"]
        return (
            request is not None
            and set(families) <= set(request["families"])
            and request["budget_bytes"] == budget
            and all((self.split(s) or {}).get("status") == "complete" for s in wanted)
        )

    def claim(self, families: list[str], budget: int) -> None:
        """Record what this download is for; refuse to mix it with one made for something else,
        since the per-class shares and the total budget would no longer mean anything."""
        request: dict[str, Any] = {"families": sorted(families), "budget_bytes": budget}
        stored = self.data["request"]
        if stored is not None and stored != request and self.data["splits"]:
            raise DatasetError(
                f"{self.path.parent} holds an NSynth download made for families "
                f"{', '.join(stored['families'])} with a budget of "
                f"{stored['budget_bytes'] / BYTES_PER_MB:g} MB; "
                f"this run asks for {', '.join(request['families'])} with {budget / BYTES_PER_MB:g} MB. "
                f"Go back to those settings, use another data.root, or delete {self.path.parent} "
                f"to download afresh"
            )
        self.data["request"] = request

    def start_split(self, split: str, wanted: list[str]) -> dict[str, Any]:
        """Give ``split`` its share of the budget left (see the module docstring) and record it."""
        total = self.data["request"]["budget_bytes"]
        spent = sum(
            r["kept_bytes"] if r["status"] == "complete" else r["budget_bytes"] for r in self.data["splits"].values()
        )
        pending = [s for s in wanted if s not in self.data["splits"]]
        share = SPLIT_WEIGHTS[split] / sum(SPLIT_WEIGHTS[s] for s in pending)
        record = {
            "status": "partial",
            "budget_bytes": max(0, int((total - spent) * share)),
            "kept_bytes": 0,
            "files": {},
            "archive_bytes": None,
            "read_bytes": 0,
            "validator": None,
            "refused": 0,
        }
        self.data["splits"][split] = record
        self.save()
        return record

    def save(self, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - self._saved_at >= _STATE_SAVE_EVERY_S:
            atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))
            self._saved_at = now


# --- budget within a split --------------------------------------------------------------------
class _ClassBudget:
    """Shares one split's byte budget between classes.

    Equal shares, except that a class known to have no notes left (``examples.json`` read, all its
    notes gone by, none turned away) keeps what it took and leaves the rest to the open classes.
    Open shares only grow, so the kept total never exceeds the budget.
    """

    def __init__(self, families: list[str], budget: int) -> None:
        self.budget = budget
        self.kept: dict[str, int] = dict.fromkeys(families, 0)
        self.turned_away: dict[str, int] = {}  # family -> size of its last note that did not fit
        self.unseen: dict[str, int] | None = None  # notes still to come, once examples.json is read

    def _finished(self, family: str) -> bool:
        return self.unseen is not None and self.unseen[family] == 0 and family not in self.turned_away

    def quotas(self) -> dict[str, int]:
        settled = {f: k for f, k in self.kept.items() if self._finished(f)}
        n_open = len(self.kept) - len(settled)
        share = (self.budget - sum(settled.values())) // n_open if n_open else 0
        return {f: settled.get(f, share) for f in self.kept}

    def offer(self, family: str, size: int) -> bool:
        """Take a note of ``size`` bytes if it fits the family's share."""
        if self.kept[family] + size <= self.quotas()[family]:
            self.kept[family] += size
            return True
        self.turned_away[family] = size
        return False

    def refund(self, family: str, size: int) -> None:
        self.kept[family] -= size

    def set_unseen(self, unseen: dict[str, int]) -> None:
        self.unseen = dict(unseen)

    def saw(self, family: str) -> None:
        """One more note of ``family`` listed in examples.json has gone by (call after :meth:`offer`)."""
        if self.unseen is not None:
            self.unseen[family] -= 1

    def full(self) -> bool:
        """True when no later note can be taken: every class is finished or its last note did not fit."""
        if self.unseen is None:
            return False
        quotas = self.quotas()
        return all(
            self._finished(f) or (f in self.turned_away and quotas[f] - kept < self.turned_away[f])
            for f, kept in self.kept.items()
        )


# --- bytes of one archive ---------------------------------------------------------------------
class _Remote:
    """An open response body from byte ``start`` of an archive of ``total`` bytes (None: unknown)."""

    def __init__(self, body: IO[bytes], start: int, total: int | None, validator: str | None) -> None:
        self.body, self.start, self.total, self.validator = body, start, total, validator


def _open_remote(url: str, offset: int, timeout: float, validator: str | None) -> _Remote:
    """Open ``url`` from byte ``offset``; ``start`` of the result is 0 when the server sent it whole."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = Path(urllib.request.url2pathname(parts.path))
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise NSynthDownloadError(f"cannot open {url}: {exc.strerror}. {_LOCAL_DIR_HINT}") from exc
        total = os.fstat(fh.fileno()).st_size
        fh.seek(min(offset, total))
        return _Remote(fh, min(offset, total), total, None)

    headers = {"User-Agent": "audiokd-nsynth"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the server sends the whole archive instead if it changed since
            headers["If-Range"] = validator
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # our prefix is not a prefix of what the server has
            log.warning("%s: the server refused to resume at byte %d; downloading it again", url, offset)
            return _open_remote(url, 0, timeout, None)
        hint = " (no such archive: check data.options.NSynth.base_url)" if exc.code == 404 else ""
        what = f"{url}: HTTP {exc.code} {exc.reason}{hint}"
        if exc.code in (408, 429) or exc.code >= 500:
            raise _TransientError(what) from exc
        raise NSynthDownloadError(f"{what}. {_LOCAL_DIR_HINT}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _TransientError(f"cannot reach the NSynth server at {url}: {reason}") from exc

    etag = resp.headers.get("ETag")
    new_validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
    if resp.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != offset:
            resp.close()
            raise NSynthDownloadError(
                f"{url}: asked for bytes {offset}- but the server sent Content-Range "
                f"{resp.headers.get('Content-Range')!r}"
            )
        archive_size = int(match.group(2)) if match.group(2) != "*" else None
        return _Remote(resp, offset, archive_size, new_validator)
    length = resp.headers.get("Content-Length")
    return _Remote(resp, 0, int(length) if length and length.isdigit() else None, new_validator)


class _ArchiveBytes:
    """The compressed bytes of one archive, in order: the ``.part`` prefix an earlier run left,
    then the network body, appended to the ``.part`` as it arrives so a later run can resume.
    A body that drops or stalls is reopened where it stopped, up to ``retries`` times."""

    def __init__(
        self, url: str, part: Path, record: dict[str, Any], timeout: float, retries: int, on_read: Callable[[int], None]
    ) -> None:
        self.url, self.timeout, self.retries = url, timeout, retries
        self.record = record
        self.attempts = 0  # retries used so far
        self.on_read = on_read
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        total: int | None = record.get("archive_bytes")
        if total is not None and have > total:
            have = 0  # not a prefix of this archive: start over
        self.remote: _Remote | None = None
        if not (have and have == total):  # unless the whole archive is on disk already
            self.remote = _open_remote(url, have, timeout, record.get("validator"))
            if self.remote.start != have:
                log.info(
                    "%s: the server sent the whole archive instead of bytes %d-; reading it from "
                    "the start (notes already written are not written again)",
                    url,
                    have,
                )
                have = 0
            total = self.remote.total
            record["archive_bytes"], record["validator"] = total, self.remote.validator
        self.total = total
        self.resumed_at = have
        self.pos = 0
        self._local = part.open("rb") if have else None
        self._local_left = have
        self._sink = part.open("ab" if have else "wb")

    def read(self, size: int = _CHUNK) -> bytes:
        size = size if size and size > 0 else _CHUNK
        if self._local is not None and self._local_left:
            data = self._local.read(min(size, self._local_left))
            if not data:
                raise NSynthArchiveError(f"{self._local.name} shrank while being read")
            self._local_left -= len(data)
            return self._advance(data)
        if self.remote is None:
            return b""
        while True:
            try:
                # read1: what has arrived, so a stall loses nothing already received.
                data = self.remote.body.read1(size)
            except (OSError, http.client.HTTPException) as exc:
                failure = self._describe(exc)
            else:
                if data or self.total is None or self.pos >= self.total:
                    break
                failure = f"the connection to {self.url} closed after {self.pos} of {self.total} bytes"
            self._reopen(failure)
        if not data:
            return b""
        self._sink.write(data)
        return self._advance(data)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
            return (
                f"the download of {self.url} stalled: no data for {self.timeout:g} s "
                f"(data.options.NSynth.timeout) after {self.pos} bytes"
            )
        return f"reading {self.url} failed after {self.pos} bytes ({exc})"

    def _reopen(self, failure: str) -> None:
        """Reopen the body at byte ``pos``, or raise once ``retries`` retries have been used."""
        assert self.remote is not None
        self.remote.body.close()
        self._sink.flush()
        while True:
            if self.attempts >= self.retries:
                tried = f" and {self.attempts} retries" if self.attempts else " (retries disabled)"
                raise NSynthDownloadError(
                    f"{failure}; giving up after that{tried} (data.options.NSynth.retries). "
                    f"The {self.pos} bytes read are kept: run again to resume from there"
                )
            self.attempts += 1
            wait = _retry_wait(self.attempts)
            log.warning(
                "%s; retry %d of %d from byte %d%s",
                failure,
                self.attempts,
                self.retries,
                self.pos,
                f" in {wait:g} s" if wait else "",
            )
            time.sleep(wait)
            try:
                self.remote = self._resume_at(self.pos)
                return
            except _TransientError as exc:
                failure = exc.what

    def _resume_at(self, offset: int) -> _Remote:
        """A body positioned at ``offset`` of the same archive, skipping what a server that ignores
        ``Range`` sends again; the archive changing underneath is an NSynthArchiveError."""
        remote = _open_remote(self.url, offset, self.timeout, self.record.get("validator"))
        changed = (self.total is not None and remote.total is not None and remote.total != self.total) or (
            remote.start == 0
            and offset
            and remote.validator
            and self.record.get("validator")
            and remote.validator != self.record["validator"]
        )
        if changed:
            remote.body.close()
            raise NSynthArchiveError(
                f"{self.url} changed on the server while it was being downloaded; the partial data "
                f"was discarded, run again to download it afresh"
            )
        left = offset - remote.start
        try:
            while left > 0:  # a 200 answer: the bytes already on disk come again
                chunk = remote.body.read(min(left, _CHUNK))
                if not chunk:
                    raise OSError("the connection closed before reaching the resume point")
                left -= len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            remote.body.close()
            raise _TransientError(self._describe(exc)) from exc
        return remote

    def _advance(self, data: bytes) -> bytes:
        self.pos += len(data)
        self.on_read(self.pos)
        return data

    def close(self) -> None:
        for fh in (self._local, self._sink, self.remote.body if self.remote else None):
            if fh is not None:
                fh.close()


# --- one split --------------------------------------------------------------------------------
def _write_atomic(src: IO[bytes], size: int, dest: Path, what: str) -> None:
    """Copy ``size`` bytes to ``dest`` via a temp file in the same folder + rename."""
    tmp = temp_file(dest)
    try:
        with open(tmp, "wb") as out:
            copied = 0
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                copied += len(chunk)
            if copied != size:
                raise NSynthArchiveError(f"{what}: member ends after {copied} of {size} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _SplitFetch:
    """One pass over one split's archive, keeping the requested notes within the split's budget."""

    def __init__(
        self,
        split: str,
        url: str,
        out_dir: Path,
        families: list[str],
        record: dict[str, Any],
        state: _State,
        timeout: float,
        retries: int,
        progress: bool,
    ) -> None:
        self.split, self.url, self.record, self.state, self.timeout = split, url, record, state, timeout
        self.retries = retries
        self.families = families
        self.sdir = split_dir(out_dir, split)
        self.audio = self.sdir / "audio"
        self.part = out_dir / ".partial" / f"nsynth-{split}.jsonwav.tar.gz.part"
        self.progress = StageProgress(
            f"nsynth-{split}", unit="bytes", enabled=progress, log_every_s=_PROGRESS_LOG_EVERY_S, logger=log
        )
        self.budget = _ClassBudget(families, record["budget_bytes"])
        self.meta: dict[str, dict[str, Any]] | None = None  # examples.json, requested families only
        self.kept: dict[str, int] = {}  # note_str -> bytes, kept in this pass
        self.seen: dict[str, set[str]] = {f: set() for f in families}
        self.refused = 0
        self.no_entry = 0

    def run(self) -> None:
        self.audio.mkdir(parents=True, exist_ok=True)
        for stale in [*self.sdir.glob(".*.part"), *self.audio.glob(".*.part")]:
            stale.unlink()  # temp files of an interrupted run
        try:
            raw = _ArchiveBytes(
                self.url, self.part, self.record, self.timeout, self.retries, lambda pos: self.progress.update(pos)
            )
            try:
                self.progress.start(raw.total)
                log.info(
                    "nsynth-%s: reading %s%s (budget %.1f MB for %s)",
                    self.split,
                    self.url,
                    f", resuming at byte {raw.resumed_at}" if raw.resumed_at else "",
                    self.record["budget_bytes"] / BYTES_PER_MB,
                    ", ".join(self.families),
                )
                self._scan(raw)
            finally:
                self.record["read_bytes"] = raw.pos
                raw.close()
        except NSynthArchiveError:
            self.part.unlink(missing_ok=True)  # a broken prefix cannot be resumed from
            raise
        finally:
            self.progress.stop()
            self.record["refused"] = self.refused
            self.state.save()
        self._finish()

    def _scan(self, raw: _ArchiveBytes) -> None:
        """Read members until the budget is spent and examples.json is read, or the archive ends."""
        # gzip.GzipFile rather than tarfile's "r|gz": tarfile ends quietly when an archive is cut
        # between members, GzipFile raises EOFError (and checks the CRC at the end).
        # (typeshed wants a seek() that GzipFile never calls when it only reads forward.)
        gz = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[call-overload]
        try:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                while (member := tar.next()) is not None:
                    del tar.members[:]  # type: ignore[attr-defined]  # ~300k in train: keep memory flat
                    self._member(tar, member)
                    if self.meta is not None and self.budget.full():
                        log.info(
                            "nsynth-%s: nothing more to keep (every class full or finished) after "
                            "%d of %s compressed bytes",
                            self.split,
                            raw.pos,
                            raw.total if raw.total is not None else "?",
                        )
                        return
            while gz.read(_CHUNK):  # the rest is tar padding; reading it verifies the gzip trailer
                pass
        except EOFError as exc:  # cut short: what decoded so far is exact, so the notes are kept
            raise NSynthArchiveError(
                f"{self.url} is truncated: the archive ends after {raw.pos} bytes ({exc}). The partial "
                f"download was discarded (the notes written so far are kept) and nsynth-{self.split} is "
                f"marked incomplete: run again to download the rest afresh; if it happens again the "
                f"archive there is damaged. {_LOCAL_DIR_HINT}"
            ) from exc
        except (zlib.error, gzip.BadGzipFile, tarfile.TarError) as exc:
            deleted = self._discard_notes()
            raise NSynthArchiveError(
                f"{self.url} is corrupt near byte {raw.pos} ({exc}): the data read from it cannot be "
                f"trusted, so the partial download and the {deleted} notes written from it were "
                f"deleted and nsynth-{self.split} is marked incomplete. Run again to download it afresh; "
                f"if it happens again the archive there is damaged. {_LOCAL_DIR_HINT}"
            ) from exc
        if self.meta is None:
            raise NSynthArchiveError(
                f"{self.url} ends without nsynth-{self.split}/examples.json, so its notes cannot be "
                f"described; nsynth-{self.split} is marked incomplete"
            )

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        kind, note = _classify(member, self.split)
        if kind == "refused":
            self.refused += 1
            log.warning(
                "nsynth-%s: refused archive member %r (%s): only regular files "
                "nsynth-%s/examples.json and nsynth-%s/audio/<note_str>.wav are written",
                self.split,
                member.name,
                _member_type(member),
                self.split,
                self.split,
            )
        elif kind == "examples":
            self._examples(tar, member)
        elif kind == "wav":
            self._wav(tar, member, note)

    def _examples(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if self.meta is not None:
            log.warning("nsynth-%s: a second examples.json in the archive was ignored", self.split)
            return
        fh = tar.extractfile(member)
        data = fh.read() if fh is not None else b""
        if len(data) != member.size:
            raise NSynthArchiveError(f"{self.url}: examples.json ends after {len(data)} of {member.size} bytes")
        try:
            everything = json.loads(data)
        # ValueError covers JSON and UTF-8 errors and integers too long to convert; RecursionError,
        # absurdly deep nesting.
        except (ValueError, RecursionError) as exc:
            raise NSynthArchiveError(
                f"{self.url}: nsynth-{self.split}/examples.json is not valid JSON ({exc}); it must be one "
                f"JSON object keyed by note_str. If it happens again the archive there is damaged. "
                f"{_LOCAL_DIR_HINT}"
            ) from exc
        if not isinstance(everything, dict):
            raise NSynthArchiveError(
                f"{self.url}: nsynth-{self.split}/examples.json holds a JSON {json_type(everything)}; "
                f"it must be one object keyed by note_str. {_LOCAL_DIR_HINT}"
            )
        wanted = set(self.families)
        self.meta, problems = {}, []
        for note, entry in everything.items():
            family = family_of(note)
            if family not in wanted:
                continue  # also every name that is not a plain note_str
            problem = entry_problem(note, entry)
            if problem is None and entry["instrument_family_str"] != family:
                problem = (
                    f"{note!r}: instrument_family_str is {entry['instrument_family_str']!r}, "
                    f"but the name says {family!r}"
                )
            if problem is None:
                self.meta[note] = entry
            else:
                problems.append(problem)
        del everything
        if problems:
            log.warning(
                "nsynth-%s: %d entries of examples.json for the requested families are malformed "
                "and their notes are skipped, e.g. %s",
                self.split,
                len(problems),
                problems[0],
            )
        # Notes kept before examples.json arrived, but not described by it, are not kept.
        orphans = [note for note in self.kept if note not in self.meta]
        for note in orphans:
            self._drop(note)
        if orphans:
            log.warning(
                "nsynth-%s: %d notes have no examples.json entry and were dropped (e.g. %s)",
                self.split,
                len(orphans),
                orphans[0],
            )
        unseen = dict.fromkeys(self.families, 0)
        for note in self.meta:
            family = family_of(note)
            if family is not None and note not in self.seen[family]:
                unseen[family] += 1
        self.budget.set_unseen(unseen)

    def _wav(self, tar: tarfile.TarFile, member: tarfile.TarInfo, note: str) -> None:
        family = family_of(note)
        if family not in self.seen:
            return  # not a requested family
        if note in self.seen[family]:
            log.warning("nsynth-%s: duplicate member for %s ignored", self.split, note)
            return
        if self.meta is not None and note not in self.meta:
            self.no_entry += 1
            return
        self.seen[family].add(note)
        if self.budget.offer(family, member.size):
            self._keep(tar, member, note)
        self.budget.saw(family)

    def _keep(self, tar: tarfile.TarFile, member: tarfile.TarInfo, note: str) -> None:
        path = self.audio / f"{note}.wav"
        files = self.record["files"]
        done_before = files.get(note) == member.size and path.is_file() and path.stat().st_size == member.size
        if not done_before:
            src = tar.extractfile(member)
            assert src is not None  # regular files always have data
            _write_atomic(src, member.size, path, f"{self.url}: {member.name}")
            files[note] = member.size
            self.state.save(force=False)
        self.kept[note] = member.size
        kept = sum(self.budget.kept.values())
        self.progress.update(label=f"nsynth-{self.split} (kept {kept / BYTES_PER_MB:.1f} MB)")

    def _discard_notes(self) -> int:
        """Delete every note of this split written from the archive (in this run or an earlier
        one, as recorded in the state) and forget them; returns how many there were."""
        notes = set(self.kept) | set(self.record["files"])
        for note in notes:
            (self.audio / f"{note}.wav").unlink(missing_ok=True)
        self.kept.clear()
        self.record["files"] = {}
        self.record["kept_bytes"] = 0
        return len(notes)

    def _drop(self, note: str) -> None:
        size = self.kept.pop(note)
        family = family_of(note)
        if family is not None:  # always: only notes of requested families are kept
            self.budget.refund(family, size)
        self.record["files"].pop(note, None)
        (self.audio / f"{note}.wav").unlink(missing_ok=True)

    def _finish(self) -> None:
        """Write examples.json of the kept notes, mark the split complete, drop the .part."""
        assert self.meta is not None
        for wav in self.audio.glob("*.wav"):
            if wav.stem not in self.kept:  # left by a run that was then changed; not in examples.json
                wav.unlink()
        entries = {note: self.meta[note] for note in sorted(self.kept)}
        atomic_write_text(self.sdir / "examples.json", json.dumps(entries, indent=2))
        self.record.update(status="complete", files=dict(self.kept), kept_bytes=sum(self.kept.values()))
        self.state.save()
        self.part.unlink(missing_ok=True)
        if self.part.parent.is_dir() and not any(self.part.parent.iterdir()):
            self.part.parent.rmdir()
        per_class = {f: sum(1 for n in self.kept if family_of(n) == f) for f in self.families}
        log.info(
            "nsynth-%s: kept %d notes, %.2f MB (%s)",
            self.split,
            len(self.kept),
            self.record["kept_bytes"] / BYTES_PER_MB,
            ", ".join(f"{f} {n}" for f, n in per_class.items()),
        )
        if empty := [f for f, n in per_class.items() if n == 0]:
            log.warning(
                "nsynth-%s: no notes kept for %s (none in the archive, or the budget is smaller than one note)",
                self.split,
                ", ".join(empty),
            )
        if self.no_entry:
            log.warning("nsynth-%s: %d notes without an examples.json entry were skipped", self.split, self.no_entry)
        if self.refused:
            log.warning("nsynth-%s: %d unsafe archive members were refused", self.split, self.refused)


def _classify(member: tarfile.TarInfo, split: str) -> tuple[str, str]:
    """``(kind, note_str)``: kind is examples, wav, dir (the archive's own folders: nothing to do)
    or refused (anything else, including links and odd paths, which are never written)."""
    top = f"nsynth-{split}"
    name = member.name[2:] if member.name.startswith("./") else member.name
    if member.isdir() and name.rstrip("/") in (top, f"{top}/audio"):
        return "dir", ""
    if member.isreg():
        if name == f"{top}/examples.json":
            return "examples", ""
        match = re.fullmatch(rf"{re.escape(top)}/audio/([A-Za-z0-9_-]+)\.wav", name)
        if match:
            return "wav", match.group(1)
    return "refused", ""


def _member_type(member: tarfile.TarInfo) -> str:
    for test, word in (
        (member.issym, "symlink"),
        (member.islnk, "hard link"),
        (member.isdev, "device"),
        (member.isdir, "directory"),
        (member.isreg, "file"),
    ):
        if test():
            return word
    return f"type {member.type!r}"
