r"""Learning-rate schedules for RL fine-tuning (chapter 07): warm-up, decay, and a KL-driven rate.

PPO is the *objective*; Adam is the *optimiser*, and its step size is the learning rate
:math:`\eta`. Two things go wrong with a constant :math:`\eta` on a pretrained LM. In the first
updates Adam's second-moment estimate rests on a few gradients and its steps are as large as
:math:`\eta` allows, so the first minibatches move the policy far from :math:`\pi_{old}` (a
clip fraction of 0.6 in chapter 06's run): a **warm-up** raises :math:`\eta` linearly from
:math:`\eta/W` over :math:`W` updates. Later, the right :math:`\eta` depends on how far each
update moves the policy, which the approx-KL between :math:`\pi_{old}` and :math:`\pi_\theta`
measures directly: the **adaptive rate** divides :math:`\eta` by 1.5 when that KL exceeds twice
its target and multiplies it by 1.5 when it falls below half, as rl_games' ``AdaptiveScheduler``
does for PPO in control.

Pure functions of plain numbers. The trainer's ``lr_scheduler`` is a
``torch.optim.lr_scheduler.LambdaLR`` whose lambda is :func:`lr_factor` times the adaptive scale
(``PPOTrainer.lr_multiplier``); it steps once per update, and a checkpoint restores it exactly from
the update count and the scale.

References:
    Goyal et al. (2017), "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    arXiv:1706.02677 (linear warm-up).
    Loshchilov & Hutter (2017), "SGDR: Stochastic Gradient Descent with Warm Restarts",
    arXiv:1608.03983 (cosine decay).
    rl_games, ``rl_games/common/schedulers.py``, ``AdaptiveScheduler`` (KL-driven rate).
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "lr_factor", "adaptive_lr_scale"]

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(update: int, schedule: str = "constant", lr_warmup_updates: int = 0,
              total_updates: int | None = None) -> float:
    r"""The multiplier of the base learning rate for ``update`` (0-based, the update about to run).

    .. math::
        f(u) = \underbrace{\min\!\Big(1, \frac{u + 1}{W}\Big)}_{\text{warm-up}} \cdot
        \begin{cases} 1 & \text{constant} \\
        1 - p & \text{linear} \\
        \tfrac12 (1 + \cos \pi p) & \text{cosine} \end{cases},
        \qquad p = \frac{\min(u, U) - W}{U - W} \text{ after the warm-up, else } 0,

    with :math:`W` = ``lr_warmup_updates`` and :math:`U` = ``total_updates``. The decay reaches 0
    at update :math:`U`; the warm-up's first update runs at :math:`\eta/W`, never at 0.

    Raises:
        ValueError: an unknown schedule, a negative warm-up, or a decay without ``total_updates``
            larger than the warm-up.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; use one of {LR_SCHEDULES}.")
    if type(lr_warmup_updates) is not int or lr_warmup_updates < 0:
        raise ValueError(f"lr_warmup_updates must be an integer ≥ 0, got {lr_warmup_updates!r}.")
    warm = min(1.0, (update + 1) / lr_warmup_updates) if lr_warmup_updates else 1.0
    if schedule == "constant":
        return warm
    if total_updates is None or total_updates <= lr_warmup_updates:
        raise ValueError(f"lr_schedule={schedule!r} decays to 0 at total_updates, which must be set and larger "
                         f"than lr_warmup_updates={lr_warmup_updates}; got {total_updates!r}.")
    p = max(0.0, (min(update, total_updates) - lr_warmup_updates) / (total_updates - lr_warmup_updates))
    return warm * ((1.0 - p) if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))


def adaptive_lr_scale(scale: float, approx_kl: float, kl_target: float, factor: float = 1.5,
                      low: float = 0.01, high: float = 10.0) -> float:
    r"""The KL-driven multiplier of the learning rate after an update whose approx-KL was ``approx_kl``.

    .. math::
        s \leftarrow \begin{cases} s / 1.5 & \mathrm{KL} > 2\,\mathrm{KL}_{target} \\
        s \cdot 1.5 & \mathrm{KL} < \mathrm{KL}_{target} / 2 \\
        s & \text{otherwise} \end{cases}, \qquad \text{clipped to } [\text{low}, \text{high}].

    ``approx_kl`` is per token, between :math:`\pi_{old}` and :math:`\pi_\theta` after the
    update's epochs (the trainer's ``policy/approx_kl_k3``); a target of 0.01–0.02 nats per token
    is typical. The bounds keep one bad batch from sending the rate to 0 or to infinity; rl_games
    bounds the rate itself to [1e-6, 1e-2], here the multiplier of the base rate is bounded.
    """
    if not (math.isfinite(approx_kl) and approx_kl >= -1e-6):
        raise ValueError(f"approx_kl must be a finite KL ≥ 0, got {approx_kl}.")
    if not kl_target > 0:
        raise ValueError(f"kl_target must be > 0, got {kl_target}.")
    if approx_kl > 2.0 * kl_target:
        scale /= factor
    elif approx_kl < 0.5 * kl_target:
        scale *= factor
    return min(max(scale, low), high)
