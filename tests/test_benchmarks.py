"""The synthetic benchmark runs with no dataset and says which machine it measured."""

from __future__ import annotations

from benchmarks import synthetic
from benchmarks.machine import cpu_model


def test_the_synthetic_benchmark_reports_the_machine_a_reference_and_the_data_path(capsys):
    args = ["--device", "cpu", "--steps", "1", "--rounds", "1", "--clips", "24", "--batch", "4", "--width-mult", "0.35"]
    assert synthetic.main([*args, "--data-on-device", "true"]) == 0
    out = capsys.readouterr().out
    assert cpu_model() and f"machine: CPU {cpu_model()}" in out
    assert "reference step" in out and "pure model step" in out and "data share of a step" in out
    assert "data DeviceLogMel on cpu" in out and "mobilenet_v3_small x0.35, batch 4" in out
    assert synthetic.main(args) == 0
    out = capsys.readouterr().out
    assert "data LogMelSet on host (memmap)" in out  # auto: device memory on a GPU only
    assert "training windows whole 4 s clips" in out
    assert synthetic.main([*args, "--crop-seconds", "1"]) == 0
    assert "training windows 1 s" in capsys.readouterr().out
