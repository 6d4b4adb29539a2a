"""Self-checks for the exercises of chapter 07 (engineering PPO for LLMs)."""

from __future__ import annotations

import math

import torch

from ..schedules import lr_factor
from . import passed


def check_adam_step(fn, hidden: bool = False) -> None:
    """Check ``fn(param, grad, m, v, t, lr, beta1, beta2, eps) -> (param, m, v)``, one Adam step
    (Eq. 7.3–7.5; ``t`` counts from 1), against ``torch.optim.Adam`` over several steps."""
    p = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([0.5, -1e-4], dtype=torch.float64)
    out = fn(p.clone(), g, torch.zeros_like(p), torch.zeros_like(p), 1, 0.1, 0.9, 0.999, 1e-8)
    assert isinstance(out, tuple) and len(out) == 3, "return (new_param, new_m, new_v)."
    new_p, m, v = out
    torch.testing.assert_close(m, 0.1 * g, msg=lambda s: f"m_1 = (1 − β1)·g = 0.1·g. {s}")
    torch.testing.assert_close(v, 0.001 * g**2, msg=lambda s: f"v_1 = (1 − β2)·g² = 0.001·g². {s}")
    step = p - new_p
    if torch.allclose(step, 0.1 * 0.1 * g / (0.001**0.5 * g.abs() + 1e-8), atol=1e-9):
        raise AssertionError("no bias correction: divide m by (1 − β1^t) and v by (1 − β2^t).")
    torch.testing.assert_close(step, torch.tensor([0.1, -0.1], dtype=torch.float64), atol=1e-4, rtol=0,
                               msg=lambda s: "the first bias-corrected step is lr·g/|g| = ±lr whatever |g| "
                               f"(here 0.5 and 1e-4 both move by 0.1). {s}")
    gen = torch.Generator().manual_seed(7 if hidden else 0)
    for trial in range(3 if hidden else 1):
        w = torch.randn(5, generator=gen, dtype=torch.float64)
        ref = w.clone().requires_grad_(True)
        opt = torch.optim.Adam([ref], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
        mine, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
        for t in range(1, 6):
            grad = torch.randn(5, generator=gen, dtype=torch.float64)
            ref.grad = grad.clone()
            opt.step()
            mine, m, v = fn(mine, grad, m, v, t, 0.01, 0.8, 0.99, 1e-6)
        torch.testing.assert_close(mine, ref.detach(), msg=lambda s: f"differs from torch.optim.Adam after 5 steps. {s}")
    passed("adam_step")


def check_accumulation_weights(fn, hidden: bool = False) -> None:
    """Check ``fn(micro_masks) -> list of weights``: weighting each micro-batch's token-mean loss
    so that the sum is the full minibatch's token mean (Eq. 7.8)."""
    masks = [torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool),
             torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)]  # 5 and 6 tokens
    w = [float(x) for x in fn(masks)]
    if all(abs(x - 0.5) < 1e-12 for x in w):
        raise AssertionError("equal weights are the naive per-micro-batch mean: a micro-batch of 5 tokens and one "
                             "of 6 must weigh 5/11 and 6/11.")
    assert len(w) == 2 and all(abs(a - b) < 1e-12 for a, b in zip(w, [5 / 11, 6 / 11])), \
        f"expected [5/11, 6/11] for micro-batches of 5 and 6 tokens, got {w}."
    gen = torch.Generator().manual_seed(3 if hidden else 0)
    for _ in range(5 if hidden else 2):
        k = int(torch.randint(2, 5, (1,), generator=gen))
        lengths = torch.randint(1, 7, (4 * k,), generator=gen)
        full = torch.arange(6)[None, :] < lengths[:, None]  # (4k, 6)
        losses = torch.randn(4 * k, 6, generator=gen, dtype=torch.float64)
        micro = list(full.split(4))
        w = fn(micro)
        accumulated = sum(float(wi) * float(losses[i * 4:(i + 1) * 4][mi].mean()) for i, (wi, mi) in enumerate(zip(w, micro)))
        assert math.isclose(accumulated, float(losses[full].mean()), rel_tol=1e-10), \
            "Σ w_i · (token mean of micro-batch i) must equal the token mean of the whole minibatch."
    passed("accumulation_weights")


def check_lr_schedule(fn, hidden: bool = False) -> None:
    """Check ``fn(update, schedule, warmup, total) -> factor`` (Eq. 7.6) against hand values."""
    hand = {("constant", 0): 0.25, ("constant", 3): 1.0, ("constant", 9): 1.0,
            ("linear", 0): 0.25, ("linear", 4): 1.0, ("linear", 8): 0.5, ("linear", 12): 0.0,
            ("cosine", 8): 0.5, ("cosine", 6): 0.5 * (1 + math.cos(math.pi / 4)), ("cosine", 12): 0.0}
    for (schedule, u), expected in hand.items():
        got = float(fn(u, schedule, 4, 12))
        if u == 0 and abs(got) < 1e-12:
            raise AssertionError("the first warm-up update runs at η/W, never at 0 (an update at η = 0 is wasted).")
        assert abs(got - expected) < 1e-9, f"{schedule}, W = 4, U = 12, update {u}: expected {expected:.4f}, got {got:.4f}."
    cases = [(u, s, w, n) for s in ("constant", "linear", "cosine") for w in (0, 3) for n in (10, 25)
             for u in range(0, n + 2, 1 if hidden else 4)]
    for u, s, w, n in cases:
        assert abs(float(fn(u, s, w, n)) - lr_factor(u, s, w, n)) < 1e-9, f"{s}, W = {w}, U = {n}, update {u}."
    passed("lr_schedule")
