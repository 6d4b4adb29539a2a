"""Figures of chapter 09, "Beyond PPO": GRPO's two biases on toys, and the reward–KL frontier.

The frontier reads a ``summary.json`` written by ``python -m ppo_lib compare`` (committed under
``figures/runs/ch09_compare_small/``), or the same structure passed in, so it is cheap and
deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import figure, figures_dir

__all__ = ["grpo_biases", "reward_kl_frontier", "load_summary", "COMPARE_RUN"]

COMPARE_RUN = "runs/ch09_compare_small"
"""The committed comparison, relative to ``figures/``."""


def load_summary(folder: str | Path | None = None) -> dict:
    """``summary.json`` of a comparison folder (default: the committed small run)."""
    folder = Path(folder) if folder is not None else figures_dir() / COMPARE_RUN
    return json.loads((folder / "summary.json").read_text())


@figure("09_grpo_biases")
def grpo_biases(k: int = 8, max_len: int = 40):
    """(a) The gradient weight of one token of a response of length |o|: GRPO's 1/|o| against
    Dr. GRPO's constant 1/T. (b) How much a prompt weighs in the batch, the mean |advantage| of its
    k samples with binary rewards, relative to a prompt solved half the time: GRPO divides by the
    group's std, so nearly solved and nearly failed prompts weigh more than under Dr. GRPO."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    lengths = np.arange(1, max_len + 1)
    ax1.plot(lengths, 1 / lengths, label="GRPO: 1/|o|")
    ax1.plot(lengths, np.full(len(lengths), 1 / max_len), label=f"Dr. GRPO: 1/T, T = {max_len}")
    ax1.set(xlabel="response length |o| (tokens)", ylabel="|weight| of each token's gradient",
            title="length bias:\na long wrong answer is penalised less per token", yscale="log")
    ax1.legend()

    def mean_abs_advantage(successes: int, normalise: bool) -> float:
        r = np.array([1.0] * successes + [0.0] * (k - successes))
        a = r - r.mean()
        if normalise:
            a = a / (r.std(ddof=1) + 1e-6)  # unbiased std, as verl and the library
        return float(np.abs(a).mean())

    successes = np.arange(1, k)  # 0 or k successes: every advantage is 0
    for normalise, label, marker in ((True, "GRPO: (r − mean)/std", "o-"), (False, "Dr. GRPO: r − mean", "s-")):
        w = np.array([mean_abs_advantage(s, normalise) for s in successes])
        ax2.plot(successes / k, w / mean_abs_advantage(k // 2, normalise), marker, label=label)
    ax2.set(xlabel=f"success rate of the prompt's k = {k} samples (0/1 rewards)",
            ylabel="weight of the prompt\n(mean |A|, relative to 50 %)",
            title="difficulty bias:\nstd normalisation up-weights easy and hard prompts")
    ax2.legend()
    fig.tight_layout()
    return fig


@figure("09_reward_kl_frontier")
def reward_kl_frontier(summary: dict | None = None, title: str | None = None):
    """Held-out reward against KL(π‖π_ref) (nats per sequence) after training: a point per run
    (arm and seed), a line per algorithm from π_ref (KL 0, the score before training) through its
    runs in order of KL. The model is Fig. 2 (left) of Rafailov et al. (2023)."""
    if summary is None:  # the committed small run, with GRPO's arm from its second process when present
        summary = load_summary()
        grpo = figures_dir() / (COMPARE_RUN + "_grpo")
        if (grpo / "summary.json").exists():
            summary["runs"] = summary["runs"] + load_summary(grpo)["runs"]
    runs = summary["runs"]
    before = summary["before"]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    markers = "osD^v<>pXh"
    start = float(np.mean([b["score"] for b in before.values()]))  # π_ref's held-out reward (JSON keys: seeds)
    for i, arm in enumerate(arms):
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["kl_after"])
        xs = [0.0] + [r["kl_after"] for r in mine]
        ys = [start] + [r["score_after"] for r in mine]
        line, = ax.plot(xs, ys, "-", alpha=0.5)
        ax.plot(xs[1:], ys[1:], markers[i % len(markers)], color=line.get_color(), label=arm, markersize=7)
    ax.plot([0], [start], "k*", markersize=11, label="π_ref (before)")
    ax.set(xlabel="KL(π ‖ π_ref), nats per sequence (held-out)", ylabel="mean reward (held-out)",
           title=title or "reward–KL frontier (small run: one seed, equal token budget)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
