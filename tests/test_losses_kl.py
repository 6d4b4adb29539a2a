"""Tests for ppo_lib.losses and ppo_lib.kl: hand values, autograd zero-gradient regions, controllers."""

import math

import pytest
import torch

from ppo_lib.kl import (AdaptiveKLController, FixedKLController, KLBudget, adaptive_penalty_coef, kl_estimate,
                        shape_rewards)
from ppo_lib.losses import entropy_from_logits, ppo_clip_loss, ppo_penalty_loss, value_loss


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


def test_kl_budget_averages_the_last_window_and_says_when_it_is_reached():
    budget = KLBudget(3.0, window=4)
    assert [budget({"objective/kl": k}) for k in (9.0, 1.0, 2.0)] == [False] * 3  # too few updates to say
    assert budget.estimate is None
    assert budget({"objective/kl": 3.0}) is True and budget.estimate == 15.0 / 4  # 9, 1, 2, 3
    assert budget({"objective/kl": 0.0}) is False and budget.estimate == 6.0 / 4  # the 9 has left the window
    resumed = KLBudget(3.0, window=2, kls=[1.0, 5.0])
    assert resumed.reached and resumed.estimate == 3.0  # a budget is reached when the estimate equals it
    never = KLBudget(None)
    assert not any(never({"objective/kl": 1e9}) for _ in range(5)) and never.estimate == 1e9


@pytest.mark.parametrize("nats, window, message", [
    (0.0, 4, "positive number of nats"), (float("nan"), 4, "positive number of nats"), ("6", 4, "positive number"),
    (6.0, 0, "window must be an integer ≥ 1"), (6.0, 2.5, "window must be an integer ≥ 1"),
])
def test_kl_budget_rejects_bad_values(nats, window, message):
    with pytest.raises(ValueError, match=message):
        KLBudget(nats, window)


# ----------------------------------------------------------------------------- PPO-Penalty, Eq. (5.11), (5.13)
def test_ppo_penalty_loss_hand_values():
    # ratios 2 (A = +1) and 1/2 (A = -1); k3 = (ρ - 1) - log ρ: 1 - log 2 and -1/2 + log 2, mean exactly 1/4
    new = torch.log(torch.tensor([[2.0, 0.5, 7.0]], dtype=torch.float64))
    old = torch.zeros(1, 3, dtype=torch.float64)
    A = torch.tensor([[1.0, -1.0, 100.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, False]])  # the third token is padding: its huge ratio and A must not count
    loss, s = ppo_penalty_loss(new, old, A, m, kl_coef=0.5)
    # surrogate mean(ρA) = (2 - 0.5) / 2 = 0.75; loss = -(0.75 - 0.5 * 0.25) = -0.625
    assert loss.item() == pytest.approx(-0.625, abs=1e-12)
    assert s["surrogate"].item() == pytest.approx(0.75, abs=1e-12)
    assert s["kl"].item() == pytest.approx(0.25, abs=1e-12)
    assert s["ratio_mean"].item() == pytest.approx(1.25) and s["ratio_max"].item() == pytest.approx(2.0)
    # k1 = -log ρ: -log 2 and +log 2, mean 0; the loss is then the plain surrogate
    loss1, s1 = ppo_penalty_loss(new, old, A, m, kl_coef=0.5, kl_estimator="k1")
    assert s1["kl"].item() == pytest.approx(0.0, abs=1e-12) and loss1.item() == pytest.approx(-0.75, abs=1e-12)
    assert all(v.dim() == 0 and not v.requires_grad for v in s.values())


def test_ppo_penalty_loss_gradient_by_hand():
    # d/d log π of -(ρA - β((ρ - 1) - log ρ)) = -ρA + β(ρ - 1), per token, divided by the token count
    rho = torch.tensor([[1.5, 0.8]], dtype=torch.float64)
    A = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    lp = torch.log(rho).requires_grad_(True)
    loss, _ = ppo_penalty_loss(lp, torch.zeros_like(lp), A, torch.ones(1, 2, dtype=torch.bool), kl_coef=3.0)
    (grad,) = torch.autograd.grad(loss, lp)
    expected = (-rho * A + 3.0 * (rho - 1)) / 2
    torch.testing.assert_close(grad, expected)
    # at ρ = 1 the penalty's gradient vanishes: the first step is the policy gradient, whatever β
    lp1 = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(ppo_penalty_loss(lp1, torch.zeros_like(lp1), A, torch.ones(1, 2, dtype=torch.bool), 3.0)[0], lp1)
    torch.testing.assert_close(g1, -A / 2)


def test_ppo_penalty_loss_with_zero_coef_is_minus_l_cpi_and_validates():
    g = torch.Generator().manual_seed(3)
    lp, old, A = (torch.randn(2, 4, generator=g) for _ in range(3))
    m = torch.arange(4)[None] < torch.tensor([[4], [2]])
    loss, _ = ppo_penalty_loss(lp, old, A, m, kl_coef=0.0)
    torch.testing.assert_close(loss, -(torch.exp(lp - old) * A)[m].mean())
    with pytest.raises(ValueError, match="kl_coef"):
        ppo_penalty_loss(lp, old, A, m, kl_coef=-1.0)
    with pytest.raises(ValueError, match="shape"):
        ppo_penalty_loss(lp, old, A[:, :3], m, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo_penalty_loss(lp, old, A, m, kl_coef=0.1, kl_estimator="k4")
    with pytest.raises(ValueError, match="empty"):
        ppo_penalty_loss(lp, old, A, torch.zeros_like(m), kl_coef=0.1)


def test_adaptive_penalty_coef_follows_the_ppo_paper():
    # Schulman et al. (2017), Section 4: d < d_targ / 1.5 -> β / 2; d > 1.5 d_targ -> 2β; else unchanged
    assert adaptive_penalty_coef(1.0, kl=0.005, kl_target=0.01) == 0.5
    assert adaptive_penalty_coef(1.0, kl=0.02, kl_target=0.01) == 2.0
    assert adaptive_penalty_coef(1.0, kl=0.01, kl_target=0.01) == 1.0
    assert adaptive_penalty_coef(1.0, kl=0.01 / 1.5, kl_target=0.01) == 1.0  # the band's edges stay
    assert adaptive_penalty_coef(1.0, kl=0.015, kl_target=0.01) == 1.0
    assert adaptive_penalty_coef(0.3, kl=torch.tensor(1.0), kl_target=0.01) == pytest.approx(0.6)
    assert adaptive_penalty_coef(0.0, kl=1.0, kl_target=0.01) == 0.0  # β = 0 stays 0
    for bad in (dict(kl_coef=-1.0, kl=0.1, kl_target=0.1), dict(kl_coef=1.0, kl=float("nan"), kl_target=0.1),
                dict(kl_coef=1.0, kl=0.1, kl_target=0.0), dict(kl_coef=1.0, kl=0.1, kl_target=0.1, factor=1.0)):
        with pytest.raises(ValueError):
            adaptive_penalty_coef(**bad)
