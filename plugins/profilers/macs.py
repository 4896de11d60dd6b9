"""Parameter and MAC counts with two independent tools, cross-checked against each other.

Two profilers are registered (kind ``profiler``):

* ``thop``: ``thop.profile`` (the MIT package) plus counting rules for attention modules. Plain
  thop counts only modules it has a rule for, so the Q·K^T and attn·V matmuls inside attention
  modules are missed (measured: a small AST counts 858 M MACs plain vs 1,197 M with them).
* ``flop_counter``: ``torch.utils.flop_counter.FlopCounterMode``, which counts aten ops
  (matmul, conv, attention kernels), whatever module runs them. It reports FLOPs = 2 x MACs for
  those ops; the profile converts to MACs.

The two count different things at the edges: thop also counts elementwise work of norms,
pooling and softmax as "MACs", flop_counter only matmul/conv/attention. On CNNs and transformers
they agree within a few percent; the core's cross-check (``core.stages.profile``) records the
difference and, above its tolerance, names the module types where it comes from.

Both profilers run the model once in eval mode without gradients and leave it as they found it:
every module's training flag, the attention implementation, no thop buffers left behind.
"""

from __future__ import annotations

import contextlib
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
import thop
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.api import Component, Profile, UserError, check_options, hookimpl

#: thop registers these buffers on every module while it counts.
_THOP_BUFFERS = ("total_ops", "total_params")

ExampleInput = torch.Tensor | tuple[Any, ...]
ThopRule = Callable[[nn.Module, tuple[Any, ...], Any], None]  # a thop forward hook
MacCounter = Callable[[Any, tuple[Any, ...], Any], int]  # MACs of one call, from (module, inputs, output)


class ProfilerError(UserError, ValueError):
    """A profiler was misconfigured, or cannot count a model it was given."""


# ----------------------------------------------------------------------------------------------
# shared helpers


