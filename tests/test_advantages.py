"""Tests for ppo_lib.advantages: hand values, brute force, limits, padding invariance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_lib.advantages import (
    discounted_cumsum,
    discounted_cumsum_reference,
    discounted_returns,
    gae,
    gae_reference,
    td_errors,
)


def ragged(B, T, seed, dtype=torch.float64):
    """Random rewards, values and a right-padded mask with lengths in [1, T]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randn(B, T, generator=g, dtype=dtype)
    values = torch.randn(B, T, generator=g, dtype=dtype)
    return rewards, values, mask


def brute_force_gae(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l}, delta from the definition, one row at a time."""
    B, T = rewards.shape
    A = torch.zeros_like(rewards)
    for b in range(B):
        n = int(mask[b].sum())
        v = torch.cat([values[b, :n], values.new_zeros(1)])  # V after the last token is 0
        delta = [rewards[b, t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            A[b, t] = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
    return A


def test_td_errors_by_hand():
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 4.0]])
    m = torch.tensor([[True, True, False]])
    # delta_0 = 1 + 0.9*1.0 - 0.5 = 1.4 ; delta_1 = 0 + 0.9*0 - 1.0 = -1.0 (terminal) ; pad 0
    torch.testing.assert_close(td_errors(r, v, m, 0.9), torch.tensor([[1.4, -1.0, 0.0]]))


def test_gae_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.bool)
    # gamma=1: deltas = [0, 0, 0.5]; lam = 0.5: A = [0.125, 0.25, 0.5]
    A, R = gae(r, v, m, gamma=1.0, lam=0.5)
    torch.testing.assert_close(A, torch.tensor([[0.125, 0.25, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(R, A + v)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.7, 0.0)])
def test_gae_equals_brute_force_on_ragged_float64(gamma, lam):
    rewards, values, mask = ragged(6, 11, seed=1)
    expected = brute_force_gae(rewards, values, mask, gamma, lam)
    A, R = gae(rewards, values, mask, gamma, lam)
    A_ref, R_ref = gae_reference(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(A, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(A_ref, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(R, R_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(R[mask], (A + values)[mask])


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    factor=st.floats(0.0, 1.0),
)
def test_vectorised_cumsum_equals_loop(B, T, seed, factor):
    x, _, mask = ragged(B, T, seed)
    torch.testing.assert_close(
        discounted_cumsum(x, mask, factor), discounted_cumsum_reference(x, mask, factor), rtol=1e-10, atol=1e-10
    )


def test_lambda_zero_is_td_error_and_lambda_one_is_reward_to_go():
    rewards, values, mask = ragged(4, 9, seed=2)
    A0, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    torch.testing.assert_close(A0, td_errors(rewards, values, mask, 0.9))
    A1, R1 = gae(rewards, torch.zeros_like(values), mask, gamma=0.9, lam=1.0)
    G = discounted_returns(rewards, mask, 0.9)
    torch.testing.assert_close(A1, G)
    torch.testing.assert_close(R1, G)
    # lam = 1 with a value function: the Monte-Carlo return minus V
    A1v, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(A1v, torch.where(mask, G - values, 0.0))


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    m = torch.tensor([[True, True, True]])
    torch.testing.assert_close(discounted_returns(r, m, 0.5), torch.tensor([[2.75, 3.5, 3.0]]))


def test_appending_padding_changes_nothing():
    rewards, values, mask = ragged(3, 7, seed=3)
    A, R = gae(rewards, values, mask, 0.95, 0.9)
    pad = 5
    junk = torch.full((3, pad), 123.0, dtype=torch.float64)  # garbage in padded slots must not matter
    A2, R2 = gae(
        torch.cat([rewards, junk], 1), torch.cat([values, junk], 1),
        torch.cat([mask, torch.zeros(3, pad, dtype=torch.bool)], 1), 0.95, 0.9,
    )
    torch.testing.assert_close(A2[:, :7], A)
    torch.testing.assert_close(R2[:, :7], R)
    assert (A2[:, 7:] == 0).all() and (R2[:, 7:] == 0).all()


def test_rows_do_not_mix_and_padding_is_zero():
    rewards, values, mask = ragged(4, 8, seed=4)
    A, _ = gae(rewards, values, mask, 1.0, 0.95)
    for b in range(4):
        Ab, _ = gae(rewards[b : b + 1], values[b : b + 1], mask[b : b + 1], 1.0, 0.95)
        torch.testing.assert_close(A[b : b + 1], Ab)
    assert (A[~mask] == 0).all()


def test_float32_close_to_float64():
    rewards, values, mask = ragged(4, 16, seed=5)
    A64, _ = gae(rewards, values, mask, 1.0, 0.95)
    A32, _ = gae(rewards.float(), values.float(), mask, 1.0, 0.95)
    assert A32.dtype == torch.float32
    torch.testing.assert_close(A32.double(), A64, rtol=1e-5, atol=1e-5)


def test_advantages_carry_no_gradient():
    rewards, values, mask = ragged(2, 5, seed=6)
    values.requires_grad_(True)
    A, R = gae(rewards, values, mask, 1.0, 0.95)
    assert not A.requires_grad and not R.requires_grad


def test_bad_inputs_raise():
    r = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="right-padded"):
        gae(r, r, torch.tensor([[True, False, True], [True, True, True]]), 1.0, 0.9)
    with pytest.raises(ValueError, match="lam"):
        gae(r, r, torch.ones(2, 3, dtype=torch.bool), 1.0, 1.5)
    with pytest.raises(ValueError, match="shape"):
        gae(r, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 1.0, 0.9)
