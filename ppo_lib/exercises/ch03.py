"""Self-checks for the exercises of chapter 03 (values and TD errors)."""

from __future__ import annotations

import numpy as np
import torch

from ..advantages import discounted_returns, td_errors
from . import passed
from .ch01 import _refuse, _resolve, _withheld

_SOLVERS = tuple(f"{lib}.{name}" for lib in ("numpy.linalg", "torch.linalg", "scipy.linalg")
                 for name in ("solve", "inv", "lstsq", "pinv")) + ("torch.linalg.solve_ex", "torch.linalg.inv_ex")


def _ragged(B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full row
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return rewards, values, mask


def check_returns(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, mask, gamma) -> (B, T)`` against Eq. (3.1)."""
    r = torch.tensor([[1.0, 0.0, 2.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, True, False]])
    out = fn(r, m, 0.5)
    assert tuple(out.shape) == (1, 4), f"expected shape (1, 4), got {tuple(out.shape)}"
    expected = torch.tensor([[1.5, 1.0, 2.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(out[m], expected[m]), (
        f"on rewards [1, 0, 2] with γ = 0.5 the returns are [1.5, 1.0, 2.0], got {out[m].tolist()}: "
        "G_t = r_t + γ G_{t+1}, going backwards from the last real token.")
    assert out[0, 3].abs() < 1e-12, "the return on a padded position must be 0."
    for seed in range(10 if hidden else 3):
        r, _, m = _ragged(4, 7, seed + (100 if hidden else 0))
        for gamma in (1.0, 0.9):
            torch.testing.assert_close(fn(r, m, gamma), discounted_returns(r, m, gamma),
                                       msg=lambda s: f"differs from Eq. (3.1) on a padded batch (γ={gamma}): {s}")
    passed("check_returns")


def check_td_errors(fn, hidden: bool = False) -> None:
    """Check ``fn(rewards, values, mask, gamma) -> (B, T)`` against Eq. (3.6)."""
    r = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 1.0, 4.0]], dtype=torch.float64)
    m = torch.tensor([[True, True, False]])
    out = fn(r, v, m, 0.9)
    assert tuple(out.shape) == (1, 3), f"expected shape (1, 3), got {tuple(out.shape)}"
    d0, d1 = float(out[0, 0]), float(out[0, 1])
    if abs(d0 + 1.4) < 1e-9:
        raise AssertionError("δ has the wrong sign: δ_t = r_t + γ V(s_{t+1}) − V(s_t).")
    assert abs(d0 - 1.4) < 1e-9, f"δ_0 = 1 + 0.9·1.0 − 0.5 = 1.4, got {d0}."
    if abs(d1 - 2.6) < 1e-9:
        raise AssertionError("δ at the last real token bootstraps from the padding: the value after the "
                             "last real token is 0 (the episode has ended).")
    assert abs(d1 + 1.0) < 1e-9, f"δ_1 = 0 + 0.9·0 − 1.0 = −1.0 (terminal), got {d1}."
    assert abs(float(out[0, 2])) < 1e-12, "δ on a padded position must be 0."
    for seed in range(10 if hidden else 3):
        r, v, m = _ragged(4, 7, seed + (100 if hidden else 0))
        torch.testing.assert_close(fn(r, v, m, 0.95), td_errors(r, v, m, 0.95),
                                   msg=lambda s: f"differs from Eq. (3.6) on a padded batch: {s}")
    passed("check_td_errors")


def _recording(dotted: str, seen: list):
    original = _resolve(dotted)

    def recorded(a, *args, **kwargs):
        seen.append(np.array(a.detach().cpu().numpy() if torch.is_tensor(a) else a, dtype=float, copy=True))
        return original(a, *args, **kwargs)
    return recorded


def check_random_walk_values(fn, hidden: bool = False) -> None:
    """Check ``fn(n_states=5) -> array of n_states`` solves the Bellman equations of the random walk exactly.

    The visible check asks for the chapter's five states A..E; the hidden tests ask for walks of 7
    and 19 states (Sutton & Barto's Example 7.1 uses 19), whose true values are i/(n+1).
    Besides the values the check looks at how they were made: while ``fn`` runs, the linear
    solvers (``solve``, ``inv``, ``lstsq``, ``pinv`` of numpy, torch and scipy) record the matrices
    they are given, and ``ppo_lib.toys.random_walk_true_values`` is withheld. The answer must have
    solved a system that couples neighbouring states (a square matrix of at least n rows with
    off-diagonal entries, as I − P is): values typed in, or read from the library, do not."""
    if fn is _resolve("ppo_lib.toys.random_walk_true_values"):
        _refuse("ppo_lib.toys.random_walk_true_values")()
    for n in ((7, 19) if hidden else (5,)):
        seen: list = []
        replacements = {name: _recording(name, seen) for name in _SOLVERS if _resolve(name) is not None}
        replacements["ppo_lib.toys.random_walk_true_values"] = _refuse("ppo_lib.toys.random_walk_true_values")
        with _withheld(fn, replacements):
            if n == 5:
                v = fn()
            else:
                try:
                    v = fn(n_states=n)
                except TypeError as e:
                    raise AssertionError(f"random_walk_values(n_states={n}) failed ({e}): the function must take "
                                         "the number of non-terminal states, n_states, with default 5.") from None
        v = np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=float).reshape(-1)
        assert v.shape == (n,), f"expected the {n} values of a walk with n_states={n}, got shape {v.shape}"
        if np.allclose(v, 0.5):
            raise AssertionError("0.5 everywhere is the initial guess, not the solution of the Bellman equations.")
        want = np.arange(1, n + 1) / (n + 1)
        assert np.allclose(v, want, atol=1e-8), (
            f"n_states={n}: got {np.round(v, 4)[:6]}...; each V(s) must equal ½·(r_left + V(left)) + "
            "½·(r_right + V(right)), with V(terminal) = 0 and reward 1 only on the step into the right terminal.")
        coupled = [a for a in seen if a.ndim == 2 and a.shape[0] == a.shape[1] >= n
                   and np.abs(a - np.diag(np.diag(a))).max() > 0]
        assert coupled, (
            f"n_states={n}: the values are right, but no linear system was solved to get them: build I − P "
            "and r̄ and solve (I − P) v = r̄ (np.linalg.solve); this exercise asks you to solve the Bellman "
            "equations, not to type in (or look up) their solution.")
    passed("check_random_walk_values")
