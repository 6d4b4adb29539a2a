"""Figures of chapter 03, "Values and TD errors"."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..toys import RW_STATES, random_walk_episodes, random_walk_rms_curves, random_walk_true_values, td0_values
from . import figure


@figure("03_random_walk")
def random_walk(n_runs: int = 100, n_episodes: int = 100, seed: int = 0):
    """Sutton & Barto (2018), Example 6.2: TD(0) estimates (left) and RMS error of TD(0) vs MC (right)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    true = random_walk_true_values()
    history = td0_values(random_walk_episodes(n_episodes, seed=seed), alpha=0.1)
    x = np.arange(5)
    for n, shade in zip([0, 1, 10, 100], [0.75, 0.55, 0.35, 0.1]):
        if n <= n_episodes:
            ax1.plot(x, history[n], "o-", color=str(shade), label=f"after {n} episodes")
    ax1.plot(x, true, "k--", lw=2, label="true values 1/6 … 5/6")
    ax1.set(xticks=x, xticklabels=list(RW_STATES), xlabel="state", ylabel="estimated value",
            title="TD(0), α = 0.1, one run")
    ax1.legend(fontsize=8)
    curves = random_walk_rms_curves(n_runs=n_runs, n_episodes=n_episodes, seed=seed)
    for name, curve in curves.items():
        td = name.startswith("TD")
        ax2.plot(curve, color="tab:blue" if td else "tab:red", ls="-" if td else "--",
                 alpha=0.45 + 3 * float(name.split("=")[1]) if td else 0.4 + 12 * float(name.split("=")[1]),
                 label=name)
    ax2.set(xlabel="episodes", ylabel="RMS error, averaged over states",
            title=f"TD(0) vs constant-α MC ({n_runs} runs)", ylim=(0, 0.25))
    ax2.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
