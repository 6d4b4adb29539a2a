r"""The built-in advantage estimators, policy losses and algorithms, behind the registry's contracts.

Each function here is pure and torch-only, and follows the contract of :mod:`ppo_lib.registry`
(verl's). The estimators and losses of chapters 04 and 05 are wrapped, not rewritten: the
contract adapters below call :func:`ppo_lib.advantages.gae` and :func:`ppo_lib.losses.ppo_clip_loss`.

==================  =========================================================  ==================
name                what it computes                                           chapter, paper
==================  =========================================================  ==================
estimator ``gae``   :math:`\hat A_t = \sum_l (\gamma\lambda)^l \delta_{t+l}`,     04; Schulman et al. 2016
                    returns :math:`\hat A_t + V(s_t)` (needs a critic)
estimator           :math:`G_t - b`, with :math:`G_t` the reward-to-go and       02; Williams 1992
``reinforce``       :math:`b` the mean sequence return of the batch (or group)
estimator ``rloo``  :math:`R_i - \frac{1}{k-1}\sum_{j \ne i} R_j` in a group of k     09; Kool et al. 2019,
                    samples of one prompt, on every token                      Ahmadian et al. 2024
estimator ``grpo``  :math:`(R_i - \bar R)/(\mathrm{std}(R) + \epsilon)` in the group 09; Shao et al. 2024
estimator           :math:`R_i - \bar R` (no std normalisation)                  09; Liu et al. 2025
``dr_grpo``
estimator           :math:`G_t - r(x, \bar y)`, :math:`\bar y` the greedy response     09; Li et al. 2023
``remax``           to the same prompt (decoded by argmax)
loss ``ppo_clip``   the clipped surrogate, Eq. (5.7)                            05; Schulman et al. 2017
loss ``grpo``       clipped surrogate + β·k3 KL to π_ref, 1/|o_i| per response   09; Shao et al. 2024
loss ``dr_grpo``    the same terms, Σ_t / T per response                        09; Liu et al. 2025
loss                :math:`-\rho A` with :math:`\rho = \pi_\theta/\pi_{old}`; at   02
``vanilla_pg``      :math:`\rho = 1` its gradient is REINFORCE's
==================  =========================================================  ==================

References:
    Williams (1992), "Simple statistical gradient-following algorithms for connectionist
    reinforcement learning", Machine Learning 8.
    Schulman et al. (2016), "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", arXiv:1506.02438.
    Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE Samples, Get a Baseline for Free!", ICLR
    workshop DeepRLStructPred.
    Ahmadian et al. (2024), "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", arXiv:2402.14740.
    Shao et al. (2024), "DeepSeekMath", arXiv:2402.03300 (GRPO).
    Liu et al. (2025), "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv:2503.20783 (Dr. GRPO).
    Li et al. (2023), "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method
    for Aligning Large Language Models", arXiv:2310.10505.
    verl, ``verl/trainer/ppo/core_algos.py``: the estimator and loss contracts.
"""

from __future__ import annotations

import torch

from .advantages import check_right_padded, discounted_returns, gae
from .kl import kl_estimate
from .losses import ppo_clip_loss
from .masking import masked_mean, masked_sum
from .registry import Algorithm, register_advantage_estimator, register_algorithm, register_policy_loss

__all__ = ["gae_advantages", "reinforce_advantages", "rloo_advantages", "grpo_advantages", "dr_grpo_advantages", "remax_advantages",
           "ppo_clip_policy_loss", "vanilla_pg_loss", "grpo_loss", "dr_grpo_loss", "group_mean"]


