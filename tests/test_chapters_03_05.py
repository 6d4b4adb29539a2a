"""Tests for chapters 03-05: self-check functions, toy environments, figures."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ppo_lib.advantages import discounted_returns, gae, td_errors
from ppo_lib.kl import kl_estimate
from ppo_lib.losses import ppo_clip_loss, value_loss
from ppo_lib.masking import masked_whiten
from ppo_lib.exercises import ch03, ch04, ch05
from ppo_lib.toys import (ChainMDP, ContextualBandit, bandit_one_batch, mc_values, random_walk_episodes,
                          random_walk_true_values, td0_values)


# ----------------------------------------------------------------------------- self-checks: 03
def test_check_returns_accepts_library_and_rejects_forward_sum():
    ch03.check_returns(discounted_returns, hidden=True)

    def forward(rewards, mask, gamma):  # accumulates from the start instead of the end
        out = torch.zeros_like(rewards)
        run = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
        for t in range(rewards.shape[1]):
            run = run * gamma + rewards[:, t]
            out[:, t] = run * mask[:, t]
        return out

    with pytest.raises(AssertionError):
        ch03.check_returns(forward)


def test_check_td_errors_accepts_library_and_rejects_common_bugs():
    ch03.check_td_errors(td_errors, hidden=True)

    def wrong_sign(r, v, m, gamma):
        return -td_errors(r, v, m, gamma)

    def bootstraps_from_padding(r, v, m, gamma):
        nxt = torch.zeros_like(v)
        nxt[:, :-1] = v[:, 1:]
        return (r + gamma * nxt - v) * m

    for bad, hint in ((wrong_sign, "sign"), (bootstraps_from_padding, "padding")):
        with pytest.raises(AssertionError, match=hint):
            ch03.check_td_errors(bad)


def test_check_random_walk_values():
    def solved():  # the Bellman equations as a linear system, (I - P) v = r_bar
        P = np.diag(np.full(4, 0.5), 1) + np.diag(np.full(4, 0.5), -1)
        return np.linalg.solve(np.eye(5) - P, np.array([0, 0, 0, 0, 0.5]))

    ch03.check_random_walk_values(solved)
    with pytest.raises(AssertionError, match="write yourself"):  # the library's answer is withheld
        ch03.check_random_walk_values(random_walk_true_values)
    with pytest.raises(AssertionError, match="no linear system was solved"):  # typed in
        ch03.check_random_walk_values(lambda: np.arange(1, 6) / 6)
    with pytest.raises(AssertionError):
        ch03.check_random_walk_values(lambda: np.full(5, 0.5))
    with pytest.raises(AssertionError):
        ch03.check_random_walk_values(lambda: np.arange(1, 6) / 5)


# ----------------------------------------------------------------------------- self-checks: 04
def seed_style_gae(rewards, values, mask, gamma, lam):
    """The source article's off-by-one: deltas of length T-1, the last advantage left at 0."""
    A = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        r, v = rewards[b, :n], values[b, :n]
        deltas = r[:-1] + gamma * v[1:] - v[:-1]
        run = 0.0
        for t in reversed(range(len(deltas))):
            run = deltas[t] + gamma * lam * run
            A[b, t] = run
    return A


def test_check_gae_accepts_library_and_rejects_seed_off_by_one():
    ch04.check_gae(gae, hidden=True)
    with pytest.raises(AssertionError, match="off-by-one"):
        ch04.check_gae(seed_style_gae)


def test_check_gae_rejects_bootstrap_across_padding():
    def no_mask_values(r, v, m, gamma, lam):
        full = torch.ones_like(m)
        A, _ = gae(torch.where(m, r, 0.0), v, full, gamma, lam)
        return torch.where(m, A, 0.0)

    with pytest.raises(AssertionError):
        ch04.check_gae(no_mask_values)


def recursive_lambda_returns(r, v, m, gamma, lam):
    """G_t = r_t + γ[(1 − λ) V(s_{t+1}) + λ G_{t+1}], both 0 after the last real token."""
    G = torch.zeros_like(v)
    for b in range(r.shape[0]):
        after_G = after_V = 0.0
        for t in reversed(range(int(m[b].sum()))):
            G[b, t] = r[b, t] + gamma * ((1 - lam) * after_V + lam * after_G)
            after_G, after_V = G[b, t], v[b, t]
    return G


def test_check_lambda_returns():
    ch04.check_lambda_returns(recursive_lambda_returns, hidden=True)
    with pytest.raises(AssertionError):  # advantages, not returns
        ch04.check_lambda_returns(lambda r, v, m, g, l: recursive_lambda_returns(r, v, m, g, l) - v * m)
    with pytest.raises(AssertionError, match="write yourself"):  # the library's gae is withheld
        ch04.check_lambda_returns(lambda r, v, m, g, l: gae(r, v, m, g, l)[1])


def test_check_whiten():
    ch04.check_whiten(masked_whiten)

    def naive(x, m):  # statistics over padding too
        return torch.where(m, (x - x.mean()) / x.std(), 0.0)

    with pytest.raises(AssertionError):
        ch04.check_whiten(naive)


