"""The typed schema turns config mistakes into clear errors before anything runs."""

from __future__ import annotations

import sys

import pytest
from omegaconf.errors import ConfigKeyError, ValidationError

from core.config import ConfigValueError, validate
from tests.conftest import CONFIGS


def test_defaults_compose_and_validate(compose):
    cfg = compose()
    validate(cfg)
    assert cfg.train.batch_size == 32 and cfg.aug.n_mels == 128 and cfg.model.student.width_mult == 0.75
    assert cfg.model.kd.T == 3.0 and cfg.model.kd.alpha == 0.7


def test_spec_override_keys_are_accepted(compose):
    cfg = compose(
        "data.dataset=NSynth",
        "data.root=./data",
        "data.classes=[violin,flute,clarinet]",
        "train.epochs=5",
        "model.student.arch=mobilenet_v2",
        "model.student.width_mult=0.5",
        "model.teacher.name=passt_base",
        "model.kd.enabled=true",
        "model.kd.T=2.0",
        "model.kd.alpha=0.5",
        "aug.specaug.enabled=false",
        "aug.noise.enabled=true",
    )
    assert list(cfg.data.classes) == ["violin", "flute", "clarinet"] and cfg.train.epochs == 5


@pytest.mark.parametrize(
    "override, error",
    [
        ("train.epochs=abc", ValidationError),
        ("train.epoch=5", ConfigKeyError),
        ("aug.specaug.freq_mask=wide", ValidationError),
        ("model.student.widthmult=1", ConfigKeyError),
        ("data.max_total_size_mb=lots", ValidationError),
    ],
)
def test_schema_refuses_bad_types_and_unknown_keys(compose, override, error):
    from hydra.errors import ConfigCompositionException

    with pytest.raises((error, ConfigCompositionException)) as exc:
        compose(override)
    text = str(exc.value) + str(exc.value.__cause__)
    assert override.split("=")[0].split(".")[-1] in text


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.optimizer=lion", "adamw"),
        ("model.kd.mode=sometimes", "offline"),
        ("model.kd.alpha=1.5", "[0, 1]"),
        ("train.epochs=0", "> 0"),
        ("aug.fmax=12000", "sr/2"),
        ("aug.noise.p=2", "[0, 1]"),
    ],
)
def test_value_checks_name_the_key_and_what_is_valid(compose, override, fragment):
    with pytest.raises(ConfigValueError) as exc:
        validate(compose(override))
    assert override.split("=")[0] in str(exc.value) and fragment in str(exc.value)


@pytest.mark.filterwarnings("ignore:'core.run' found in sys.modules:RuntimeWarning")  # runpy, as -m does
def test_cli_reports_bad_type_without_training(tmp_path, monkeypatch, capsys):
    """``python -m core.run train.epochs=abc``: Hydra's own report, a failing exit status, nothing run
    (run as ``python -m`` runs it, in this process: a new interpreter spends ~28 s importing on a slow
    2-core machine)."""
    import runpy

    import core.run

    monkeypatch.setattr(sys, "argv", [core.run.__file__, "train.epochs=abc", f"train.out_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("core.run", run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code != 0
    assert "epochs" in err and "abc" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_with_every_value_set_validates_and_resolves_its_plugins(compose, experiment):
    """Every experiment composes, sets every key (defaults live in configs/*.yaml, not the schema),
    passes the value checks, and names registered components whose options are valid."""
    from omegaconf import OmegaConf

    from core.registry import load_registry
    from core.tasks import resolve_options
    from core.tasks.train import check_components

    needs = {"prune_kd": ["prune.source=outputs/x/best.pt"]}  # what its docstring says to give on the command line
    cfg = compose(f"experiment={experiment}", *needs.get(experiment, []))
    OmegaConf.to_container(cfg, throw_on_missing=True)
    validate(cfg)
    registry = load_registry()
    resolve_options(cfg, registry)
    check_components(cfg, registry)
    assert cfg.data.options[cfg.data.dataset]  # the dataset's options, defaults filled in


def test_the_schema_holds_no_values():
    """Each default lives once, in configs/*.yaml: the typed schema only says which keys exist."""
    import attrs
    from omegaconf import MISSING

    from core.config import Config

    def leaves(cls):
        for field in attrs.fields(cls):
            if attrs.has(field.type):
                yield from leaves(field.type)
            else:
                yield field

    assert {f.name: f.default for f in leaves(Config) if f.default is not MISSING} == {}