# ------------------------------------------------------------------------------ estimators
@register_advantage_estimator("gae")
def gae_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                   group_index: torch.Tensor | None = None, *, values: torch.Tensor | None = None,
                   gamma: float = 1.0, lam: float = 0.95, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE, Eq. (4.5) of chapter 04, through the estimator contract; ``group_index`` is unused.

    Returns:
        ``(advantages, returns)`` ``(B, T)``; ``returns = advantages + values``, the critic's targets.
    """
    if values is None:
        raise ValueError("the 'gae' estimator needs values from a critic; use an algorithm with critic=True.")
    return gae(token_level_rewards, values, response_mask, gamma, lam)


def group_mean(x: torch.Tensor, group_index: torch.Tensor | None) -> torch.Tensor:
    """``(B,) -> (B,)``: each entry replaced by the mean of its group (the batch mean when
    ``group_index`` is None). ``group_index`` holds any integer ids, one per row."""
    if group_index is None:
        return x.mean().expand_as(x)
    if group_index.shape != x.shape:
        raise ValueError(f"group_index {tuple(group_index.shape)} must have the shape of x {tuple(x.shape)}.")
    _, inverse = torch.unique(group_index, return_inverse=True)  # ids → 0..G-1
    sums = torch.zeros(int(inverse.max()) + 1, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    counts = torch.bincount(inverse).to(x.dtype)
    return (sums / counts)[inverse]


@register_advantage_estimator("reinforce")
def reinforce_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                         group_index: torch.Tensor | None = None, *, gamma: float = 1.0,
                         **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""REINFORCE with a baseline: :math:`\hat A_t = G_t - b`, the weight :math:`\Psi_t` of Eq. (2.5), chapter 02.

    :math:`G_t = \sum_{l \ge 0} \gamma^l r_{t+l}` is the reward-to-go (causality: a token is
    credited only with what comes after it), and :math:`b` the mean of the sequence returns
    :math:`G_0` over the batch, or over each group of samples of one prompt when
    ``group_index`` is given. Such a baseline includes the sample's own return, so it is biased
    by :math:`O(1/n)` for a group of :math:`n`; the leave-one-out mean (RLOO, chapter 09)
    removes that bias.

    Returns:
        ``(advantages, returns)`` ``(B, T)``, 0 on padding; ``returns`` are :math:`G_t`.
    """
    m = check_right_padded(response_mask)
    returns = discounted_returns(token_level_rewards, m, gamma)  # (B, T): G_t
    baseline = group_mean(returns[:, 0], group_index)  # (B,): b from the sequence returns G_0
    advantages = torch.where(m, returns - baseline[:, None], torch.zeros_like(returns))
    return advantages.detach(), returns.detach()


def _sequence_returns(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T) -> (B,)``: each response's total reward R (its score plus any per-token KL terms)."""
    m = check_right_padded(response_mask)
    return torch.where(m, token_level_rewards, torch.zeros_like(token_level_rewards)).sum(dim=1)


def _check_groups(group_index: torch.Tensor | None, name: str) -> torch.Tensor:
    """Every group must hold ≥ 2 samples: a group baseline of one sample is the sample itself."""
    if group_index is None:
        raise ValueError(f"the {name!r} estimator needs group_index: sample k ≥ 2 responses per prompt.")
    counts = torch.unique(group_index, return_counts=True)[1]
    if int(counts.min()) < 2:
        raise ValueError(f"the {name!r} estimator needs ≥ 2 samples in every group, got a group of {int(counts.min())}.")
    return counts


