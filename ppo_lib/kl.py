r"""KL estimators, per-token KL reward shaping, and the KL coefficient controllers (chapters 05, 06).

In RLHF the policy :math:`\pi_\theta` is kept near a frozen reference :math:`\pi_{ref}` by
paying :math:`-\beta \cdot \mathrm{KL}` on every generated token. Only the sampled token's
log-probabilities are at hand, so the KL is *estimated* from them. With
:math:`\log r = \log\pi_{ref}(a) - \log\pi_\theta(a)` and :math:`a \sim \pi_\theta`:

=====  ===============================  ===========================================
kl_est per-token estimate               property
=====  ===============================  ===========================================
k1     :math:`-\log r`                  unbiased, can be negative
k2     :math:`\tfrac12 (\log r)^2`      biased (error :math:`O(\mathrm{KL}^{3/2})` when close), always ≥ 0
k3     :math:`(r - 1) - \log r`         unbiased, always ≥ 0
=====  ===============================  ===========================================

Which of k1 and k3 has the smaller variance depends on the distance between the two
policies. Since :math:`k_3 = k_1 + (r - 1)`,

.. math:: \mathrm{Var}[k_3] - \mathrm{Var}[k_1] = \mathrm{Var}[r] - 2\,\mathrm{Cov}[r, \log r],

so k3 has the lower variance exactly when :math:`\mathrm{Var}[r] < 2\,\mathrm{Cov}[r, \log r]`.
When the policies are close, :math:`r \approx 1` and :math:`\log r \approx r - 1`, the covariance
is about :math:`\mathrm{Var}[r]`, and k3 wins: its standard deviation is :math:`O(\mathrm{KL})`
against :math:`O(\sqrt{\mathrm{KL}})` for k1 (Schulman 2020). When they are far apart, for
example a policy much sharper than the reference, :math:`r = \pi_{ref}/\pi_\theta` is huge on
tokens the policy has nearly ruled out, :math:`\mathrm{Var}[r] = \chi^2(\pi_{ref}\|\pi_\theta)`
explodes, and k3 has the *higher* variance. Chapter 05 measures the crossover (chapter 01
shows it on SmolLM2: a one-token std of 1.2 for k3 against 0.72 for k1 at temperature 0.7).

PPO-Penalty, Eq. (5.11), estimates :math:`\mathrm{KL}(\pi_{\theta_{old}}\|\pi_\theta)` the same way
(:func:`ppo_lib.losses.ppo_penalty_loss`) and adapts its coefficient with the rule of
Schulman et al. (2017), Eq. (5.13) (:func:`adaptive_penalty_coef`); RLHF's controller of the KL
to the reference, Eq. (5.14), is :class:`AdaptiveKLController`. :class:`KLBudget` ends a run
once its KL to the reference reaches a budget (chapter 07, Section 4).

References:
    Schulman (2020), "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html
    Schulman, Wolski, Dhariwal, Radford & Klimov (2017), "Proximal Policy Optimization Algorithms",
    arXiv:1707.06347, Section 4.
    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593.
"""

from __future__ import annotations

import math

import torch

from .masking import check_mask, masked_mean, masked_sum

__all__ = [
    "KL_KINDS",
    "kl_estimate",
    "last_token_index",
    "shape_rewards",
    "adaptive_penalty_coef",
    "FixedKLController",
    "AdaptiveKLController",
    "KLBudget",
    "KL_BUDGET_WINDOW",
]

