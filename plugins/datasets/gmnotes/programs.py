"""The General MIDI programs GMNotes plays, as NSynth instruments, and why the others are not used."""

from __future__ import annotations

import attrs


@attrs.frozen
class GMProgram:
    """One GM program (0-based) as an NSynth instrument: family, source and usable MIDI range."""

    program: int
    name: str
    family: str
    source: str
    low: int
    high: int


def _p(program: int, name: str, family: str, source: str, low: int, high: int) -> GMProgram:
    return GMProgram(program, name, family, source, low, high)


#: GM programs used, with the playing range of the real instrument (MIDI note numbers) so that a
#: tuba is not asked for C8. Sources follow NSynth: acoustic = recorded acoustic instrument,
#: electronic = electric/electro-mechanical (electric pianos, organs, guitars, basses),
#: synthetic = synthesiser.
PROGRAMS: tuple[GMProgram, ...] = (
    # Piano 0-7 -> keyboard. Harpsichord and clavinet are keyboards in NSynth too.
    _p(0, "Acoustic Grand Piano", "keyboard", "acoustic", 21, 108),
    _p(1, "Bright Acoustic Piano", "keyboard", "acoustic", 21, 108),
    _p(2, "Electric Grand Piano", "keyboard", "electronic", 28, 100),  # CP-70: 73 keys
    _p(3, "Honky-tonk Piano", "keyboard", "acoustic", 21, 108),
    _p(4, "Electric Piano 1", "keyboard", "electronic", 28, 100),  # Rhodes: 73 keys
    _p(5, "Electric Piano 2", "keyboard", "electronic", 28, 100),
    _p(6, "Harpsichord", "keyboard", "acoustic", 29, 89),
    _p(7, "Clavinet", "keyboard", "electronic", 29, 88),
    # Chromatic percussion 8-15 -> mallet: struck (or, music box, plucked) tuned metal/wood.
    _p(8, "Celesta", "mallet", "acoustic", 60, 108),
    _p(9, "Glockenspiel", "mallet", "acoustic", 79, 108),
    _p(10, "Music Box", "mallet", "acoustic", 60, 96),
    _p(11, "Vibraphone", "mallet", "acoustic", 53, 89),
    _p(12, "Marimba", "mallet", "acoustic", 45, 96),
    _p(13, "Xylophone", "mallet", "acoustic", 65, 108),
    _p(14, "Tubular Bells", "mallet", "acoustic", 60, 77),
    _p(15, "Dulcimer", "mallet", "acoustic", 48, 88),  # hammered dulcimer: strings struck by mallets
    # Organ 16-20 -> organ (accordions 21/23 are left out, see LEFT_OUT).
    _p(16, "Drawbar Organ", "organ", "electronic", 36, 96),
    _p(17, "Percussive Organ", "organ", "electronic", 36, 96),
    _p(18, "Rock Organ", "organ", "electronic", 36, 96),
    _p(19, "Church Organ", "organ", "acoustic", 24, 96),  # pedal down to C1
    _p(20, "Reed Organ", "organ", "acoustic", 41, 89),  # harmonium: played and heard as an organ
    _p(22, "Harmonica", "reed", "acoustic", 60, 96),  # free reed, as the brief's reed list says
    # Guitar 24-31 -> guitar.
    _p(24, "Acoustic Guitar (nylon)", "guitar", "acoustic", 40, 83),
    _p(25, "Acoustic Guitar (steel)", "guitar", "acoustic", 40, 86),
    _p(26, "Electric Guitar (jazz)", "guitar", "electronic", 40, 86),
    _p(27, "Electric Guitar (clean)", "guitar", "electronic", 40, 86),
    _p(28, "Electric Guitar (muted)", "guitar", "electronic", 40, 81),
    _p(29, "Overdriven Guitar", "guitar", "electronic", 40, 86),
    _p(30, "Distortion Guitar", "guitar", "electronic", 40, 86),
    _p(31, "Guitar Harmonics", "guitar", "electronic", 52, 88),
    # Bass 32-39 -> bass.
    _p(32, "Acoustic Bass", "bass", "acoustic", 28, 67),
    _p(33, "Electric Bass (finger)", "bass", "electronic", 28, 67),
    _p(34, "Electric Bass (pick)", "bass", "electronic", 28, 67),
    _p(35, "Fretless Bass", "bass", "electronic", 28, 67),
    _p(36, "Slap Bass 1", "bass", "electronic", 28, 67),
    _p(37, "Slap Bass 2", "bass", "electronic", 28, 67),
    _p(38, "Synth Bass 1", "bass", "synthetic", 24, 67),
    _p(39, "Synth Bass 2", "bass", "synthetic", 24, 67),
    # Strings 40-45 and ensembles 48-51 -> string (harp 46 and timpani 47 are left out).
    _p(40, "Violin", "string", "acoustic", 55, 103),
    _p(41, "Viola", "string", "acoustic", 48, 88),
    _p(42, "Cello", "string", "acoustic", 36, 76),
    _p(43, "Contrabass", "string", "acoustic", 28, 67),
    _p(44, "Tremolo Strings", "string", "acoustic", 28, 96),
    _p(45, "Pizzicato Strings", "string", "acoustic", 28, 96),
    _p(48, "String Ensemble 1", "string", "acoustic", 28, 96),
    _p(49, "String Ensemble 2", "string", "acoustic", 28, 96),
    _p(50, "Synth Strings 1", "string", "synthetic", 36, 96),  # as synth brass -> brass
    _p(51, "Synth Strings 2", "string", "synthetic", 36, 96),
    # Choir and voice 52-54 -> vocal.
    _p(52, "Choir Aahs", "vocal", "acoustic", 40, 84),
    _p(53, "Voice Oohs", "vocal", "acoustic", 40, 84),
    _p(54, "Synth Voice", "vocal", "synthetic", 36, 84),
    # Brass 56-63 -> brass.
    _p(56, "Trumpet", "brass", "acoustic", 54, 82),
    _p(57, "Trombone", "brass", "acoustic", 40, 72),
    _p(58, "Tuba", "brass", "acoustic", 28, 65),
    _p(59, "Muted Trumpet", "brass", "acoustic", 54, 82),
    _p(60, "French Horn", "brass", "acoustic", 34, 77),
    _p(61, "Brass Section", "brass", "acoustic", 36, 84),
    _p(62, "Synth Brass 1", "brass", "synthetic", 36, 96),
    _p(63, "Synth Brass 2", "brass", "synthetic", 36, 96),
    # Reed 64-71 -> reed.
    _p(64, "Soprano Sax", "reed", "acoustic", 56, 87),
    _p(65, "Alto Sax", "reed", "acoustic", 49, 80),
    _p(66, "Tenor Sax", "reed", "acoustic", 44, 75),
    _p(67, "Baritone Sax", "reed", "acoustic", 36, 68),
    _p(68, "Oboe", "reed", "acoustic", 58, 91),
    _p(69, "English Horn", "reed", "acoustic", 52, 81),
    _p(70, "Bassoon", "reed", "acoustic", 34, 75),
    _p(71, "Clarinet", "reed", "acoustic", 50, 91),
    # Pipe 72-79 -> flute: edge-blown (bottle, ocarina and whistle included).
    _p(72, "Piccolo", "flute", "acoustic", 74, 108),
    _p(73, "Flute", "flute", "acoustic", 60, 96),
    _p(74, "Recorder", "flute", "acoustic", 60, 96),
    _p(75, "Pan Flute", "flute", "acoustic", 60, 96),
    _p(76, "Blown Bottle", "flute", "acoustic", 60, 84),
    _p(77, "Shakuhachi", "flute", "acoustic", 55, 84),
    _p(78, "Whistle", "flute", "acoustic", 72, 98),
    _p(79, "Ocarina", "flute", "acoustic", 60, 84),
    # Synth lead 80-86 -> synth_lead (87, bass + lead, is left out).
    _p(80, "Lead 1 (square)", "synth_lead", "synthetic", 36, 96),
    _p(81, "Lead 2 (sawtooth)", "synth_lead", "synthetic", 36, 96),
    _p(82, "Lead 3 (calliope)", "synth_lead", "synthetic", 36, 96),
    _p(83, "Lead 4 (chiff)", "synth_lead", "synthetic", 36, 96),
    _p(84, "Lead 5 (charang)", "synth_lead", "synthetic", 36, 96),
    _p(85, "Lead 6 (voice)", "synth_lead", "synthetic", 36, 96),
    _p(86, "Lead 7 (fifths)", "synth_lead", "synthetic", 36, 96),
    # Ethnic 104-111: only those with a clear NSynth family.
    _p(105, "Banjo", "guitar", "acoustic", 48, 81),  # fretted, plucked
    _p(109, "Bagpipe", "reed", "acoustic", 55, 81),  # double-reed chanter
    _p(110, "Fiddle", "string", "acoustic", 55, 96),  # a violin
    _p(111, "Shanai", "reed", "acoustic", 60, 84),  # double reed
)