def _broadcast(per_sequence: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One advantage per sequence, on each of its real tokens (0 on padding): ``(B,) -> (B, T)``."""
    advantages = torch.where(response_mask.bool(), per_sequence[:, None], torch.zeros((), dtype=per_sequence.dtype))
    return advantages.detach(), advantages.detach()


@register_advantage_estimator("rloo", needs_groups=True)
def rloo_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                    group_index: torch.Tensor | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""REINFORCE leave-one-out: :math:`A_i = R_i - \frac{1}{k-1}\sum_{j \ne i} R_j = \frac{k}{k-1}(R_i - \bar R)`.

    The baseline of sample i is the mean of the *other* k−1 samples of its prompt, independent
    of sample i, so the estimate stays unbiased (chapter 09). :math:`R_i` is the whole
    sequence's reward, the score plus the per-token KL terms (Ahmadian et al. 2024).

    Returns:
        ``(advantages, returns)`` ``(B, T)``: :math:`A_i` on every real token of response i; returns = advantages.
    """
    _check_groups(group_index, "rloo")
    R = _sequence_returns(token_level_rewards, response_mask)  # (B,)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    k = counts[inverse].to(R.dtype)  # (B,): the size of each row's group
    others_mean = (group_mean(R, group_index) * k - R) / (k - 1)  # (sum of the group − R_i) / (k − 1)
    return _broadcast(R - others_mean, response_mask)


@register_advantage_estimator("grpo", needs_groups=True)
def grpo_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                    group_index: torch.Tensor | None = None, *, eps: float = 1e-6,
                    **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""GRPO's group-normalised advantage :math:`(R_i - \mathrm{mean}(R))/(\mathrm{std}(R) + \epsilon)`,
    on every token of response i (Shao et al. 2024, outcome supervision, Sec. 4.1.2).

    ``std`` is the unbiased sample standard deviation of the group, as in verl. Dividing by it
    weights prompts whose samples all score alike (too easy, or too hard) as much as the
    others: the "difficulty bias" that Dr. GRPO removes (chapter 09).
    """
    _check_groups(group_index, "grpo")
    R = _sequence_returns(token_level_rewards, response_mask)
    centred = R - group_mean(R, group_index)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    var = torch.zeros(len(counts), dtype=R.dtype, device=R.device).index_add_(0, inverse, centred**2) / (counts - 1)
    return _broadcast(centred / (var.sqrt()[inverse] + eps), response_mask)


@register_advantage_estimator("dr_grpo", needs_groups=True)
def dr_grpo_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                       group_index: torch.Tensor | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Dr. GRPO's advantage :math:`R_i - \mathrm{mean}(R)`: GRPO without the std normalisation
    (Liu et al. 2025); their loss also drops GRPO's :math:`1/|o_i|` length weighting."""
    _check_groups(group_index, "dr_grpo")
    R = _sequence_returns(token_level_rewards, response_mask)
    return _broadcast(R - group_mean(R, group_index), response_mask)


@register_advantage_estimator("remax")
def remax_advantages(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                     group_index: torch.Tensor | None = None, *, reward_baselines: torch.Tensor | None = None,
                     gamma: float = 1.0, **options) -> tuple[torch.Tensor, torch.Tensor]:
    r"""ReMax (Li et al. 2023, Algorithm 1): :math:`\hat A_t = G_t - r(x, \bar y)`, the reward-to-go
    of the sampled response minus the score of the *greedy* response :math:`\bar y` to the same
    prompt (chapter 09).

    The greedy response is decoded without sampling, so the baseline does not depend on the
    sampled response and the gradient stays unbiased; it costs one more generation per prompt
    but no critic and no group. The same computation as verl's ``compute_remax_outcome_advantage``.

    Args:
        token_level_rewards, response_mask: ``(B, T)``, as for every estimator.
        reward_baselines: ``(B,)``, the greedy response's score for each row's prompt.

    Returns:
        ``(advantages, returns)`` ``(B, T)``, 0 on padding; ``returns`` are :math:`G_t`.
    """
    if reward_baselines is None:
        raise ValueError("the 'remax' estimator needs reward_baselines, the greedy response's score of each prompt "
                         "(an algorithm with greedy_baseline=True makes the trainer compute them).")
    m = check_right_padded(response_mask)
    if reward_baselines.shape != m.shape[:1]:
        raise ValueError(f"reward_baselines must have shape (B,) = {tuple(m.shape[:1])}, got {tuple(reward_baselines.shape)}.")
    returns = discounted_returns(token_level_rewards, m, gamma)  # (B, T): G_t
    b = reward_baselines.to(returns.dtype)[:, None]  # (B, 1)
    advantages = torch.where(m, returns - b, torch.zeros_like(returns))
    return advantages.detach(), returns.detach()


# ------------------------------------------------------------------------------ losses
@register_policy_loss("ppo_clip")
def ppo_clip_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         response_mask: torch.Tensor, *, clip_eps: float = 0.2, **options):
    """:func:`ppo_lib.losses.ppo_clip_loss`, Eq. (5.7) of chapter 05, through the loss contract."""
    return ppo_clip_loss(logprobs, old_logprobs, advantages, response_mask, clip_eps)


@register_policy_loss("vanilla_pg")
def vanilla_pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, **options):
    r"""The unclipped surrogate :math:`-\frac{1}{\sum m}\sum m\,\rho A`, :math:`\rho = \exp(\log\pi_\theta - \log\pi_{old})`.

    At :math:`\theta = \theta_{old}` (one epoch, on-policy) :math:`\nabla\rho = \nabla\log\pi_\theta`,
    so its gradient is that of the REINFORCE surrogate, Eq. (2.8) of chapter 02; with more
    epochs it is L^CPI, Eq. (5.4) of chapter 05, with no clip to keep the ratio near 1.

    Returns:
        ``(loss, stats)`` with the stats of :func:`~ppo_lib.losses.ppo_clip_loss` (``clipfrac`` is 0).
    """
    m = response_mask.bool()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    loss = masked_mean(-advantages.detach() * ratio, m)
    return loss, _ratio_stats(log_ratio, torch.zeros_like(ratio, dtype=torch.bool), m)


