"""The constants that fix what GMNotes writes: NSynth's audio format and the rendering choices. All
of them are part of the dataset folder's hash, so changing one renders into a new folder."""

from __future__ import annotations

SAMPLE_RATE = 16000
NOTE_SECONDS = 4.0
HOLD_SECONDS = 3.0  # note-off time; the last second is the release
NOTE_SAMPLES = int(SAMPLE_RATE * NOTE_SECONDS)
WAV_HEADER_BYTES = 44
WAV_BYTES = WAV_HEADER_BYTES + 2 * NOTE_SAMPLES  # every note's WAV has exactly this size
BYTES_PER_MB = 10**6

#: fluidsynth's synth.gain. With mono = (left + right) / 2, the loudest of ~5,000 notes per SoundFont
#: (every program, 30 pitches, velocities 25 and 127) peaked at 0.63 (FluidR3_GM) and 0.51
#: (TimGM6mb), and none of the 7,809 notes of the default render needed limiting: headroom without
#: wasting 16-bit range.
GAIN = 0.7
#: the frame whose RMS decides whether a note is silent (option ``silence_db``): 50 ms.
SILENCE_FRAME = SAMPLE_RATE // 20
#: presets of one SoundFont sharing at least this fraction of samples (Jaccard) are one unit.
SHARED_SAMPLES_JACCARD = 0.5
#: bump when the rendering code changes what lands on disk.
RENDER_VERSION = 1
