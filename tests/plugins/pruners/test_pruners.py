"""Pruner plugins on real students: channels really go (or, for masks, only turn to zero), the
pruned network still runs, its checkpoint round-trips through weights_only, third parties plug in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine import checkpoint as ckpt
from core.engine.structure import describe, rebuild
from core.registry import load_registry
from core.stages.prune import output_layers
from plugins.pruners.common import nearest_multiple
from plugins.pruners.structural import PrunerError
from plugins.students.mobilenet import build_mobilenet

EXAMPLE = torch.zeros(1, 1, 64, 101)
K = 5


def student(arch: str = "mobilenet_v3_small", width: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return build_mobilenet(arch, K, width).eval()


def costs(net: nn.Module) -> tuple[int, int]:
    p = load_registry().build("profiler", "thop").profile(net, EXAMPLE)
    return p.params, p.macs


def zero_channels(net: nn.Module) -> int:
    return sum(int((m.weight.flatten(1).abs().sum(1) == 0).sum()) for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v2"])
@pytest.mark.parametrize("importance, scope", [("l1", "uniform"), ("l2", "global"), ("taylor", "uniform")])
def test_structural_pruning_removes_channels_and_the_net_still_runs(arch, importance, scope):
    net = student(arch)
    params0, macs0 = costs(net)
    x = torch.randn(4, 1, 64, 101)

    def calibrate(n):  # gradients for the taylor importance
        nn.functional.cross_entropy(n(x), torch.tensor([0, 1, 2, 3])).backward()

    pruner = load_registry().build("pruner", "structural", importance=importance, scope=scope, round_to=8)
    pruner.prune(net, EXAMPLE, 0.5, output_layers(net, K), calibrate=calibrate)
    params1, macs1 = costs(net)
    assert params1 < 0.5 * params0 and macs1 < 0.6 * macs0, (params0, params1, macs0, macs1)
    assert net(x).shape == (4, K)  # still runs, still K classes
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    assert all(m.out_channels % 8 == 0 for m in convs if m.groups == 1 and m.out_channels > 8)  # round_to
    assert zero_channels(net) == 0  # gone, not zeroed


def test_mask_pruning_zeroes_channels_but_leaves_params_and_macs_unchanged():
    net = student()
    before = costs(net)
    pruner = load_registry().build("pruner", "mask", importance="l1", scope="uniform", round_to=8)
    assert pruner.removes_channels is False
    pruner.prune(net, EXAMPLE, 0.5, output_layers(net, K))
    assert costs(net) == before
    assert zero_channels(net) > 100  # the channels are there, only zero
    assert not any(hasattr(m, "weight_mask") for m in net.modules())  # prune.remove made it permanent


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5])
def test_round_to_keeps_the_nearest_multiple_and_both_pruners_keep_the_same_channels(ratio):
    # Torch-Pruning floors the kept count (184 channels at ratio 0.05 kept 168, not 176): every
    # layer lost at least 8 channels whatever the ratio. Kept counts are now the nearest multiple.
    reg = load_registry()
    original, removed, masked = student(width=0.75), student(width=0.75), student(width=0.75)
    reg.build("pruner", "structural", round_to=8).prune(removed, EXAMPLE, ratio, output_layers(removed, K))
    reg.build("pruner", "mask", round_to=8).prune(masked, EXAMPLE, ratio, output_layers(masked, K))
    for before, after in zip(channel_counts(original), channel_counts(removed)):
        assert after == nearest_multiple(before * (1 - ratio), 8) or before < 8, (before, after)
    live = [int((m.weight.flatten(1).abs().sum(1) > 0).sum()) for m in masked.modules() if isinstance(m, nn.Conv2d)]
    assert live == channel_counts(removed)
    layer = channel_counts(original).index(184)  # features.4-6 expansion: 184 x 0.95 = 174.8 keeps 176, not 168
    assert channel_counts(removed)[layer] == {0.05: 176, 0.3: 128, 0.5: 88}[ratio]  # 0.5: the tie 92 prunes


def test_bad_pruner_settings_are_refused_with_the_valid_choices():
    reg = load_registry()
    with pytest.raises(PrunerError, match="l1, l2, taylor"):
        reg.build("pruner", "structural", importance="random", scope="uniform", round_to=8)
    with pytest.raises(PrunerError, match="uniform"):
        reg.build("pruner", "structural", importance="l1", scope="everywhere", round_to=8)
    with pytest.raises(PrunerError, match="structural"):
        reg.build("pruner", "mask", importance="taylor", scope="uniform", round_to=8)
    with pytest.raises(PrunerError, match="within"):
        reg.build("pruner", "structural").prune(student(), EXAMPLE, 1.0, [])
    with pytest.raises(PrunerError, match="taylor needs gradients"):
        reg.build("pruner", "structural", importance="taylor").prune(student(), EXAMPLE, 0.3, [])


def test_pruned_layout_and_weights_round_trip_through_weights_only(tmp_path):
    net = student()
    load_registry().build("pruner", "structural").prune(net, EXAMPLE, 0.5, output_layers(net, K))
    ckpt.save({"structure": describe(net), "model": net.state_dict()}, tmp_path / "pruned.pt")
    state = ckpt.load(tmp_path / "pruned.pt")  # torch.load(weights_only=True)
    fresh = student()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(state["model"])  # the builder's architecture no longer fits
    rebuild(fresh, state["structure"], state["model"])
    fresh.load_state_dict(state["model"])
    x = torch.randn(2, 1, 64, 101)
    assert torch.equal(fresh.eval()(x), net.eval()(x))
    assert costs(fresh) == costs(net)


def test_a_pickled_pruned_module_is_refused(tmp_path):
    net = student()
    load_registry().build("pruner", "structural").prune(net, EXAMPLE, 0.5, output_layers(net, K))
    torch.save(net, tmp_path / "module.pt")  # what a naive export of a pruned model would write
    with pytest.raises(ckpt.CheckpointError, match="refusing"):
        ckpt.load(tmp_path / "module.pt")


def test_a_layout_from_another_architecture_is_refused():
    small = student("mobilenet_v3_small")
    with pytest.raises(ckpt.CheckpointError, match="another architecture"):
        rebuild(student("mobilenet_v2"), describe(small), small.state_dict())


THIRD_PARTY_PRUNER = """
    import torch
    from torch import nn
    from core.api import Component, hookimpl

    class HalveLastConv:
        '''Keeps the first half of the last conv's output channels (and the layers that read them).'''
        removes_channels = True
        needs_gradients = False

        def __init__(self, importance="l1", scope="uniform", round_to=None):
            self.importance = importance

        def prune(self, net, example_input, ratio, ignored, calibrate=None):
            import torch_pruning as tp
            convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
            dg = tp.DependencyGraph().build_dependency(net, example_inputs=example_input)
            keep = int(convs[-1].out_channels * (1 - ratio))
            group = dg.get_pruning_group(convs[-1], tp.prune_conv_out_channels,
                                         idxs=list(range(keep, convs[-1].out_channels)))
            group.prune()

    @hookimpl
    def audiokd_pruners():
        return [Component("halve_last", HalveLastConv, "third-party: prunes only the last conv")]
