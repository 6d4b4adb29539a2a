"""Self-checks for the exercises of chapter 02 (policy gradient)."""

from __future__ import annotations

import torch

from . import passed
from .ch01 import _refuse, _withheld

CLOSED_FORM = "this exercise asks for the closed form, not autograd"
_AUTOGRAD = ("torch.autograd.grad", "torch.autograd.backward", "torch.autograd.functional.jacobian",
             "torch.autograd.functional.vjp", "torch.autograd.functional.jvp", "torch.func.grad",
             "torch.func.grad_and_value", "torch.func.vjp", "torch.func.jvp", "torch.func.jacrev",
             "torch.func.jacfwd")


def _closed_form(fn, calls):
    """``[fn(*args) for args in calls]`` under ``torch.no_grad()`` on inputs that do not require
    grad, with the autograd entry points withheld: an answer that differentiates fails with
    ``CLOSED_FORM``."""
    calls = [tuple(a.detach() if torch.is_tensor(a) else a for a in args) for args in calls]
    backward = torch.Tensor.backward
    try:
        with torch.no_grad(), _withheld(fn, {name: _refuse(name, CLOSED_FORM) for name in _AUTOGRAD}):
            torch.Tensor.backward = _refuse("Tensor.backward", CLOSED_FORM)
            return [fn(*args) for args in calls]
    except RuntimeError as error:
        if "grad" in str(error):
            raise AssertionError(f"{CLOSED_FORM} (the answer ran into: {error}).") from error
        raise
    finally:
        torch.Tensor.backward = backward

__all__ = ["check_softmax_score", "check_reinforce_loss", "check_bandit_gradient"]


def check_softmax_score(softmax_score, hidden: bool = False) -> None:
    """Exercise 2.1: ``softmax_score(theta, a)``: the gradient of ``log softmax(theta)[a]`` with
    respect to ``theta``, in closed form, ``(K,), int -> (K,)``."""
    g = torch.Generator().manual_seed(21 if hidden else 1)
    cases = []
    for K in ([2, 5, 9] + ([1, 40] if hidden else [])):
        theta = torch.randn(K, generator=g, dtype=torch.float64)
        for a in range(K):
            t = theta.clone().requires_grad_(True)
            (want,) = torch.autograd.grad(torch.log_softmax(t, -1)[a], t)
            cases.append((K, a, theta, want))
    answers = _closed_form(softmax_score, [(theta.clone(), a) for _, a, theta, _ in cases])
    for (K, a, theta, want), got in zip(cases, answers):
        got = torch.as_tensor(got, dtype=torch.float64)
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
        (got,) = _closed_form(bandit_gradient, [(theta.clone(), r.clone())])
        got = torch.as_tensor(got, dtype=torch.float64)
        assert got.shape == (K,), f"return a ({K},) vector, got shape {tuple(got.shape)}."
        torch.testing.assert_close(got, want, msg=lambda m: f"wrong gradient for K={K}.\n{m}")
    # adding a constant to every reward cannot change the gradient (the baseline property)
    theta = torch.randn(5, generator=g, dtype=torch.float64)
    r = torch.randn(5, generator=g, dtype=torch.float64)
    shifted, plain = _closed_form(bandit_gradient, [(theta, r + 3.0), (theta, r)])
    torch.testing.assert_close(torch.as_tensor(shifted, dtype=torch.float64), torch.as_tensor(plain, dtype=torch.float64),
                               msg="adding 3 to every reward must leave the gradient unchanged.")
    passed("bandit_gradient")
