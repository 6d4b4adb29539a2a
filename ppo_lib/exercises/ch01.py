"""Self-checks for the exercises of chapter 01 (a language model is a policy)."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager

import torch

from ..losses import entropy_from_logits
from ..rollout import logprobs_from_logits
from . import passed

__all__ = ["check_sequence_logprob", "check_entropy_at_temperature", "check_kl_exact"]


def _resolve(dotted: str):
    """The function ``module.name``, or None when its module is not imported (nothing is imported
    here: an answer cannot call what no module holds)."""
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(sys.modules.get(module_name), attribute, None)


@contextmanager
def _withheld(answer, replacements: dict):
    """While the block runs, each library function in ``replacements`` (``dotted name -> the
    function to put in its place``) is replaced wherever a module, or the globals of the reader's
    ``answer``, holds it; all restored in ``finally``. The checkers use it to make the library
    function an exercise reimplements raise while the reader's answer runs (as the classroom
    grader's tripwires do). The caller keeps its own reference to the originals."""
    swaps = {}
    for dotted, new in replacements.items():
        old = _resolve(dotted)
        if callable(old):
            swaps[id(old)] = (old, new)
    namespaces = [getattr(module, "__dict__", None) for module in list(sys.modules.values())]
    namespaces.append(getattr(answer, "__globals__", None))
    undo = []
    try:
        for namespace in namespaces:
            if type(namespace) is not dict:
                continue
            for key, value in list(namespace.items()):
                swap = swaps.get(id(value))
                if swap is not None and swap[0] is value:
                    namespace[key] = swap[1]
                    undo.append((namespace, key, value))
        yield
    finally:
        for namespace, key, value in reversed(undo):
            namespace[key] = value


def _refuse(dotted: str, why: str = "the library function this exercise asks you to write yourself"):
    def refused(*args, **kwargs):
        raise AssertionError(f"the answer calls {dotted}, {why}.")
    return refused


def _forbidding(answer, *dotted: str):
    """``_withheld`` with each of ``dotted`` raising "the answer calls ..., the library function
    this exercise asks you to write yourself" (the classroom grader's words)."""
    return _withheld(answer, {name: _refuse(name) for name in dotted})


def _close(got, want, msg: str) -> None:
    got = torch.as_tensor(got, dtype=want.dtype)
    assert got.shape == want.shape, f"{msg}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}."
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{msg}\n{m}")


def check_sequence_logprob(sequence_logprob, hidden: bool = False) -> None:
    """Exercise 1.1: ``sequence_logprob(logits, ids, P)`` with ``logits (L, V)`` of one forward pass
    over ``ids (L,)``; returns the log-probability of the response ``ids[P:]`` given the prompt
    ``ids[:P]``, Eq. (1.2)."""
    g = torch.Generator().manual_seed(11 if hidden else 1)
    cases = [(7, 5, 3), (4, 9, 1), (12, 30, 6)] + ([(2, 3, 1), (20, 50, 19)] if hidden else [])
    for L, V, P in cases:
        logits = torch.randn(L, V, generator=g, dtype=torch.float64) * 2
        ids = torch.randint(V, (L,), generator=g)
        want = logprobs_from_logits(logits[None, P - 1 : -1], ids[None, P:]).sum().to(torch.float64)
        got = sequence_logprob(logits, ids, P)
        shifted = torch.log_softmax(logits, -1)[torch.arange(P, L), ids[P:]].sum()
        if not torch.isclose(torch.as_tensor(got, dtype=torch.float64), want) and torch.isclose(
                torch.as_tensor(got, dtype=torch.float64), shifted):
            raise AssertionError("off by one: the logits at position i predict token i+1, so token t is scored "
                                 "with logits[t - 1].")
        _close(got, want, f"wrong sequence log-prob for L={L}, V={V}, P={P}")
    passed("sequence_logprob")


def check_entropy_at_temperature(entropy_at_temperature, hidden: bool = False) -> None:
    """Exercise 1.2: ``entropy_at_temperature(logits, tau)``: entropy in nats of softmax(logits / tau),
    over the last dimension, ``(..., V) -> (...)``."""
    g = torch.Generator().manual_seed(12 if hidden else 2)
    logits = torch.randn(3, 4, 10, generator=g, dtype=torch.float64) * 3
    taus = [0.3, 1.0, 2.5] + ([0.05, 7.0] if hidden else [])
    reference = entropy_from_logits  # kept: the name is withheld from the answer below
    want = {tau: reference(logits / tau) for tau in taus}
    z = torch.tensor([3.0, 1.0, 0.0, -2.0], dtype=torch.float64)
    with _forbidding(entropy_at_temperature, "ppo_lib.losses.entropy_from_logits"):
        for tau in taus:
            _close(entropy_at_temperature(logits, tau), want[tau],
                   f"wrong entropy at tau={tau} (divide the logits by tau before the softmax)")
        assert float(entropy_at_temperature(z, 1e-3)) < 1e-6, "as tau -> 0 the policy becomes greedy: entropy -> 0."
        assert abs(float(entropy_at_temperature(z, 1e4)) - math.log(4)) < 1e-3, \
            "as tau -> infinity the policy becomes uniform: entropy -> log V."
    passed("entropy_at_temperature")


