"""Invariants of the KD loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from plugins.losses.ce import CrossEntropy
from plugins.losses.kd import KDLoss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) * 3, torch.randint(0, 5, (8,), generator=g)


def test_identical_logits_give_zero_kd(batch):
    s, _, y = batch
    out = KDLoss(T=3.0, alpha=1.0)(s, y, s.clone())
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["total"].item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_is_plain_ce(batch):
    s, t, y = batch
    out = KDLoss(T=3.0, alpha=0.0)(s, y, t)
    assert out["total"].item() == pytest.approx(CrossEntropy()(s, y)["total"].item(), rel=1e-6)
    assert out["kd"].item() > 0  # still reported


def test_matches_the_formula(batch):
    s, t, y = batch
    T, alpha = 2.5, 0.7
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum(dim=1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert KDLoss(T=T, alpha=alpha)(s, y, t)["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_flow_only_into_the_student(batch):
    s, t, y = batch
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    KDLoss()(s, y, t)["total"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_t_squared_keeps_the_soft_gradient_scale(batch):
    """Hinton's argument: for large T the soft-term gradient ~ (s - t) / N, independent of T."""
    s, t, y = batch
    grads = []
    for T in (8.0, 16.0):
        x = s.clone().requires_grad_(True)
        KDLoss(T=T, alpha=1.0)(x, y, t)["total"].backward()
        grads.append(x.grad.norm().item())
    assert grads[0] == pytest.approx(grads[1], rel=0.05)


def test_bad_settings_and_missing_teacher(batch):
    s, _, y = batch
    with pytest.raises(UserError, match="teacher logits"):
        KDLoss()(s, y)
    with pytest.raises(UserError, match="T=0"):
        KDLoss(T=0)
    with pytest.raises(UserError, match=r"alpha=1.5"):
        KDLoss(alpha=1.5)
    with pytest.raises(UserError, match="do not match"):
        KDLoss()(s, y, torch.zeros(8, 4))
    assert math.isfinite(KDLoss(T=1e-3)(s, y, s * 2)["total"].item())  # tiny T stays finite
