"""Self-checks for the exercises of chapter 06 (RLHF with PPO)."""

from __future__ import annotations

import torch

from ..kl import shape_rewards
from ..masking import masked_var
from ..rollout import truncate_after_eos
from . import passed


def _ragged_batch(B: int, T: int, seed: int):
    """Random log-probs, reference log-probs, scores and a right-padded mask (float64)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full row, so the last column is sometimes real
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logprobs = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    ref_logprobs = logprobs + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    # padding holds garbage, as in a real batch: it must never reach the rewards
    logprobs = torch.where(mask, logprobs, torch.full_like(logprobs, 7.0))
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    return scores, logprobs, ref_logprobs, mask


def check_shape_rewards(fn, hidden: bool = False) -> None:
    """Check ``fn(scores, logprobs, ref_logprobs, mask, kl_coef) -> rewards (B, T)`` against Eq. (6.2)
    (k1 estimator: KL_t = log π(a_t) − log π_ref(a_t))."""
    # hand example: one row of 3 real tokens and 1 pad, β = 0.5
    scores = torch.tensor([2.0], dtype=torch.float64)
    lp = torch.tensor([[-1.0, -2.0, -0.5, 9.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, True, False]])
    r = fn(scores, lp, ref, m, 0.5)
    r = r[0] if isinstance(r, tuple) else r
    assert tuple(r.shape) == (1, 4), f"rewards must be (B, T) = (1, 4), got {tuple(r.shape)}."
    if abs(float(r[0, 3])) > 1e-12:
        raise AssertionError("padding got a reward: r_t must be 0 where the mask is False (no KL, no score).")
    if abs(float(r[0, 0]) - 0.25) < 1e-12:
        raise AssertionError("sign error in the KL term: KL_t = log π − log π_ref = +0.5 at t = 0, so r_0 = −β·0.5 = −0.25.")
    if abs(float(r[0, 2])) < 1e-12:
        raise AssertionError("the score is missing from the last real token t = T_b = 2.")
    expected = torch.tensor([[-0.25, 0.5, 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(r, expected, msg=lambda s: "hand example: KL_t = [0.5, −1, 0], β = 0.5, score 2 "
                               f"on the last real token should give [−0.25, 0.5, 2.0, 0]. {s}")
    for seed in range(10 if hidden else 3):
        scores, lp, ref, m = _ragged_batch(5, 7, seed + (600 if hidden else 0))
        for beta in (0.0, 0.1):
            r = fn(scores, lp, ref, m, beta)
            r = r[0] if isinstance(r, tuple) else r
            r_lib, _ = shape_rewards(scores, lp, ref, m, beta, "k1")
            if not torch.allclose(r, r_lib, atol=1e-10):
                last_col = r_lib.clone()
                last_col[torch.arange(5), m.sum(1) - 1] -= scores
                last_col[:, -1] += scores
                if torch.allclose(r, last_col, atol=1e-10):
                    raise AssertionError("the score went to column T−1 for every row: put it on each row's last "
                                         "REAL token (mask.sum(1) − 1); short responses end earlier.")
                raise AssertionError(f"differs from Eq. (6.2) on a padded batch (β = {beta}).")
    passed("check_shape_rewards")


def check_response_mask(fn, hidden: bool = False) -> None:
    """Check ``fn(response_ids, eos_token_id, pad_token_id) -> response_mask (B, T)``: True on every
    token up to and including the first EOS, False after it, whether or not pad == EOS."""
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, eos, pad, pad], [7, 8, 9, 10, 11], [eos, pad, pad, pad, pad]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    m = fn(ids, eos, pad).bool()
    assert tuple(m.shape) == tuple(ids.shape), f"the mask must have the ids' shape {tuple(ids.shape)}."
    if not bool(m[0, 2]):
        raise AssertionError("the EOS is masked out: it is a real action (the policy chose to stop) and gets the score.")
    assert torch.equal(m, expected), f"pad ≠ EOS example: expected\n{expected.int()}\ngot\n{m.int()}"
    # GPT-2 style: no pad token of its own, so padding reuses the EOS id
    ids = torch.tensor([[5, 6, eos, eos, eos], [7, 8, 9, 10, 11], [eos, eos, eos, eos, eos]])
    m = fn(ids, eos, eos).bool()
    if not bool(m[:, 0].all()) or not bool(m[0, 2]):
        raise AssertionError("with pad == EOS, `ids != pad_token_id` also drops the real EOS (and empties row 2, "
                             "whose only token is its EOS): find the first EOS instead.")
    assert torch.equal(m, expected), f"pad == EOS example: expected\n{expected.int()}\ngot\n{m.int()}"
    # tokens after the first EOS that are not padding (e.g. sampled with stop_at_eos=False)
    ids = torch.tensor([[5, eos, 6, eos, 7]])
    m = fn(ids, eos, pad).bool()
    if bool(m[0, 2:].any()):
        raise AssertionError("tokens after the first EOS are kept: the episode ends at the first EOS.")
    assert torch.equal(m, torch.tensor([[True, True, False, False, False]]))
    for seed in range(20 if hidden else 3):
        g = torch.Generator().manual_seed(seed + (700 if hidden else 0))
        ids = torch.randint(0, 6, (6, 9), generator=g)
        for pad_id in (0, eos):
            _, m_lib = truncate_after_eos(ids, eos, pad_id)
            assert torch.equal(fn(ids, eos, pad_id).bool(), m_lib), "differs from the first-EOS rule on a random batch."
    passed("check_response_mask")


def check_explained_variance(fn, hidden: bool = False) -> None:
    """Check ``fn(values, returns, mask) -> float``: 1 − Var[R̂ − V] / Var[R̂] over the real tokens."""
    m = torch.tensor([[True, True, True, False]])
    R = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    perfect = float(fn(R.clone(), R, m))
    assert abs(perfect - 1.0) < 1e-9, f"V = R̂ on every real token must give 1, got {perfect:.4f} (is padding counted?)."
    const = float(fn(torch.full_like(R, 5.0), R, m))
    if abs(const) > 1e-9:
        raise AssertionError(f"a constant V explains none of the variance: expected 0, got {const:.4f}. "
                             "Use the variance of the residual R̂ − V, not its mean square (the offset is not variance).")
    neg = float(fn(-R, R, m))
    assert abs(neg - (1 - 4.0)) < 1e-9, f"V = −R̂: Var[2R̂]/Var[R̂] = 4, so 1 − 4 = −3; got {neg:.4f}."
    for seed in range(10 if hidden else 3):
        g = torch.Generator().manual_seed(seed + (800 if hidden else 0))
        R = torch.randn(4, 6, generator=g, dtype=torch.float64)
        V = R + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
        m = torch.arange(6)[None, :] < torch.randint(2, 7, (4, 1), generator=g)
        V = torch.where(m, V, torch.full_like(V, 50.0))  # garbage on padding
        expected = float(1 - masked_var(R - V, m) / masked_var(R, m))
        got = float(fn(V, R, m))
        assert abs(got - expected) < 1e-8, (f"expected {expected:.4f}, got {got:.4f}: take both variances over the "
                                             "real tokens only (mask), of R̂ − V and of R̂.")
    passed("check_explained_variance")
