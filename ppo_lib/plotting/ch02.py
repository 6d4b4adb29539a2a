"""Chapter 02's figures, from the enumerable toy language model in :mod:`ppo_lib.toy_lm`.

The toy's math lives in ``ppo_lib.toy_lm``; its names are re-exported here so that
``from ppo_lib.plotting.ch02 import ...`` keeps working.
"""

from __future__ import annotations

import torch

from ..toy_lm import (T, TARGET, TOKENS, V, _init_theta, all_sequences, exact_gradient, reinforce_gradient,  # noqa: F401
                      reinforce_train, sample_sequences, score_vectors, toy_logprob, toy_objective, toy_reward)
from . import figure

__all__ = ["reinforce_vs_exact", "reinforce_learning", "all_sequences", "toy_logprob", "toy_reward", "toy_objective",
           "exact_gradient", "sample_sequences", "score_vectors", "reinforce_gradient", "reinforce_train"]


@figure("02_reinforce_vs_exact")
def reinforce_vs_exact(n_values=(4, 16, 64, 256, 1024), repeats: int = 100, seed: int = 0):
    """Relative error of the REINFORCE estimate against the exact gradient, as samples grow."""
    import matplotlib.pyplot as plt

    theta = _init_theta(seed)
    g_exact = exact_gradient(theta)
    J = float(toy_objective(theta))
    gen = torch.Generator().manual_seed(seed + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    coord = (V, 0)  # d J / d theta[BOS, "A"]
    for label, b, color in [("no baseline", 0.0, "C3"), (f"baseline b = J(θ) = {J:.2f}", J, "C0")]:
        errs, lo, hi, est_all = [], [], [], []
        for n in n_values:
            # all repeats at once: repeats × n sequences, one estimate per group of n
            seqs = sample_sequences(theta, repeats * n, generator=gen)  # (repeats*n, T)
            weighted = (toy_reward(seqs) - b)[:, None, None] * score_vectors(theta, seqs)  # (repeats*n, V+1, V)
            gh = weighted.view(repeats, n, V + 1, V).mean(dim=1)  # (repeats, V+1, V)
            e = (gh - g_exact).flatten(1).norm(dim=1) / g_exact.norm()  # (repeats,)
            est = gh[:, coord[0], coord[1]]
            errs.append(float(e.mean()))
            lo.append(float(e.quantile(0.1)))
            hi.append(float(e.quantile(0.9)))
            est_all.append(est)
        ax1.plot(n_values, errs, "o-", color=color, label=label)
        ax1.fill_between(n_values, lo, hi, color=color, alpha=0.15)
        means = [float(x.mean()) for x in est_all]
        stds = [float(x.std()) for x in est_all]
        ax2.errorbar(n_values, means, yerr=stds, fmt="o-", color=color, capsize=3, label=label)
    ref = errs[0] * (n_values[0] / torch.tensor(n_values, dtype=torch.float64)) ** 0.5
    ax1.plot(n_values, ref, "k:", label=r"$\propto 1/\sqrt{N}$")
    ax1.set(xscale="log", yscale="log", xlabel="samples N", ylabel=r"$\|\hat g - \nabla J\| / \|\nabla J\|$",
            title=f"REINFORCE vs exact gradient ({repeats} repeats, 10–90% band)")
    ax1.legend()
    ax2.axhline(float(g_exact[coord]), color="k", ls="--", label="exact (enumeration)")
    ax2.set(xscale="log", xlabel="samples N", ylabel=r"$\partial J / \partial\theta_{\mathrm{BOS},A}$",
            title="one coordinate: mean ± std of the estimate")
    ax2.legend()
    fig.tight_layout()
    return fig


@figure("02_reinforce_learning")
def reinforce_learning(steps: int = 150, n: int = 16, lr: float = 0.5, seeds: int = 5):
    """Exact J(θ) while REINFORCE learns the toy task, with and without a leave-one-out baseline."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for baseline, color, label in [("none", "C3", "REINFORCE"), ("loo", "C0", "REINFORCE + leave-one-out baseline")]:
        runs = torch.tensor([reinforce_train(steps, n, lr, baseline, seed) for seed in range(seeds)])
        ax.plot(runs.T, color=color, alpha=0.25, lw=0.8)
        ax.plot(runs.mean(0), color=color, lw=2, label=f"{label} (mean of {seeds} seeds)")
    ax.axhline(float(len(TARGET)), color="k", ls="--", lw=1, label=r"best possible $J$ (always “ABC”)")
    ax.set(xlabel="update", ylabel=r"exact $J(\theta)$ = expected reward",
           title=f"Learning to write “ABC”: N = {n} samples per update, step size {lr}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
