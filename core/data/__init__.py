"""Data: the dataset plugin prepared (:mod:`~core.data.prepare`), each split decoded once into the
waveform cache (:mod:`~core.data.waveforms`) and, when no waveform augmentation needs the audio,
into the log-mel cache (:mod:`~core.data.logmel`), which moves into GPU memory when it fits."""

from core.data.logmel import DeviceLogMel, LogMelSet, build_logmel_cache, on_device, place
from core.data.prepare import SPLITS, DataBundle, DataRootError, build_dataset, prepare_data, writable_root
from core.data.waveforms import WaveformSet, build_waveform_cache

#: what a split is fed from: cached waveforms or cached log-mel
Inputs = WaveformSet | LogMelSet | DeviceLogMel

__all__ = [
    "SPLITS",
    "DataBundle",
    "DataRootError",
    "DeviceLogMel",
    "Inputs",
    "LogMelSet",
    "WaveformSet",
    "build_dataset",
    "build_logmel_cache",
    "build_waveform_cache",
    "on_device",
    "place",
    "prepare_data",
    "writable_root",
]
