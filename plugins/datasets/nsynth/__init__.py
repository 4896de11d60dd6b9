"""NSynth (Magenta) as a dataset plugin: a partial, class-filtered, size-budgeted download, or a
copy already on disk used in place.

The download streams each ``nsynth-<split>.jsonwav.tar.gz`` once and keeps only notes of the
requested families, in the layout :mod:`plugins.datasets.common.layout` reads::

    <root>/NSynth/nsynth-<split>/examples.json        entries of the kept notes only, every field kept
    <root>/NSynth/nsynth-<split>/audio/<note_str>.wav
    <root>/NSynth/download_state.json                 progress (see "Resume")
    <root>/NSynth/.partial/nsynth-<split>.jsonwav.tar.gz.part   compressed bytes read, while incomplete

Budget. ``max_total_size_mb`` (1 MB = 10**6 bytes) caps the bytes of kept WAVs over all splits.
Splits are fetched test, valid, train; when a split starts it is given
``(budget - bytes of finished splits - budgets reserved by unfinished ones) * weight / weights of
the splits not started yet`` with weights train 0.8, valid 0.1, test 0.1, so whatever a small split
leaves unused goes to train. The split's budget is stored in the state file and reused on resume,
so the total holds across interrupted runs. Within a split every class gets an equal share; once
``examples.json`` has been read, a class whose notes have all gone by without one being turned away
keeps only what it took and its leftover is re-shared among the others. Reading stops as soon as
every class is full (its last note did not fit) or finished, *and* ``examples.json`` has been read.

examples.json. Member order inside the archives is undocumented. Notes that come before
``examples.json`` are kept provisionally; when it arrives, kept notes without an entry are deleted
(and their bytes refunded), later notes without one are skipped. An archive that ends without
``examples.json`` is an error, and the split stays incomplete.

Resume. The compressed bytes are teed to the ``.part`` file while streaming. A later run
decompresses that prefix from disk and asks the server for the rest with ``Range: bytes=<n>-``;
a server that answers 200 instead is read from byte 0 again. Either way the members are replayed in
the same order with the same budget, so the same notes are kept, and a note already written (listed
in the state with its size) is not written again. A finished split is marked complete, its ``.part``
deleted, and it is never fetched again.

Retries. Within a run, a connection that drops, or stalls (no byte for ``timeout`` seconds), is
reopened from the byte where it stopped (``Range``, with ``If-Range`` so a changed archive is not
spliced onto the old one), up to ``retries`` times per archive, waiting 0, 1, 2, 4 ... (at most 30)
seconds between tries. When they run out the error says so and a rerun resumes. A server that
cannot be reached at all, or answers with an HTTP error, is reported at once.

Broken archives. An archive cut short (the gzip stream ends early) keeps the notes read so far:
they decoded exactly. A corrupt one (bad deflate data, CRC mismatch, garbage tar headers) may
have produced garbage before the damage showed, so its notes are deleted too. Either way the
``.part`` is discarded, ``examples.json`` is not written and the split stays incomplete.

Safety. Only regular files named ``nsynth-<split>/examples.json`` or
``nsynth-<split>/audio/<letters, digits, _ or ->.wav`` are written, to paths built from that name;
links, devices, absolute or ``..`` paths and anything else are refused with a warning.

Modules: :mod:`.options` (``data.options.NSynth``, each default written once), :mod:`.download`
(the download and extraction described above), :mod:`.dataset` (:class:`~.dataset.NSynthDataset`);
this module registers it.
"""

from __future__ import annotations

from core.api import Component, hookimpl
from plugins.datasets.nsynth.dataset import NSynthDataset, build_nsynth
from plugins.datasets.nsynth.download import download_NSynth
from plugins.datasets.nsynth.options import OPTIONS


@hookimpl
def audiokd_datasets() -> list[Component]:
    return [
        Component(
            "NSynth",
            build_nsynth,
            "NSynth (Magenta): partial, class-filtered, size-budgeted download or a copy on disk",
            options=OPTIONS,
        )
    ]


__all__ = ["NSynthDataset", "audiokd_datasets", "build_nsynth", "download_NSynth"]
