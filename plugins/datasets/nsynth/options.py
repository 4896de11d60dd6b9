"""``data.options.NSynth``: the options NSynth declares (each default written once, here) and the
checks of their values (and of ``data.max_total_size_mb``)."""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from core.api import ConfigValueError, Option

#: The core checks a user's block against these and passes every one to the factory, defaults
#: filled in; :func:`~plugins.datasets.nsynth.download.download_NSynth` takes its defaults from here.
OPTIONS: dict[str, Option] = {
    "base_url": Option(
        "http://download.magenta.tensorflow.org/datasets/nsynth",
        "http(s):// or file:// folder holding nsynth-{train,valid,test}.jsonwav.tar.gz",
    ),
    "local_dir": Option(None, "an NSynth copy already on disk (holds nsynth-train/ ...): used in place"),
    "timeout": Option(30.0, "seconds without data before a stalled download is retried"),
    "retries": Option(5, "resumed retries (HTTP Range) after a drop or stall; 0 = fail at once"),
    "splits": Option(["train", "valid", "test"], "splits to download, or to expect in local_dir"),
}
SCHEMES: tuple[str, ...] = ("http", "https", "file")
BYTES_PER_MB = 1_000_000


class NSynthOptionError(ConfigValueError):
    """An argument or ``data.options.NSynth`` entry has a bad value (unknown keys are refused by the
    core)."""


def check_base_url(base_url: str) -> str:
    """Return ``base_url`` if its scheme is one the download can read, else raise NSynthOptionError."""
    scheme = urllib.parse.urlsplit(str(base_url)).scheme.lower()
    if scheme not in SCHEMES:
        raise NSynthOptionError(
            f"unsupported URL scheme {scheme or '(none)'!r} in NSynth base_url {base_url!r}; "
            f"valid schemes: {', '.join(SCHEMES)} (e.g. {OPTIONS['base_url'].default} or file:///data/nsynth)"
        )
    return str(base_url)


def check_timeout(timeout: Any) -> float:
    """``timeout`` as seconds, if it is a positive finite number."""
    try:
        seconds = float(timeout) if not isinstance(timeout, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise NSynthOptionError(
            f"data.options.NSynth.timeout must be a positive number of seconds "
            f"(e.g. {OPTIONS['timeout'].default:g}), got {timeout!r}"
        )
    return seconds


def check_retries(retries: Any) -> int:
    """``retries`` as an int, if it is a whole number >= 0."""
    if isinstance(retries, float) and retries.is_integer():
        retries = int(retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise NSynthOptionError(
            f"data.options.NSynth.retries must be a whole number >= 0 "
            f"(e.g. {OPTIONS['retries'].default}; 0 = never retry), got {retries!r}"
        )
    return retries


def budget_bytes(max_total_size_mb: float) -> int:
    """``data.max_total_size_mb`` in bytes, if it is a positive finite number."""
    try:
        mb = float(max_total_size_mb)
    except (TypeError, ValueError):
        mb = math.nan
    if not (mb > 0 and math.isfinite(mb)):
        raise NSynthOptionError(
            f"data.max_total_size_mb must be a positive number of megabytes (10**6 bytes), got {max_total_size_mb!r}"
        )
    return int(mb * BYTES_PER_MB)