# ----------------------------------------------------------------------------- self-checks: 05
def test_check_ppo_clip_loss():
    ch05.check_ppo_clip_loss(ppo_clip_loss, hidden=True)

    def sign_error(lp, old, A, m, eps):
        return -ppo_clip_loss(lp, old, A, m, eps)[0]

    def uses_max(lp, old, A, m, eps):
        ratio = torch.exp(lp - old)
        return -torch.maximum(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)[m].mean()

    for bad in (sign_error, uses_max):
        with pytest.raises(AssertionError):
            ch05.check_ppo_clip_loss(bad)


def test_check_value_loss():
    ch05.check_value_loss(lambda v, o, R, m, e: value_loss(v, o, R, m, e), hidden=True)
    with pytest.raises(AssertionError, match="unclipped"):
        ch05.check_value_loss(lambda v, o, R, m, e: value_loss(v, o, R, m, None))


def test_check_kl_k3():
    ch05.check_kl_k3(lambda lp, ref: kl_estimate(lp, ref, "k3"))
    with pytest.raises(AssertionError):
        ch05.check_kl_k3(lambda lp, ref: kl_estimate(ref, lp, "k3"))  # inverted ratio


# ----------------------------------------------------------------------------- toys
def test_random_walk_true_values():
    np.testing.assert_allclose(random_walk_true_values(), [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])


def test_random_walk_episodes_and_learners():
    eps = random_walk_episodes(2000, seed=3)
    assert all(ep[0][0] == 3 and ep[-1][2] in (0, 6) for ep in eps)
    right = np.mean([ep[-1][2] == 6 for ep in eps])
    assert abs(right - 0.5) < 0.05  # V(C) = 1/2
    true = random_walk_true_values()
    for learner in (td0_values, mc_values):
        V = learner(eps, alpha=0.01)[-1]
        assert np.sqrt(((V - true) ** 2).mean()) < 0.06


def test_chain_mdp_is_exact():
    mdp = ChainMDP(seed=0)
    gamma = 0.9
    V, Q = mdp.values(gamma)
    A = mdp.advantages(gamma)
    np.testing.assert_allclose((mdp.pi * A).sum(-1), 0.0, atol=1e-12)  # E_π[A] = 0
    traj = mdp.enumerate(1, 0)
    assert abs(traj["prob"].sum() - 1) < 1e-12
    disc = gamma ** np.arange(mdp.horizon)
    assert abs(traj["prob"] @ (traj["rewards"] @ disc) - Q[0, 1, 0]) < 1e-10  # E[G_0 | s, a] = Q
    res = mdp.gae_moments([0.0, 0.5, 1.0], gamma, critic_error=0.0, s0=1, a0=0)
    np.testing.assert_allclose(res["mean"], A[0, 1, 0], atol=1e-10)  # exact critic: unbiased at all λ
    res = mdp.gae_moments([0.0, 1.0], gamma, critic_error=1.0, s0=1, a0=0)
    assert res["bias2"][1] < 1e-20 < res["bias2"][0]  # λ = 1 unbiased with a wrong critic, λ = 0 not


def test_chain_mdp_moments_match_library_gae():
    mdp = ChainMDP(seed=1, horizon=4)
    gamma, lam = 0.95, 0.7
    res = mdp.gae_moments([lam], gamma, critic_error=0.3)
    traj = mdp.enumerate(0, 0)
    Vhat = mdp.critic(gamma, 0.3)
    values = torch.tensor(Vhat[np.arange(4)[None, :], traj["states"][:, :4]])
    rewards = torch.tensor(traj["rewards"])
    A, _ = gae(rewards, values, torch.ones_like(rewards, dtype=torch.bool), gamma, lam)
    np.testing.assert_allclose(res["samples"][:, 0], A[:, 0].numpy(), atol=1e-12)


def test_bandit_exact_quantities_and_clip_keeps_policy_close():
    env = ContextualBandit()
    logits = env.initial_logits()[None]
    assert env.kl(logits, logits).abs().item() < 1e-12
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(env.expected_return(logits), (probs * env.mean_reward).sum(-1).mean(-1))
    free, clipped = bandit_one_batch(None, epochs=40, n_seeds=8), bandit_one_batch(0.2, epochs=40, n_seeds=8)
    assert free["kl"][-1] > 3 * clipped["kl"][-1]


# ----------------------------------------------------------------------------- figures
@pytest.mark.parametrize("name", ["03_random_walk", "04_gae_weights", "04_gae_bias_variance", "05_clip_cases",
                                  "05_value_clip", "05_adaptive_kl", "05_multi_epoch"])
def test_figures_return_a_figure(name):
    import matplotlib.pyplot as plt

    from ppo_lib.plotting import REGISTRY, _load_all

    _load_all()
    small = {"03_random_walk": dict(n_runs=3, n_episodes=10), "05_multi_epoch": dict(epochs=5)}
    fig = REGISTRY[name](**small.get(name, {}))
    assert isinstance(fig, Figure)
    plt.close(fig)
