r"""The enumerable toy language model of chapter 02 (policy gradient): exact J(θ) and ∇J(θ).

The toy is a *bigram language model* over a vocabulary of ``V`` tokens that writes
sequences of exactly ``T`` tokens. Its parameters are a table of logits
``theta`` of shape ``(V + 1, V)``: row ``s`` holds the logits of the next token after
token ``s`` (row ``V`` is the start state, "BOS"), so

.. math:: \pi_\theta(y) = \prod_{t=0}^{T-1} \mathrm{softmax}(\theta_{y_{t-1}})_{y_t},
   \qquad y_{-1} = \mathrm{BOS}.

With ``V = 3`` and ``T = 3`` there are only 27 sequences, so the objective
:math:`J(\theta) = \sum_y \pi_\theta(y) R(y)` and its gradient can be computed exactly by
enumeration, and every Monte-Carlo estimate can be compared with the truth (Eq. (2.2)
and (2.7) of chapter 02). The reward is the number of positions where ``y`` agrees with a
target string (default ``"ABC"``), paid at the end of the sequence, like the score of a
reward model.

Everything runs in float64 on the CPU, in milliseconds.
"""

from __future__ import annotations

import itertools

import torch


__all__ = [
    "all_sequences",
    "toy_logprob",
    "toy_reward",
    "toy_objective",
    "exact_gradient",
    "sample_sequences",
    "score_vectors",
    "reinforce_gradient",
    "reinforce_train",
    "V", "T", "TARGET", "TOKENS",
]

V, T = 3, 3
TARGET = (0, 1, 2)  # "ABC"
TOKENS = "ABC"


