"""Figures of chapter 07, "Engineering PPO for LLMs": where an update's time goes, and the
learning-rate schedules. Both are computed from committed files or pure functions (no model),
so they are cheap and deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from ..profiling import plot_time_breakdown, time_breakdown
from ..schedules import adaptive_lr_scale, lr_factor
from . import figure, figures_dir

PRESET_RUNS = {0: "runs/sentiment_cpu", 1: "runs/sentiment_cpu_seed1", 2: "runs/sentiment_cpu_seed2"}
"""The ``sentiment`` preset's committed seeds, relative to ``figures/``
(``python -m ppo_lib train --preset sentiment --set seed=N --out figures/runs/sentiment_cpu...``)."""


def read_history(path: Path) -> list[dict]:
    """The statistics of a run folder's ``history.jsonl``, one dict per update."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@figure("07_time_breakdown")
def time_breakdown_figure(runs: tuple[str, ...] = ("sentiment_cpu_seed2", "sentiment_gpu_h200"), skip: int = 1):
    """Seconds per phase of one update, from committed runs' ``history.jsonl`` (first update left
    out), each labelled with its batch B and response length T (the runs differ in both)."""
    breakdowns = {}
    for run in runs:
        path = figures_dir() / "runs" / run / "history.jsonl"
        if path.exists():
            c = json.loads((path.parent / "config.json").read_text())["config"]
            breakdowns[f"{run}\nB = {c['batch_size']}, T = {c['max_new_tokens']}"] = time_breakdown(read_history(path), skip=skip)
    return plot_time_breakdown(breakdowns, share=True,
                               title="Where one PPO update's time goes (SmolLM2-135M; mean per update)")


@figure("07_lr_schedules")
def lr_schedules(warmup: int = 5, total: int = 36, kl_target: float = 0.01, seed: int = 0):
    """Left: the learning-rate factor of each schedule with a warm-up. Right: the KL-driven
    multiplier on a synthetic approx-KL that is first too large, then too small."""
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    updates = range(total + 1)
    for schedule in ("constant", "linear", "cosine"):
        a.plot(list(updates), [lr_factor(u, schedule, warmup, total) for u in updates], label=schedule)
    a.axvline(warmup, color="grey", lw=0.8, ls=":")
    a.set(xlabel="update u", ylabel="η(u) / η", title=f"warm-up W = {warmup}, decay to 0 at U = {total}")
    a.legend()
    rng = np.random.default_rng(seed)
    kl = np.concatenate([0.05 * np.exp(rng.normal(0, 0.3, 12)), 0.002 * np.exp(rng.normal(0, 0.3, 12)),
                         kl_target * np.exp(rng.normal(0, 0.3, 12))])
    scale, scales = 1.0, []
    for x in kl:
        scales.append(scale)
        scale = adaptive_lr_scale(scale, float(x), kl_target)
    b.semilogy(kl / kl_target, "k.", label="approx-KL / target")
    b.semilogy(scales, label="η multiplier")
    b.axhspan(0.5, 2.0, color="green", alpha=0.1, label="kept band")
    b.set(xlabel="update", title="KL-driven η multiplier (a synthetic KL, open loop)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
