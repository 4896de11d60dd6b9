"""What an epoch commits: the typed checkpoint state, safe to load, and the random states in it."""

from __future__ import annotations

import random

import attrs
import pytest
import torch

from core.engine.checkpoint import CheckpointError
from core.engine.seeding import isolated_rng, rng_state, seed_everything, set_rng_state
from core.engine.state import TrainState


def a_state(**changes) -> TrainState:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    values = dict(
        model=net.state_dict(),
        optimizer=opt.state_dict(),
        scheduler={"last_epoch": 4},
        epoch=1,
        best_epoch=0,
        best_f1=0.5,
        rng=rng_state(),
        finished=False,
        config={"name": "x", "model": {"student": {"arch": "a"}}},
        class_names=["a", "b"],
        class_map={"classes": ["a", "b"]},
        run_id="r" * 32,
        run_dir="/tmp/run",
    )
    return TrainState(**{**values, **changes})


def test_a_state_saves_and_loads_back_with_weights_only(tmp_path):
    state = a_state(
        structure={"0": {"in_features": 3, "out_features": 2}},
        prune_rounds=1,
        prune_scores={"after_prune_val_acc": 0.4},
        metrics={"val_acc": 0.5},
    )
    path = state.save(tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)  # a plain dict of tensors and plain values
    assert set(raw) == {f.name for f in attrs.fields(TrainState)}
    back = TrainState.load(path)
    assert back.epoch == 1 and back.prune_rounds == 1 and back.prune_scores == {"after_prune_val_acc": 0.4}
    assert all(torch.equal(back.model[k], state.model[k]) for k in state.model)
    assert back.to_dict().keys() == state.to_dict().keys()


def test_a_checkpoint_written_before_the_typed_state_loads(tmp_path):
    old = {k: v for k, v in a_state().to_dict().items() if k not in ("prune_rounds", "prune_scores", "structure")}
    torch.save({**old, "legacy_extra": 1}, tmp_path / "old.pt")
    state = TrainState.load(tmp_path / "old.pt")
    assert state.prune_rounds == 0 and state.structure == {}


def test_a_file_that_is_no_training_checkpoint_is_refused_by_name(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"w.pt is not a training checkpoint.*\['weights'\]"):
        TrainState.load(tmp_path / "w.pt")


def test_random_states_round_trip_and_a_stage_can_be_isolated():
    seed_everything(3)
    saved = rng_state()
    first = (torch.rand(3), random.random())
    set_rng_state(saved)
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1]
    set_rng_state(saved)
    with isolated_rng():
        seed_everything(99)  # what the teacher stage does per member
        torch.rand(100)
    assert torch.equal(torch.rand(3), first[0])  # the run's own draws are untouched
