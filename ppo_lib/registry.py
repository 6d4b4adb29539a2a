"""An algorithm is a choice, not a new trainer: registries of advantage estimators and policy losses.

Modelled on verl's ``verl/trainer/ppo/core_algos.py`` (``register_adv_est``,
``register_policy_loss``): every estimator and every loss is a pure, torch-only function behind
one contract, registered by name, so that the trainer's loop stays the same for PPO, REINFORCE,
RLOO, GRPO, Dr. GRPO and ReMax (chapters 06 and 09).

Advantage estimator contract (verl's, with its names)::

    estimator(token_level_rewards, response_mask, group_index=None, *, values=None,
              gamma=1.0, lam=1.0, **options) -> (advantages, returns)

* ``token_level_rewards`` ``(B, T)``: per-token rewards, the sequence score on the last real
  token (and −β·KL on every token when the KL is in the reward).
* ``response_mask`` ``(B, T)``: right-padded, True on real response tokens.
* ``group_index`` ``(B,)`` long: rows with the same index answer the same prompt (k samples
  per prompt); ``None`` when every row is its own group.
* ``values`` ``(B, T)``: V(s_t) from a critic, for estimators that use one (GAE).
* Returns ``(advantages, returns)``, both ``(B, T)``, 0 on padding, constants (no gradient).
  ``returns`` are the value targets when there is a critic, else the advantages themselves.
* ``reward_baselines`` ``(B,)``: a per-response baseline computed outside the estimator, the
  score of the greedy response to the same prompt for ReMax (verl's name).
* Unknown keyword options are ignored, so the trainer can pass one dict to every estimator.
* An estimator registered with ``needs_groups=True`` compares the k samples of one prompt
  (RLOO, GRPO, Dr. GRPO): an algorithm that uses it must sample k ≥ 2 responses per prompt.
* The same contract and names as verl, so that an estimator moves between the two unchanged.

Policy loss contract::

    loss(logprobs, old_logprobs, advantages, response_mask, *, clip_eps=0.2,
         ref_logprobs=None, kl_coef=0.0, **options) -> (loss, stats)

* ``logprobs`` ``(B, T)`` with gradient; the others are constants.
* ``ref_logprobs`` and ``kl_coef`` are for losses that carry the KL penalty themselves (GRPO);
  losses of algorithms that put the KL into the reward ignore them.
* ``stats`` is a dict of detached 0-dim tensors (no ``.item()``, no CPU-GPU sync).
* A loss declares how it averages over tokens, ``aggregation``: ``"token_mean"`` (every real
  token of the batch weighs the same) or ``"seq_mean"`` (a mean over sequences of a per-sequence
  quantity). The trainer needs it to accumulate micro-batches exactly.

An :class:`Algorithm` names one estimator, one loss, whether a critic is trained, how many
samples each prompt gets, and where the KL to the reference goes. Built in
(:mod:`ppo_lib.policy_gradient`): ``"ppo"`` (GAE with a critic, the clipped loss),
``"reinforce"`` (REINFORCE with a baseline, no critic), ``"rloo"`` (REINFORCE leave-one-out
over 4 samples per prompt), ``"grpo"`` and ``"dr_grpo"`` (group-normalised advantages, the KL
in the loss), ``"remax"`` (REINFORCE with the greedy response's score as baseline).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "ALGORITHMS",
    "Algorithm",
    "register_advantage_estimator",
    "register_policy_loss",
    "register_algorithm",
    "get_advantage_estimator",
    "get_policy_loss",
    "get_algorithm",
]

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
ALGORITHMS: dict[str, "Algorithm"] = {}

# The modules whose import registers the built-in estimators, losses and algorithms.
_BUILTIN_MODULES = ("ppo_lib.policy_gradient",)


@dataclass(frozen=True)
class Algorithm:
    """One RL algorithm for language models as a choice of registered parts (chapter 09)."""

    name: str
    """The name users pass (``PPOConfig.algorithm``)."""
    advantage_estimator: str
    """A key of :data:`ADVANTAGE_ESTIMATORS`."""
    policy_loss: str
    """A key of :data:`POLICY_LOSSES`."""
    critic: bool
    """Whether a value function is trained (and its values passed to the estimator)."""
    samples_per_prompt: int = 1
    """k, responses sampled for each prompt (a group); estimators with a group baseline need ≥ 2."""
    kl_in_reward: bool = True
    """True: −β·KL(π‖π_ref) is added to every token's reward (Ziegler et al. 2019). False: the
    policy loss carries the KL itself, from ``ref_logprobs`` (GRPO)."""
    whiten_advantages: bool = True
    """Whether ``PPOConfig.whiten_advantages`` may normalise the advantages over the batch's
    tokens; False for estimators that normalise within each group already (GRPO)."""
    greedy_baseline: bool = False
    """True: the trainer also decodes one greedy (argmax) response per prompt, scores it, and
    passes the scores to the estimator as ``reward_baselines`` (ReMax, Li et al. 2023)."""
    description: str = ""
    """One line: what the algorithm is, with its reference."""

    def __post_init__(self):
        if type(self.samples_per_prompt) is not int or self.samples_per_prompt < 1:
            raise ValueError(f"Algorithm {self.name!r}: samples_per_prompt must be an integer ≥ 1, "
                             f"got {self.samples_per_prompt!r}.")
        estimator = ADVANTAGE_ESTIMATORS.get(self.advantage_estimator)
        if getattr(estimator, "needs_groups", False) and self.samples_per_prompt < 2:
            raise ValueError(f"algorithm {self.name!r} uses the {self.advantage_estimator!r} estimator, whose baseline "
                             f"comes from the other samples of the same prompt: samples_per_prompt must be ≥ 2, "
                             f"got {self.samples_per_prompt}.")

    def with_samples_per_prompt(self, k: int | None) -> "Algorithm":
        """The same algorithm with k samples per prompt (None keeps its default); checked as above."""
        return self if k is None else dataclasses.replace(self, samples_per_prompt=k)


def _register(table: dict, kind: str, name: str):
    def decorator(obj):
        if name in table and table[name] is not obj:
            raise ValueError(f"a {kind} named {name!r} is already registered ({table[name]!r}).")
        table[name] = obj
        return obj

    return decorator


def register_advantage_estimator(name: str, needs_groups: bool = False):
    """Decorator: register an advantage estimator under ``name`` (see the contract above);
    ``needs_groups``: its baseline comes from the other samples of a prompt (k ≥ 2)."""

    def decorator(fn):
        fn.needs_groups = needs_groups
        return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)(fn)

    return decorator


def register_policy_loss(name: str, aggregation: str = "token_mean"):
    """Decorator: register a policy loss under ``name`` (see the contract above) that averages
    over tokens as ``aggregation`` says ("token_mean" or "seq_mean")."""
    if aggregation not in ("token_mean", "seq_mean"):
        raise ValueError(f"aggregation must be 'token_mean' or 'seq_mean', got {aggregation!r}.")

    def decorator(fn):
        fn.aggregation = aggregation
        return _register(POLICY_LOSSES, "policy loss", name)(fn)

    return decorator


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Register an :class:`Algorithm` under its name; returns it."""
    return _register(ALGORITHMS, "algorithm", algorithm.name)(algorithm)


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _get(table: dict, kind: str, name: str):
    _load_builtins()
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(table)}.")
    return table[name]


def get_advantage_estimator(name: str) -> Callable:
    """The registered estimator ``name``; a ``ValueError`` lists the known names otherwise."""
    return _get(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The registered policy loss ``name``; a ``ValueError`` lists the known names otherwise."""
    return _get(POLICY_LOSSES, "policy loss", name)


def get_algorithm(name: str) -> Algorithm:
    """The registered :class:`Algorithm` ``name``; a ``ValueError`` lists the known names otherwise."""
    return _get(ALGORITHMS, "algorithm", name)