def _as_tuple(example_input: ExampleInput) -> tuple[Any, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts; ``parameters()`` yields a shared tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for counting, then every module's own flag back.

    ``model.train(previous)`` (what thop does) would also flip submodules that were deliberately
    in another mode, such as a frozen teacher inside a training wrapper.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


# ----------------------------------------------------------------------------------------------
# thop with attention rules


def _tokens(output: Any) -> tuple[int, int]:
    """(batch, tokens) of an attention module's ``[..., N, C]`` output (first item of a tuple)."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    n, c = out.shape[-2], out.shape[-1]
    return out.numel() // (n * c), n


def _self_attention_macs(batch: int, heads: int, tokens: int, head_dim: int) -> int:
    """Q·K^T plus attn·V: ``batch * heads * N * N * head_dim`` MACs each."""
    return 2 * batch * heads * tokens * tokens * head_dim


def _hf_ast_attention(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    batch, tokens = _tokens(output)  # from the output: the module may be called with keywords
    return _self_attention_macs(batch, m.num_attention_heads, tokens, m.head_dim)


def _passt_attention(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    batch, tokens = _tokens(output)
    return _self_attention_macs(batch, m.num_heads, tokens, m.qkv.in_features // m.num_heads)


def _timm_attention(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    batch, tokens = _tokens(output)
    return _self_attention_macs(batch, m.num_heads, tokens, m.head_dim)


def _multihead_attention(m: nn.MultiheadAttention, inputs: tuple[Any, ...], output: Any) -> int:
    """In-projection, both attention matmuls and out-projection.

    ``nn.MultiheadAttention`` uses its projection weights functionally (its ``out_proj`` module
    never runs), so the rule counts all of it; thop sees none of it otherwise.
    """
    if len(inputs) < 3:
        raise ProfilerError(
            "thop's MultiheadAttention rule needs query, key and value passed positionally "
            "(forward hooks do not see keyword arguments)"
        )
    query, key = inputs[0], inputs[1]

    def batch_and_length(x: torch.Tensor) -> tuple[int, int]:
        if x.dim() == 2:  # unbatched [L, E]
            return 1, x.shape[0]
        return (x.shape[0], x.shape[1]) if m.batch_first else (x.shape[1], x.shape[0])

    batch, len_q = batch_and_length(query)
    _, len_k = batch_and_length(key)
    len_k += int(m.bias_k is not None) + int(m.add_zero_attn)  # extra key positions
    e = m.embed_dim  # = heads * head_dim
    in_proj = batch * len_q * e * e + batch * len_k * (m.kdim + m.vdim) * e
    attention = 2 * batch * len_q * len_k * e
    out_proj = batch * len_q * e * e
    return in_proj + attention + out_proj


#: (module path, class name) -> MACs the module computes itself, beyond its child modules
_ATTENTION_COUNTERS: dict[tuple[str, str], MacCounter] = {
    (
        "transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer",
        "ASTAttention",
    ): _hf_ast_attention,
    ("hear21passt.models.passt", "Attention"): _passt_attention,
    ("timm.models.vision_transformer", "Attention"): _timm_attention,
    ("torch.nn.modules.activation", "MultiheadAttention"): _multihead_attention,
}


def attention_classes() -> dict[type, MacCounter]:
    """The attention classes with a counting rule, among the modules imported so far.

    Looked up in ``sys.modules`` rather than imported: a model holding one of these classes has
    already imported its module, and profiling a CNN should not pay for importing transformers.
    """
    found = {}
    for (module_name, class_name), count in _ATTENTION_COUNTERS.items():
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found[cls] = count
    return found


def _thop_attention_rules() -> dict[type, ThopRule]:
    """thop ``custom_ops`` for the attention classes, fresh for one ``thop.profile`` call."""
    own_macs: dict[nn.Module, int] = {}  # per module: the matmuls its rule counted so far

    def make_rule(count: MacCounter) -> ThopRule:
        def rule(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            own_macs[m] = own_macs.get(m, 0) + count(m, inputs, output)
            # thop adds up a module that has a rule as one unit and skips its children, so the
            # unit's total also carries what thop's own rules counted for the child modules that
            # ran (the q/k/v/out linears): each linear is counted once, by thop's nn.Linear rule.
            # Assigning (not adding) the running sum keeps a module called twice right.
            children = sum(float(c.total_ops) for c in m.modules() if c is not m and "total_ops" in c._buffers)
            m.total_ops.fill_(own_macs[m] + children)

        return rule

    return {cls: make_rule(count) for cls, count in attention_classes().items()}


class _Root(nn.Module):
    """Wrapper so that a model with a rule of its own (a bare attention module) is still
    a unit below thop's root; thop adds the root's count and its children's unconditionally."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Any) -> Any:
        return self.model(*inputs)


@contextlib.contextmanager
def _no_leftover_thop_buffers(model: nn.Module) -> Iterator[None]:
    """thop registers ``total_ops``/``total_params`` on every module but removes them only from
    modules it has a rule for; drop the rest afterwards (and put back any that were there)."""
    before = {(m, name): m._buffers[name] for m in model.modules() for name in _THOP_BUFFERS if name in m._buffers}
    try:
        yield
    finally:
        for m in model.modules():
            for name in _THOP_BUFFERS:
                m._buffers.pop(name, None)
        for (m, name), buf in before.items():
            m._buffers[name] = buf


def _thop_units(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(module name, MACs) of every module thop counted as one unit, from its layer info."""
    for name, (ops, _params, children) in tree.items():
        if children:
            yield from _thop_units(children, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ops


@attrs.frozen
class ThopProfiler:
    """MACs with thop, attention matmuls included.

    Args:
        count_attention: add the attention rules (off: plain thop, which misses the matmuls).
        custom_ops: more thop rules, ``{module class: hook(module, inputs, output)}``; they win
            over the attention rules and thop's own.
    """

    count_attention: bool = True
    custom_ops: Mapping[type, ThopRule] = attrs.field(factory=dict)
    name: ClassVar[str] = "thop"

    def profile(self, model: nn.Module, example_input: ExampleInput) -> Profile:
        """Count one forward pass of ``model`` on ``example_input`` (a tensor or a tuple of args).

        ``by_module`` holds the units thop added up (leaves, and modules with a rule).
        """
        rules = {**(_thop_attention_rules() if self.count_attention else {}), **self.custom_ops}
        root = _Root(model)
        with _eval_mode(model), _no_leftover_thop_buffers(root), torch.no_grad():
            _, _, layers = thop.profile(
                root, _as_tuple(example_input), custom_ops=rules, verbose=False, ret_layer_info=True
            )
        ops, _, children = layers["model"]
        units = {name: round(n) for name, n in _thop_units(children)} if children else {"": round(ops)}
        macs = sum(units.values())
        params, trainable = count_params(model)
        return Profile(params, trainable, macs, self.name, self._notes(model), {"": macs, **units})

    def _notes(self, model: nn.Module) -> list[str]:
        notes = ["thop: conv/linear MACs, plus thop's counts for norms, pooling and softmax"]
        ruled = attention_classes()
        counted: dict[str, int] = defaultdict(int)
        for m in model.modules():
            if type(m) in ruled:
                counted[type(m).__name__] += 1
        if counted:
            kinds = ", ".join(f"{n} x{k}" for n, k in sorted(counted.items()))
            if self.count_attention:
                notes.append(f"thop: attention matmuls (Q·K^T, attn·V) added by rules for {kinds}")
            else:
                notes.append(f"thop: plain, attention matmuls NOT counted in {kinds}")
        return notes


# ----------------------------------------------------------------------------------------------
# torch.utils.flop_counter


def _sdpa_flops(
    query_shape: torch.Size,
    key_shape: torch.Size,
    value_shape: torch.Size,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of Q·K^T and attn·V (2 per MAC), like torch's own formula for the CUDA kernels,
    written out because torch's checks reject grouped-query shapes."""
    b, h, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * (d_qk + d_v)


#: flop_counter has formulas for the CUDA attention kernels only; on CPU,
#: ``F.scaled_dot_product_attention`` runs this op and its matmuls would count as zero.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def _outermost_hf_models(model: nn.Module) -> list[nn.Module]:
    """Hugging Face models in ``model`` (duck-typed), not nested in another one."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():  # a parent comes before its children
        inside = any(outer == "" or name.startswith(outer + ".") for outer, _ in found)
        if not inside and hasattr(m, "set_attn_implementation") and hasattr(m, "config"):
            found.append((name, m))
    return [m for _, m in found]


@contextlib.contextmanager
def _eager_hf_attention(model: nn.Module, notes: list[str]) -> Iterator[None]:
    """Switch every Hugging Face model inside ``model`` to eager attention, then back.

    Eager attention runs plain matmuls, which flop_counter counts on any device, whatever
    implementation the model was loaded with (sdpa, flash-attention kernels, flex).
    """
    switched: list[tuple[nn.Module, Any]] = []
    try:
        for m in _outermost_hf_models(model):
            previous = m.config._attn_implementation
            if previous == "eager":
                continue
            m.set_attn_implementation("eager")
            switched.append((m, previous))
            if m.config._attn_implementation == "eager":
                notes.append(
                    f"flop_counter: {type(m).__name__} switched from {previous!r} to eager "
                    f"attention while counting, then restored"
                )
            else:
                notes.append(
                    f"flop_counter: {type(m).__name__} refused eager attention; its attention "
                    f"is counted only if it runs matmuls or scaled_dot_product_attention"
                )
        yield
    finally:
        for m, previous in reversed(switched):
            m.set_attn_implementation(previous)


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    """``nn.MultiheadAttention``'s inference fast path is one fused op flop_counter has no
    formula for (it counted 0 FLOPs for a whole MHA); the regular path runs counted ops."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@attrs.frozen
class FlopCounterProfiler:
    """MACs with ``torch.utils.flop_counter`` (FLOPs / 2).

    Args:
        eager_attention: switch Hugging Face models to eager attention while counting. Off, their
            attention is still counted when it runs ``scaled_dot_product_attention`` on CPU or
            CUDA (formulas added here for CPU), but not inside other fused kernels.
    """

    eager_attention: bool = True
    name: ClassVar[str] = "flop_counter"

    def profile(self, model: nn.Module, example_input: ExampleInput) -> Profile:
        """Count one forward pass; ``by_module`` holds each module's MACs, its children included."""
        notes = ["flop_counter: matmul/conv/attention ops only, FLOPs / 2 = MACs"]
        counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_eval_mode(model))
            if self.eager_attention:
                stack.enter_context(_eager_hf_attention(model, notes))
            stack.enter_context(_mha_fastpath_disabled())
            stack.enter_context(torch.no_grad())
            with counter:
                model(*_as_tuple(example_input))
        root = type(model).__name__
        by_module = {"": counter.get_total_flops() // 2}
        for name, ops in counter.get_flop_counts().items():
            if name.startswith(root + "."):  # names are "<root class>.<module path>"
                by_module[name.removeprefix(root + ".")] = sum(ops.values()) // 2
        params, trainable = count_params(model)
        return Profile(params, trainable, by_module[""], self.name, notes, by_module)


# ----------------------------------------------------------------------------------------------
# registration


def _factory(cls: type) -> Callable[..., Any]:
    valid = [a.name for a in attrs.fields(cls)]

    def build(**options: Any) -> Any:
        check_options(f"profiler {cls.name}", "its options", options, valid)
        return cls(**options)

    build.__name__ = f"build_{cls.__name__}"
    return build


@hookimpl
def audiokd_profilers() -> list[Component]:
    return [
        Component("thop", _factory(ThopProfiler), "params + MACs with thop (plus counting rules for attention)"),
        Component("flop_counter", _factory(FlopCounterProfiler), "params + MACs with torch.utils.flop_counter"),
    ]


__all__ = ["FlopCounterProfiler", "ProfilerError", "ThopProfiler", "attention_classes", "count_params"]
