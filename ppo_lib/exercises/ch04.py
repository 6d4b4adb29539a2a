"""Self-checks for the exercises of chapter 04 (GAE)."""

from __future__ import annotations

import torch

from ..advantages import gae
from ..masking import masked_whiten
from . import passed
from .ch03 import _ragged


def _as_pair(out):
    return out if isinstance(out, tuple) else (out, None)


def check_gae(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam) -> advantages (B, T)`` (or ``(advantages, returns)``)
    against Eq. (4.5) / (4.6)."""
    # hand example (same as tests/test_advantages.py): δ = [0, 0, 0.5], λ = 0.5 -> A = [0.125, 0.25, 0.5]
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.bool)
    A, R = _as_pair(fn(r, v, m, 1.0, 0.5))
    assert tuple(A.shape) == (1, 3), f"expected advantages of shape (1, 3), got {tuple(A.shape)}"
    if abs(float(A[0, 2])) < 1e-12:
        raise AssertionError("the advantage of the last token is 0: the last step was never computed "
                             "(an off-by-one, as in the seed code: deltas must have length T, not T−1).")
    torch.testing.assert_close(A, torch.tensor([[0.125, 0.25, 0.5]], dtype=torch.float64),
                               msg=lambda s: "hand example: rewards [0,0,1], V = 0.5, γ = 1, λ = 0.5 should give "
                               f"[0.125, 0.25, 0.5]. {s}")
    if R is not None:
        torch.testing.assert_close(R, A + v, msg=lambda s: f"returns must be advantages + values: {s}")
    for seed in range(20 if hidden else 4):
        r, v, m = _ragged(5, 9, seed + (1000 if hidden else 0))
        for gamma, lam in ((1.0, 0.95), (0.9, 0.0), (0.99, 1.0)):
            A, _ = _as_pair(fn(r, v, m, gamma, lam))
            A_ref, _ = gae(r, v, m, gamma, lam)
            assert torch.allclose(A[m], A_ref[m], atol=1e-8), (
                f"differs from Eq. (4.5) on a padded batch (γ={gamma}, λ={lam}): check that the value "
                "after the last real token of each row is 0 and that padding never enters a sum.")
            assert bool((A[~m].abs() < 1e-12).all()), "advantages on padded positions must be 0."
    passed("check_gae")


def check_lambda_returns(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam) -> (B, T)`` λ-returns against GAE's returns, Eq. (4.8)."""
    for seed in range(20 if hidden else 4):
        r, v, m = _ragged(4, 8, seed + (2000 if hidden else 0))
        for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (1.0, 1.0)):
            G = fn(r, v, m, gamma, lam)
            _, R = gae(r, v, m, gamma, lam)
            if lam == 1.0 and not torch.allclose(G[m], R[m], atol=1e-8):
                raise AssertionError("with λ = 1 the λ-return is the Monte-Carlo return Σ γ^l r_{t+l}.")
            assert torch.allclose(G[m], R[m], atol=1e-8), (
                f"λ-returns differ from Â_t + V(s_t) (γ={gamma}, λ={lam}); recursion: "
                "G^λ_t = r_t + γ[(1−λ) V(s_{t+1}) + λ G^λ_{t+1}], with V and G^λ equal to 0 after the last real token.")
    passed("check_lambda_returns")


def check_whiten(fn) -> None:
    """Check ``fn(x, mask) -> (B, T)``: mean 0, unbiased variance 1 over the masked entries, 0 on padding."""
    x, _, m = _ragged(4, 8, 7)
    x = x + 3.0
    x_pad = torch.where(m, x, torch.full_like(x, 100.0))  # padding holds junk
    out = fn(x_pad, m)
    assert bool((out[~m].abs() < 1e-12).all()), "whitened padding must be 0."
    mean, var = out[m].mean().item(), out[m].var().item()
    if abs(mean) > 1e-6 or abs(var - 1) > 1e-4:
        raise AssertionError(f"over real tokens mean={mean:.4f}, var={var:.4f}: the statistics must be taken "
                             "over masked entries only (padding holds 100 here).")
    torch.testing.assert_close(out, masked_whiten(x_pad, m), atol=1e-6, rtol=1e-6)
    passed("check_whiten")
