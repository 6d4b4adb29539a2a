"""Figures of chapter 05, "PPO's clipped objective"."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..kl import KL_KINDS, kl_estimate
from ..toys import adaptive_kl_simulation, bandit_many_batches_per_seed, bandit_one_batch_per_seed  # noqa: F401 (re-exported)
from . import figure

__all__ = ["kl_estimator_spread", "bandit_one_batch_per_seed", "bandit_many_batches_per_seed", "mean_and_se"]


def mean_and_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis (the seeds)."""
    x = np.asarray(x)
    return x.mean(-1), x.std(-1, ddof=1) / np.sqrt(x.shape[-1])


def kl_estimator_spread(tau: float, n_actions: int = 8, n_samples: int = 10_000, n_batches: int = 20,
                        seed: int = 0) -> dict:
    r"""Spread of the one-sample KL estimators k1, k2, k3 (Eq. 5.12) at one distance between two policies.

    The reference is :math:`\pi_{ref} = \mathrm{softmax}(z)` over ``n_actions`` actions, with
    :math:`z = 1.5\,\varepsilon`, :math:`\varepsilon \sim N(0, I)` drawn from ``seed``; the policy is
    :math:`\pi_\tau = \mathrm{softmax}(z/\tau)`, sharper than the reference for :math:`\tau < 1` and
    flatter for :math:`\tau > 1`. Everything is float64.

    Returns:
        dict with ``kl`` (exact :math:`\mathrm{KL}(\pi_\tau\|\pi_{ref})`), ``exact_std`` (per kind, by
        enumerating the actions), ``measured_std`` and ``measured_se`` (per kind: the mean and the
        standard error over ``n_batches`` batches of ``n_samples`` draws from :math:`\pi_\tau` of the
        sample standard deviation), ``var_r`` and ``cov_r_logr`` (exact :math:`\mathrm{Var}[r]` and
        :math:`\mathrm{Cov}[r, \log r]`, :math:`r = \pi_{ref}/\pi_\tau`).
    """
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n_actions, generator=g, dtype=torch.float64)
    logq = torch.log_softmax(z, 0)  # (K,) π_ref
    logp = torch.log_softmax(z / tau, 0)  # (K,) π_τ
    p = logp.exp()
    out = {"tau": tau, "kl": float((p * (logp - logq)).sum()), "exact_std": {}, "measured_std": {}, "measured_se": {}}
    a = torch.multinomial(p, n_samples * n_batches, replacement=True, generator=g).view(n_batches, n_samples)
    for kind in KL_KINDS:
        k = kl_estimate(logp, logq, kind)  # (K,) the estimate if action k is drawn
        mean = (p * k).sum()
        out["exact_std"][kind] = float((p * (k - mean) ** 2).sum().sqrt())
        per_batch = k[a].std(dim=1)  # (n_batches,)
        out["measured_std"][kind] = float(per_batch.mean())
        out["measured_se"][kind] = float(per_batch.std() / n_batches**0.5)
    log_r = logq - logp
    r = log_r.exp()
    mean_r, mean_log_r = (p * r).sum(), (p * log_r).sum()
    out["var_r"] = float((p * (r - mean_r) ** 2).sum())
    out["cov_r_logr"] = float((p * (r - mean_r) * (log_r - mean_log_r)).sum())
    return out


@figure("05_clip_cases")
def clip_cases(clip_eps: float = 0.2):
    r"""One term of :math:`L^{CLIP}`, Eq. (5.7), against the ratio ρ, for A > 0 and A < 0 (Schulman et al. 2017, Fig. 1)."""
    rho = np.linspace(0.0, 2.0, 401)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    for ax, A in zip(axes, (1.0, -1.0)):
        clipped = np.clip(rho, 1 - clip_eps, 1 + clip_eps) * A
        obj = np.minimum(rho * A, clipped)
        ax.plot(rho, rho * A, ":", color="gray", label="unclipped $\\rho A$ ($L^{CPI}$)")
        ax.plot(rho, obj, color="tab:blue", lw=2.5, label="$\\min(\\rho A, \\mathrm{clip}(\\rho) A)$")
        flat = (rho > 1 + clip_eps) if A > 0 else (rho < 1 - clip_eps)
        ax.fill_between(rho, obj.min() - 0.1, obj.max() + 0.1, where=flat, color="tab:red", alpha=0.12,
                        label="gradient exactly 0")
        ax.axvline(1, color="k", lw=0.8)
        ax.plot([1], [A], "ko")
        for b in (1 - clip_eps, 1 + clip_eps):
            ax.axvline(b, color="tab:red", ls="--", lw=0.8)
        ax.set(xlabel="probability ratio $\\rho = \\pi_\\theta / \\pi_{\\theta_{old}}$",
               ylabel="objective (to maximise)", title=f"A {'>' if A > 0 else '<'} 0  (ε = {clip_eps})",
               ylim=(obj.min() - 0.1, obj.max() + 0.1))
        ax.legend(fontsize=8, loc="upper left" if A > 0 else "lower left")
    fig.tight_layout()
    return fig


