"""RLHF with PPO: ``PPOConfig`` and ``PPOTrainer`` (chapter 06).

One iteration, as :meth:`PPOTrainer.step` reads it::

    prompts → 1 rollout (ids, response_mask, old_logprobs, old_values)
            → 2 reference log-probs
            → 3 scores from the reward function
            → 4 shape_rewards: −β·KL on every token, the score on the last one
            → 5 advantages and returns from the algorithm's estimator (PPO: GAE)
            → 6 epochs over minibatches: the algorithm's policy loss (PPO: clipped)
                 + vf_coef · value_loss when the algorithm trains a critic
            → 7 KL controller update and statistics

Each stage has one contract. An algorithm is a choice of an advantage estimator, a policy loss,
whether a critic is trained, how many samples each prompt gets and where the KL goes,
registered by name in :mod:`ppo_lib.registry`; ``PPOConfig.algorithm`` picks one ("ppo", the
default, "reinforce", "rloo", "grpo", "dr_grpo" or "remax"), and the loop stays the same; ReMax's
greedy baseline is one extra stage, 3b.

No math lives here: every formula is a call into ``advantages``, ``losses``, ``kl`` and
``policy_gradient``, which are tested on hand-computed tensors.

References:
    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593.
    Ouyang et al. (2022), "Training language models to follow instructions with human
    feedback", arXiv:2203.02155.
    Huang et al. (2024), "The N+ Implementation Details of RLHF with PPO: A Case Study on
    TL;DR Summarization", arXiv:2403.17031.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .checkpoint import CheckpointError
from .kl import KL_KINDS, AdaptiveKLController, FixedKLController, shape_rewards
from .losses import entropy_from_logits, value_loss
from .masking import masked_mean, masked_sum, masked_var, masked_whiten
from .models import ActorCritic, load_policy, reference_copy
from .registry import get_advantage_estimator, get_algorithm, get_policy_loss
from .rewards import RewardFn, score
from .schedules import LR_SCHEDULES, adaptive_lr_scale, lr_factor
from .rollout import PRODUCTS, Rollout, critic_values, forward_response, tokenize_prompts
from .sampling import SAMPLERS, get_sampler

__all__ = ["PPOConfig", "SPEED_ONLY_FIELDS", "PPOTrainer", "build_trainer", "CheckpointError"]  # CheckpointError: from .checkpoint


@dataclass(frozen=True)
class PPOConfig:
    """Every setting of a PPO run. Frozen: a run's configuration never changes under it.

    Each field: meaning, typical range, and its symbol in the book.
    """

    # --- algorithm (chapters 06, 09)
    algorithm: str = "ppo"
    """A registered algorithm (:mod:`ppo_lib.registry`): "ppo" (GAE with a critic, the clipped
    loss), "reinforce" (REINFORCE with a batch-mean baseline, no critic), "rloo" (4 samples
    per prompt, leave-one-out baseline), "grpo" or "dr_grpo" (4 samples per prompt, group-
    normalised advantages, the KL in the loss; they need whiten_advantages=False) or "remax"
    (the greedy response's score as baseline)."""
    samples_per_prompt: int | None = None
    """k, responses sampled per prompt; None keeps the algorithm's own (1 for ppo, reinforce and
    remax, 4 for rloo, grpo and dr_grpo, which need k ≥ 2). ``batch_size`` must be a multiple."""

    # --- rollout (chapter 06, step 1)
    batch_size: int = 16
    """B, prompts (and responses) per PPO update. 16–512."""
    max_new_tokens: int = 24
    """T, the most tokens in a response. 16–256."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; a longer prompt is an error, never silently cut."""
    temperature: float = 0.7
    """τ, sampling temperature; log-probs use the same τ. 0.7–1.0."""
    top_k: int = 0
    """Top-k filter when sampling; 0 is off (keeps rollout log-probs exact)."""
    top_p: float = 1.0
    """Nucleus filter when sampling; 1.0 is off (keeps rollout log-probs exact)."""
    stop_at_eos: bool = True
    """Cut each response after its first EOS; False always samples exactly T tokens."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a response that did not end with EOS (e.g. 1.0); None is off."""
    reuse_sampling_logprobs: bool = False
    """Take log π_old (and a shared head's V_old) from the sampling pass instead of a second
    forward pass, as TRL does: one forward fewer per update (about a tenth of a CPU update),
    but the first ratio is then 1 only up to the rounding difference between the cached,
    token-by-token pass and the full-sequence pass. False keeps it exactly 1."""

    # --- reward shaping and the KL controller (chapters 05, 06, steps 3-4)
    kl_coef: float = 0.05
    """β, weight of the per-token KL penalty. 0.01–0.2; 0 lets the policy drift (reward hacking)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: "k1" (unbiased, as in Ziegler et al.) or "k3" (≥ 0)."""
    adaptive_kl: bool = False
    """Adapt β towards ``kl_target`` (Ziegler et al. 2019) instead of keeping it fixed."""
    kl_target: float = 6.0
    """KL_target in nats per sequence for the adaptive controller. 1–10."""
    kl_horizon: float = 10000.0
    """H, samples over which the adaptive controller moves β; larger is slower."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance over the batch (mean kept)."""

    # --- advantages (chapter 04, step 5)
    gamma: float = 1.0
    """γ, discount per token. 1.0 for RLHF (episodes are short)."""
    lam: float = 0.95
    """λ of GAE: 0 is one-step TD (low variance, biased), 1 is Monte-Carlo. 0.9–1.0."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, variance 1 over the batch's tokens."""

    # --- PPO update (chapter 05, step 6)
    ppo_epochs: int = 4
    """K, passes over the batch per update. 1–4."""
    num_minibatches: int = 1
    """Minibatches per epoch (one optimizer step each); must divide ``batch_size``."""
    grad_accum_steps: int = 1
    """Micro-batches per minibatch, accumulated into one step (exact); must divide the minibatch."""
    clip_eps: float = 0.2
    """ε, the policy clip range. 0.1–0.3."""
    vf_clip_eps: float | None = 0.2
    """ε_V, the value clip range in reward units; None turns value clipping off."""
    vf_coef: float = 0.1
    """c_V, weight of the value loss in the total loss. 0.05–1."""
    learning_rate: float = 1e-5
    """η, AdamW learning rate. 1e-6–5e-5 for full fine-tuning, ~1e-4 with LoRA."""
    lr_schedule: str = "constant"
    """How η changes over the run (chapter 07): "constant", "linear" or "cosine" decay to 0 at
    ``lr_decay_updates``; each after the warm-up."""
    lr_warmup_updates: int = 0
    """W, updates over which η rises linearly from η/W to η (chapter 07); 0 is off. 2–10 tames
    the first updates' clip fraction."""
    lr_decay_updates: int | None = None
    """U, the update at which a "linear" or "cosine" schedule reaches 0; needed by both."""
    adaptive_lr_kl_target: float | None = None
    """Target approx-KL(π_old‖π_θ) per token for the KL-driven learning rate (chapter 07, after
    rl_games): η ÷ 1.5 when an update's KL exceeds twice it, × 1.5 below half; None is off.
    0.005–0.02."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None is off."""

    # --- models and hardware
    separate_critic: bool = False
    """False: one backbone with a value head (cheaper). True: a second backbone for the critic."""
    lora_rank: int = 0
    """r of LoRA adapters on every linear layer; 0 trains all weights. Needs ``peft``."""
    lora_alpha: float = 32.0
    """LoRA scaling α (the update is scaled by α / r)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: one more
    forward pass per training step for activation memory that no longer grows with depth."""
    mixed_precision: str = "no"
    """"no" or "bf16" (GPU): autocast the forward passes, keep float32 weights."""
    compile: bool = False
    """``torch.compile`` the training forward pass (chapter 07). The first updates pay the
    compilation (tens of seconds on a CPU, recompiling for new response lengths); worth it only
    for long runs, and measured in chapter 07 before it is turned on."""
    sampler: str = "eager"
    """How responses are sampled (chapter 07): "eager" (a growing KV cache, stops when every row
    has ended) or "static" (a preallocated KV cache and fixed shapes, captured in a CUDA graph on
    a GPU). Both give the same tokens for the same seed."""
    cpu_products: str = "packed"
    """The form of the decode steps' linear products on a CPU (chapter 07, Section 11; no effect
    on a GPU): "packed" (MKL's packed GEMM), "transposed", "plain", or "auto", which times the
    three once per process (about 3 s for SmolLM2) and takes the fastest. The same products up to
    rounding; which is fastest depends on the CPU (with packed products a whole sampling was 1.14×
    as fast as with plain ones on an Intel Xeon, 0.85× as fast on an AMD EPYC)."""
    seed: int = 0
    """Seeds the prompt order, minibatch order and sampling."""

    def __post_init__(self):
        """Check every field's type and range; say what to change. Ints are accepted for float
        fields (and stored as floats); bools are not numbers here, and strings are not parsed."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            optional = type(None) in typing.get_args(hint)
            kind = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
            if value is None and optional:
                continue
            ok = (type(value) is bool if kind is bool else type(value) is int if kind is int
                  else type(value) in (int, float) if kind is float else isinstance(value, kind))
            if not ok:
                raise ValueError(f"PPOConfig: {f.name} must be {_TYPE_NAMES[kind]}{' or None' if optional else ''}, "
                                 f"got {value!r} (a {type(value).__name__}).")
            if kind is float:
                if not math.isfinite(value):
                    raise ValueError(f"PPOConfig: {f.name} must be a finite number, got {value!r}.")
                object.__setattr__(self, f.name, float(value))
        for name, (low, high, low_open, high_open) in _RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if value < low or (low_open and value == low) or value > high or (high_open and value == high):
                where = (f"{'>' if low_open else '≥'} {low}" if high == math.inf
                         else f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
                raise ValueError(f"PPOConfig: {name} must be {where}, got {value!r}. {_RANGE_HINTS.get(name, '')}".rstrip())

        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"PPOConfig: {msg}")

        need(self.batch_size % self.num_minibatches == 0,
             f"num_minibatches={self.num_minibatches} must divide batch_size={self.batch_size}.")
        need(self.minibatch_size % self.grad_accum_steps == 0,
             f"grad_accum_steps={self.grad_accum_steps} must divide the minibatch size {self.minibatch_size} "
             f"(= batch_size / num_minibatches).")
        algorithm = self.algorithm_spec  # a ValueError lists the registered names, or says k must be ≥ 2
        need(self.batch_size % algorithm.samples_per_prompt == 0,
             f"algorithm {self.algorithm!r} samples {algorithm.samples_per_prompt} responses per prompt; "
             f"batch_size={self.batch_size} must be a multiple of it.")
        need(algorithm.whiten_advantages or not self.whiten_advantages,
             f"algorithm {self.algorithm!r} normalises advantages within each group: set whiten_advantages=False.")
        need(algorithm.critic or not self.separate_critic,
             f"algorithm {self.algorithm!r} trains no critic: separate_critic=True would load a backbone for nothing.")
        need(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        need(self.lr_schedule == "constant" or (self.lr_decay_updates is not None
                                               and self.lr_decay_updates > self.lr_warmup_updates),
             f"lr_schedule={self.lr_schedule!r} decays to 0 at lr_decay_updates, which must be set and larger than "
             f"lr_warmup_updates={self.lr_warmup_updates}; got {self.lr_decay_updates!r}.")
        need(self.kl_estimator in KL_KINDS, f"kl_estimator must be one of {KL_KINDS}, got {self.kl_estimator!r}.")
        need(not (self.lora_rank and self.separate_critic),
             "LoRA with a separate critic is not supported: use lora_rank=0 or separate_critic=False.")
        need(self.mixed_precision in ("no", "bf16"), f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}.")
        need(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}.")
        need(self.cpu_products in PRODUCTS, f"cpu_products must be one of {PRODUCTS}, got {self.cpu_products!r}.")

    @property
    def algorithm_spec(self):
        """The registered :class:`~ppo_lib.registry.Algorithm` with this config's ``samples_per_prompt``."""
        try:
            return get_algorithm(self.algorithm).with_samples_per_prompt(self.samples_per_prompt)
        except ValueError as e:
            raise ValueError(f"PPOConfig: {e}") from None

    @property
    def minibatch_size(self) -> int:
        """Sequences per optimizer step: ``batch_size // num_minibatches``."""
        return self.batch_size // self.num_minibatches

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward pass: ``minibatch_size // grad_accum_steps``."""
        return self.minibatch_size // self.grad_accum_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PPOConfig":
        """Build from a dict (e.g. a JSON config file); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"PPOConfig: unknown field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**d)


SPEED_ONLY_FIELDS = ("sampler", "cpu_products")
"""PPOConfig fields that change how fast a run goes, not what it computes: the same tokens and
statistics up to float rounding (tests/test_schedules.py checks both in the trainer). Committed
runs that differ only in these ran the same configuration."""

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

# field: (low, high, low excluded, high excluded). Every numeric field has a range; inf is
# never allowed (checked above), so "no upper bound" is written as math.inf.
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "batch_size": (1, math.inf, False, True), "max_new_tokens": (1, math.inf, False, True),
    "max_prompt_length": (1, math.inf, False, True), "ppo_epochs": (1, math.inf, False, True),
    "num_minibatches": (1, math.inf, False, True), "grad_accum_steps": (1, math.inf, False, True),
    "temperature": (0, math.inf, True, True), "top_k": (0, math.inf, False, True), "top_p": (0, 1, True, False),
    "missing_eos_penalty": (0, math.inf, False, True),
    "kl_coef": (0, math.inf, False, True), "kl_target": (0, math.inf, True, True), "kl_horizon": (0, math.inf, True, True),
    "gamma": (0, 1, False, False), "lam": (0, 1, False, False),
    "clip_eps": (0, math.inf, True, True), "vf_clip_eps": (0, math.inf, True, True), "vf_coef": (0, math.inf, False, True),
    "learning_rate": (0, math.inf, True, True), "weight_decay": (0, math.inf, False, True),
    "max_grad_norm": (0, math.inf, True, True), "lora_rank": (0, math.inf, False, True),
    "lora_alpha": (0, math.inf, True, True), "seed": (0, 2**63 - 1, False, False),
    "lr_warmup_updates": (0, math.inf, False, True), "lr_decay_updates": (1, math.inf, False, True),
    "adaptive_lr_kl_target": (0, math.inf, True, True), "samples_per_prompt": (1, math.inf, False, True),
}
_RANGE_HINTS = {"top_k": "0 turns it off.", "lora_rank": "0 trains all weights.", "top_p": "1.0 turns it off.",
                "vf_clip_eps": "None turns value clipping off.", "max_grad_norm": "None turns clipping off.",
                "missing_eos_penalty": "None turns it off.", "adaptive_lr_kl_target": "None turns it off."}



@dataclass
class _Timer:
    """Seconds per phase of one update; synchronises CUDA so GPU time is not misattributed."""

    device: torch.device
    seconds: dict = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class PPOTrainer:
    """PPO for a causal LM against a reward function (chapter 06).

    Args:
        policy: an :class:`~ppo_lib.models.ActorCritic` (its LM may carry LoRA adapters).
        ref_policy: the frozen reference LM :math:`\\pi_{ref}`; ``None`` when the policy has
            LoRA adapters, whose base model with adapters disabled is the reference.
        tokenizer: the policy's tokenizer (pad token distinct from EOS).
        reward_fn: ``f(prompts, responses) -> list[float]``.
        config: a :class:`PPOConfig`.
        accelerator: an ``accelerate.Accelerator``; by default one is made from the config.
    """

    def __init__(self, policy: ActorCritic, ref_policy: nn.Module | None, tokenizer, reward_fn: RewardFn,
                 config: PPOConfig, accelerator=None):
        from accelerate import Accelerator

        if not isinstance(policy, ActorCritic):
            raise TypeError("policy must be a ppo_lib.models.ActorCritic (see ppo_lib.models.load_policy).")
        if ref_policy is None and not hasattr(policy.lm, "disable_adapter"):
            raise ValueError("ref_policy is None but the policy has no LoRA adapter to disable; "
                             "pass ppo_lib.models.reference_copy(policy.lm).")
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ValueError("the tokenizer's pad token must exist and differ from EOS (see ppo_lib.models).")
        self.config = config
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        # Accelerate places the model and, under `accelerate launch`, makes it data-parallel. Mixed
        # precision is the config's, applied by self.autocast(): Accelerate's own setting is
        # process-global and could not change between two trainers in one notebook.
        self.accelerator = accelerator or Accelerator()
        _check_launch(self.accelerator.num_processes)
        _check_fits_model(policy.lm, config)
        if config.gradient_checkpointing:  # active in train() mode only, so sampling is unaffected
            for backbone in (policy.lm, policy.critic):
                if backbone is not None:
                    _enable_checkpointing(backbone)
        params = [p for p in policy.parameters() if p.requires_grad]
        # fused=True: one kernel for all parameters (CPU and CUDA) instead of one per tensor;
        # the optimizer step was the largest library-side cost in the CPU benchmark.
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.lr_scale = 1.0  # the KL-driven multiplier of η (adaptive_lr_kl_target); saved in checkpoints
        # η of update u (0-based) = learning_rate × lr_multiplier(u), through torch's LambdaLR. It steps
        # once after every update, so its epoch is step_count (load_checkpoint keeps the two equal).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_multiplier)
        # The training forward pass (step 6): compiled when config.compile; shares the weights.
        self.train_model = torch.compile(self.policy, dynamic=True) if config.compile else self.policy
        self.sample = functools.partial(get_sampler(config.sampler), products=config.cpu_products)
        self.device = self.accelerator.device
        self.ref_policy = ref_policy.to(self.device).eval() if ref_policy is not None else None
        self.algorithm = config.algorithm_spec
        self.estimator = get_advantage_estimator(self.algorithm.advantage_estimator)
        self.policy_loss = get_policy_loss(self.algorithm.policy_loss)
        self.loss_aggregation = self.policy_loss.aggregation  # "token_mean" or "seq_mean": how micro-batches weigh
        self.kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else FixedKLController(config.kl_coef))
        self.step_count = 0
        # Two seeded generators, saved in checkpoints. The order of prompts and minibatches is the
        # same on every process (they shard one permutation); sampling differs per process.
        self.order_rng = torch.Generator().manual_seed(config.seed)
        self.sample_rng = torch.Generator(device=self.device).manual_seed(config.seed + self.accelerator.process_index)
        self._queue: list[int] = []  # indices of the prompts still to draw (see next_prompts)
        self._prompt_count: int | None = None  # length of the prompt list the queue indexes
        self.minibatch_stats: list[dict] = []  # per-minibatch stats of the last update
        self.last_samples: list[tuple[str, str, float]] = []  # (prompt, response, score) of the last update

    # ------------------------------------------------------------------ the loop
    @contextmanager
    def autocast(self):
        """bf16 autocast on a GPU when ``mixed_precision="bf16"``; weights stay float32. Every
        forward pass of the trainer runs in it, with :meth:`attention_kernels`."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16), self.attention_kernels():
            yield

    @property
    def _bf16(self) -> bool:
        """bf16 autocast is on: ``mixed_precision="bf16"`` and a GPU."""
        return self.config.mixed_precision == "bf16" and self.device.type == "cuda"

    @contextmanager
    def attention_kernels(self):
        """Under bf16 on a GPU, attention without the cuDNN kernel, which builds a plan for every
        new sequence length; an RLHF batch brings new lengths every update. Measured on an H200
        (shared head, B = 16, 24 tokens): sampling took 5.5, 1.9 and 1.2 s in the first three
        updates with it, 1.1, 0.8 and 0.7 s without it, and 0.7 s in steady state either way.

        The backward pass runs in it too: activation checkpointing recomputes the forward pass
        there, and must pick the same kernel as the first time.
        """
        if self._bf16:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                yield
        else:
            yield

    @property
    def unwrapped(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.policy)

    def step(self, prompts: Sequence[str]) -> dict[str, float]:
        """One PPO update on ``prompts`` (a list of ``batch_size`` strings). Returns its statistics."""
        c = self.config
        if isinstance(prompts, str) or len(prompts) != c.batch_size:
            raise ValueError(f"step() needs a list of batch_size={c.batch_size} prompts, got "
                             f"{'a string' if isinstance(prompts, str) else len(prompts)}.")
        group_index = self.group_index(prompts)
        timer = _Timer(self.device)
        t_start = time.perf_counter()
        with timer("generate"):                                                   # 1. rollout
            batch = self.rollout(prompts)
        with timer("forward_old"):
            old_logprobs, old_values = self.forward_old(batch)
        with timer("ref_forward"):                                                # 2. reference
            ref_logprobs = self.ref_logprobs(batch)
        with timer("score"):                                                      # 3. scores
            scores, responses = self.score(prompts, batch)
        baselines = None
        if self.algorithm.greedy_baseline:                                        # 3b. ReMax's baseline
            with timer("greedy"):
                baselines = self.greedy_scores(prompts)
        rewards, kl_stats = self.shape_rewards(scores, old_logprobs, ref_logprobs, batch)  # 4. shaping
        advantages, returns = self.advantages(rewards, batch, group_index, old_values, baselines)  # 5. advantages
        lr = self.optimizer.param_groups[0]["lr"]                                         # 6. epochs
        train_stats = self.ppo_epochs(batch, old_logprobs, old_values, advantages, returns, timer, ref_logprobs)
        kl_coef = self.kl_ctl.kl_coef                                                     # 7. stats, β, η
        stats = self.collect_stats(scores, kl_stats, kl_coef, batch, old_values, returns, train_stats)
        stats["optimizer/lr"] = lr
        self.kl_ctl.update(stats["objective/kl"], c.batch_size * self.accelerator.num_processes)
        if c.adaptive_lr_kl_target is not None:
            self.lr_scale = adaptive_lr_scale(self.lr_scale, stats["policy/approx_kl_k3"], c.adaptive_lr_kl_target)
        self.step_count += 1
        self.lr_scheduler.step()  # η of the next update
        seconds = time.perf_counter() - t_start
        stats.update({f"time/{k}": v for k, v in timer.seconds.items()})
        stats["time/step"] = seconds
        stats["throughput/tokens_per_s"] = stats["response/length_mean"] * c.batch_size / seconds
        self.last_samples = list(zip(prompts, responses, scores.tolist()))
        return stats

    def rollout(self, prompts: Sequence[str]) -> Rollout:
        """Step 1: left-pad the prompts and sample responses (no gradient, dropout off)."""
        c = self.config
        prompt_ids, prompt_mask = tokenize_prompts(self.tokenizer, prompts, c.max_prompt_length, self.device)
        self.policy.eval()
        with self.autocast():
            return self.sample(self.unwrapped, self.tokenizer, prompt_ids, prompt_mask, c.max_new_tokens, c.temperature,
                          c.top_k, c.top_p, c.stop_at_eos, generator=self.sample_rng,
                          return_logprobs=c.reuse_sampling_logprobs)

    @torch.no_grad()
    def forward_old(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1b: log-probs and values of the sampled tokens under the current policy (π_old, V_old).

        With ``reuse_sampling_logprobs`` the rollout already holds log π_old (and a shared
        head's values); only a separate critic still needs its own forward pass.
        """
        if batch.old_logprobs is not None:
            if batch.old_values is not None:
                return batch.old_logprobs, batch.old_values
            with self.autocast():
                values = [critic_values(self.unwrapped, mb) for mb in self._micro_batches(batch)]
            return batch.old_logprobs, torch.cat(values)
        logprobs, values = [], []
        for mb in self._micro_batches(batch):
            with self.autocast():
                lp, v = forward_response(self.policy, mb, self.config.temperature)
            logprobs.append(lp), values.append(v)
        return torch.cat(logprobs), torch.cat(values)

    @torch.no_grad()
    def ref_logprobs(self, batch: Rollout) -> torch.Tensor:
        """Step 2: log-probs of the sampled tokens under π_ref (or the adapter-free base model)."""
        out = []
        for mb in self._micro_batches(batch):
            with self.autocast():
                if self.ref_policy is not None:
                    lp, _ = forward_response(self.ref_policy, mb, self.config.temperature)
                else:
                    with self.unwrapped.lm.disable_adapter():
                        lp, _ = forward_response(self.unwrapped.lm, mb, self.config.temperature)
            out.append(lp)
        return torch.cat(out)

    def score(self, prompts: Sequence[str], batch: Rollout) -> tuple[torch.Tensor, list[str]]:
        """Step 3: decode the responses (without EOS and padding) and call the reward function."""
        responses = [self.tokenizer.decode(ids[m], skip_special_tokens=True)
                     for ids, m in zip(batch.response_ids, batch.response_mask)]
        scores = score(self.reward_fn, prompts, responses, device=self.device)
        if self.config.missing_eos_penalty is not None:
            scores = scores - self.config.missing_eos_penalty * (~self._ends_with_eos(batch)).float()
        return scores, responses

    @torch.no_grad()
    def greedy_scores(self, prompts: Sequence[str]) -> torch.Tensor:
        """Step 3b (ReMax): ``(B,)`` scores of the greedy (argmax) response to each prompt.

        top_k = 1 leaves one token with probability 1, so sampling from it is argmax decoding,
        through the same sampler as the rollout (``PPOConfig.sampler``); its own generator leaves
        the rollout's sampling stream untouched.
        """
        c = self.config
        prompt_ids, prompt_mask = tokenize_prompts(self.tokenizer, prompts, c.max_prompt_length, self.device)
        self.policy.eval()
        with self.autocast():
            greedy = self.sample(self.unwrapped, self.tokenizer, prompt_ids, prompt_mask, c.max_new_tokens, c.temperature,
                            top_k=1, stop_at_eos=c.stop_at_eos, generator=torch.Generator(device=self.device))
        return self.score(prompts, greedy)[0]

    def lr_multiplier(self, update: int) -> float:
        """The multiplier of the base rate for ``update`` (0-based): the schedule's factor (warm-up,
        decay; :func:`ppo_lib.schedules.lr_factor`) × the KL-driven scale. The lambda of
        ``self.lr_scheduler``."""
        c = self.config
        return lr_factor(update, c.lr_schedule, c.lr_warmup_updates, c.lr_decay_updates) * self.lr_scale

    def sync_lr_scheduler(self) -> None:
        """After ``step_count`` or ``lr_scale`` was set from outside (a checkpoint): the scheduler's
        epoch is ``step_count`` and every group's η is that of the update about to run."""
        self.lr_scheduler.last_epoch = self.step_count
        for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs):
            group["lr"] = base * self.lr_multiplier(self.step_count)
        self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def shape_rewards(self, scores, old_logprobs, ref_logprobs, batch: Rollout):
        """Step 4: per-token rewards, −β·KL on every token and the score on the last one
        (:func:`ppo_lib.kl.shape_rewards`); optionally scaled to unit variance."""
        mask = batch.response_mask
        kl_coef = self.kl_ctl.kl_coef if self.algorithm.kl_in_reward else 0.0  # else the loss carries it
        rewards, kl_stats = shape_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef, self.config.kl_estimator)
        if self.config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        return rewards, kl_stats

    def advantages(self, rewards, batch: Rollout, group_index, old_values,
                   reward_baselines=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5: ``(advantages, returns)`` from the algorithm's registered estimator, whitened
        over the batch's tokens when ``whiten_advantages``; ``reward_baselines`` (B,) are ReMax's."""
        c, mask = self.config, batch.response_mask
        advantages, returns = self.estimator(rewards, mask, group_index, values=old_values if self.algorithm.critic
                                             else None, gamma=c.gamma, lam=c.lam, reward_baselines=reward_baselines)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns

    def group_index(self, prompts: Sequence[str]) -> torch.Tensor | None:
        """``(B,)`` long: the group of each row, when the algorithm samples k > 1 responses per
        prompt (rows come in runs of k copies of one prompt, as :meth:`next_prompts` draws
        them); ``None`` when k = 1."""
        k = self.algorithm.samples_per_prompt
        if k == 1:
            return None
        runs = [prompts[i : i + k] for i in range(0, len(prompts), k)]
        if any(len(set(run)) != 1 for run in runs):
            raise ValueError(f"algorithm {self.algorithm.name!r} samples {k} responses per prompt: step() needs "
                             f"each prompt repeated {k} times in a row (next_prompts() draws them so).")
        return torch.arange(len(runs), device=self.device).repeat_interleave(k)

    def ppo_epochs(self, batch, old_logprobs, old_values, advantages, returns, timer,
                   ref_logprobs=None) -> dict[str, float]:
        """Step 6: K epochs of minibatch updates on the policy loss, plus the value loss when the
        algorithm trains a critic.

        Gradient accumulation is exact: each micro-batch's loss is weighted by its share of
        the minibatch's real tokens (its share of the sequences, for a loss that averages over
        sequences), so the summed gradient equals that of one big batch. ``ref_logprobs`` go to
        losses that carry the KL themselves (GRPO).
        """
        c = self.config
        self.policy.train()
        self.minibatch_stats = []
        for _ in range(c.ppo_epochs):
            order = torch.randperm(c.batch_size, generator=self.order_rng).to(self.device)
            for mb_idx in order.split(c.minibatch_size):
                n_tokens = batch.response_mask[mb_idx].sum()
                sums: dict[str, torch.Tensor] = {}
                ratio_max = torch.zeros((), device=self.device)
                for micro_idx in mb_idx.split(c.micro_batch_size):
                    mask = batch.response_mask[micro_idx]
                    if self.loss_aggregation == "seq_mean":
                        weight = len(micro_idx) / len(mb_idx)  # this micro-batch's share of the sequences
                    else:
                        weight = mask.sum() / n_tokens  # this micro-batch's share of the tokens
                    with timer("train_forward"), self.autocast():
                        logprobs, values, logits = forward_response(self.train_model, batch[micro_idx], c.temperature,
                                                                    return_logits=True)
                        pg_loss, pg_stats = self.policy_loss(
                            logprobs, old_logprobs[micro_idx], advantages[micro_idx], mask, clip_eps=c.clip_eps,
                            ref_logprobs=None if ref_logprobs is None else ref_logprobs[micro_idx],
                            kl_coef=self.kl_ctl.kl_coef)
                        loss = pg_loss
                        if self.algorithm.critic:
                            vf_loss, vf_stats = value_loss(values, old_values[micro_idx], returns[micro_idx], mask,
                                                           c.vf_clip_eps)
                            loss = loss + c.vf_coef * vf_loss
                        loss = loss * weight
                    with torch.no_grad():
                        entropy = masked_mean(entropy_from_logits(logits.float() / c.temperature), mask)
                    del logits  # the (B, T, V) logits are not needed by the backward pass: free them first
                    with timer("backward"), self.attention_kernels():
                        self.accelerator.backward(loss)
                    ratio_max = torch.maximum(ratio_max, pg_stats.pop("ratio_max"))
                    step_stats = {"policy/loss": pg_loss, "policy/entropy": entropy,
                                  **{f"policy/{k}": v for k, v in pg_stats.items()}}
                    if self.algorithm.critic:
                        step_stats.update({"value/loss": vf_loss, **{f"value/{k}": v for k, v in vf_stats.items()}})
                    for k, v in step_stats.items():
                        sums[k] = sums.get(k, 0.0) + v.detach() * weight
                with timer("optimizer"):
                    if c.max_grad_norm is not None:
                        sums["policy/grad_norm"] = torch.as_tensor(
                            self.accelerator.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)).float()
                    sums["policy/ratio_max"] = ratio_max  # a max, not a token-weighted mean
                    stats = {k: float(v) for k, v in sums.items()}  # CPU-GPU sync, once per minibatch
                    if not all(math.isfinite(stats[k]) for k in ("policy/loss", "value/loss", "policy/grad_norm") if k in stats):
                        self.optimizer.zero_grad(set_to_none=True)  # never step on a NaN: the weights stay finite
                        raise FloatingPointError(
                            f"non-finite loss or gradient in update {self.step_count + 1} ({stats}); "
                            "lower learning_rate, set max_grad_norm, or check the reward's scale.")
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.minibatch_stats.append(stats)
        keys = self.minibatch_stats[0].keys()
        mean = {k: sum(s[k] for s in self.minibatch_stats) / len(self.minibatch_stats) for k in keys}
        mean["policy/ratio_max"] = max(s["policy/ratio_max"] for s in self.minibatch_stats)
        return mean

    def collect_stats(self, scores, kl_stats, kl_coef, batch, old_values, returns, train_stats) -> dict[str, float]:
        """Step 7: the statistics of one update under namespaced keys (plain floats)."""
        mask = batch.response_mask
        lengths = mask.sum(1).float()
        all_scores = self.accelerator.gather(scores)  # (B × processes,), the same on every process
        stats = {
            "env/score_mean": all_scores.mean().item(),
            "env/score_std": all_scores.std().item() if len(all_scores) > 1 else 0.0,
            "objective/kl": kl_stats["kl"].item(),
            "objective/kl_coef": kl_coef,
            "objective/non_score_reward": kl_stats["non_score_reward"].item(),
            "response/length_mean": lengths.mean().item(),
            "response/eos_fraction": self._ends_with_eos(batch).float().mean().item(),
            **train_stats,
        }
        if self.algorithm.critic:  # how much of the returns' variance V_old already explained
            var_returns = masked_var(returns, mask)
            explained_var = 1.0 - masked_var(returns - old_values, mask) / var_returns
            stats["value/explained_variance"] = explained_var.item() if var_returns > 0 else float("nan")
        return self._mean_across_processes(stats)

    def _mean_across_processes(self, stats: dict[str, float]) -> dict[str, float]:
        """Under data parallelism, every process's statistics → their mean over processes (the
        maximum for ``*_max``), identical on every process; the KL controller then moves β the
        same way everywhere. Scores are gathered whole (above), so their std is the global one."""
        if self.accelerator.num_processes == 1:
            return stats
        keys = sorted(k for k in stats if not k.startswith("env/score"))
        local = torch.tensor([[stats[k] for k in keys]], dtype=torch.float64, device=self.device)
        gathered = self.accelerator.gather(local)  # (processes, len(keys))
        for j, k in enumerate(keys):
            column = gathered[:, j]
            stats[k] = (column.max() if k.endswith("_max") else column.mean()).item()
        return stats

    def train(self, prompts: Sequence[str], n_updates: int, log_path: str | Path | None = None,
              callback: Callable[[int, dict], None] | None = None, progress: bool = True,
              stop: Callable[[dict], bool] | None = None) -> list[dict]:
        """Run ``n_updates`` calls of :meth:`step` on batches drawn from ``prompts``.

        Prompts are reshuffled (seeded) each time the list is used up. Each update's stats
        go to a tqdm bar, to ``callback(update, stats)`` (e.g. a live plot), and as one JSON
        line to ``log_path``; then ``stop(stats)``, if given, may end training early by
        returning True (e.g. a :class:`ppo_lib.kl.KLBudget`). Returns the list of stats.
        """
        from tqdm.auto import tqdm

        prompts = list(prompts)
        if type(n_updates) is not int or n_updates < 1:
            raise ValueError(f"train() needs n_updates ≥ 1 (an integer), got {n_updates!r}.")
        if not prompts:
            raise ValueError("train() needs a non-empty list of prompts.")
        per_process = self.config.batch_size // self.algorithm.samples_per_prompt
        need = per_process * self.accelerator.num_processes
        if len(prompts) < need:
            raise ValueError(f"train() needs at least {per_process} distinct prompts per process "
                             f"({need} in all), got {len(prompts)}.")
        tokenize_prompts(self.tokenizer, prompts, self.config.max_prompt_length)  # fail now, not at update 37
        history = []
        bar = tqdm(range(n_updates), desc="PPO", disable=not progress or not self.accelerator.is_main_process)
        for _ in bar:
            stats = self.step(self.next_prompts(prompts))
            stats["update"] = self.step_count
            history.append(stats)
            bar.set_postfix({"score": f"{stats['env/score_mean']:.3f}", "kl": f"{stats['objective/kl']:.2f}",
                             "clipfrac": f"{stats['policy/clipfrac']:.2f}"})
            if log_path is not None and self.accelerator.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(stats) + "\n")
            if callback is not None:
                callback(self.step_count, stats)
            if stop is not None and stop(stats):
                break
        return history

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], seed: int = 0, batch_size: int | None = None) -> dict:
        """Sample one response per prompt (seeded), score it, and measure its KL to π_ref.

        Used for held-out prompts before and after training. Does not touch the training RNGs.
        ``batch_size`` prompts are sampled at a time (default: the config's); a larger batch
        is faster per prompt, and the result depends on it through the sampling RNG stream.

        Returns:
            ``{"score_mean", "score_se", "kl_mean", "kl_se", "length_mean", "samples": [(prompt, response,
            score, kl)]}``, KL in nats per sequence (sum of per-token k1 over the response); ``*_se`` is
            the standard error of the mean over the prompts (sample standard deviation / √n).
        """
        c = self.config
        if isinstance(prompts, str) or not len(prompts):
            raise ValueError("evaluate() needs a non-empty list of prompts.")
        g = torch.Generator(device=self.device).manual_seed(seed)
        self.policy.eval()
        samples = []
        batch_size = batch_size or c.batch_size
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            ids, mask = tokenize_prompts(self.tokenizer, chunk, c.max_prompt_length, self.device)
            with self.autocast():
                batch = self.sample(self.unwrapped, self.tokenizer, ids, mask, c.max_new_tokens, c.temperature,
                               c.top_k, c.top_p, c.stop_at_eos, generator=g)
                logprobs, _ = forward_response(self.unwrapped, batch, c.temperature)
            kl = masked_sum(logprobs - self.ref_logprobs(batch), batch.response_mask, dim=1)  # (B,)
            scores, responses = self.score(chunk, batch)
            samples += list(zip(chunk, responses, scores.tolist(), kl.tolist()))
        n = len(samples)
        score_t, kl_t = (torch.tensor([s[i] for s in samples], dtype=torch.float64) for i in (2, 3))

        def se(x):  # standard error of the mean over the prompts
            return (x.std() / n**0.5).item() if n > 1 else None  # undefined for one prompt

        return {"score_mean": score_t.mean().item(), "score_se": se(score_t), "kl_mean": kl_t.mean().item(),
                "kl_se": se(kl_t), "length_mean": sum(len(self.tokenizer(s[1])["input_ids"]) for s in samples) / n,
                "samples": samples}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Save weights, optimizer, KL controller, RNG states, prompt queue and step count into
        ``folder``, atomically (see :mod:`ppo_lib.checkpoint`). Every process must call it."""
        return checkpoint.save_checkpoint(self, folder)

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote. The trainer must have the same config.

        Raises:
            CheckpointError: naming the file, if the folder is missing, incomplete, corrupt or
                from another model, config or number of processes. Nothing in the trainer is
                changed in that case.
        """
        checkpoint.load_checkpoint(self, folder)

    # ------------------------------------------------------------------ helpers
    def _micro_batches(self, batch: Rollout):
        n = self.config.micro_batch_size
        for i in range(0, batch.response_ids.shape[0], n):
            yield batch[i : i + n]

    def _ends_with_eos(self, batch: Rollout) -> torch.Tensor:
        """(B,) True where the response's last real token is EOS."""
        last = batch.response_mask.long().sum(1) - 1
        return batch.response_ids.gather(1, last[:, None]).squeeze(1) == self.tokenizer.eos_token_id

    def next_prompts(self, prompts: Sequence[str]) -> list[str]:
        """The next ``batch_size`` prompts for :meth:`step`, as :meth:`train` draws them.

        They come from a queue of indices into ``prompts``, reshuffled (seeded) whenever it runs
        out; the queue is saved in checkpoints, so a resumed run draws what an uninterrupted one
        would. Under data parallelism every process holds the same queue (one shared
        permutation) and takes its own slice of the next indices, so the processes' prompts are
        disjoint. An algorithm that samples k responses per prompt gets ``batch_size / k``
        prompts, each repeated k times in a row.
        """
        c, acc, k = self.config, self.accelerator, self.algorithm.samples_per_prompt
        if self._prompt_count is not None and self._prompt_count != len(prompts):
            raise ValueError(f"the prompt queue was built for {self._prompt_count} prompts, but got {len(prompts)}; "
                             "pass the same prompt list for the whole run (and after a resume).")
        self._prompt_count = len(prompts)
        per_process = c.batch_size // k
        need = per_process * acc.num_processes
        while len(self._queue) < need:
            self._queue += torch.randperm(len(prompts), generator=self.order_rng).tolist()
        take, self._queue = self._queue[:need], self._queue[need:]
        mine = take[acc.process_index * per_process : (acc.process_index + 1) * per_process]
        return [prompts[i] for i in mine for _ in range(k)]


LAUNCH_HELP = ("Data-parallel runs: on GPUs `accelerate launch --multi_gpu --num_processes N -m ppo_lib train ...`; "
               "on CPUs `ACCELERATE_USE_CPU=true torchrun --nproc_per_node N -m ppo_lib train ...`.")


def _check_launch(num_processes: int) -> None:
    """Refuse N processes that each believe they are alone, and warn when N were asked for but one runs.

    ``torchrun`` (or ``accelerate launch --multi_gpu``) on a machine without GPUs starts N
    processes with ``WORLD_SIZE=N``, but Accelerate, not told to use the CPU, runs each one
    undistributed: N copies of one run writing one folder. ``accelerate launch --cpu
    --num_processes N`` starts a single plain process without telling it (multi-CPU needs MPI
    there); the parent's command line is the only trace of the N (read on Linux).
    """
    if num_processes > 1:
        return
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise RuntimeError(f"WORLD_SIZE={world} but Accelerate runs this process undistributed, so every process "
                           f"would train alone and write the same files. {LAUNCH_HELP}")
    try:
        words = [w.decode(errors="replace") for w in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return
    if any("accelerate" in w for w in words[:3]) and "--num_processes" in words[:-1]:
        asked = words[words.index("--num_processes") + 1]
        if asked.isdigit() and int(asked) > 1:
            warnings.warn(f"`accelerate launch --num_processes {asked}` started one undistributed process, so this "
                          f"run uses one process. {LAUNCH_HELP}", stacklevel=3)


def _check_fits_model(lm: nn.Module, config: PPOConfig) -> None:
    """Prompt plus response must fit the model's context, and top-k its vocabulary: fail when
    the trainer is built, not with an ``IndexError`` in the middle of sampling."""
    cfg = lm.config
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if context and config.max_prompt_length + config.max_new_tokens > context:
        raise ValueError(f"max_prompt_length + max_new_tokens = {config.max_prompt_length} + {config.max_new_tokens} "
                         f"exceeds the model's context of {context} tokens; lower one of them.")
    vocab = getattr(cfg, "vocab_size", None)
    if vocab and config.top_k > vocab:
        raise ValueError(f"top_k={config.top_k} exceeds the model's vocabulary of {vocab} tokens; "
                         "use a smaller top_k, or 0 to turn it off.")


def _enable_checkpointing(model: nn.Module) -> None:
    """Per-layer activation checkpointing (non-reentrant, so frozen LoRA bases need no tricks).
    Recent transformers 5 releases call it ``activation_checkpointing_enable`` and deprecate
    ``gradient_checkpointing_enable``; earlier ones have only the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_trainer(model_name: str, reward_fn: RewardFn, config: PPOConfig, accelerator=None) -> PPOTrainer:
    """Load ``model_name`` as policy (+ value head, LoRA if asked) and reference; make the trainer.

    With ``config.lora_rank > 0`` no reference copy is made: the base model with adapters
    disabled is the reference (half the memory).
    """
    policy, tokenizer = load_policy(model_name, separate_critic=config.separate_critic)
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear",
                          lora_dropout=0.0, bias="none")
        policy.lm = get_peft_model(policy.lm, lora)
        ref = None
    else:
        ref = reference_copy(policy.lm)
    return PPOTrainer(policy, ref, tokenizer, reward_fn, config, accelerator)
