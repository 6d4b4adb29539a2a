"""Self-checks for the exercises of chapter 05 (PPO's clipped objective)."""

from __future__ import annotations

import torch

from ..kl import kl_estimate
from ..losses import ppo_clip_loss, value_loss
from . import passed
from .ch03 import _ragged


def check_ppo_clip_loss(fn, hidden: bool = False) -> None:
    """Check ``fn(logprobs, old_logprobs, advantages, mask, clip_eps) -> scalar loss`` against Eq. (5.7)."""
    old = torch.zeros(1, 3, dtype=torch.float64)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.5]], dtype=torch.float64))
    A = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.bool)
    loss = fn(new, old, A, m, 0.2)
    loss = loss[0] if isinstance(loss, tuple) else loss
    val = float(loss.detach())
    if abs(val - 0.3) < 1e-9:
        raise AssertionError("sign error: return the loss to minimise, the negated objective −mean(min(ρA, clip(ρ)A)).")
    if abs(val + 1.0 / 3.0) < 1e-9 or abs(val + 0.4) < 1e-9:
        raise AssertionError("ratios 1.5, 0.5, 0.5 with A = 1, 1, −1: the objective terms are 1.2, 0.5, −0.8 "
                             "(min of the clipped and unclipped terms, not max, and clip the ratio, not A).")
    assert abs(val + 0.3) < 1e-9, f"hand example: expected loss −0.3, got {val:.4f}."
    for seed in range(10 if hidden else 3):
        lp, A, m = _ragged(4, 6, seed + (300 if hidden else 0))
        old = lp + 0.3 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(seed), dtype=lp.dtype)
        lp = lp.clone().requires_grad_(True)
        loss = fn(lp, old, A, m, 0.2)
        loss = loss[0] if isinstance(loss, tuple) else loss
        ref, _ = ppo_clip_loss(lp, old, A, m, 0.2)
        assert abs(float(loss.detach()) - float(ref.detach())) < 1e-8, "differs from Eq. (5.7) on a padded batch: average over real tokens only."
        g, = torch.autograd.grad(loss, lp)
        g_ref, = torch.autograd.grad(ref, lp)
        assert torch.allclose(g, g_ref, atol=1e-10), "value right but gradient wrong: do not detach logprobs."
    passed("check_ppo_clip_loss")


def check_value_loss(fn, hidden: bool = False) -> None:
    """Check ``fn(values, old_values, returns, mask, clip_eps) -> scalar`` against Eq. (5.10)."""
    for seed in range(10 if hidden else 3):
        v, R, m = _ragged(4, 6, seed + (400 if hidden else 0))
        old = v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed), dtype=v.dtype)
        v = v.clone().requires_grad_(True)
        loss = fn(v, old, R, m, 0.2)
        loss = loss[0] if isinstance(loss, tuple) else loss
        ref, _ = value_loss(v, old, R, m, 0.2)
        if abs(float(loss.detach()) - 0.5 * float(((v.detach() - R) ** 2)[m].mean())) < 1e-9:
            raise AssertionError("this is the unclipped loss: take the max of the unclipped and clipped errors.")
        assert abs(float(loss.detach()) - float(ref.detach())) < 1e-8, (
            "differs from Eq. (5.10): ½·mean over real tokens of max((V−R̂)², (V_old + clip(V−V_old, −ε, ε) − R̂)²).")
        g, = torch.autograd.grad(loss, v)
        g_ref, = torch.autograd.grad(ref, v)
        assert torch.allclose(g, g_ref, atol=1e-10), "value right but gradient wrong."
    passed("check_value_loss")


def check_kl_k3(fn, hidden: bool = False) -> None:
    """Check ``fn(logprobs, ref_logprobs) -> per-token k3 estimate`` of KL(π‖π_ref), Eq. (5.12).

    The hidden tests take π and π_ref close together (log-ratios of 1e-6, as after a few PPO
    steps), where k3 ≈ (log r)²/2 ≈ 5e-13 and ``exp(log r) − 1`` loses it to rounding: they ask
    for a relative error below 1e-6, which ``torch.expm1`` gives and ``torch.exp(...) − 1`` does not."""
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    out = fn(lp, ref)
    assert bool((out >= -1e-12).all()), "k3 = (r − 1) − log r with r = π_ref/π is never negative."
    torch.testing.assert_close(out, kl_estimate(lp, ref, "k3"),
                               msg=lambda s: f"r = exp(ref_logprobs − logprobs), not its inverse: {s}")
    # unbiased: the mean over samples from π approaches the exact KL
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    a = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = fn(p.log()[a][None], q.log()[a][None]).mean().item()
    exact = (p * (p / q).log()).sum().item()
    assert abs(est - exact) < 0.02, f"the sample mean {est:.4f} should estimate KL(π‖π_ref) = {exact:.4f}."
    if hidden:
        log_r = torch.tensor([[1e-6, -1e-6, 3e-7, -2e-8, 0.0]], dtype=torch.float64)
        lp = torch.randn(1, 5, generator=g, dtype=torch.float64)
        out = torch.as_tensor(fn(lp, lp + log_r), dtype=torch.float64)
        want = kl_estimate(lp, lp + log_r, "k3")
        rel = ((out - want).abs() / want.clamp_min(1e-300)).max().item()
        assert rel < 1e-6 and out[0, -1].abs().item() < 1e-30, (
            f"with π close to π_ref (log-ratios ~1e-6) your k3 is off by a relative {rel:.1e}: exp(x) − 1 "
            "cancels near x = 0; compute r − 1 as torch.expm1(log r).")
    passed("check_kl_k3")