def _log_softmax(theta: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax written as ``theta - logsumexp(theta)``.

    Same numbers as ``torch.log_softmax``; on a busy CPU the built-in softmax kernels start the
    thread pool even for a 4×3 table, which made the toy a thousand times slower."""
    return theta - theta.logsumexp(dim=-1, keepdim=True)


def _prev(seqs: torch.Tensor, V: int) -> torch.Tensor:
    """The state (previous token, or ``V`` for BOS) in which each token was chosen: ``(N, T)``."""
    bos = torch.full_like(seqs[:, :1], V)
    return torch.cat([bos, seqs[:, :-1]], dim=1)


def all_sequences(V: int = V, T: int = T) -> torch.Tensor:
    """Every sequence of ``T`` tokens over ``V`` symbols, ``(V**T, T)`` long, in lexicographic order."""
    return torch.tensor(list(itertools.product(range(V), repeat=T)), dtype=torch.long)


def toy_logprob(theta: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    r"""Sequence log-probabilities :math:`\log\pi_\theta(y) = \sum_t \log\pi_\theta(y_t|y_{t-1})`, Eq. (1.2).

    Args:
        theta: ``(V + 1, V)`` logits table (may require grad).
        seqs: ``(N, T)`` token ids.

    Returns:
        ``(N,)`` log-probabilities.
    """
    logp = _log_softmax(theta)  # (V+1, V)
    return logp[_prev(seqs, theta.shape[1]), seqs].sum(dim=1)  # (N, T) -> (N,)


def toy_reward(seqs: torch.Tensor, target: tuple[int, ...] = TARGET) -> torch.Tensor:
    """Number of positions where ``seqs`` agrees with ``target``: ``(N, T) -> (N,)`` float64."""
    return (seqs == torch.tensor(target)).sum(dim=1).to(torch.float64)


def toy_objective(theta: torch.Tensor, target: tuple[int, ...] = TARGET) -> torch.Tensor:
    r"""Exact :math:`J(\theta) = \sum_y \pi_\theta(y) R(y)` by enumeration, Eq. (2.2)."""
    seqs = all_sequences(theta.shape[1], len(target))
    return (toy_logprob(theta, seqs).exp() * toy_reward(seqs, target)).sum()


def exact_gradient(theta: torch.Tensor, target: tuple[int, ...] = TARGET) -> torch.Tensor:
    r"""Exact :math:`\nabla_\theta J` by autograd through the enumeration: ``(V + 1, V)``."""
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(toy_objective(theta, target), theta)
    return grad


@torch.no_grad()
def sample_sequences(theta: torch.Tensor, n: int, T: int = T, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n`` sequences token by token from the toy policy: ``(n, T)`` long."""
    probs = _log_softmax(theta.detach()).exp()  # (V+1, V)
    state = torch.full((n,), theta.shape[1], dtype=torch.long)  # BOS
    out = []
    for _ in range(T):
        token = torch.multinomial(probs[state], 1, generator=generator).squeeze(1)  # (n,)
        out.append(token)
        state = token
    return torch.stack(out, dim=1)


def score_vectors(theta: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    r"""Per-sequence score :math:`\nabla_\theta \log\pi_\theta(y)`, in closed form: ``(N, V + 1, V)``.

    For a softmax row, :math:`\nabla_{\theta_s}\log\mathrm{softmax}(\theta_s)_a = e_a - \pi(\cdot|s)`
    (exercise 2.1); the sequence's score sums this over its tokens, Eq. (2.4).
    """
    V = theta.shape[1]
    probs = _log_softmax(theta.detach()).exp()  # (V+1, V)
    prev = _prev(seqs, V)  # (N, T)
    scores = torch.zeros(seqs.shape[0], V + 1, V, dtype=probs.dtype)
    rows = torch.arange(seqs.shape[0])
    for t in range(seqs.shape[1]):  # one token per row and step, so the indices never collide
        onehot = torch.nn.functional.one_hot(seqs[:, t], V).to(probs.dtype)  # (N, V)
        scores[rows, prev[:, t]] += onehot - probs[prev[:, t]]
    return scores


def reinforce_gradient(theta: torch.Tensor, seqs: torch.Tensor, baseline=0.0,
                       target: tuple[int, ...] = TARGET) -> torch.Tensor:
    r"""The REINFORCE estimate :math:`\frac1N\sum_i (R(y^i) - b_i)\,\nabla\log\pi_\theta(y^i)`, Eq. (2.7).

    Args:
        theta: ``(V + 1, V)``.
        seqs: ``(N, T)`` sequences sampled from :math:`\pi_\theta`.
        baseline: a float, a ``(N,)`` tensor, or ``"loo"`` for the leave-one-out mean
            :math:`b_i = \frac{1}{N-1}\sum_{j\ne i} R(y^j)` (unbiased, Eq. (2.10)).

    Returns:
        ``(V + 1, V)`` gradient estimate.
    """
    R = toy_reward(seqs, target)  # (N,)
    if isinstance(baseline, str):
        if baseline != "loo":
            raise ValueError(f"unknown baseline {baseline!r}; use a number, a tensor or 'loo'.")
        baseline = (R.sum() - R) / (len(R) - 1)
    weights = R - baseline  # (N,)
    return (weights[:, None, None] * score_vectors(theta, seqs)).mean(dim=0)


def reinforce_train(steps: int = 150, n: int = 16, lr: float = 0.5, baseline: str = "none",
                    seed: int = 0) -> list[float]:
    """Plain REINFORCE by gradient *ascent* on the toy from ``theta = 0`` (the uniform policy).

    Args:
        steps: updates; n: samples per update; lr: step size.
        baseline: ``"none"`` or ``"loo"`` (leave-one-out mean of the batch).
        seed: seeds the sampler.

    Returns:
        The exact :math:`J(\\theta)` before each update and after the last (``steps + 1`` floats).
    """
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(V + 1, V, dtype=torch.float64)
    history = [float(toy_objective(theta))]
    for _ in range(steps):
        seqs = sample_sequences(theta, n, generator=g)
        theta = theta + lr * reinforce_gradient(theta, seqs, 0.0 if baseline == "none" else baseline)
        history.append(float(toy_objective(theta)))
    return history


def _init_theta(seed: int = 0) -> torch.Tensor:
    """A fixed, non-uniform starting policy for the variance experiments."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V + 1, V, generator=g, dtype=torch.float64)
