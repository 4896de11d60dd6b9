"""NSynth instrument families and the one table that maps common instrument names onto them.

Shared by the NSynth and GMNotes dataset plugins, which use the same label space.
"""

from __future__ import annotations

from core.api import UserError

#: NSynth's families, in NSynth's own index order (instrument_family 0..10).
FAMILIES: tuple[str, ...] = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)

#: NSynth's instrument sources (instrument_source 0..2).
SOURCES: tuple[str, ...] = ("acoustic", "electronic", "synthetic")

#: NSynth's note qualities, in the order of the ``qualities`` vector.
QUALITIES: tuple[str, ...] = (
    "bright",
    "dark",
    "distortion",
    "fast_decay",
    "long_release",
    "multiphonic",
    "nonlinear_env",
    "percussive",
    "reverb",
    "tempo-synced",
)

#: Common instrument names -> NSynth family. Only names whose family is unambiguous are listed.
ALIASES: dict[str, str] = {
    # string
    "violin": "string",
    "viola": "string",
    "cello": "string",
    "violoncello": "string",
    "strings": "string",
    "fiddle": "string",
    # reed
    "clarinet": "reed",
    "saxophone": "reed",
    "sax": "reed",
    "oboe": "reed",
    "bassoon": "reed",
    "english_horn": "reed",
    # brass
    "trumpet": "brass",
    "trombone": "brass",
    "tuba": "brass",
    "horn": "brass",
    "french_horn": "brass",
    "cornet": "brass",
    "flugelhorn": "brass",
    # keyboard
    "piano": "keyboard",
    "electric_piano": "keyboard",
    "harpsichord": "keyboard",
    "clavinet": "keyboard",
    # flute
    "piccolo": "flute",
    "recorder": "flute",
    "pan_flute": "flute",
    # guitar
    "acoustic_guitar": "guitar",
    "electric_guitar": "guitar",
    # mallet
    "marimba": "mallet",
    "xylophone": "mallet",
    "vibraphone": "mallet",
    "glockenspiel": "mallet",
    # organ
    "pipe_organ": "organ",
    "church_organ": "organ",
    # bass
    "bass_guitar": "bass",
    "electric_bass": "bass",
    "synth_bass": "bass",
    # vocal
    "voice": "vocal",
    "choir": "vocal",
    "singer": "vocal",
    # synth_lead
    "synth": "synth_lead",
    "lead": "synth_lead",
}


class ClassNameError(UserError, ValueError):
    """An entry of ``data.classes`` is unknown or repeats a family."""


def valid_names() -> list[str]:
    return sorted(set(FAMILIES) | set(ALIASES))


def resolve_classes(names: list[str] | tuple[str, ...] | None) -> list[tuple[str, str]]:
    """Map ``data.classes`` entries to NSynth families.

    Args:
        names: family names or instrument names from :data:`ALIASES`; empty or None = all families.

    Returns:
        ``[(requested name, family), ...]`` in the requested order; the label of a class is its
        position in this list.

    Raises:
        ClassNameError: a name is unknown, or two names land on the same family.
    """
    if not names:
        return [(f, f) for f in FAMILIES]
    resolved: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for raw in names:
        key = str(raw).strip().lower().replace("-", "_").replace(" ", "_")
        family = key if key in FAMILIES else ALIASES.get(key)
        if family is None:
            raise ClassNameError(
                f"unknown class {raw!r} in data.classes. Valid names: NSynth families "
                f"{', '.join(FAMILIES)}; or instruments {', '.join(sorted(ALIASES))}"
            )
        if family in taken:
            raise ClassNameError(
                f"data.classes: {raw!r} and {taken[family]!r} both map to the NSynth family "
                f"{family!r}; keep one of them (a family is one class)"
            )
        taken[family] = str(raw)
        resolved.append((str(raw), family))
    return resolved


def mapping_text(resolved: list[tuple[str, str]]) -> str:
    """One line per class, for printing and logging: ``0: violin -> string``."""
    return "\n".join(f"{i}: {req} -> {fam}" if req != fam else f"{i}: {fam}" for i, (req, fam) in enumerate(resolved))
