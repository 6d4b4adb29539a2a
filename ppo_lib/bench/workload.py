"""The benchmark's workload: one frozen :class:`Workload` that every side reads (chapter 07).

``python -m ppo_lib bench`` times one PPO workload three ways: ppo_lib's trainer
(:mod:`.library_side`), the raw-compute floor (:mod:`.floor`) and TRL 1.12.0's
``PPOTrainer`` (:mod:`.trl_side`). The comparison is only fair if the three run the same
settings, so every setting is written here, once:

* :func:`bench_config` turns a workload into ppo_lib's :class:`~ppo_lib.trainer.PPOConfig`
  for each mode;
* :func:`trl_config_kwargs` turns it into the arguments of TRL's ``PPOConfig``;
* the floor reads the fields directly.

The harness writes the workload to one JSON file (:meth:`Workload.to_json`) that every child
process reads, and the results JSON keeps it (:meth:`Workload.record`). ``tests/test_bench.py``
builds each side from a workload with unusual values and checks that each side uses them.

Only the standard library is imported here: the TRL side runs with the python of a separate
virtual environment that has no ppo_lib, and imports this file on its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Workload", "WORKLOAD", "MODES", "TRL_VERSION", "bench_config", "trl_config_kwargs", "bench_prompts"]

TRL_VERSION = "1.12.0"
"""The TRL release compared against: the last one with ``PPOTrainer`` (``trl.experimental.ppo``)."""
MODES = ("separate", "shared", "lora")
"""ppo_lib's modes: a second backbone for the critic (TRL's design), one backbone with a value
head, and LoRA adapters (the reference is the base model with the adapter disabled)."""


@dataclass(frozen=True)
class Workload(Mapping):
    """Every setting of the benchmark. Frozen: a published comparison cannot drift.

    A workload also reads as the mapping that a results JSON stores under ``"workload"``
    (its fields plus ``dtype``): ``w["batch_size"]``, ``dict(w)``. The report reads that
    mapping, so it takes a :class:`Workload` or a workload loaded from an old JSON alike.
    """

    # --- model and hardware
    model: str = "smollm2-135m"
    """The policy, a name for :func:`ppo_lib.models.load_model`; the TRL side loads its safetensors cache."""
    device: str = "cpu"
    """"cpu": float32 everywhere. "cuda": bf16 autocast with float32 weights on every side (no floors)."""
    torch_threads: int = 2
    """torch (and OMP/MKL) threads of every process; the published CPU run had 2 cores."""
    pad_token: str = "<empty_output>"
    """Pad token, distinct from EOS. The TRL side sets it; ppo_lib's loader must have chosen the same."""

    # --- prompts and sampling (chapter 06, step 1)
    n_prompts: int = 64
    """The first n movie-review openings of ``review_prompts("train")``, left-padded; ≥ batch_size."""
    batch_size: int = 16
    """B, prompts (and responses) per PPO update."""
    response_length: int = 24
    """T, sampled tokens per response: exactly T on every side (no stop token)."""
    temperature: float = 0.7
    """τ, of sampling and of every log-prob."""

    # --- rewards and advantages (chapters 04-06, steps 3-5)
    kl_coef: float = 0.05
    """β, weight of the per-token KL penalty (fixed, not adaptive)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: "k1" or "k3" (the two TRL 1.12.0 knows)."""
    gamma: float = 1.0
    """γ, discount per token."""
    lam: float = 0.95
    """λ of GAE."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance over the batch."""

    # --- the PPO update (chapter 05, step 6)
    ppo_epochs: int = 1
    """K, passes over the batch per update."""
    num_minibatches: int = 1
    """Minibatches per epoch, one optimizer step each; divides batch_size."""
    clip_eps: float = 0.2
    """ε, the policy clip range: ratios are clipped to [1 − ε, 1 + ε]."""
    vf_clip_eps: float = 0.2
    """ε_V, the value clip range in reward units."""
    vf_coef: float = 0.1
    """c_V, weight of the value loss."""
    learning_rate: float = 1e-5
    """η, AdamW's learning rate, constant."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""

    # --- the LoRA mode
    lora_rank: int = 16
    """r of the adapters on every linear layer."""
    lora_alpha: float = 32.0
    """α of the adapters (the update is scaled by α / r)."""

    # --- length of the run
    updates: int = 8
    """PPO updates per system; the first is left out of every mean (warm-up)."""
    floor_updates: int = 5
    """Iterations of each floor (its time varies less than a library's)."""
    seed: int = 42
    """Seeds prompt order, sampling and the value head's initialisation on every side."""

    # --- fixed: TRL 1.12.0 (or the floor) cannot do otherwise; recorded, and checked below
    stop_token: str | None = None
    """None: no stop token, every response is exactly T tokens long."""
    top_k: int = 0
    """0: no top-k filter (TRL's PPO samples with top_k=0 whatever its config says)."""
    top_p: float = 1.0
    """1.0: no nucleus filter (TRL's PPO samples with top_p=1.0 whatever its config says)."""
    whiten_advantages: bool = True
    """Advantages normalised over the batch's tokens (TRL always does)."""
    max_grad_norm: float | None = None
    """No gradient clipping (TRL's PPO loop clips none)."""
    optimizer: str = "AdamW"
    """torch's fused AdamW on every side."""
    lr_schedule: str = "constant"
    """No warm-up, no decay, no KL-driven rate: η stays η on every side."""
    reward: str = "VADER compound of the decoded response"
    """The score of a response, on every side."""

    def __post_init__(self):
        """Check what every side relies on; a bad value fails here, naming what to change."""

        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"Workload: {msg}")

        need(self.device in ("cpu", "cuda"), f"device must be 'cpu' or 'cuda', got {self.device!r}.")
        for name in ("torch_threads", "n_prompts", "batch_size", "response_length", "ppo_epochs", "num_minibatches",
                     "lora_rank", "updates", "floor_updates"):
            value = getattr(self, name)
            need(type(value) is int and value >= 1, f"{name} must be an integer ≥ 1, got {value!r}.")
        for name in ("temperature", "clip_eps", "vf_clip_eps", "learning_rate", "lora_alpha"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)!r}.")
        for name in ("kl_coef", "vf_coef", "weight_decay"):
            need(getattr(self, name) >= 0, f"{name} must be ≥ 0, got {getattr(self, name)!r}.")
        for name in ("gamma", "lam"):
            need(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)!r}.")
        need(self.kl_estimator in ("k1", "k3"), f"kl_estimator must be 'k1' or 'k3' (TRL {TRL_VERSION} knows no "
                                                f"other), got {self.kl_estimator!r}.")
        need(self.batch_size % self.num_minibatches == 0,
             f"num_minibatches={self.num_minibatches} must divide batch_size={self.batch_size}.")
        need(self.n_prompts >= self.batch_size,
             f"n_prompts={self.n_prompts} must be ≥ batch_size={self.batch_size}: TRL's data loader drops an "
             "incomplete batch and would have nothing to train on.")
        for name, (value, why) in _FIXED.items():
            need(getattr(self, name) == value, f"{name} must be {value!r}, got {getattr(self, name)!r}: {why}")

    # ------------------------------------------------------------------ derived
    @property
    def dtype(self) -> str:
        """How the models compute, in words (the report's column)."""
        return "bf16 autocast, float32 weights" if self.device == "cuda" else "float32"

    @property
    def mixed_precision(self) -> str:
        """ppo_lib's ``PPOConfig.mixed_precision``: "bf16" on a GPU, "no" on the CPU."""
        return "bf16" if self.device == "cuda" else "no"

    @property
    def tokens_per_update(self) -> int:
        """B · T, sampled tokens per update (the throughput's numerator)."""
        return self.batch_size * self.response_length

    # ------------------------------------------------------------------ the mapping view
    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self)) + ("dtype",)

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    # ------------------------------------------------------------------ JSON
    def record(self, gpu: str | None = None) -> dict:
        """The ``"workload"`` entry of a results JSON: every field, ``dtype``, and the GPU's name."""
        return {**self, **({"gpu": gpu} if gpu else {})}

    def to_json(self) -> str:
        """The fields as JSON: what the harness hands every child process."""
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Workload":
        """The inverse of :meth:`to_json`; an unknown field is an error, never ignored."""
        fields = json.loads(text)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Workload: unknown field(s) {unknown}; was the JSON written by another version?")
        return cls(**fields)


