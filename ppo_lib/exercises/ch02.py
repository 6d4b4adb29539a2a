"""Self-checks for the exercises of chapter 02 (policy gradient)."""

from __future__ import annotations

import torch

from . import passed

__all__ = ["check_softmax_score", "check_reinforce_loss", "check_bandit_gradient"]


def check_softmax_score(softmax_score, hidden: bool = False) -> None:
    """Exercise 2.1: ``softmax_score(theta, a)``: the gradient of ``log softmax(theta)[a]`` with
    respect to ``theta``, in closed form, ``(K,), int -> (K,)``."""
    g = torch.Generator().manual_seed(21 if hidden else 1)
    for K in ([2, 5, 9] + ([1, 40] if hidden else [])):
        theta = torch.randn(K, generator=g, dtype=torch.float64)
        for a in range(K):
            t = theta.clone().requires_grad_(True)
            (want,) = torch.autograd.grad(torch.log_softmax(t, -1)[a], t)
            got = torch.as_tensor(softmax_score(theta.clone(), a), dtype=torch.float64)
            assert got.shape == (K,), f"return a ({K},) vector, got shape {tuple(got.shape)}."
            if want.abs().max() > 1e-9 and torch.allclose(got, -want):
                raise AssertionError("sign error: the score is e_a - softmax(theta), not softmax(theta) - e_a.")
            torch.testing.assert_close(got, want, msg=lambda m: f"wrong score for K={K}, a={a}.\n{m}")
    passed("softmax_score")


def check_reinforce_loss(reinforce_loss, hidden: bool = False) -> None:
    """Exercise 2.2: ``reinforce_loss(logprobs, rewards, baseline)``: a scalar loss to *minimise*
    whose gradient is minus the REINFORCE estimate, Eq. (2.8); ``logprobs (N, T)``, ``rewards (N,)``."""
    g = torch.Generator().manual_seed(22 if hidden else 2)
    for N, T, b in ([(4, 3, 0.0), (6, 5, 0.7)] + ([(1, 1, 0.0), (32, 8, -1.3)] if hidden else [])):
        logprobs = (-torch.rand(N, T, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
        rewards = torch.randn(N, generator=g, dtype=torch.float64).requires_grad_(True)
        loss = reinforce_loss(logprobs, rewards, b)
        assert torch.is_tensor(loss) and loss.dim() == 0, "return a scalar (0-dim) tensor."
        loss.backward()
        want = (-(rewards.detach() - b) / N)[:, None].expand(N, T)
        assert logprobs.grad is not None, "the loss must depend on logprobs."
        if want.abs().max() > 1e-9 and torch.allclose(logprobs.grad, -want):
            raise AssertionError("sign error: optimisers minimise, so the loss is MINUS the weighted log-probs.")
        torch.testing.assert_close(logprobs.grad, want, msg=lambda m: (
            "d loss / d logprobs[i, t] must be -(R_i - b) / N: sum the log-probs over tokens, "
            f"weight by (R - b), average over the N sequences.\n{m}"))
        assert rewards.grad is None or bool((rewards.grad == 0).all()), (
            "the rewards received a gradient: they are constants of the estimator (detach them).")
    passed("reinforce_loss")


def check_bandit_gradient(bandit_gradient, hidden: bool = False) -> None:
    """Exercise 2.3: ``bandit_gradient(theta, r)``: the exact gradient of
    ``J = sum_a softmax(theta)_a r_a``, in closed form, ``(K,), (K,) -> (K,)``."""
    g = torch.Generator().manual_seed(23 if hidden else 3)
    for K in ([2, 4, 10] + ([1, 30] if hidden else [])):
        theta = torch.randn(K, generator=g, dtype=torch.float64)
        r = torch.randn(K, generator=g, dtype=torch.float64)
        t = theta.clone().requires_grad_(True)
        (want,) = torch.autograd.grad((torch.softmax(t, -1) * r).sum(), t)
        got = torch.as_tensor(bandit_gradient(theta.clone(), r.clone()), dtype=torch.float64)
        assert got.shape == (K,), f"return a ({K},) vector, got shape {tuple(got.shape)}."
        torch.testing.assert_close(got, want, msg=lambda m: f"wrong gradient for K={K}.\n{m}")
    # adding a constant to every reward cannot change the gradient (the baseline property)
    theta = torch.randn(5, generator=g, dtype=torch.float64)
    r = torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.as_tensor(bandit_gradient(theta, r + 3.0), dtype=torch.float64),
                               torch.as_tensor(bandit_gradient(theta, r), dtype=torch.float64),
                               msg="adding 3 to every reward must leave the gradient unchanged.")
    passed("bandit_gradient")
