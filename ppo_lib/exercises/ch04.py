"""Self-checks for the exercises of chapter 04 (GAE)."""

from __future__ import annotations

import torch

from ..advantages import gae
from ..masking import masked_whiten
from . import passed
from .ch01 import _forbidding
from .ch03 import _ragged

_GAE = ("ppo_lib.advantages.gae", "ppo_lib.advantages.gae_reference")


def _as_pair(out):
    return out if isinstance(out, tuple) else (out, None)


def check_gae(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam) -> advantages (B, T)`` (or ``(advantages, returns)``)
    against Eq. (4.5) / (4.6)."""
    reference = gae  # kept: the library's gae is withheld from the answer while it runs
    with _forbidding(fn, *_GAE):
        _check_gae(fn, hidden, reference)
    passed("check_gae")


def _check_gae(fn, hidden: bool, gae) -> None:
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


def _lambda_returns_by_hand(r, v, m, gamma, lam):
    """The recursion of Exercise 4.2 for λ = 0 or 1 written out in closed form, row by row
    (independent of ``ppo_lib.advantages``): λ = 0 is r_t + γ V(s_{t+1}), λ = 1 is Σ γ^l r_{t+l}."""
    G = torch.zeros_like(v)
    for b in range(r.shape[0]):
        n = int(m[b].sum())
        for t in range(n):
            if lam == 0.0:
                G[b, t] = r[b, t] + (gamma * v[b, t + 1] if t + 1 < n else 0.0)
            else:
                G[b, t] = sum(gamma ** l * r[b, t + l] for l in range(n - t))
    return G


def check_lambda_returns(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, values, mask, gamma, lam) -> (B, T)`` λ-returns: on a single step, in the
    limits λ = 0 (one-step TD target) and λ = 1 (Monte-Carlo return) on a ragged batch, and against
    GAE's returns, Eq. (4.8). ``ppo_lib.advantages.gae`` and ``gae_reference`` are withheld from
    the answer: the exercise is to write the recursion."""
    reference = gae  # kept: the library's gae is withheld from the answer while it runs
    with _forbidding(fn, *_GAE):
        _check_lambda_returns(fn, hidden, reference)
    passed("check_lambda_returns")


def _check_lambda_returns(fn, hidden: bool, gae) -> None:
    # a single step: the episode ends after it, so G = r whatever V, γ and λ
    r = torch.tensor([[0.7], [-1.2]], dtype=torch.float64)
    v = torch.tensor([[5.0], [3.0]], dtype=torch.float64)
    m = torch.ones(2, 1, dtype=torch.bool)
    for gamma, lam in ((1.0, 0.5), (0.9, 0.0), (0.9, 1.0)):
        G = fn(r, v, m, gamma, lam)
        assert tuple(G.shape) == (2, 1), f"expected shape (2, 1) on a batch of single steps, got {tuple(G.shape)}"
        assert torch.allclose(G, r, atol=1e-12), (
            f"on a single step G^λ_0 = r_0 (nothing follows it), got {G.reshape(-1).tolist()} for rewards "
            f"{r.reshape(-1).tolist()} (γ={gamma}, λ={lam}): V(s_0) does not enter its own return.")
    # the two limits of the recursion on a ragged batch, against the closed forms
    for seed in range(6 if hidden else 2):
        r, v, m = _ragged(3, 6, seed + (3000 if hidden else 300))
        G = fn(r, v, m, 0.9, 0.0)
        want = _lambda_returns_by_hand(r, v, m, 0.9, 0.0)
        assert torch.allclose(G[m], want[m], atol=1e-8), (
            "with λ = 0 the λ-return is the one-step TD target r_t + γ V(s_{t+1}), with V = 0 after "
            "the last real token of each row.")
        G = fn(r, v, m, 0.9, 1.0)
        want = _lambda_returns_by_hand(r, v, m, 0.9, 1.0)
        assert torch.allclose(G[m], want[m], atol=1e-8), (
            "with λ = 1 the λ-return is the Monte-Carlo return Σ γ^l r_{t+l} up to the last real token "
            "of each row (no value enters it).")
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


def check_whiten(fn, hidden: bool = False) -> None:
    """Check ``fn(x, mask) -> (B, T)``: mean 0, unbiased variance 1 over the masked entries, 0 on padding.

    The hidden tests add batches of other shapes and offsets, a row that is all padding, and
    values far from 0 (where subtracting the mean of the padded tensor would be visibly wrong)."""
    cases = [(4, 8, 7, 3.0)] + ([(1, 5, 70, -2.0), (6, 3, 71, 1e3), (3, 12, 72, 0.0)] if hidden else [])
    for B, T, seed, offset in cases:
        x, _, m = _ragged(B, T, seed)
        x = x * (1 + seed % 3) + offset
        if hidden and B > 2:
            m[1] = False  # a row that is all padding
            m[0, 0] = m[2, 0] = True
        x_pad = torch.where(m, x, torch.full_like(x, 100.0))  # padding holds junk
        out = fn(x_pad, m)
        assert tuple(out.shape) == (B, T), f"expected shape {(B, T)}, got {tuple(out.shape)}"
        assert bool((out[~m].abs() < 1e-12).all()), "whitened padding must be 0."
        mean, var = out[m].mean().item(), out[m].var().item()
        if abs(mean) > 1e-6 or abs(var - 1) > 1e-4:
            raise AssertionError(f"over real tokens mean={mean:.4f}, var={var:.4f}: the statistics must be taken "
                                 "over masked entries only (padding holds 100 here), with the unbiased variance.")
        torch.testing.assert_close(out, masked_whiten(x_pad, m), atol=1e-6, rtol=1e-6)
    passed("check_whiten")
