"""Figures of chapter 04, "Generalized Advantage Estimation"."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..toys import ChainMDP
from . import figure


@figure("04_gae_weights")
def gae_weights(lams=(0.5, 0.9, 0.95), n: int = 12):
    r"""The weights :math:`(1-\lambda)\lambda^{k-1}` that GAE puts on the k-step estimators, Eq. (4.3)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    k = np.arange(1, n + 1)
    width = 0.8 / len(lams)
    for i, lam in enumerate(lams):
        ax.bar(k + (i - (len(lams) - 1) / 2) * width, (1 - lam) * lam ** (k - 1), width, label=f"λ = {lam}")
    ax.set(xlabel="k (the k-step advantage estimate $\\hat A^{(k)}_t$)", ylabel="weight $(1-\\lambda)\\lambda^{k-1}$",
           title="GAE is an exponentially weighted average of k-step estimates", xticks=k)
    ax.legend()
    fig.tight_layout()
    return fig


@figure("04_gae_bias_variance")
def gae_bias_variance(gamma: float = 0.95, lam: float = 0.9, critic_error: float = 0.5, seed: int = 0):
    r"""Exact bias², variance and MSE of :math:`\hat A_0` against λ on :class:`~ppo_lib.toys.ChainMDP`
    (left), and the exact distribution of :math:`\hat A_0` at the chosen λ (right)."""
    mdp = ChainMDP(seed=seed)
    lams = np.linspace(0, 1, 51)
    res = mdp.gae_moments(lams, gamma, critic_error)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(lams, res["bias2"], label="bias²", color="tab:orange")
    ax1.plot(lams, res["var"], label="variance", color="tab:blue")
    ax1.plot(lams, res["mse"], label="MSE = bias² + variance", color="k", lw=2)
    best = lams[np.argmin(res["mse"])]
    ax1.axvline(lam, color="gray", ls=":", label=f"λ = {lam:.2f}")
    ax1.plot([best], [res["mse"].min()], "ko")
    ax1.annotate(f"min MSE at λ≈{best:.2f}", (best, res["mse"].min()), textcoords="offset points", xytext=(-40, 12))
    ax1.set(xlabel="λ", ylabel="squared error of $\\hat A_0$",
            title=f"exact, by enumeration (γ={gamma}, critic error {critic_error})")
    ax1.legend(fontsize=8)
    one = mdp.gae_moments([lam], gamma, critic_error)
    x, p = one["samples"][:, 0], one["prob"]
    ax2.hist(x, bins=60, weights=p, color="tab:blue", alpha=0.7)
    ax2.axvline(one["target"], color="k", lw=2, label="target $Q^\\pi(s_0,a_0)-\\hat V(s_0)$")
    ax2.axvline(one["mean"][0], color="tab:orange", ls="--", lw=2, label="mean of $\\hat A_0$")
    ax2.set(xlabel="$\\hat A_0$ on one trajectory", ylabel="probability",
            title=f"distribution of $\\hat A_0$ at λ = {lam:.2f}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig
