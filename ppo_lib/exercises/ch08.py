"""Self-checks for the exercises of chapter 08 (reward models)."""

from __future__ import annotations

import itertools
import math

import torch

from ..preferences import noise_ceiling
from ..reward_model import best_of_n_estimate, bradley_terry_loss
from . import passed
from .ch01 import _close, _forbidding

_BT = ("ppo_lib.reward_model.bradley_terry_loss",)
_BON = ("ppo_lib.reward_model.best_of_n_estimate",)
_CEILING = ("ppo_lib.preferences.noise_ceiling",)


def check_bt_loss(fn, hidden: bool = False) -> None:
    """Exercise 8.1: ``fn(r_chosen, r_rejected) -> loss``, the mean of −log σ(r_chosen − r_rejected), Eq. (8.2)."""
    reference = bradley_terry_loss  # kept: withheld from the answer while it runs
    with _forbidding(fn, *_BT):
        r = torch.zeros(4, dtype=torch.float64)
        loss = fn(r, r)
        loss = loss[0] if isinstance(loss, tuple) else loss
        _close(loss, torch.tensor(math.log(2), dtype=torch.float64), "equal rewards must give ln 2 (σ(0) = 1/2)")
        loss = fn(torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
        loss = loss[0] if isinstance(loss, tuple) else loss
        if abs(float(loss) - math.log(1 + math.e)) < 1e-9:
            raise AssertionError("sign error: with Δ = r_chosen − r_rejected = 1 the loss is log(1 + e^{−1}) ≈ 0.313, "
                                 "small because the chosen response already scores higher.")
        g = torch.Generator().manual_seed(81 if hidden else 8)
        for scale in (1.0, 30.0) + ((300.0,) if hidden else ()):
            r_c = torch.randn(6, generator=g, dtype=torch.float64) * scale
            r_r = torch.randn(6, generator=g, dtype=torch.float64) * scale
            loss = fn(r_c, r_r)
            loss = loss[0] if isinstance(loss, tuple) else loss
            if not math.isfinite(float(loss)):
                raise AssertionError(f"the loss is {float(loss)} for margins of size ~{scale}: log(sigmoid(Δ)) "
                                     "underflows; use F.logsigmoid or softplus(−Δ).")
            _close(loss, reference(r_c, r_r)[0], f"differs from Eq. (8.2) on random rewards (scale {scale})")
    passed("check_bt_loss")


def check_best_of_n(fn, hidden: bool = False) -> None:
    """Exercise 8.2: ``fn(proxy, gold, n) -> float``, the expected gold score of the proxy-best of n samples drawn
    without replacement from one pool (1-D tensors of N scores), by Eq. (8.6), not by enumeration."""
    reference = best_of_n_estimate
    g = torch.Generator().manual_seed(82 if hidden else 2)
    with _forbidding(fn, *_BON, "itertools.combinations"):
        proxy = torch.tensor([0.1, 0.9, 0.5], dtype=torch.float64)
        gold = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
        # n = 2: subsets {0,1}→1 (gold 0), {0,2}→2 (gold 3), {1,2}→1 (gold 0): mean 1
        _close(fn(proxy, gold, 2), torch.tensor(1.0, dtype=torch.float64),
               "hand example: proxy [0.1, 0.9, 0.5], gold [1, 0, 3], n = 2 gives (0 + 3 + 0)/3 = 1")
        for N in (5, 9) + ((12,) if hidden else ()):
            proxy = torch.randn(N, generator=g, dtype=torch.float64)
            gold = torch.randn(N, generator=g, dtype=torch.float64)
            for n in (1, 2, N // 2, N):
                _close(fn(proxy, gold, n), reference(proxy, gold, n), f"wrong estimate for N = {N}, n = {n}")
    proxy = torch.randn(7, generator=g, dtype=torch.float64)
    gold = torch.randn(7, generator=g, dtype=torch.float64)
    brute = [gold[max(s, key=lambda i: proxy[i])].item() for s in itertools.combinations(range(7), 3)]
    _close(fn(proxy, gold, 3), torch.tensor(sum(brute) / len(brute), dtype=torch.float64), "differs from enumeration")
    passed("check_best_of_n")


def check_noise_ceiling(fn, hidden: bool = False) -> None:
    """Exercise 8.3: ``fn(gold_a, gold_b, tau) -> float``, the best expected accuracy on Bradley–Terry labels
    with noise τ > 0 (Eq. 8.5)."""
    reference = noise_ceiling
    with _forbidding(fn, *_CEILING):
        a = torch.tensor([1.0, 0.0], dtype=torch.float64)
        b = torch.tensor([0.0, 0.0], dtype=torch.float64)
        want = (1 / (1 + math.exp(-10)) + 0.5) / 2  # τ = 0.1: σ(10) and a tie (a coin)
        got = float(fn(a, b, 0.1))
        if abs(got - (1 / (1 + math.exp(-10)) + 1 / (1 + math.exp(10))) / 2) < 1e-9:
            raise AssertionError("the predictor picks the gold's better response, so it is right with probability "
                                 "σ(|g_a − g_b|/τ), never less than 1/2: take the absolute difference.")
        assert abs(got - want) < 1e-9, f"hand example: gold [1, 0] vs [0, 0], τ = 0.1 should give {want:.6f}, got {got}"
        g = torch.Generator().manual_seed(83 if hidden else 3)
        for tau in (0.05, 0.5, 2.0):
            a, b = torch.rand(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64)
            assert abs(float(fn(a, b, tau)) - reference(a, b, tau)) < 1e-9, f"differs from Eq. (8.5) at τ = {tau}"
    passed("check_noise_ceiling")