# field: (its only value, why). Changing one of these needs a change on a side, not here.
_FIXED = {
    "stop_token": (None, "every side samples exactly response_length tokens."),
    "top_k": (0, f"TRL {TRL_VERSION}'s PPO samples with top_k=0 and cannot be told otherwise."),
    "top_p": (1.0, f"TRL {TRL_VERSION}'s PPO samples with top_p=1.0 and cannot be told otherwise."),
    "whiten_advantages": (True, f"TRL {TRL_VERSION}'s PPO always whitens the advantages."),
    "max_grad_norm": (None, f"TRL {TRL_VERSION}'s PPO loop clips no gradient."),
    "optimizer": ("AdamW", "every side builds torch.optim.AdamW(fused=True)."),
    "lr_schedule": ("constant", "the floor steps at a constant rate, and a schedule would need the same warm-up "
                                "and decay lengths written for ppo_lib and for TRL."),
    "reward": ("VADER compound of the decoded response", "every side scores with VADER."),
}

WORKLOAD = Workload()
"""The published benchmark (``figures/runs/bench_*.json``)."""


# ----------------------------------------------------------------------------- each side's config
def bench_config(mode: str, exact: bool = False, checkpointing: bool | None = None, workload: Workload = WORKLOAD):
    """ppo_lib's :class:`~ppo_lib.trainer.PPOConfig` of ``workload`` in ``mode`` (one of :data:`MODES`).

    Like TRL, the modes take π_old's log-probs from the sampling pass; ``exact=True`` is the
    library's default instead: one more no-grad forward pass for a first ratio of exactly 1.
    ``checkpointing`` (activation checkpointing) defaults to on for LoRA, the memory-lean mode.
    """
    from ..trainer import PPOConfig  # here, not above: this module must load without ppo_lib

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}.")
    w = workload
    return PPOConfig(
        batch_size=w.batch_size, max_new_tokens=w.response_length, stop_at_eos=w.stop_token == "eos",
        missing_eos_penalty=None, temperature=w.temperature, top_k=w.top_k, top_p=w.top_p,
        reuse_sampling_logprobs=not exact,  # TRL takes π_old from its generation scores
        kl_coef=w.kl_coef, kl_estimator=w.kl_estimator, adaptive_kl=False, whiten_rewards=w.whiten_rewards,
        gamma=w.gamma, lam=w.lam, whiten_advantages=w.whiten_advantages,
        ppo_epochs=w.ppo_epochs, num_minibatches=w.num_minibatches, grad_accum_steps=1,
        clip_eps=w.clip_eps, vf_clip_eps=w.vf_clip_eps, vf_coef=w.vf_coef,
        learning_rate=w.learning_rate, lr_schedule=w.lr_schedule, lr_warmup_updates=0, adaptive_lr_kl_target=None,
        weight_decay=w.weight_decay, max_grad_norm=w.max_grad_norm,
        separate_critic=mode == "separate", lora_rank=w.lora_rank if mode == "lora" else 0, lora_alpha=w.lora_alpha,
        gradient_checkpointing=(mode == "lora") if checkpointing is None else checkpointing,
        mixed_precision=w.mixed_precision, seed=w.seed,
    )