@torch.no_grad()
def _ratio_stats(log_ratio: torch.Tensor, clipped: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics every policy loss reports, as :func:`~ppo_lib.losses.ppo_clip_loss` does:
    clip fraction, approx-KL(π_old‖π_θ) by k1 and k3, mean and max ratio (detached, 0-dim)."""
    ratio = torch.exp(log_ratio)
    return {"clipfrac": masked_mean(clipped.to(ratio.dtype), m),
            "approx_kl_k1": masked_mean(-log_ratio, m),
            "approx_kl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, torch.zeros_like(ratio)).max()}


def _clipped_with_kl(logprobs, old_logprobs, advantages, response_mask, clip_eps, ref_logprobs, kl_coef):
    """Per-token GRPO objective, negated: ``-min(ρA, clip(ρ)A) + β·k3(π_θ‖π_ref)``, ``(B, T)``, and stats."""
    if ref_logprobs is None:
        raise ValueError("this loss carries the KL to the reference: pass ref_logprobs (the trainer does).")
    m = response_mask.bool()
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T), log π/π_old
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    kl_ref = kl_estimate(logprobs, ref_logprobs.detach(), "k3")  # (B, T), ≥ 0, with gradient
    per_token = torch.max(pg_loss1, pg_loss2) + kl_coef * kl_ref
    stats = _ratio_stats(log_ratio, pg_loss2 > pg_loss1, m)
    stats["kl_ref"] = masked_mean(kl_ref.detach(), m)
    return per_token, m, stats


@register_policy_loss("grpo", aggregation="seq_mean")
def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              response_mask: torch.Tensor, *, clip_eps: float = 0.2, ref_logprobs: torch.Tensor | None = None,
              kl_coef: float = 0.0, **options):
    r"""GRPO's loss (Shao et al. 2024, Eq. 3): the clipped surrogate plus :math:`\beta`·k3 KL to the
    reference on every token, averaged over each response's tokens (the :math:`1/|o_i|` of the
    paper) and then over responses.

    The :math:`1/|o_i|` makes a token of a short response weigh more than one of a long response:
    for a negative advantage, long wrong answers are penalised less per token (the "length
    bias" that Dr. GRPO removes, chapter 09). At :math:`\beta = 0`, on-policy (ρ = 1), the value
    of the loss is :math:`-\mathrm{mean}_i A_i`, which group normalisation makes 0 whatever the
    policy learns: a loss near 0 says nothing about learning.
    """
    per_token, m, stats = _clipped_with_kl(logprobs, old_logprobs, advantages, response_mask, clip_eps,
                                           ref_logprobs, kl_coef)
    per_sequence = masked_sum(per_token, m, dim=1) / m.sum(dim=1)  # (B,): 1/|o_i| Σ_t
    return per_sequence.mean(), stats


@register_policy_loss("dr_grpo", aggregation="seq_mean")
def dr_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 response_mask: torch.Tensor, *, clip_eps: float = 0.2, ref_logprobs: torch.Tensor | None = None,
                 kl_coef: float = 0.0, **options):
    r"""Dr. GRPO's loss (Liu et al. 2025): GRPO's per-token terms summed over each response and
    divided by a constant, the batch's response length T, instead of by :math:`|o_i|`; every
    token then weighs the same whatever the length of its response."""
    per_token, m, stats = _clipped_with_kl(logprobs, old_logprobs, advantages, response_mask, clip_eps,
                                           ref_logprobs, kl_coef)
    per_sequence = masked_sum(per_token, m, dim=1) / m.shape[1]  # (B,): Σ_t / T, T the same for every row
    return per_sequence.mean(), stats


# ------------------------------------------------------------------------------ algorithms
register_algorithm(Algorithm("ppo", advantage_estimator="gae", policy_loss="ppo_clip", critic=True,
                             description="PPO with GAE and a learned critic (Schulman et al. 2017; Ziegler et al. 2019)."))
register_algorithm(Algorithm("rloo", advantage_estimator="rloo", policy_loss="vanilla_pg", critic=False,
                             samples_per_prompt=4,
                             description="REINFORCE leave-one-out, 4 samples per prompt, the KL in the reward "
                                         "(Kool et al. 2019; Ahmadian et al. 2024)."))
register_algorithm(Algorithm("grpo", advantage_estimator="grpo", policy_loss="grpo", critic=False,
                             samples_per_prompt=4, kl_in_reward=False, whiten_advantages=False,
                             description="GRPO: group-normalised advantages, 4 samples per prompt, clip, k3 KL in "
                                         "the loss, 1/|o| weighting (Shao et al. 2024)."))
register_algorithm(Algorithm("dr_grpo", advantage_estimator="dr_grpo", policy_loss="dr_grpo", critic=False,
                             samples_per_prompt=4, kl_in_reward=False, whiten_advantages=False,
                             description="Dr. GRPO: GRPO without the std normalisation and the 1/|o| weighting "
                                         "(Liu et al. 2025)."))
register_algorithm(Algorithm("remax", advantage_estimator="remax", policy_loss="vanilla_pg", critic=False,
                             greedy_baseline=True,
                             description="ReMax: REINFORCE with the greedy response's score as baseline, the KL in "
                                         "the reward (Li et al. 2023)."))
register_algorithm(Algorithm("reinforce", advantage_estimator="reinforce", policy_loss="vanilla_pg", critic=False,
                             description="REINFORCE with the batch-mean (or group-mean) return as baseline (Williams 1992)."))
