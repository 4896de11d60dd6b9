"""Registries: built-ins register through entry points; third-party packages plug in the same way."""

from __future__ import annotations

import pytest
import torch

import core.list
from core.registry import KINDS, PluginLoadError, UnknownComponentError, load_registry

THIRD_PARTY_STUDENT = """
    import torch
    from torch import nn
    from core.api import Component, hookimpl

    class TinyNet(nn.Module):
        def __init__(self, num_classes, width_mult=1.0, bn_momentum=0.1):
            super().__init__()
            c = max(4, int(8 * width_mult))
            self.body = nn.Sequential(nn.Conv2d(1, c, 3, stride=2), nn.BatchNorm2d(c, momentum=bn_momentum),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(c, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    @hookimpl
    def audiokd_students():
        return [Component("tiny_cnn", TinyNet, "a two-layer CNN from a third-party package")]
"""


def test_builtins_register_through_entry_points():
    reg = load_registry()
    assert {"mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"} <= set(reg.names("student"))
    assert "ce" in reg.names("loss")
    assert {"GMNotes", "NSynth"} <= set(reg.names("dataset"))
    entry = {e.component.name: e for e in reg.entries("student")}["mobilenet_v3_small"]
    assert entry.package == "audiokd" and entry.module == "plugins.students.mobilenet"


def test_unknown_name_lists_registered_names():
    reg = load_registry()
    with pytest.raises(UnknownComponentError) as err:
        reg.get("student", "resnet_9000")
    msg = str(err.value)
    assert "resnet_9000" in msg and "mobilenet_v3_small" in msg and "mobilenet_v2" in msg


def test_third_party_student_is_found_listed_and_built(make_plugin_dist, monkeypatch, capsys):
    make_plugin_dist("acme-audio-students", "acme_students", THIRD_PARTY_STUDENT)
    reg = load_registry()
    assert "tiny_cnn" in reg.names("student")
    assert {e.component.name: e.package for e in reg.entries("student")}["tiny_cnn"] == "acme-audio-students"
    net = reg.build("student", "tiny_cnn", num_classes=3, width_mult=1.0, bn_momentum=0.1)
    assert net(torch.zeros(2, 1, 32, 50)).shape == (2, 3)

    monkeypatch.setenv("COLUMNS", "200")
    assert core.list.main([]) == 0  # what `python -m core.list` runs
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "tiny_cnn" in ln)
    assert "acme-audio-students" in line and "two-layer CNN" in line
    for kind in KINDS:
        assert kind in out


def test_broken_plugin_is_reported_and_others_still_load(make_plugin_dist):
    make_plugin_dist("broken-plugin", "broken_mod", "import this_module_does_not_exist\n")
    reg = load_registry()
    assert "mobilenet_v3_small" in reg.names("student")  # the built-ins survive
    assert [b.package for b in reg.broken] == ["broken-plugin"]
    assert "this_module_does_not_exist" in reg.broken[0].error
    with pytest.raises(UnknownComponentError, match="broken-plugin"):
        reg.get("student", "whatever")


def test_duplicate_names_are_refused(make_plugin_dist):
    make_plugin_dist(
        "dup-plugin",
        "dup_mod",
        """
        from core.api import Component, hookimpl
        @hookimpl
        def audiokd_losses():
            return [Component("ce", lambda **kw: None, "clashes with the built-in")]
    """,
    )
    with pytest.raises(PluginLoadError, match="loss 'ce' is registered twice") as err:
        load_registry()
    assert "audiokd" in str(err.value) and "dup-plugin" in str(err.value)
