"""TD errors, discounted returns and Generalized Advantage Estimation (chapters 03 and 04).

Conventions (shared by every function here):

* ``rewards``, ``values`` and ``response_mask`` are ``(B, T)``: B sequences, T response tokens.
* Rows are right-padded: ``response_mask[b]`` is True on a prefix (the real response tokens,
  EOS included) and False after it.
* Row ``b`` is one episode that ends at its last real token, so the value of the state
  after it is 0: there is no bootstrap across the end of a response.
* Outputs are 0 on padding; rows never mix.

Two implementations of each sum are kept: a plain Python loop that reads like the
equation (``*_reference``), and a vectorised one used by the trainer. The tests check
that they agree in float64 on random ragged batches.

References:
    Sutton & Barto (2018), *Reinforcement Learning: An Introduction*, 2nd ed., ch. 6, 12.
    Schulman, Moritz, Levine, Jordan & Abbeel (2015), "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation", arXiv:1506.02438.
"""

from __future__ import annotations

import torch

from .masking import check_mask

__all__ = [
    "check_right_padded",
    "td_errors",
    "discounted_cumsum",
    "discounted_cumsum_reference",
    "discounted_returns",
    "gae",
    "gae_reference",
]


def check_right_padded(response_mask: torch.Tensor) -> torch.Tensor:
    """Check that ``response_mask`` is ``(B, T)`` and each row is a run of True then only False.

    Returns the mask as bool. Raises ``ValueError`` otherwise: a hole inside a response
    would make "the value after the last real token is 0" ambiguous.
    """
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, T), got shape {tuple(response_mask.shape)}.")
    m = response_mask.bool()
    if bool((m[:, 1:] & ~m[:, :-1]).any()):  # a True right after a False
        raise ValueError(
            "response_mask rows must be right-padded (True on a prefix, then False): "
            "left-pad prompts, right-pad responses, and pass the response_mask of the rollout."
        )
    return m


def _check(rewards: torch.Tensor, values: torch.Tensor | None, response_mask: torch.Tensor) -> torch.Tensor:
    m = check_right_padded(response_mask)
    check_mask(rewards, m, "rewards")
    if values is not None:
        check_mask(values, m, "values")
    return m