@figure("05_value_clip")
def value_clip(old_value: float = 0.0, target: float = 1.0, clip_eps: float = 0.2):
    r"""The clipped value loss, Eq. (5.10), against the new value V for one token."""
    V = np.linspace(-1.0, 2.0, 401)
    unclipped = 0.5 * (V - target) ** 2
    clipped = 0.5 * (old_value + np.clip(V - old_value, -clip_eps, clip_eps) - target) ** 2
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(V, unclipped, ":", color="gray", label="$\\frac{1}{2}(V-\\hat R)^2$")
    ax.plot(V, np.maximum(unclipped, clipped), color="tab:blue", lw=2.5, label="$L^V$ with clipping")
    flat = np.maximum(unclipped, clipped) > unclipped
    ax.fill_between(V, 0, 2.5, where=flat, color="tab:red", alpha=0.12, label="gradient exactly 0")
    ax.axvline(old_value, color="k", lw=0.8, label="$V_{old}$")
    ax.axvline(target, color="tab:green", lw=0.8, label="target $\\hat R$")
    ax.set(xlabel="new value $V$", ylabel="loss (to minimise)", ylim=(0, 2.5),
           title=f"value clipping, ε_V = {clip_eps}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@figure("05_adaptive_kl")
def adaptive_kl(target: float = 1.0, horizon: float = 500.0):
    """β and KL under ppo_lib.kl.AdaptiveKLController, from a β that is too small and one too large."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for b0, color in ((0.05, "tab:blue"), (2.0, "tab:orange")):
        sim = adaptive_kl_simulation(kl_coef=b0, kl_target=target, kl_horizon=horizon)
        ax1.plot(sim["kl"], color=color, label=f"β₀ = {b0}")
        ax2.plot(sim["beta"], color=color, label=f"β₀ = {b0}")
    ax1.axhline(target, color="k", ls="--", lw=1, label="target KL")
    ax1.set(xlabel="PPO iteration", ylabel="KL(π‖π_ref), nats", title="the KL is steered to the target")
    ax2.set(xlabel="PPO iteration", ylabel="β", yscale="log", title="β moves by at most ±0.2·n/H per step")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


@figure("05_multi_epoch")
def multi_epoch(clip_eps: float = 0.2, epochs: int = 100, lr: float = 0.05):
    """Many epochs on one batch (left, middle) and many batches (right): no clip vs PPO-Clip, mean ± 2 s.e. over 50 seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    runs = {"no clip ($L^{CPI}$)": (None, "tab:red"), f"PPO-Clip, ε = {clip_eps}": (clip_eps, "tab:blue")}

    def band(ax, y, color, **kw):
        mean, se = mean_and_se(y)
        ax.plot(mean, color=color, **kw)
        ax.fill_between(np.arange(len(mean)), mean - 2 * se, mean + 2 * se, color=color, alpha=0.15, lw=0)

    for label, (eps, color) in runs.items():
        one = bandit_one_batch_per_seed(eps, epochs=epochs, lr=lr)
        band(axes[0], one["kl"], color, label=label)
        band(axes[1], one["gain"], color, label=f"{label}: true gain")
        band(axes[1], one["promised"], color, ls="--", label=f"{label}: batch's estimate")
        many = bandit_many_batches_per_seed(eps, lr=lr)
        band(axes[2], many["return"], color, label=label)
    axes[2].axhline(many["best"], color="k", ls=":", lw=1, label="best possible")
    axes[0].set(xlabel="epoch on the same batch", ylabel="KL(π_old‖π_θ), nats", title="distance from the data's policy")
    axes[1].set(xlabel="epoch on the same batch", ylabel="J(θ) − J(θ_old)", title="gain: true vs promised by the batch")
    axes[2].set(xlabel="iteration (fresh batch, 20 epochs each)", ylabel="expected return J(θ)",
                title="the whole loop, 30 batches")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.text(0.5, -0.01, "lines: mean over 50 seeds; bands: ± 2 standard errors", ha="center", fontsize=8)
    fig.tight_layout()
    return fig

@figure("05_kl_estimator_spread")
def kl_estimator_spread_figure(n_actions: int = 8, seed: int = 0):
    r"""Std of one-sample k1, k2, k3 against the KL between policy and reference: exact lines, measured points.

    Two families of policies :math:`\pi_\tau = \mathrm{softmax}(z/\tau)` around :math:`\pi_{ref} = \mathrm{softmax}(z)`:
    sharper (:math:`\tau < 1`, left) and flatter (:math:`\tau > 1`, right); see :func:`kl_estimator_spread`.
    """
    families = {"sharper policies, τ from 0.97 down to 0.3": (np.geomspace(0.97, 0.3, 40), (0.9, 0.7, 0.5, 0.4)),
                "flatter policies, τ from 1.03 up to 3": (np.geomspace(1.03, 3.0, 40), (1.1, 1.5, 2.5))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
    for ax, (title, (taus, measured_taus)) in zip(axes, families.items()):
        exact = [kl_estimator_spread(float(t), n_actions, n_samples=10, n_batches=2, seed=seed) for t in taus]
        meas = [kl_estimator_spread(t, n_actions, seed=seed) for t in measured_taus]
        for kind, color in zip(KL_KINDS, ("C3", "C2", "C0")):
            ax.plot([e["kl"] for e in exact], [e["exact_std"][kind] for e in exact], color=color, label=f"{kind}, exact")
            ax.errorbar([m["kl"] for m in meas], [m["measured_std"][kind] for m in meas],
                        yerr=[2 * m["measured_se"][kind] for m in meas], fmt="o", ms=4, color=color, capsize=2,
                        label=f"{kind}, measured (±2 s.e.)")
        for m in meas:
            ax.annotate(f"τ={m['tau']}", (m["kl"], m["measured_std"]["k1"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="exact KL(π_τ ‖ π_ref), nats", title=title)
    axes[0].set_ylabel("std of a one-sample estimate, nats")
    axes[0].legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("k3 is the tighter estimator near the reference and for flatter policies; "
                 "for much sharper policies k1 is", fontsize=10)
    fig.tight_layout()
    return fig