"""


def test_third_party_pruner_registers_through_an_entry_point_and_runs_by_name(make_plugin_dist):
    make_plugin_dist("acme-pruners", "acme_pruners", THIRD_PARTY_PRUNER)
    reg = load_registry()
    assert {e.component.name: e.package for e in reg.entries("pruner")}["halve_last"] == "acme-pruners"
    net = student()
    last = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    channels = last.out_channels
    reg.build("pruner", "halve_last", importance="l1", scope="uniform", round_to=8).prune(net, EXAMPLE, 0.5, [])
    assert last.out_channels == channels // 2 and net(EXAMPLE).shape == (1, K)


def channel_counts(net: nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_ignored_layers_keep_their_channels_and_global_scope_prunes_layers_unevenly():
    reg = load_registry()
    plain, kept = student(width=1.0), student(width=1.0)
    stem = kept.features[0][0]
    reg.build("pruner", "structural").prune(plain, EXAMPLE, 0.5, output_layers(plain, K))
    reg.build("pruner", "structural").prune(kept, EXAMPLE, 0.5, output_layers(kept, K) + [stem])
    assert plain.features[0][0].out_channels < stem.out_channels == 16

    uniform, ranked = student(), student()
    reg.build("pruner", "structural", scope="uniform", round_to=None).prune(
        uniform, EXAMPLE, 0.5, output_layers(uniform, K)
    )
    reg.build("pruner", "structural", scope="global", round_to=None).prune(
        ranked, EXAMPLE, 0.5, output_layers(ranked, K)
    )
    original = channel_counts(student())
    uniform_share = {round(a / b, 1) for a, b in zip(channel_counts(uniform), original) if b > 8}
    ranked_share = {round(a / b, 1) for a, b in zip(channel_counts(ranked), original) if b > 8}
    assert uniform_share == {0.5} and len(ranked_share) > 2  # global: each layer loses a different share