def td_errors(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    r"""One-step TD errors, Eq. (3.6) of chapter 03.

    .. math:: \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t),

    with :math:`V(s_{t+1}) = 0` after the last real token of a row (terminal state).

    Args:
        rewards: ``(B, T)`` per-token rewards :math:`r_t`.
        values: ``(B, T)`` :math:`V(s_t)`, the value of the state before token t.
        response_mask: ``(B, T)`` right-padded response mask.
        gamma: discount :math:`\gamma \in [0, 1]`, 1.0 for RLHF.

    Returns:
        ``(B, T)`` deltas, 0 on padding.

    References:
        Sutton & Barto (2018), Eq. (6.5).
    """
    m = _check(rewards, values, response_mask).to(values.dtype)
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * m[:, 1:]  # (B, T); 0 after the last real token
    deltas = rewards + gamma * next_values - values
    return torch.where(m.bool(), deltas, torch.zeros_like(deltas))


def discounted_cumsum_reference(x: torch.Tensor, response_mask: torch.Tensor, factor: float) -> torch.Tensor:
    r"""Reference loop for :math:`y_t = \sum_{l \ge 0} \text{factor}^l x_{t+l}` within each row.

    The backward recursion :math:`y_t = x_t + \text{factor} \cdot y_{t+1}`, started at 0
    after the last real token; one Python step per element. Slow; for tests and reading.
    """
    m = check_right_padded(response_mask)
    check_mask(x, m)
    y = torch.zeros_like(x)
    B, T = x.shape
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if not m[b, t]:
                continue
            running = x[b, t] + factor * running
            y[b, t] = running
    return y


def discounted_cumsum(x: torch.Tensor, response_mask: torch.Tensor, factor: float) -> torch.Tensor:
    r"""Vectorised :math:`y_t = \sum_{l \ge 0} \text{factor}^l x_{t+l}` within each row.

    Written as one matrix product ``y = x @ D`` with ``D[s, t] = factor**(s - t)`` for
    ``s >= t`` and 0 otherwise. Because padding is zeroed first and rows are right-padded,
    the sum stops at the end of each response by itself. Costs O(T²) memory for D,
    negligible for LM responses (T ≤ a few thousand), and a single kernel on a GPU where
    the equivalent loop would launch T small ones.

    Args:
        x: ``(B, T)``.
        response_mask: ``(B, T)``, right-padded.
        factor: the per-step discount (``gamma`` for returns, ``gamma * lam`` for GAE).

    Returns:
        ``(B, T)``, 0 on padding.
    """
    m = check_right_padded(response_mask)
    check_mask(x, m)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"discount factor must be in [0, 1], got {factor}.")
    T = x.shape[1]
    steps = torch.arange(T, device=x.device)
    lag = steps[:, None] - steps[None, :]  # (T, T): lag[s, t] = s - t
    base = torch.tensor(factor, dtype=x.dtype, device=x.device)
    D = torch.where(lag >= 0, base ** lag.clamp(min=0), 0.0)  # (T, T); 0 ** 0 = 1 in torch
    x = torch.where(m, x, torch.zeros_like(x))
    y = x @ D  # (B, T) @ (T, T) -> (B, T)
    # Plain loop this replaces:  for t in reversed(range(T)): y[:, t] = x[:, t] + factor * y[:, t + 1]
    return torch.where(m, y, torch.zeros_like(y))


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""Reward-to-go :math:`G_t = \sum_{l \ge 0} \gamma^l r_{t+l}`, Eq. (3.1) of chapter 03.

    Args:
        rewards: ``(B, T)``.
        response_mask: ``(B, T)`` right-padded response mask.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``(B, T)`` returns, 0 on padding.
    """
    _check(rewards, None, response_mask)
    return discounted_cumsum(rewards, response_mask, gamma)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized Advantage Estimation, Eq. (4.5) of chapter 04 (vectorised).

    .. math::
        \hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}, \qquad
        \hat R_t = \hat A_t + V(s_t),

    with :math:`\delta` the TD errors of :func:`td_errors`. :math:`\lambda = 0` gives
    :math:`\hat A_t = \delta_t`; :math:`\lambda = 1` gives :math:`G_t - V(s_t)`.
    The returns :math:`\hat R_t` are the value targets (the TD(λ) λ-return).

    Args:
        rewards: ``(B, T)`` per-token rewards (KL penalty plus the score on the last token).
        values: ``(B, T)`` values :math:`V(s_t)` from the rollout; treated as constants.
        response_mask: ``(B, T)`` right-padded response mask.
        gamma: discount :math:`\gamma`, typically 1.0 for RLHF, 0.99 in control.
        lam: :math:`\lambda \in [0, 1]`, typically 0.95.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 on padding, without gradient.

    References:
        Schulman et al. (2015), arXiv:1506.02438, Eq. (16).
    """
    return _gae(rewards, values, response_mask, gamma, lam, discounted_cumsum)


def gae_reference(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""GAE as the backward recursion of Eq. (4.6), chapter 04, one step at a time.

    .. math:: \hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}, \quad \hat A_{T_b} = 0.

    Same contract as :func:`gae`; kept for tests and for reading.
    """
    return _gae(rewards, values, response_mask, gamma, lam, discounted_cumsum_reference)


def _gae(rewards, values, response_mask, gamma, lam, cumsum):
    """δ (Eq. 3.6), then the (γλ)-discounted sum of δ by ``cumsum``, then R̂ = Â + V."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")
    with torch.no_grad():  # advantages are constants in the policy loss
        deltas = td_errors(rewards, values, response_mask, gamma)
        advantages = cumsum(deltas, response_mask, gamma * lam)
        returns = torch.where(response_mask.bool(), advantages + values, torch.zeros_like(values))
    return advantages, returns
