"""Bad input stops with a clear error before any work: every config group's unknown keys and bad
types (walked from the real composed config, so a new key is covered the day it is added), unknown
component names of every kind, an unusable data.root, and checkpoints that must not be loaded.

The README's "Bad input" table lists these cases with what each one gets.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import ConfigKeyError, ValidationError
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode

from core.data import DataRootError
from core.engine import checkpoint as ckpt
from core.errors import UserError
from core.registry import UnknownComponentError
from core.run import run
from tests.e2e.test_train import run_dir

#: Plugin option blocks: open by design (each plugin has its own keys); their plugin refuses an
#: unknown key with the valid ones (tested below and in each plugin's tests).
OPEN = {"data.options", "model.student.options", "model.teacher.options", "prune.options"}
BAD_VALUE = {IntegerNode: "many", FloatNode: "lots", BooleanNode: "perhaps"}


def _walk(node, path=""):
    if isinstance(node, DictConfig):
        yield path, node
        for key in node.keys():
            yield from _walk(node._get_node(key), f"{path}.{key}" if path else str(key))
    else:
        yield path, node


def _cases(compose) -> tuple[list[str], list[tuple[str, str]]]:
    groups, typed = [], []
    for path, node in _walk(compose()):
        if path.startswith("hydra"):
            continue
        if isinstance(node, DictConfig) and path not in OPEN:
            groups.append(path)
        elif type(node) in BAD_VALUE:
            typed.append((path, BAD_VALUE[type(node)]))
        elif isinstance(node, ListConfig) and node._metadata.element_type in (int, float, bool):
            typed.append((path, "[one,two]"))
    return groups, typed


def test_every_group_refuses_unknown_keys_and_every_typed_key_bad_values(compose):
    groups, typed = _cases(compose)
    assert {
        "data",
        "aug",
        "aug.specaug",
        "model.student",
        "model.teacher",
        "model.kd",
        "train",
        "tracking",
        "prune",
        "export",
        "pareto",
        "compare",
        "",
    } <= set(groups)
    assert len(typed) > 60
    for group in groups:
        key = f"{group}.no_such_key" if group else "no_such_key"
        with pytest.raises((ConfigKeyError, ConfigCompositionException)) as err:
            compose(f"{key}=1")
        assert "no_such_key" in str(err.value) + str(err.value.__cause__), key
    for key, value in typed:
        with pytest.raises((ValidationError, ConfigCompositionException)) as err:
            compose(f"{key}={value}")
        text = str(err.value) + str(err.value.__cause__)
        assert key.split(".")[-1] in text and value.strip("[]").split(",")[0] in text, (key, text)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("+data.options.GMNotes.bogus=1",), ["data.options.GMNotes", "bogus", "valid keys", "soundfonts"]),
        (("data.dataset=NSynth", "+data.options.NSynth.bogus=1"), ["data.options.NSynth", "bogus", "base_url"]),
        (("+model.student.options.bogus=1",), ["student mobilenet_v3_small", "bogus", "valid", "dropout"]),
    ],
)
def test_plugin_option_blocks_refuse_unknown_keys_before_any_data_work(tiny, tmp_path, overrides, words):
    with pytest.raises(UserError) as err:
        run(tiny(f"data.root={tmp_path / 'fresh'}", *overrides), run_dir(tmp_path))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("dataset", ("data.dataset=LibriSpeech",)),
        ("student", ("model.student.arch=resnet_9000",)),
        ("teacher", ("model.kd.enabled=true", "model.teacher.name=gpt_audio")),
        ("loss", ("train.loss=focal",)),
        ("profiler", ("profilers=[thop,perf_counter]",)),
        ("pruner", ("task=prune", "prune.method=lottery", "prune.source=x.pt")),
    ],
)
def test_unknown_component_of_every_kind_lists_the_registered_ones_before_any_data_work(
    tiny, tmp_path, kind, overrides
):
    with pytest.raises(UnknownComponentError) as err:
        run(tiny(f"data.root={tmp_path / 'fresh'}", *overrides), run_dir(tmp_path))
    text = str(err.value)
    assert f"unknown {kind}" in text and "python -m core.list" in text
    assert not (tmp_path / "fresh").exists()  # nothing downloaded, rendered or cached


def test_data_root_that_is_not_a_writable_folder(tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for root in (blocker / "data", Path("/proc/audiokd-data")):
        with pytest.raises(DataRootError) as err:
            run(tiny(f"data.root={root}"), run_dir(tmp_path))
        assert f"data.root={root}" in str(err.value) and "writable" in str(err.value)
    assert not list(tmp_path.glob("**/last.pt"))


class Payload:
    """Unpickling this runs code: what a hostile checkpoint would do."""

    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "pwned-by-checkpoint",))


def test_a_checkpoint_that_pickles_code_is_refused_and_never_run(tiny, tmp_path):
    evil = tmp_path / "last.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"model": Payload()}, fh)
    marker = Path(__file__).parent / "pwned-by-checkpoint"
    for override in (f"train.resume={evil}", f"prune.source={evil}"):
        extra = ("task=prune",) if override.startswith("prune") else ()
        with pytest.raises(ckpt.CheckpointError, match="weights_only=True") as err:
            run(tiny(override, *extra), run_dir(tmp_path))
        assert "Payload" in str(err.value) or "GLOBAL" in str(err.value) or "refus" in str(err.value)
    assert not marker.exists()


def test_a_checkpoint_of_another_class_count_is_refused(tiny, tmp_path, trained):
    first = trained
    with pytest.raises(UserError, match="classes") as err:
        run(
            tiny("train.epochs=2", "data.classes=[bass,flute]", f"train.resume={first.run_dir}"),
            run_dir(tmp_path, "second"),
        )
    assert "bass" in str(err.value) and "keyboard" in str(err.value)
    state = ckpt.load(first.run_dir / "checkpoints" / "last.pt")
    state["model"] = {k: torch.zeros(1) for k in state["model"]}  # right keys, wrong shapes
    ckpt.save(state, tmp_path / "mangled.pt")
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        run(tiny("task=prune", f"prune.source={tmp_path / 'mangled.pt'}"), run_dir(tmp_path, "third"))


def test_a_dataset_left_empty_by_the_class_filter_says_so(tiny, tmp_path):
    from tests.plugins.datasets.test_nsynth import write_local_copy

    copy = write_local_copy(tmp_path / "nsynth_copy")  # bass, string, synth_lead, keyboard, reed: no flute
    with pytest.raises(UserError) as err:
        run(
            tiny(
                "data.dataset=NSynth",
                "data.classes=[flute]",
                f"data.options.NSynth.local_dir={copy}",
                f"data.root={tmp_path / 'root'}",
            ),
            run_dir(tmp_path),
        )
    assert "no notes of the requested classes (flute)" in str(err.value) and "data.classes" in str(err.value)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.threads=-1", ["train.threads=-1", ">= 1"]),
        ("train.weight_decay=-1", ["train.weight_decay=-1", ">= 0"]),
        ("train.lr=nan", ["train.lr=nan", "finite number > 0"]),
        ("train.num_workers=-1", ["train.num_workers=-1", ">= 0"]),
        ("train.eval_batch_size=0", ["train.eval_batch_size=0", ">= 1"]),
        ("data.clip_seconds=0.01", ["data.clip_seconds=0.01", "160 samples", "> 0.032"]),
        ("aug.hop=100000", ["aug.hop=100000", "window", "aug.hop <= 1024"]),
        ("train.crop_seconds=9", ["train.crop_seconds=9", "data.clip_seconds=", "null for whole clips"]),
        ("model.teacher.crop_seconds=0", ["model.teacher.crop_seconds=0", "(0.032, data.clip_seconds="]),
        ("train.mixup=-0.2", ["train.mixup=-0.2", "must be >= 0", "null (off)"]),
        ("aug.eq.p=2", ["aug.eq.p=2", "[0, 1]"]),
        ("aug.eq.max_db=-3", ["aug.eq.max_db=-3", ">= 0 (dB)"]),
        ("model.teacher.mixup=nan", ["model.teacher.mixup=nan", "must be >= 0"]),
        ("train.ema=1", ["train.ema=1", "within (0, 1)", "0.995", "null (off)"]),
        ("train.ema=0", ["train.ema=0", "within (0, 1)"]),
    ],
)
def test_values_that_used_to_crash_or_pass_are_refused_before_any_data_work(tiny, tmp_path, override, words):
    from core.errors import ConfigValueError

    with pytest.raises(ConfigValueError) as err:
        run(tiny(override, f"data.root={tmp_path / 'fresh'}"), run_dir(tmp_path))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "fresh").exists()


def test_a_plain_folder_as_tracking_uri_is_refused_before_any_data_work(tiny, tmp_path):
    from core.tracking import TrackingError

    with pytest.raises(TrackingError) as err:
        run(tiny(f"tracking.uri={tmp_path / 'mlruns'}", f"data.root={tmp_path / 'fresh'}"), run_dir(tmp_path))
    assert "file store" in str(err.value) and f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" in str(err.value)
    assert not (tmp_path / "fresh").exists()


def test_a_resume_target_that_cannot_be_continued_stops_before_any_data_work(tiny, tmp_path, trained):
    fresh = tmp_path / "fresh"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    cases = [
        (f"train.resume={tmp_path / 'nowhere'}", "no checkpoint at"),
        (f"train.resume={garbage}", "weights_only=True"),
        (f"train.resume={trained.run_dir}", "complete"),  # closed: nothing left to do
    ]
    for override, words in cases:
        with pytest.raises(UserError, match=words):
            run(tiny(override, f"data.root={fresh}"), run_dir(tmp_path))
    with pytest.raises(UserError, match="classes"):
        run(
            tiny(f"train.resume={trained.run_dir}", "data.classes=[bass,flute]", f"data.root={fresh}"),
            run_dir(tmp_path),
        )
    assert not fresh.exists()  # nothing downloaded, rendered or cached
