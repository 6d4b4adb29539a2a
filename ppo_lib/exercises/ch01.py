"""Self-checks for the exercises of chapter 01 (a language model is a policy)."""

from __future__ import annotations

import math

import torch

from ..losses import entropy_from_logits
from ..rollout import logprobs_from_logits
from . import passed

__all__ = ["check_sequence_logprob", "check_entropy_at_temperature", "check_kl_exact"]


def _close(got, want, msg: str) -> None:
    got = torch.as_tensor(got, dtype=want.dtype)
    assert got.shape == want.shape, f"{msg}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}."
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{msg}\n{m}")


def check_sequence_logprob(sequence_logprob, hidden: bool = False) -> None:
    """Exercise 1.1: ``sequence_logprob(logits, ids, P)`` with ``logits (L, V)`` of one forward pass
    over ``ids (L,)``; returns the log-probability of the response ``ids[P:]`` given the prompt
    ``ids[:P]``, Eq. (1.2)."""
    g = torch.Generator().manual_seed(11 if hidden else 1)
    cases = [(7, 5, 3), (4, 9, 1), (12, 30, 6)] + ([(2, 3, 1), (20, 50, 19)] if hidden else [])
    for L, V, P in cases:
        logits = torch.randn(L, V, generator=g, dtype=torch.float64) * 2
        ids = torch.randint(V, (L,), generator=g)
        want = logprobs_from_logits(logits[None, P - 1 : -1], ids[None, P:]).sum().to(torch.float64)
        got = sequence_logprob(logits, ids, P)
        shifted = torch.log_softmax(logits, -1)[torch.arange(P, L), ids[P:]].sum()
        if not torch.isclose(torch.as_tensor(got, dtype=torch.float64), want) and torch.isclose(
                torch.as_tensor(got, dtype=torch.float64), shifted):
            raise AssertionError("off by one: the logits at position i predict token i+1, so token t is scored "
                                 "with logits[t - 1].")
        _close(got, want, f"wrong sequence log-prob for L={L}, V={V}, P={P}")
    passed("sequence_logprob")


def check_entropy_at_temperature(entropy_at_temperature, hidden: bool = False) -> None:
    """Exercise 1.2: ``entropy_at_temperature(logits, tau)``: entropy in nats of softmax(logits / tau),
    over the last dimension, ``(..., V) -> (...)``."""
    g = torch.Generator().manual_seed(12 if hidden else 2)
    logits = torch.randn(3, 4, 10, generator=g, dtype=torch.float64) * 3
    for tau in ([0.3, 1.0, 2.5] + ([0.05, 7.0] if hidden else [])):
        _close(entropy_at_temperature(logits, tau), entropy_from_logits(logits / tau),
               f"wrong entropy at tau={tau} (divide the logits by tau before the softmax)")
    z = torch.tensor([3.0, 1.0, 0.0, -2.0], dtype=torch.float64)
    assert float(entropy_at_temperature(z, 1e-3)) < 1e-6, "as tau -> 0 the policy becomes greedy: entropy -> 0."
    assert abs(float(entropy_at_temperature(z, 1e4)) - math.log(4)) < 1e-3, \
        "as tau -> infinity the policy becomes uniform: entropy -> log V."
    passed("entropy_at_temperature")


def check_kl_exact(kl_exact, hidden: bool = False) -> None:
    """Exercise 1.3: ``kl_exact(logits_p, logits_q)``: exact KL(p || q) of the two softmax
    distributions over the last dimension, ``(..., V), (..., V) -> (...)``."""
    g = torch.Generator().manual_seed(13 if hidden else 3)
    shapes = [(5,), (2, 6), (3, 4, 8)] + ([(1, 100)] if hidden else [])
    for shape in shapes:
        zp = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        zq = torch.randn(shape, generator=g, dtype=torch.float64)
        lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
        want = (lp.exp() * (lp - lq)).sum(-1)
        got = torch.as_tensor(kl_exact(zp, zq), dtype=torch.float64)
        reverse = (lq.exp() * (lq - lp)).sum(-1)
        if got.shape == want.shape and torch.allclose(got, reverse) and not torch.allclose(got, want):
            raise AssertionError("you computed KL(q || p): the expectation is under p, the first argument.")
        _close(got, want, f"wrong KL for shape {shape}")
    z = torch.randn(4, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(torch.as_tensor(kl_exact(z, z + 5.0), dtype=torch.float64), torch.zeros(4, dtype=torch.float64), atol=1e-9), \
        "KL(p || p) must be 0 (adding a constant to all logits does not change a softmax)."
    passed("kl_exact")
