"""The PPO losses (chapter 05): clipped policy surrogate, KL-penalty surrogate, (clipped) value loss, entropy.

Each loss returns ``(loss, stats)``: ``loss`` is a scalar to minimise, ``stats`` a dict of
detached 0-dim tensors (no ``.item()``, hence no CPU-GPU sync here; the trainer converts).
Token reductions are means over all real tokens of the batch (``masked_mean``).

References:
    Schulman, Wolski, Dhariwal, Radford & Klimov (2017), "Proximal Policy Optimization
    Algorithms", arXiv:1707.06347.
"""

from __future__ import annotations

import math

import torch

from .kl import kl_estimate
from .masking import check_mask, masked_mean

__all__ = ["ppo_clip_loss", "ppo_penalty_loss", "value_loss", "entropy_from_logits"]


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The negated PPO-Clip objective, Eq. (5.7) of chapter 05.

    .. math::
        L(\theta) = -\frac{1}{\sum m}\sum_{b,t} m_{bt}\,
        \min\!\big(\rho_{bt} A_{bt},\; \mathrm{clip}(\rho_{bt}, 1-\epsilon, 1+\epsilon) A_{bt}\big),
        \qquad \rho = \exp(\log\pi_\theta - \log\pi_{\theta_{old}}).

    Written as CleanRL writes it: ``max(-A·ρ, -A·clip(ρ))``. Where the clipped term is the
    smaller objective the gradient is exactly zero (tested with autograd).

    Args:
        logprobs: ``(B, T)`` :math:`\log\pi_\theta(a_t|s_t)`, with gradient.
        old_logprobs: ``(B, T)`` log-probs at rollout time (constants).
        advantages: ``(B, T)`` :math:`\hat A_t` (constants, usually whitened).
        response_mask: ``(B, T)`` response mask.
        clip_eps: :math:`\epsilon`, typically 0.1–0.3.

    Returns:
        ``(loss, stats)`` with stats ``clipfrac`` (fraction of tokens whose clipped term is
        active), ``approx_kl_k1`` and ``approx_kl_k3`` (estimates of
        :math:`\mathrm{KL}(\pi_{old}\|\pi_\theta)` per token), ``ratio_mean``, ``ratio_max``.

    References:
        Schulman et al. (2017), Eq. (7).
    """
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}.")
    m = check_mask(logprobs, response_mask, "logprobs").bool()
    check_mask(old_logprobs, m, "old_logprobs")
    check_mask(advantages, m, "advantages")
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()  # (B, T)
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), m),
            # samples come from π_old, so these estimate KL(π_old || π_θ) (Schulman 2020)
            "approx_kl_k1": masked_mean(-log_ratio, m),
            "approx_kl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, stats


def ppo_penalty_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The negated PPO-Penalty objective, Eq. (5.11) of chapter 05.

    .. math::
        L(\theta) = -\frac{1}{\sum m}\sum_{b,t} m_{bt}\,
        \big(\rho_{bt} A_{bt} - \beta\, \hat k_{bt}\big),
        \qquad \rho = \exp(\log\pi_\theta - \log\pi_{\theta_{old}}),

    where :math:`\hat k_{bt}` estimates :math:`\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)` at
    token (b, t) from the sampled token alone. The tokens were sampled from
    :math:`\pi_{\theta_{old}}`, so the ratio of Eq. (5.12) is :math:`r = \pi_\theta/\pi_{\theta_{old}} = \rho`
    and the estimators read ``k1`` :math:`= -\log\rho`, ``k3`` :math:`= (\rho - 1) - \log\rho`
    (:func:`ppo_lib.kl.kl_estimate` with :math:`\pi_{\theta_{old}}` as the sampling policy). Both are unbiased
    for the KL and, because the samples do not depend on :math:`\theta`, so are their gradients;
    ``k3`` is never negative. The PPO paper computes the KL in closed form over all actions;
    for a language model that needs the logits of both policies at every token.

    Args:
        logprobs: ``(B, T)`` :math:`\log\pi_\theta(a_t|s_t)`, with gradient.
        old_logprobs: ``(B, T)`` log-probs at rollout time (constants).
        advantages: ``(B, T)`` :math:`\hat A_t` (constants).
        response_mask: ``(B, T)`` response mask.
        kl_coef: :math:`\beta \ge 0`; adapt it between updates with
            :func:`ppo_lib.kl.adaptive_penalty_coef`, Eq. (5.13).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``, see :func:`ppo_lib.kl.kl_estimate`.

    Returns:
        ``(loss, stats)`` with stats ``kl`` (the mean per-token estimate of
        :math:`\mathrm{KL}(\pi_{old}\|\pi_\theta)`), ``surrogate`` (the mean of
        :math:`\rho A`, i.e. :math:`L^{CPI}`), ``ratio_mean`` and ``ratio_max``.

    References:
        Schulman et al. (2017), Eq. (8) and Section 4.
    """
    if not (kl_coef >= 0 and math.isfinite(kl_coef)):
        raise ValueError(f"kl_coef must be a finite number ≥ 0, got {kl_coef}.")
    m = check_mask(logprobs, response_mask, "logprobs").bool()
    check_mask(old_logprobs, m, "old_logprobs")
    check_mask(advantages, m, "advantages")
    advantages, old_logprobs = advantages.detach(), old_logprobs.detach()
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    # samples come from π_old: KL(π_old || π_θ) is kl_estimate with π_old in the role of the sampling policy
    kl = kl_estimate(old_logprobs, logprobs, kl_estimator)  # (B, T)
    loss = -masked_mean(ratio * advantages - kl_coef * kl, m)
    with torch.no_grad():
        stats = {
            "kl": masked_mean(kl, m),
            "surrogate": masked_mean(ratio * advantages, m),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": torch.where(m, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Squared-error value loss with optional clipping, Eq. (5.10) of chapter 05.

    .. math::
        L^V = \tfrac12\,\mathrm{mean}_m \max\!\big((V - \hat R)^2,\;
        (V_{old} + \mathrm{clip}(V - V_{old}, -\epsilon_V, \epsilon_V) - \hat R)^2\big)

    Without ``clip_eps`` it is :math:`\tfrac12\,\mathrm{mean}_m (V - \hat R)^2`. The
    targets are the GAE returns :math:`\hat R_t = \hat A_t + V_{old}(s_t)`, not raw rewards.

    Args:
        values: ``(B, T)`` current :math:`V_\phi(s_t)`, with gradient.
        old_values: ``(B, T)`` values at rollout time.
        returns: ``(B, T)`` targets :math:`\hat R_t`.
        response_mask: ``(B, T)`` response mask.
        clip_eps: :math:`\epsilon_V` in the units of the value (e.g. 0.2), or None.

    Returns:
        ``(loss, stats)`` with stats ``vf_clipfrac`` and ``mse`` (unclipped, unhalved).

    References:
        The value clipping of OpenAI Baselines' ``ppo2``; studied by Engstrom et al. (2020),
        "Implementation Matters in Deep Policy Gradients", arXiv:2005.12729.
    """
    m = check_mask(values, response_mask, "values").bool()
    check_mask(old_values, m, "old_values")
    check_mask(returns, m, "returns")
    returns, old_values = returns.detach(), old_values.detach()
    err_unclipped = (values - returns) ** 2
    if clip_eps is None:
        err = err_unclipped
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        if not clip_eps > 0:
            raise ValueError(f"value clip_eps must be > 0 or None, got {clip_eps}.")
        values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        err_clipped = (values_clipped - returns) ** 2
        err = torch.max(err_unclipped, err_clipped)
        with torch.no_grad():
            clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), m)
    loss = 0.5 * masked_mean(err, m)
    stats = {"vf_clipfrac": clipfrac.detach(), "mse": masked_mean(err_unclipped.detach(), m)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    r"""Entropy :math:`H = -\sum_v p_v \log p_v` of the softmax of ``logits`` over the last dim.

    Computed as :math:`\mathrm{logsumexp}(z) - \sum_v p_v z_v`, stable for large logits.

    Args:
        logits: ``(..., V)``.

    Returns:
        ``(...)`` entropies in nats.
    """
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)
