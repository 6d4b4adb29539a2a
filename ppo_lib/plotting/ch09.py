"""Figures of chapter 09, "Beyond PPO": GRPO's two biases on toys, and the reward–KL frontier.

The frontier reads the committed comparison (:func:`full_comparison`): the critic-free arms and
DPO from ``python -m ppo_lib compare`` (``figures/runs/ch09_compare*/``) and PPO from three
``train`` runs with the same settings and budget (``figures/runs/ch09_ppo_seed*/``). Or any
structure of ``summary.json``'s shape, passed in. Either way it is cheap and deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import figure, figures_dir

__all__ = ["grpo_biases", "reward_kl_frontier", "gain_over_ref", "last_within_kl", "load_summary", "full_comparison",
           "COMPARE_RUN", "MORE_RUNS", "DPO_RUN", "MEMORY_RUN", "PPO_RUNS", "COMPARED_SETTINGS"]

COMPARE_RUN = "runs/ch09_compare"
"""The committed comparison of the critic-free arms, relative to ``figures/``."""
MORE_RUNS = ("runs/ch09_compare_more", "runs/ch09_compare_more_seed1")
"""REINFORCE, Dr. GRPO and ReMax: seed 0, and seed 1 with held-out evaluations every 6 updates."""
DPO_RUN = "runs/ch09_compare_dpo"
"""The DPO arm at the same budget (pairs sampled from π_ref, labelled by VADER)."""
MEMORY_RUN = "runs/ch09_memory"
"""Seconds and peak memory per update of every arm, measured in one short run."""
PPO_RUNS = {0: "runs/ch09_ppo_seed0", 1: "runs/ch09_ppo_seed1", 2: "runs/ch09_ppo_seed2"}
"""The PPO arm: the ``sentiment`` preset as it was when the comparison ran, which is the configuration
every arm shares (``COMPARED_SETTINGS``): ``python -m ppo_lib train --preset sentiment --kl-budget off --updates 36
--set learning_rate=2.5e-5 --set lr_warmup_updates=6 --set kl_coef=0.05 --set seed=N``. Chapter 07 has
since lengthened the preset's warm-up and lowered its η and β (its own seeds are
``figures/runs/sentiment_cpu*/``)."""
COMPARED_SETTINGS = {"learning_rate": 2.5e-5, "lr_warmup_updates": 6, "kl_coef": 0.05}
"""What the comparison's shared configuration sets on top of today's ``sentiment`` preset (pass them
to ``compare`` and ``train`` with ``--set``; ``train`` also needs ``--kl-budget off --updates 36``)."""


def load_summary(folder: str | Path | None = None) -> dict:
    """``summary.json`` of a comparison folder (default: the committed comparison)."""
    folder = Path(folder) if folder is not None else figures_dir() / COMPARE_RUN
    return json.loads((folder / "summary.json").read_text())


def full_comparison() -> dict:
    """The committed comparison (RLOO, GRPO), with REINFORCE, Dr. GRPO, ReMax and DPO from their
    own runs and the PPO arm from its three ``train`` runs (evaluated at the end only).

    ``compare`` would train PPO exactly as ``train`` does (the same
    :class:`~ppo_lib.trainer.PPOConfig` and the 36 updates the token budget buys), so three
    ``train`` runs at the comparison's settings are its PPO arm (:data:`PPO_RUNS`). The two
    commands sample the held-out prompts in batches of different sizes (64 and 16), so each run
    keeps its own ``score_before``.
    """
    summary = load_summary()
    ppo = []
    for seed, folder in PPO_RUNS.items():
        path = figures_dir() / folder / "eval.json"
        if path.exists():
            ev = json.loads(path.read_text())
            steps = [json.loads(line)["time/step"] for line in (path.parent / "history.jsonl").read_text().splitlines()]
            ppo.append({"arm": "ppo", "seed": seed, "updates": ev["updates"], "score_before": ev["before"]["score_mean"],
                        "score_after": ev["after"]["score_mean"], "kl_after": ev["after"]["kl_mean"],
                        "seconds_per_update": sum(steps) / len(steps)})  # as compare counts it: the updates alone
    others = [r for run in (*MORE_RUNS, DPO_RUN) if (figures_dir() / run / "summary.json").exists()
              for r in load_summary(figures_dir() / run)["runs"]]
    summary["runs"] = ppo + summary["runs"] + others
    return summary


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


def gain_over_ref(run: dict, summary: dict) -> float:
    """A run's held-out score after training minus its own score of π_ref (``score_before``, else
    ``summary["before"]`` of its seed): two evaluations that draw their samples differently score
    π_ref differently, and the gain removes that offset."""
    before = run["score_before"] if "score_before" in run else summary["before"][str(run["seed"])]["score"]
    return run["score_after"] - before


def last_within_kl(run: dict, kl_max: float = 8.0) -> dict | None:
    """The run's last held-out evaluation at a KL of at most ``kl_max`` nats: ``{"update", "score",
    "kl"}`` from its ``trajectory`` (``compare --eval-every``), or its final evaluation; None if
    none stayed within ``kl_max``."""
    points = run.get("trajectory") or [{"update": run["updates"], "score": run["score_after"], "kl": run["kl_after"]}]
    within = [p for p in points if p["kl"] <= kl_max]
    return within[-1] if within else None


@figure("09_reward_kl_frontier")
def reward_kl_frontier(summary: dict | None = None, title: str | None = None, kl_budget: float | None = 8.0,
                       gain_target: float | None = 0.25):
    """Held-out reward gain (:func:`gain_over_ref`) against KL(π‖π_ref) (nats per sequence): a line
    per run from π_ref (the origin) through its held-out evaluations during training, when it has
    them (``compare --eval-every``), to its final point, marked. Dotted guides show the KL budget
    and the gain aimed at (None: no guide). The model is Fig. 2 (left) of Rafailov et al. (2023),
    which plots the reward itself against the KL."""
    if summary is None:
        summary = full_comparison()
    runs = summary["runs"]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    markers = "osD^v<>pXh"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        color = colors[i % len(colors)]
        for j, r in enumerate(r for r in runs if r["arm"] == arm):
            offset = gain_over_ref(r, summary) - r["score_after"]  # score -> gain
            points = r.get("trajectory") or [{"score": r["score_after"], "kl": r["kl_after"]}]
            xs = [0.0] + [p["kl"] for p in points]
            ys = [0.0] + [p["score"] + offset for p in points]
            ax.plot(xs, ys, "-", color=color, alpha=0.45, lw=1.2)
            ax.plot(xs[1:-1], ys[1:-1], ".", color=color, alpha=0.6, markersize=4)
            ax.plot(xs[-1], ys[-1], markers[i % len(markers)], color=color, markersize=7, label=arm if j == 0 else None)
    if kl_budget is not None:
        ax.axvline(kl_budget, color="0.5", ls=":", lw=1)
    if gain_target is not None:
        ax.axhline(gain_target, color="0.5", ls=":", lw=1)
    ax.plot([0], [0], "k*", markersize=11, label="π_ref (before)")
    ax.set(xlabel="KL(π ‖ π_ref), nats per sequence (held-out)", ylabel="gain in mean reward over π_ref (held-out)",
           title=title or "reward–KL frontier: SmolLM2-135M + VADER, 13 824 generated tokens per run")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