def trl_config_kwargs(workload: Workload) -> dict:
    """The arguments of TRL 1.12.0's ``trl.experimental.ppo.PPOConfig`` that ``workload`` sets.

    Plain values only, so this runs (and is tested) without TRL. The TRL side adds the
    harness's own arguments (output folder, logging), none of which is a workload setting.
    """
    w = workload
    return dict(
        seed=w.seed, use_cpu=w.device == "cpu", bf16=w.mixed_precision == "bf16", fp16=False,
        # TRL's batch is per_device_train_batch_size × gradient_accumulation_steps; each of its
        # num_mini_batches minibatches is then one micro-batch and one optimizer step, as in ppo_lib.
        per_device_train_batch_size=w.batch_size, gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=w.batch_size, total_episodes=w.batch_size * w.updates,
        num_ppo_epochs=w.ppo_epochs, num_mini_batches=w.num_minibatches,
        response_length=w.response_length, stop_token=w.stop_token, missing_eos_penalty=None,
        temperature=w.temperature,
        kl_coef=w.kl_coef, kl_estimator=w.kl_estimator, whiten_rewards=w.whiten_rewards, gamma=w.gamma, lam=w.lam,
        cliprange=w.clip_eps, cliprange_value=w.vf_clip_eps, vf_coef=w.vf_coef,
        optim="adamw_torch_fused", learning_rate=w.learning_rate, weight_decay=w.weight_decay,
        lr_scheduler_type=w.lr_schedule, warmup_steps=0,
    )


def bench_prompts(workload: Workload = WORKLOAD) -> list[str]:
    """The workload's prompts: the first ``n_prompts`` movie-review openings of the training split."""
    from ..rewards import review_prompts  # here, not above: this module must load without ppo_lib

    prompts = review_prompts("train")[:workload.n_prompts]
    if len(prompts) < workload.n_prompts:
        raise ValueError(f"Workload: n_prompts={workload.n_prompts}, but the training split has only {len(prompts)}.")
    return prompts
