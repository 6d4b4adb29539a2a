"""Tier 1 and 2 tests for ppo_lib.masking: hand values, and masked == plain on the slice."""

import pytest
import torch

from ppo_lib.masking import masked_mean, masked_sum, masked_var, masked_whiten


def test_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_sum(x, m).item() == 7.0
    assert masked_mean(x, m).item() == pytest.approx(7.0 / 3)
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([1.5, 4.0]))
    # values 1, 2, 4: mean 7/3, squared deviations sum = 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(42 / 9 / 3)
    assert masked_var(x, m).item() == pytest.approx(42 / 9 / 2)


def test_masked_equals_plain_on_slice():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, generator=g, dtype=torch.float64)
    m = torch.rand(5, 9, generator=g) > 0.4
    torch.testing.assert_close(masked_mean(x, m), x[m].mean())
    torch.testing.assert_close(masked_var(x, m), x[m].var())
    w = masked_whiten(x, m)
    torch.testing.assert_close(w[m], (x[m] - x[m].mean()) / (x[m].var() + 1e-8).sqrt())
    assert (w[~m] == 0).all()


def test_padding_values_never_leak():
    x = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]])
    m = torch.tensor([[True, False], [True, False]])
    assert masked_mean(x, m).item() == 1.5
    assert torch.isfinite(masked_whiten(x, m)).all()


def test_whiten_without_shift_keeps_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0]])
    m = torch.tensor([[True, True, True, False]])
    w = masked_whiten(x, m, shift_mean=False)
    assert masked_mean(w, m).item() == pytest.approx(2.0)
    assert masked_var(w, m).item() == pytest.approx(1.0, rel=1e-5)


def test_empty_mask_is_a_clear_error_not_nan():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="empty mask"):
        masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty mask"):
        masked_mean(x, torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=1)
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, torch.ones(3, 2))