def _left_out() -> dict[int, str]:
    reasons: dict[int, str] = {
        21: "accordion: free-reed keyboard, between NSynth's organ and reed",
        23: "tango accordion (bandoneon): as accordion",
        46: "orchestral harp: plucked, neither a bowed string nor a guitar",
        47: "timpani: drum",
        55: "orchestra hit: sound effect",
        87: "lead 8 (bass + lead): mixes two families",
        104: "sitar: plucked drone instrument, neither guitar nor string",
        106: "shamisen: plucked lute, neither guitar nor string",
        107: "koto: plucked zither, neither guitar nor string",
        108: "kalimba: plucked lamellophone, neither mallet nor guitar",
    }
    reasons.update({p: "synth pad: no NSynth family" for p in range(88, 96)})
    reasons.update({p: "synth effect: no NSynth family" for p in range(96, 104)})
    reasons.update({p: "percussive: drums and unpitched percussion" for p in range(112, 120)})
    reasons.update({p: "sound effect" for p in range(120, 128)})
    return reasons


#: GM programs not in :data:`PROGRAMS`, with the reason.
LEFT_OUT: dict[int, str] = _left_out()
#: GM program number -> its row of :data:`PROGRAMS`
BY_NUMBER: dict[int, GMProgram] = {p.program: p for p in PROGRAMS}