KL_KINDS = ("k1", "k2", "k3")
KL_BUDGET_WINDOW = 4
"""Updates whose training KL a :class:`KLBudget` averages by default (chapter 07 measures the choice)."""


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_estimator: str = "k1") -> torch.Tensor:
    r"""Per-token estimate of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})`, Eq. (5.12) of chapter 05.

    Args:
        logprobs: ``(B, T)`` :math:`\log\pi_\theta(a_t|s_t)` of tokens sampled from :math:`\pi_\theta`.
        ref_logprobs: ``(B, T)`` :math:`\log\pi_{ref}(a_t|s_t)` of the same tokens.
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring); the name of the
            ``PPOConfig`` field that chooses it.

    Returns:
        ``(B, T)`` estimates; their mean over samples estimates the KL (k1, k3 unbiasedly).
    """
    if kl_estimator not in KL_KINDS:
        raise ValueError(f"unknown kl_estimator={kl_estimator!r}; use one of {KL_KINDS}.")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ in shape."
        )
    log_ratio_ref = logprobs - ref_logprobs  # log π/π_ref = -log r (in losses.py, log_ratio is log π/π_old)
    if kl_estimator == "k1":
        return log_ratio_ref
    if kl_estimator == "k2":
        return 0.5 * log_ratio_ref**2
    return torch.expm1(-log_ratio_ref) + log_ratio_ref  # (r - 1) - log r, expm1 for accuracy near r = 1


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True of each right-padded row of a ``(B, T)`` response_mask, as ``(B,)`` long.

    Raises ``ValueError`` if a row has no True (a response needs at least its EOS).
    """
    lengths = response_mask.long().sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):  # CPU-GPU sync
        raise ValueError("a row of the response mask is empty; every response needs ≥ 1 real token.")
    return lengths - 1


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Per-token rewards of RLHF, Eq. (6.2) of chapter 06.

    .. math:: r_t = -\beta\, \widehat{\mathrm{KL}}_t + [t = T_b]\; s_b,

    a KL penalty on every real token plus the sequence score :math:`s_b` on the last real
    token :math:`T_b` of row b (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2).

    Args:
        scores: ``(B,)`` sequence scores from the reward function.
        logprobs: ``(B, T)`` rollout log-probs of the policy.
        ref_logprobs: ``(B, T)`` reference log-probs of the same tokens.
        response_mask: ``(B, T)`` right-padded response mask.
        kl_coef: :math:`\beta \ge 0`.
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``, see :func:`kl_estimate`.

    Returns:
        ``(rewards, stats)``: ``rewards`` is ``(B, T)``, 0 on padding; ``stats`` holds
        ``kl`` (mean over sequences of the summed per-token KL, in nats per sequence),
        ``non_score_reward`` (mean over sequences of the summed penalty) and ``score``.
    """
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be ≥ 0, got {kl_coef}.")
    if scores.dim() != 1 or scores.shape[0] != response_mask.shape[0]:
        raise ValueError(f"scores must be (B,) = ({response_mask.shape[0]},), got {tuple(scores.shape)}.")
    m = check_mask(logprobs, response_mask, "logprobs").bool()
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)  # (B, T)
    penalty = torch.where(m, -kl_coef * kl, torch.zeros_like(kl))  # (B, T)
    rewards = penalty.clone()
    last = last_token_index(m)  # (B,)
    rewards[torch.arange(len(last), device=rewards.device), last] += scores.to(rewards.dtype)
    stats = {
        "kl": masked_sum(kl, m, dim=1).mean().detach(),
        "non_score_reward": penalty.sum(dim=1).mean().detach(),
        "score": scores.mean().detach(),
    }
    return rewards, stats


def adaptive_penalty_coef(
    kl_coef: float, kl: float, kl_target: float, tolerance: float = 1.5, factor: float = 2.0
) -> float:
    r"""The adaptive KL-penalty coefficient of PPO-Penalty, Eq. (5.13) of chapter 05.

    .. math::
        \beta \leftarrow \begin{cases}\beta / 2 & d < d_{targ} / 1.5\\
        2\beta & d > 1.5\, d_{targ}\\ \beta & \text{otherwise,}\end{cases}

    applied after each policy update, with :math:`d` the KL
    :math:`\mathbb{E}_t[\mathrm{KL}(\pi_{\theta_{old}}(\cdot|s_t)\|\pi_\theta(\cdot|s_t))]` measured at the
    end of that update; the new :math:`\beta` is used for the next one. (RLHF's controller of the
    KL to the *reference* model is :class:`AdaptiveKLController`, Eq. (5.14).)

    Args:
        kl_coef: the current :math:`\beta \ge 0`.
        kl: the measured :math:`d` (a float or a 0-dim tensor), in nats per token.
        kl_target: :math:`d_{targ} > 0`.
        tolerance: the band's factor, 1.5 in the paper.
        factor: the multiplier, 2 in the paper.

    Returns:
        The new :math:`\beta` as a float.

    References:
        Schulman et al. (2017), arXiv:1707.06347, Section 4 (the paper notes that 1.5 and 2 were
        chosen heuristically and that the algorithm is not very sensitive to them).
    """
    kl_coef, kl = float(kl_coef), float(kl)
    if not (kl_coef >= 0 and math.isfinite(kl_coef)):
        raise ValueError(f"kl_coef must be a finite number ≥ 0, got {kl_coef}.")
    if not math.isfinite(kl):
        raise ValueError(f"kl is {kl}; the penalty coefficient needs a finite measured KL.")
    if not kl_target > 0:
        raise ValueError(f"kl_target must be > 0 nats, got {kl_target}.")
    if not (tolerance > 1 and factor > 1):
        raise ValueError(f"tolerance and factor must be > 1, got {tolerance} and {factor}.")
    if kl < kl_target / tolerance:
        return kl_coef / factor
    if kl > kl_target * tolerance:
        return kl_coef * factor
    return kl_coef


