"""Self-checks for the exercises of chapter 09 (beyond PPO)."""

from __future__ import annotations

import math

import torch

from ..dpo import dpo_loss
from ..policy_gradient import grpo_advantages, rloo_advantages
from . import passed
from .ch01 import _forbidding

__all__ = ["check_rloo", "check_grpo_advantages", "check_dpo_loss"]

_GROUP_HELPERS = ("ppo_lib.policy_gradient.rloo_advantages", "ppo_lib.policy_gradient.grpo_advantages",
                  "ppo_lib.policy_gradient.dr_grpo_advantages", "ppo_lib.policy_gradient.group_mean")


def _groups(n_prompts: int, k: int, seed: int, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n_prompts * k, generator=g, dtype=torch.float64)
    if ties:  # one prompt whose k samples all score the same (std = 0)
        R[:k] = 0.5
    return R


def _library(estimator, R: torch.Tensor, k: int) -> torch.Tensor:
    """The library's per-sequence advantage for sequence rewards ``R`` in runs of k (one token each)."""
    groups = torch.arange(len(R) // k).repeat_interleave(k)
    adv, _ = estimator(R[:, None], torch.ones(len(R), 1, dtype=torch.bool), groups)
    return adv[:, 0]


def check_rloo(fn, hidden: bool = False) -> None:
    """Check ``fn(R, k) -> A`` ``(n·k,) -> (n·k,)``: A_i = R_i − mean of the other k − 1 rewards of
    its prompt; rows come in runs of k samples of one prompt."""
    R = torch.tensor([1.0, 3.0, 2.0, 6.0, 0.0, 0.0], dtype=torch.float64)
    with _forbidding(fn, *_GROUP_HELPERS):
        got = torch.as_tensor(fn(R, 3), dtype=torch.float64)
    assert got.shape == R.shape, f"expected one advantage per sample, shape {tuple(R.shape)}, got {tuple(got.shape)}."
    want = torch.tensor([1 - 2.5, 3 - 1.5, 2 - 2.0, 6 - 0.0, 0 - 3.0, 0 - 3.0], dtype=torch.float64)
    if torch.allclose(got, R - torch.tensor([2.0] * 3 + [2.0] * 3, dtype=torch.float64)):
        raise AssertionError("that is R − mean of the whole group, including the sample itself: leave sample i out.")
    if torch.allclose(got, want * 2 / 3) or torch.allclose(got, R - R.reshape(2, 3).mean(1).repeat_interleave(3)):
        raise AssertionError("that is R − the group mean (Dr. GRPO); the leave-one-out baseline is k/(k−1) times larger.")
    torch.testing.assert_close(got, want, msg=lambda m: f"hand example R = [1, 3, 2 | 6, 0, 0], k = 3. {m}")
    for seed in range(8 if hidden else 3):
        for k in (2, 4, 5):
            R = _groups(3, k, seed + (900 if hidden else 0))
            with _forbidding(fn, *_GROUP_HELPERS):
                got = torch.as_tensor(fn(R, k), dtype=torch.float64)
            torch.testing.assert_close(got, _library(rloo_advantages, R, k),
                                       msg=lambda m: f"differs from the leave-one-out advantage for k = {k}. {m}")
    passed("check_rloo")


def check_grpo_advantages(fn, hidden: bool = False) -> None:
    """Check ``fn(R, k, eps=1e-6) -> A``: (R_i − mean)/(std + eps) within each run of k samples,
    std the unbiased sample standard deviation; a group of equal rewards gives 0, never NaN."""
    R = torch.tensor([1.0, 3.0, 0.5, 0.5], dtype=torch.float64)
    with _forbidding(fn, *_GROUP_HELPERS):
        got = torch.as_tensor(fn(R, 2), dtype=torch.float64)
    if torch.isnan(got).any():
        raise AssertionError("NaN for a group whose rewards are equal (std = 0): add eps to the std, as GRPO does.")
    s = math.sqrt(2.0)  # unbiased std of (1, 3)
    want = torch.tensor([-1 / (s + 1e-6), 1 / (s + 1e-6), 0.0, 0.0], dtype=torch.float64)
    if torch.allclose(got[:2], torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-5):
        raise AssertionError("std of (1, 3) came out as 1: that is the population std (divide by k); GRPO as in "
                             "verl uses the unbiased one (divide by k − 1), √2 here.")
    torch.testing.assert_close(got, want, msg=lambda m: f"hand example R = [1, 3 | 0.5, 0.5], k = 2. {m}")
    for seed in range(8 if hidden else 3):
        for k in (2, 4):
            R = _groups(3, k, seed + (700 if hidden else 0), ties=True)
            with _forbidding(fn, *_GROUP_HELPERS):
                got = torch.as_tensor(fn(R, k), dtype=torch.float64)
            torch.testing.assert_close(got, _library(grpo_advantages, R, k), msg=lambda m: f"k = {k}. {m}")
    passed("check_grpo_advantages")


def check_dpo_loss(fn, hidden: bool = False) -> None:
    """Check ``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> loss`` (a 0-dim
    tensor, the mean over pairs of −log σ(β[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)]))."""
    d = dict(dtype=torch.float64)

    def call(*args):
        with _forbidding(fn, "ppo_lib.dpo.dpo_loss"):
            out = fn(*args)
        return out[0] if isinstance(out, tuple) else out

    x = torch.tensor([-3.0, -7.0], **d)
    got = float(call(x, x - 1, x, x - 1, 0.1))
    assert abs(got - math.log(2)) < 1e-9, f"π_θ = π_ref gives margin 0 and loss ln 2 = 0.6931; got {got:.4f}."
    got = float(call(torch.tensor([-1.0], **d), torch.tensor([-2.0], **d), torch.tensor([-1.5], **d),
                     torch.tensor([-1.5], **d), 0.5))
    want = math.log(1 + math.exp(-0.5))
    if abs(got - math.log(1 + math.exp(0.5))) < 1e-9:
        raise AssertionError("sign error: a chosen response more likely than under π_ref must *lower* the loss.")
    assert abs(got - want) < 1e-9, f"hand example (margin 0.5): expected {want:.6f}, got {got:.6f}."
    big = float(call(torch.tensor([-2000.0], **d), torch.zeros(1, **d), torch.zeros(1, **d), torch.zeros(1, **d), 0.5))
    if not math.isfinite(big):
        raise AssertionError("a margin of −1000 gives an infinite loss: log(sigmoid(z)) underflows; use "
                             "torch.nn.functional.logsigmoid.")
    assert abs(big - 1000.0) < 1e-6, f"margin −1000: the loss is 1000, got {big}."
    g = torch.Generator().manual_seed(901 if hidden else 1)
    for _ in range(6 if hidden else 2):
        args = [-10 * torch.rand(5, generator=g, **d) for _ in range(4)]
        for beta in (0.05, 0.5):
            want, _ = dpo_loss(*args, beta=beta)
            got = torch.as_tensor(call(*args, beta), **d)
            torch.testing.assert_close(got, want, msg=lambda m: f"differs from the DPO loss (β = {beta}). {m}")
    passed("check_dpo_loss")
