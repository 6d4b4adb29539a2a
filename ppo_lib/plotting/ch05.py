"""Figures of chapter 05, "PPO's clipped objective"."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..toys import adaptive_kl_simulation, bandit_many_batches, bandit_one_batch
from . import figure


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
    """Many epochs on one batch (left, middle) and many batches (right): no clip vs PPO-Clip."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    runs = {"no clip ($L^{CPI}$)": (None, "tab:red"), f"PPO-Clip, ε = {clip_eps}": (clip_eps, "tab:blue")}
    for label, (eps, color) in runs.items():
        one = bandit_one_batch(eps, epochs=epochs, lr=lr)
        axes[0].plot(one["kl"], color=color, label=label)
        axes[1].plot(one["gain"], color=color, label=f"{label}: true gain")
        axes[1].plot(one["promised"], color=color, ls="--", label=f"{label}: batch's estimate")
        many = bandit_many_batches(eps, lr=lr)
        axes[2].plot(many["return"], color=color, label=label)
    axes[2].axhline(many["best"], color="k", ls=":", lw=1, label="best possible")
    axes[0].set(xlabel="epoch on the same batch", ylabel="KL(π_old‖π_θ), nats", title="distance from the data's policy")
    axes[1].set(xlabel="epoch on the same batch", ylabel="J(θ) − J(θ_old)", title="gain: true vs promised by the batch")
    axes[2].set(xlabel="iteration (fresh batch, 20 epochs each)", ylabel="expected return J(θ)",
                title="the whole loop, 30 batches")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