class FixedKLController:
    r"""A constant KL coefficient :math:`\beta`. Has the same interface as the adaptive one."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0 or not math.isfinite(kl_coef):
            raise ValueError(f"kl_coef must be a finite number ≥ 0, got {kl_coef}.")
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Does nothing; returns :math:`\\beta`."""
        return self.kl_coef

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = float(state["kl_coef"])


class AdaptiveKLController(FixedKLController):
    r"""Adapt :math:`\beta` towards a target KL, Eq. (5.14) of chapter 05.

    .. math::
        e_t = \mathrm{clip}\!\left(\frac{\mathrm{KL}_t - \mathrm{KL}_{target}}{\mathrm{KL}_{target}}, -0.2, 0.2\right),
        \qquad \beta_{t+1} = \beta_t \left(1 + K_\beta\, e_t\right),\quad K_\beta = \frac{n_{steps}}{H}.

    KL above target raises :math:`\beta`, below lowers it, by at most a factor
    :math:`1 \pm 0.2\, n_{steps}/H` per update.

    Args:
        kl_coef: starting :math:`\beta_0`, e.g. 0.05–0.2 (``PPOConfig.kl_coef``).
        kl_target: :math:`\mathrm{KL}_{target}` in nats per sequence, e.g. 6 (``PPOConfig.kl_target``).
        kl_horizon: :math:`H`, in samples (e.g. 10000): how slowly :math:`\beta` moves (``PPOConfig.kl_horizon``).

    References:
        Ziegler et al. (2019), arXiv:1909.08593, Section 2.2 (the paper uses a fixed gain
        K_β = 0.1; K_β = n_steps / H is the form of their released code and of TRL).
    """

    clip = 0.2

    def __init__(self, kl_coef: float, kl_target: float, kl_horizon: float):
        super().__init__(kl_coef)
        if not kl_target > 0:
            raise ValueError(f"kl_target must be > 0 nats, got {kl_target}.")
        if not kl_horizon > 0:
            raise ValueError(f"kl_horizon must be > 0 samples, got {kl_horizon}.")
        self.kl_target, self.kl_horizon = float(kl_target), float(kl_horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move :math:`\\beta` after an update that saw ``n_steps`` samples with mean KL ``current_kl``."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl is {current_kl}; the KL controller needs a finite KL.")
        error = min(max(current_kl / self.kl_target - 1.0, -self.clip), self.clip)
        self.kl_coef *= 1.0 + error * n_steps / self.kl_horizon
        return self.kl_coef


class KLBudget:
    r"""End training once the policy's KL to :math:`\pi_{ref}` reaches ``nats`` per sequence.

    Pass it as ``PPOTrainer.train(..., stop=budget)``: after each update it records the update's
    ``objective/kl`` and says whether the budget is reached. The estimate (:attr:`estimate`) is
    the mean over the last ``window`` updates. Each update's value is the mean over its own
    responses, sampled from :math:`\pi_{old}`, of :math:`\sum_t \log\pi_{old} - \log\pi_{ref}`:
    unbiased for :math:`\mathrm{KL}(\pi_{old}\|\pi_{ref})`, but noisy. The window's mean is less
    noisy and lags the current policy by about ``(window + 1) / 2`` updates. It needs no sampling of
    its own. Chapter 07 measures it against the held-out KL: with 16 responses per update and a
    window of 4 it was off by 0.87 nats (standard deviation), about what the held-out measurement
    itself is uncertain by.

    Args:
        nats: the budget, in nats per sequence, > 0; None never stops (the estimate is still kept).
        window: updates the estimate averages, ≥ 1.
        kls: ``objective/kl`` of the updates before this one, e.g. from a resumed run's history.
    """

    def __init__(self, nats: float | None, window: int = KL_BUDGET_WINDOW, kls=()):
        if nats is not None and not (isinstance(nats, (int, float)) and 0 < nats < math.inf):
            raise ValueError(f"the KL budget must be a positive number of nats per sequence or None, got {nats!r}.")
        if type(window) is not int or window < 1:
            raise ValueError(f"the KL budget's window must be an integer ≥ 1 (updates), got {window!r}.")
        self.nats, self.window, self.kls = nats, window, [float(k) for k in kls]

    @property
    def estimate(self) -> float | None:
        """The mean ``objective/kl`` of the last ``window`` updates; None before there are that many."""
        if len(self.kls) < self.window:
            return None
        return sum(self.kls[-self.window :]) / self.window

    @property
    def reached(self) -> bool:
        estimate = self.estimate
        return self.nats is not None and estimate is not None and estimate >= self.nats

    def __call__(self, stats: dict) -> bool:
        """Record one update's statistics; True once the budget is reached."""
        self.kls.append(float(stats["objective/kl"]))
        return self.reached
