"""Exercise checks refuse the shortcuts that used to pass (issue 14): an answer that calls the
library function it should reimplement, a typed-in result, autograd where a closed form is asked;
the real solution still passes, and every patched function is restored afterwards."""

import numpy as np
import pytest
import torch

import ppo_lib.advantages as advantages
import ppo_lib.losses as losses
import ppo_lib.toys as toys
from ppo_lib.advantages import gae, gae_reference
from ppo_lib.exercises.ch01 import check_entropy_at_temperature, check_kl_exact
from ppo_lib.exercises.ch02 import check_bandit_gradient, check_softmax_score
from ppo_lib.exercises.ch03 import check_random_walk_values
from ppo_lib.exercises.ch04 import check_gae, check_lambda_returns
from ppo_lib.losses import entropy_from_logits
from ppo_lib.toys import random_walk_true_values

YOURSELF = "the library function this exercise asks you to write yourself"
CLOSED_FORM = "this exercise asks for the closed form, not autograd"
ORIGINALS = {"gae": gae, "gae_reference": gae_reference, "entropy_from_logits": entropy_from_logits,
             "random_walk_true_values": random_walk_true_values, "grad": torch.autograd.grad,
             "backward": torch.Tensor.backward, "func_grad": torch.func.grad, "solve": np.linalg.solve}


@pytest.fixture(autouse=True)
def restored():
    """Whatever a check does, the library is the same afterwards (here and in its modules)."""
    yield
    now = {"gae": advantages.gae, "gae_reference": advantages.gae_reference,
           "entropy_from_logits": losses.entropy_from_logits,
           "random_walk_true_values": toys.random_walk_true_values, "grad": torch.autograd.grad,
           "backward": torch.Tensor.backward, "func_grad": torch.func.grad, "solve": np.linalg.solve}
    assert now == ORIGINALS
    assert globals()["gae"] is ORIGINALS["gae"] and globals()["entropy_from_logits"] is ORIGINALS["entropy_from_logits"]


