"""Tests for ppo_lib.losses and ppo_lib.kl: hand values, autograd zero-gradient regions, controllers."""

import math

import pytest
import torch

from ppo_lib.kl import AdaptiveKLController, FixedKLController, kl_estimate, shape_rewards
from ppo_lib.losses import entropy_from_logits, ppo_clip_loss, value_loss


def test_ratio_one_gives_minus_mean_advantage_and_zero_stats():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, generator=g)
    A = torch.randn(3, 5, generator=g)
    m = torch.arange(5)[None] < torch.tensor([[5], [2], [3]])
    loss, s = ppo_clip_loss(lp, lp.clone(), A, m, 0.2)
    torch.testing.assert_close(loss, -A[m].mean())
    assert s["clipfrac"].item() == 0 and s["approx_kl_k1"].item() == 0 and s["approx_kl_k3"].item() == 0
    assert s["ratio_mean"].item() == pytest.approx(1.0) and s["ratio_max"].item() == pytest.approx(1.0)


def test_clip_hand_values():
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A>0: unclipped, min picks 0.5), 0.5 (A<0: clipped to 0.8)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5]]))
    A = torch.tensor([[1.0, 1.0, -1.0]])
    loss, s = ppo_clip_loss(new, old, A, torch.ones(1, 3, dtype=torch.bool), 0.2)
    # objectives: min(1.5, 1.2)=1.2 ; min(0.5, 0.8)=0.5 ; min(-0.5, -0.8)=-0.8  -> mean 0.3
    assert loss.item() == pytest.approx(-0.3)
    assert s["clipfrac"].item() == pytest.approx(2 / 3)
    assert s["ratio_max"].item() == pytest.approx(1.5)


def test_gradient_zero_where_clip_active_and_unclipped_inside():
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5]], dtype=torch.float64)
    A = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    m = torch.ones_like(A, dtype=torch.bool)
    lp = torch.log(ratios).requires_grad_(True)
    loss, _ = ppo_clip_loss(lp, torch.zeros_like(lp), A, m, 0.2)
    loss.backward()
    # The unclipped surrogate -mean(A * r) has d/dlogp = -A * r / n.
    unclipped = -A * ratios / A.numel()
    active = torch.tensor([[False, False, False, True, True, False, False, False]])
    assert (lp.grad[active] == 0).all()  # A>0 & r>1+eps ; A<0 & r<1-eps
    torch.testing.assert_close(lp.grad[~active], unclipped[~active])


def test_value_loss_hand_and_clipping():
    v = torch.tensor([[1.0, 3.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0]])
    R = torch.tensor([[2.0, 0.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    loss, s = value_loss(v, old, R, m)
    assert loss.item() == pytest.approx(0.5 * (1 + 9) / 2)
    # clip 0.5: v_clipped = [0.5, 0.5]; errors max((1,9),(2.25,0.25)) = (2.25, 9)
    loss_c, s_c = value_loss(v, old, R, m, clip_eps=0.5)
    assert loss_c.item() == pytest.approx(0.5 * (2.25 + 9) / 2)
    assert s_c["vf_clipfrac"].item() == pytest.approx(0.5)
    loss_c.backward()
    assert v.grad[0, 0].item() == 0.0  # clipped branch active: no gradient through v


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(4), 0.0]))


def test_kl_estimators_zero_for_identical_and_k3_nonnegative():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 6, generator=g)
    for kind in ("k1", "k2", "k3"):
        assert (kl_estimate(lp, lp, kind) == 0).all()
    ref = torch.randn(4, 6, generator=g) * 3
    assert (kl_estimate(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_exact_kl():
    g = torch.Generator().manual_seed(2)
    p_logits, q_logits = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    logp, logq = p_logits.log_softmax(0), q_logits.log_softmax(0)
    exact = (logp.exp() * (logp - logq)).sum()
    # Exact expectation over a ~ p (enumerate the 10 actions): both equal the true KL.
    for kind in ("k1", "k3"):
        expectation = (logp.exp() * kl_estimate(logp, logq, kind)).sum()
        torch.testing.assert_close(expectation, exact)


def test_shape_rewards_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -1.0, 9.0]])
    m = torch.tensor([[True, True, False], [True, True, False]])
    scores = torch.tensor([1.0, -2.0])
    rewards, s = shape_rewards(scores, lp, ref, m, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 1.0, 0.0], [-0.1, -2.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    assert s["kl"].item() == pytest.approx((0.5 + 1.0) / 2)


def test_shape_rewards_zero_kl_when_policy_is_reference():
    lp = torch.randn(3, 4)
    m = torch.ones(3, 4, dtype=torch.bool)
    rewards, s = shape_rewards(torch.tensor([1.0, 2.0, 3.0]), lp, lp, m, 0.5, "k3")
    assert s["kl"].item() == 0
    assert rewards[:, :3].abs().sum() == 0 and rewards[:, 3].tolist() == [1.0, 2.0, 3.0]


def test_adaptive_controller_direction_and_clip():
    c = AdaptiveKLController(0.1, kl_target=6.0, kl_horizon=1000)
    c.update(current_kl=60.0, n_steps=100)  # far above target: error clipped to +0.2
    assert c.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    c2 = AdaptiveKLController(0.1, kl_target=6.0, kl_horizon=1000)
    c2.update(current_kl=0.0, n_steps=100)
    assert c2.kl_coef == pytest.approx(0.1 * (1 - 0.2 * 100 / 1000))
    c3 = AdaptiveKLController(0.1, kl_target=6.0, kl_horizon=1000)
    c3.update(current_kl=6.6, n_steps=100)  # error 0.1, inside the clip
    assert c3.kl_coef == pytest.approx(0.1 * (1 + 0.1 * 0.1))
    f = FixedKLController(0.3)
    assert f.update(100.0, 10) == 0.3
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, kl_target=0.0, kl_horizon=10)
    with pytest.raises(ValueError, match="finite"):
        c.update(float("nan"), 1)