def _tau_at_one_nat(logits: torch.Tensor) -> float:
    """The τ < 1 at which KL(softmax(logits / τ) || softmax(logits)) = 1 nat, by bisection
    (the KL decreases in τ on (0, 1] and is 0 at τ = 1)."""
    lq = torch.log_softmax(logits.to(torch.float64), -1)

    def kl(tau):
        lp = torch.log_softmax(logits.to(torch.float64) / tau, -1)
        return float((lp.exp() * (lp - lq)).sum(-1))

    lo, hi = 1e-3, 1.0
    if kl(lo) < 1.0:
        raise ValueError("KL(π_τ ‖ π_1) stays below 1 nat for every τ in (0, 1) with these logits.")
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(mid) > 1.0 else (lo, mid)
    return (lo + hi) / 2


def check_kl_exact(kl_exact, hidden: bool = False, *, logits=None, tau=None) -> None:
    """Exercise 1.3: ``kl_exact(logits_p, logits_q)``: exact KL(p || q) of the two softmax
    distributions over the last dimension, ``(..., V), (..., V) -> (...)``.

    Its second part, finding the τ < 1 at which KL(π_τ ‖ π_1) reaches 1 nat, is checked on
    logits of the check's own by a sweep over τ done with ``kl_exact``, as in the chapter; give
    ``logits`` and the ``tau`` found for them to check that value as well."""
    g = torch.Generator().manual_seed(13 if hidden else 3)
    shapes = [(5,), (2, 6), (3, 4, 8)] + ([(1, 100)] if hidden else [])
    for shape in shapes:
        zp = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        zq = torch.randn(shape, generator=g, dtype=torch.float64)
        lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
        want = (lp.exp() * (lp - lq)).sum(-1)
        got = torch.as_tensor(kl_exact(zp, zq), dtype=torch.float64)
        reverse = (lq.exp() * (lq - lp)).sum(-1)
        if got.shape == want.shape and torch.allclose(got, reverse) and not torch.allclose(got, want):
            raise AssertionError("you computed KL(q || p): the expectation is under p, the first argument.")
        _close(got, want, f"wrong KL for shape {shape}")
    z = torch.randn(4, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(torch.as_tensor(kl_exact(z, z + 5.0), dtype=torch.float64), torch.zeros(4, dtype=torch.float64), atol=1e-9), \
        "KL(p || p) must be 0 (adding a constant to all logits does not change a softmax)."
    # second part: KL(π_τ ‖ π_1) against τ, one batch of temperatures, as the chapter does it
    z = torch.randn(50, generator=g, dtype=torch.float64)
    taus = torch.linspace(0.05, 1.0, 191, dtype=torch.float64)
    kls = torch.as_tensor(kl_exact(z[None] / taus[:, None], z[None].expand(len(taus), -1)), dtype=torch.float64)
    assert kls.shape == taus.shape, (
        f"KL(π_τ ‖ π_1) over a batch of {len(taus)} temperatures: expected shape {tuple(taus.shape)}, "
        f"got {tuple(kls.shape)} (reduce over the last dimension only).")
    assert abs(float(kls[-1])) < 1e-9, "KL(π_τ ‖ π_1) must be 0 at τ = 1."
    assert bool((kls[1:] <= kls[:-1] + 1e-9).all()), (
        "KL(π_τ ‖ π_1) must decrease as τ rises to 1 (π_τ moves back towards π_1).")
    step = float(taus[1] - taus[0])
    found, want_tau = float(taus[(kls - 1).abs().argmin()]), _tau_at_one_nat(z)
    assert abs(found - want_tau) <= step, (
        f"the sweep over τ finds KL = 1 nat at τ ≈ {found:.3f}; it is at τ ≈ {want_tau:.3f}.")
    if (logits is None) != (tau is None):
        raise TypeError("give both logits and tau (the τ you found for them), or neither.")
    if logits is not None:
        logits = torch.as_tensor(logits, dtype=torch.float64)
        want_tau = _tau_at_one_nat(logits)
        assert 0 < float(tau) < 1 and abs(float(tau) - want_tau) <= 0.01, (
            f"KL(π_τ ‖ π_1) reaches 1 nat at τ ≈ {want_tau:.3f} for these logits, not at τ = {float(tau):.3f}.")
    passed("kl_exact")