# ---------------------------------------------------------------- 1.2 entropy at a temperature
def _entropy_at_temperature(logits, tau):
    logp = torch.log_softmax(logits / tau, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def test_entropy_solution_passes():
    check_entropy_at_temperature(_entropy_at_temperature)
    check_entropy_at_temperature(_entropy_at_temperature, hidden=True)


@pytest.mark.parametrize("shortcut", [
    lambda logits, tau: entropy_from_logits(logits / tau),          # the imported name
    lambda logits, tau: losses.entropy_from_logits(logits / tau),   # through the module
])
def test_entropy_refuses_the_library(shortcut):
    with pytest.raises(AssertionError, match=f"entropy_from_logits, {YOURSELF}"):
        check_entropy_at_temperature(shortcut)


# ---------------------------------------------------------------- 1.3 exact KL, and its second part
def _kl_exact(logits_p, logits_q):
    logp, logq = torch.log_softmax(logits_p, dim=-1), torch.log_softmax(logits_q, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def test_kl_solution_passes_and_the_temperature_is_checked():
    check_kl_exact(_kl_exact)
    check_kl_exact(_kl_exact, hidden=True)
    z = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    taus = torch.linspace(0.05, 1.0, 951, dtype=torch.float64)
    kls = _kl_exact(z[None] / taus[:, None], z[None].expand(len(taus), -1))
    tau = float(taus[(kls - 1).abs().argmin()])
    check_kl_exact(_kl_exact, logits=z, tau=tau)
    with pytest.raises(AssertionError, match="reaches 1 nat at τ ≈"):
        check_kl_exact(_kl_exact, logits=z, tau=tau + 0.05)
    with pytest.raises(TypeError, match="both"):
        check_kl_exact(_kl_exact, logits=z)


def test_kl_second_part_needs_a_batch_over_temperatures():
    def flattens(logits_p, logits_q):  # right on one distribution, sums over the batch of temperatures too
        return _kl_exact(logits_p, logits_q).sum() if logits_p.dim() == 2 and logits_p.shape[0] > 50 \
            else _kl_exact(logits_p, logits_q)
    with pytest.raises(AssertionError, match="KL\\(π_τ ‖ π_1\\) over a batch"):
        check_kl_exact(flattens)


# ---------------------------------------------------------------- 2.1 / 2.3 closed forms
def _softmax_score(theta, a):
    return torch.nn.functional.one_hot(torch.tensor(a), theta.shape[0]).to(theta.dtype) - torch.softmax(theta, -1)


def _bandit_gradient(theta, r):
    p = torch.softmax(theta, -1)
    return p * (r - (p * r).sum())


def test_closed_forms_pass():
    check_softmax_score(_softmax_score)
    check_softmax_score(_softmax_score, hidden=True)
    check_bandit_gradient(_bandit_gradient)
    check_bandit_gradient(_bandit_gradient, hidden=True)


def _score_grad(theta, a):
    t = theta.clone().requires_grad_(True)
    return torch.autograd.grad(torch.log_softmax(t, -1)[a], t)[0]


def _score_backward(theta, a):
    with torch.enable_grad():  # an answer that turns grad back on still cannot call backward
        t = theta.clone().requires_grad_(True)
        torch.log_softmax(t, -1)[a].backward()
        return t.grad


def _score_func(theta, a):
    return torch.func.grad(lambda t: torch.log_softmax(t, -1)[a])(theta)


def _bandit_grad(theta, r):
    t = theta.clone().requires_grad_(True)
    return torch.autograd.grad((torch.softmax(t, -1) * r).sum(), t)[0]


def _bandit_backward(theta, r):
    t = theta.clone().requires_grad_(True)
    (torch.softmax(t, -1) * r).sum().backward()
    return t.grad


@pytest.mark.parametrize("check, shortcut", [
    (check_softmax_score, _score_grad), (check_softmax_score, _score_backward),
    (check_softmax_score, _score_func), (check_bandit_gradient, _bandit_grad),
    (check_bandit_gradient, _bandit_backward),
])
def test_autograd_is_refused(check, shortcut):
    with pytest.raises(AssertionError, match=CLOSED_FORM):
        check(shortcut)
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- 3.3 the random walk by a linear system
def _random_walk_values():
    P = np.zeros((5, 5))
    for i in range(5):
        if i > 0:
            P[i, i - 1] = 0.5
        if i < 4:
            P[i, i + 1] = 0.5
    r_bar = np.array([0.0, 0.0, 0.0, 0.0, 0.5])
    return np.linalg.solve(np.eye(5) - P, r_bar)


def _random_walk_values_torch():
    half = torch.full((4,), 0.5, dtype=torch.float64)
    P = torch.diag(half, 1) + torch.diag(half, -1)
    return torch.linalg.inv(torch.eye(5, dtype=torch.float64) - P) @ torch.tensor([0, 0, 0, 0, 0.5], dtype=torch.float64)


@pytest.mark.parametrize("solution", [_random_walk_values, _random_walk_values_torch])
def test_random_walk_solution_passes(solution):
    check_random_walk_values(solution)


def _random_walk_values_any_size(n_states=5):
    half = np.full(n_states - 1, 0.5)
    r_bar = np.zeros(n_states)
    r_bar[-1] = 0.5
    return np.linalg.solve(np.eye(n_states) - np.diag(half, 1) - np.diag(half, -1), r_bar)


def test_random_walk_hidden_tests_ask_for_other_sizes():
    check_random_walk_values(_random_walk_values_any_size, hidden=True)
    with pytest.raises(AssertionError, match="must take the number of non-terminal states"):
        check_random_walk_values(_random_walk_values, hidden=True)  # right for 5 states only
    with pytest.raises(AssertionError, match="no linear system was solved"):  # the pattern, typed in
        check_random_walk_values(lambda n_states=5: np.arange(1, n_states + 1) / (n_states + 1), hidden=True)
    with pytest.raises(AssertionError, match="n_states=19"):  # solved, but for a fixed system of 7
        check_random_walk_values(lambda n_states=5: _random_walk_values_any_size(min(n_states, 7)), hidden=True)


def test_random_walk_refuses_typed_in_values():
    with pytest.raises(AssertionError, match="no linear system was solved"):
        check_random_walk_values(lambda: np.arange(1, 6) / 6)
    with pytest.raises(AssertionError, match="no linear system was solved"):  # a "system" with nothing to solve
        check_random_walk_values(lambda: np.linalg.solve(np.eye(5), np.arange(1, 6) / 6))
    with pytest.raises(AssertionError, match=f"random_walk_true_values, {YOURSELF}"):
        check_random_walk_values(lambda: random_walk_true_values())
    with pytest.raises(AssertionError, match="initial guess"):
        check_random_walk_values(lambda: np.full(5, 0.5))


# ---------------------------------------------------------------- 4.1 / 4.2 GAE and λ-returns
def _lambda_returns(rewards, values, mask, gamma, lam):
    m = mask.to(values.dtype)
    G = torch.zeros_like(values)
    next_G = torch.zeros(values.shape[0], dtype=values.dtype)
    next_V = torch.zeros(values.shape[0], dtype=values.dtype)
    for t in reversed(range(values.shape[1])):
        G[:, t] = (rewards[:, t] + gamma * ((1 - lam) * next_V + lam * next_G)) * m[:, t]
        next_G, next_V = G[:, t], values[:, t] * m[:, t]
    return G


def test_lambda_returns_solution_passes():
    check_lambda_returns(_lambda_returns)
    check_lambda_returns(_lambda_returns, hidden=True)


@pytest.mark.parametrize("shortcut, name", [
    (lambda r, v, m, g, l: gae(r, v, m, g, l)[1], "gae"),
    (lambda r, v, m, g, l: advantages.gae(r, v, m, g, l)[1], "gae"),
    (lambda r, v, m, g, l: gae_reference(r, v, m, g, l)[1], "gae_reference"),
])
def test_lambda_returns_refuses_the_library(shortcut, name):
    with pytest.raises(AssertionError, match=f"ppo_lib.advantages.{name}, {YOURSELF}"):
        check_lambda_returns(shortcut)


def test_lambda_returns_recursion_level_checks():
    def bootstraps_own_value(r, v, m, g, l):  # G_t = r_t + γ V(s_t)-ish: wrong on a single step
        return _lambda_returns(r, v, m, g, l) + g * v * m
    with pytest.raises(AssertionError, match="single step"):
        check_lambda_returns(bootstraps_own_value)

    def ignores_lambda(r, v, m, g, l):  # always the Monte-Carlo return
        return _lambda_returns(r, v, m, g, 1.0)
    with pytest.raises(AssertionError, match="λ = 0"):
        check_lambda_returns(ignores_lambda)

    def ignores_mask(r, v, m, g, l):  # runs over the padding as if it were real
        return _lambda_returns(r, v, torch.ones_like(m), g, l)
    with pytest.raises(AssertionError):
        check_lambda_returns(ignores_mask)


def test_gae_refuses_the_library():
    with pytest.raises(AssertionError, match=f"ppo_lib.advantages.gae, {YOURSELF}"):
        check_gae(lambda r, v, m, g, l: gae(r, v, m, g, l))


# ---------------------------------------------------------------- hidden tests of 4.3, 5.3, 6.3
def _whiten(x, mask):
    real = x[mask]
    out = (x - real.mean()) / torch.sqrt(real.var() + 1e-8)
    return torch.where(mask, out, torch.zeros_like(out))


def test_whiten_hidden_tests_catch_lost_precision():
    from ppo_lib.exercises.ch04 import check_whiten

    check_whiten(_whiten)
    check_whiten(_whiten, hidden=True)

    def in_float32(x, mask):  # right to ~1e-7 relative: enough near 0, not for values near 1e3
        return _whiten(x.float(), mask).double()
    check_whiten(in_float32)
    with pytest.raises(AssertionError):
        check_whiten(in_float32, hidden=True)


def test_k3_hidden_tests_ask_for_expm1():
    from ppo_lib.exercises.ch05 import check_kl_k3

    def with_expm1(logprobs, ref_logprobs):
        log_r = ref_logprobs - logprobs
        return torch.expm1(log_r) - log_r

    def with_exp(logprobs, ref_logprobs):
        log_r = ref_logprobs - logprobs
        return torch.exp(log_r) - 1 - log_r
    check_kl_k3(with_expm1, hidden=True)
    check_kl_k3(with_exp)  # the visible check cannot tell them apart
    with pytest.raises(AssertionError, match="expm1"):
        check_kl_k3(with_exp, hidden=True)


def test_explained_variance_hidden_tests_pass_the_solution_only():
    from ppo_lib.exercises.ch06 import check_explained_variance

    check_explained_variance(lambda v, R, m: float(1 - (R - v)[m].var() / R[m].var()), hidden=True)
    with pytest.raises(AssertionError):  # padding counted
        check_explained_variance(lambda v, R, m: float(1 - (R - v).var() / R.var()), hidden=True)
