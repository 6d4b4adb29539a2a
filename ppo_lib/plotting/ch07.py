"""Figures of chapter 07, "Engineering PPO for LLMs": where an update's time goes, and the
learning-rate schedules. Both are computed from committed files or pure functions (no model),
so they are cheap and deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from ..profiling import plot_time_breakdown, time_breakdown
from ..schedules import adaptive_lr_scale, lr_factor
from ..trainer import SPEED_ONLY_FIELDS
from . import figure, figures_dir
from .ch09 import PPO_RUNS

PRESET_RUNS = {0: "runs/sentiment_cpu", **{s: f"runs/sentiment_cpu_seed{s}" for s in range(1, 5)}}
"""The ``sentiment`` preset's committed seeds, relative to ``figures/``
(``python -m ppo_lib train --preset sentiment --set seed=N --out figures/runs/sentiment_cpu...``);
each ends at the preset's KL budget or after its most updates (``eval.json`` says which). They ran
with MKL's packed products, before the preset measured its product form (``cpu_products``, a
speed-only field; ``--set cpu_products=packed`` repeats them)."""

AUTO_PRODUCTS_RUNS = {s: f"runs/sentiment_cpu_auto/seed{s}" for s in range(5)}
"""The same five seeds of the preset as it is, ``cpu_products="auto"`` included, on one 2-core
AMD EPYC: its wall-time benchmark (``--out figures/runs/sentiment_cpu_auto/seedN``)."""


def read_history(path: Path) -> list[dict]:
    """The statistics of a run folder's ``history.jsonl``, one dict per update."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@figure("07_time_breakdown")
def time_breakdown_figure(runs: tuple[str, ...] = ("ch07_preset_frontier/fixed26_seed2", "sentiment_gpu_h200"), skip: int = 1):
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


FRONTIER_RUNS = "runs/ch07_preset_frontier"
"""Variants of the ``sentiment`` preset (the settings each folder's config.json records changed,
one or more seeds each), relative to ``figures/``; how they were made is in the folder's README.md."""

_SETTING_NAMES = {"learning_rate": "η", "lr_warmup_updates": "W", "lam": "λ", "batch_size": "B", "kl_coef": "β",
                  "updates": "updates", "kl_budget": "KL budget"}


def _setting(run: dict) -> str:
    """How a run's settings differ from the ``sentiment`` preset's, e.g. ``"η = 4e-05, λ = 1"``;
    a run without the preset's KL budget is labelled by its number of updates, e.g. ``"26 updates"``."""
    from ..cli_train import PRESETS

    spec = PRESETS["sentiment"]
    ran, budget = run["config"], run.get("kl_budget")  # runs from before the KL budget had none

    def show(v):
        return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    changed = [f"{_SETTING_NAMES.get(k, k)} = {show(ran[k])}" for k in spec["config"]
               if k != "seed" and k not in SPEED_ONLY_FIELDS and ran[k] != spec["config"][k]]
    if budget is None and spec["kl_budget"] is not None:
        changed.append(f"{run['updates']} updates")
    elif budget != spec["kl_budget"] or run["updates"] != spec["updates"]:
        changed.append(f"KL budget {show(budget)} in ≤ {run['updates']} updates")
    return ", ".join(changed) or "the preset"


def preset_frontier_points() -> list[dict]:
    """One point per committed run of the ``sentiment`` preset or a variant of it: ``{"folder",
    "setting", "seed", "kl_coef", "kl", "gain"}``, the run's β, the held-out KL (nats per sequence)
    and score gain over the run's own evaluation of π_ref. The preset's earlier settings (chapter
    09's PPO arm) come first."""
    root = figures_dir()
    folders = [*PPO_RUNS.values(), *PRESET_RUNS.values()]
    if (root / FRONTIER_RUNS).is_dir():
        folders += sorted(f"{FRONTIER_RUNS}/{p.name}" for p in (root / FRONTIER_RUNS).iterdir() if p.is_dir())
    points = []
    for folder in folders:
        path = root / folder
        if not (path / "eval.json").exists():
            continue
        run, ev = json.loads((path / "config.json").read_text()), json.loads((path / "eval.json").read_text())
        points.append({"folder": folder, "setting": _setting(run), "seed": run["config"]["seed"],
                       "kl_coef": run["config"]["kl_coef"], "kl": ev["after"]["kl_mean"], "gain": ev["score_gain"]})
    return points


def sqrt_kl_fit(points: list[dict], kl: float = 8.0, n_boot: int = 2000, seed: int = 0) -> dict:
    """Least-squares fit of gain = α √KL through the origin, the leading term of Gao et al.'s (2022)
    RL form d (α − β log d) with d = √KL, and the gain it predicts at ``kl`` nats. The interval is
    the 2.5–97.5 % percentile of ``n_boot`` bootstrap resamples of the runs.

    Returns ``{"alpha", "gain_at", "low", "high", "kl", "n"}``."""
    import numpy as np

    kls, g = np.array([p["kl"] for p in points], dtype=float), np.array([p["gain"] for p in points], dtype=float)
    if len(kls) < 3 or not (kls > 0).all():
        raise ValueError(f"sqrt_kl_fit needs at least 3 runs, all with KL > 0; got KLs {kls.round(3).tolist()}.")
    d = np.sqrt(kls)
    alpha = float(d @ g / (d @ d))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boot = (d[idx] * g[idx]).sum(1) / (d[idx] ** 2).sum(1) * np.sqrt(kl)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"alpha": alpha, "gain_at": alpha * float(np.sqrt(kl)), "low": float(low), "high": float(high), "kl": kl,
            "n": len(d)}


@figure("07_preset_frontier")
def preset_frontier(kl_limit: float = 8.0, target_score: float | None = 0.60, ref_score: float | None = None):
    """Held-out score gain against KL for every committed run of the ``sentiment`` preset and its
    variants, a marker per setting and a colour per β, with the fit gain = α √KL
    (:func:`sqrt_kl_fit`) and its bootstrap band for each β with at least three runs. Dotted
    guides: the KL limit and the gain that reaches ``target_score`` (None: no guide) from π_ref's
    ``ref_score`` (default: its mean held-out score in the preset's committed seeds)."""
    import numpy as np

    if ref_score is None:
        befores = [figures_dir() / f / "eval_before.json" for f in PRESET_RUNS.values()]
        ref_score = float(np.mean([json.loads(b.read_text())["score_mean"] for b in befores if b.exists()]))
    points = preset_frontier_points()
    betas = sorted({p["kl_coef"] for p in points})
    colour = {b: f"C{i}" for i, b in enumerate(betas)}
    fig, ax = plt.subplots(figsize=(9.6, 4.6))
    markers = "osD^v<>pXh*Pd"
    for i, setting in enumerate(dict.fromkeys(p["setting"] for p in points)):
        mine = [p for p in points if p["setting"] == setting]
        ax.plot([p["kl"] for p in mine], [p["gain"] for p in mine], markers[i % len(markers)], markersize=7,
                alpha=0.8, color=colour[mine[0]["kl_coef"]], label=f"{setting} ({len(mine)})")
    kl = np.linspace(0, max(p["kl"] for p in points) * 1.05, 200)
    for beta in betas:
        mine = [p for p in points if p["kl_coef"] == beta]
        if len(mine) < 3:
            continue
        fit = sqrt_kl_fit(mine, kl=kl_limit)
        ax.plot(kl, fit["alpha"] * np.sqrt(kl), "-", color=colour[beta], lw=1,
                label=f"β = {beta:g}, {len(mine)} runs: gain = {fit['alpha']:.3f} √KL")
        lo, hi = fit["low"] / np.sqrt(kl_limit), fit["high"] / np.sqrt(kl_limit)  # the bootstrap band of α
        ax.fill_between(kl, lo * np.sqrt(kl), hi * np.sqrt(kl), color=colour[beta], alpha=0.12, lw=0)
    ax.axvline(kl_limit, color="0.5", ls=":", lw=1)
    ax.text(kl_limit + 0.1, 0.02, f"KL limit, {kl_limit:g} nats", fontsize=8, color="0.35")
    if target_score is not None:
        ax.axhline(target_score - ref_score, color="0.5", ls=":", lw=1)
        ax.text(0.2, target_score - ref_score + 0.008, f"the gain from {ref_score:.3f} to a score of {target_score:.2f}",
                fontsize=8, color="0.35")
    ax.set(xlabel="KL(π ‖ π_ref), nats per sequence (held-out)", ylabel="gain in mean VADER score over π_ref (held-out)",
           title="the sentiment preset and its variants: a frontier per β (bands: 95 % bootstrap)", ylim=(0, None),
           xlim=(0, None))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="setting (runs); fit per β",
              title_fontsize=8)
    fig.tight_layout()
    return fig


TRAJECTORY_RUNS = "runs/ch07_preset_trajectories"
"""Four seeds of the ``sentiment`` preset's settings trained past its last update, with the held-out
prompts scored every few updates, relative to ``figures/`` (the folder's README.md has the script)."""


def preset_trajectories() -> dict[int, list[dict]]:
    """``{seed: [{"update", "score", "kl"}, ...]}`` from :data:`TRAJECTORY_RUNS`: the held-out mean
    VADER score and KL to π_ref (nats per sequence) at each evaluated update, update 0 being π_ref."""
    root = figures_dir() / TRAJECTORY_RUNS
    runs = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        seed = json.loads((folder / "config.json").read_text())["seed"]
        runs[seed] = read_history(folder / "evals.jsonl")
    return runs


def kl_estimate_errors(windows: tuple[int, ...] = (1, 2, 4, 8), first_update: int = 8) -> dict[int, list[float]]:
    """How well the training statistic ``objective/kl`` estimates the held-out KL, in the
    trajectories of :data:`TRAJECTORY_RUNS`: for each window w, the held-out KL minus the mean
    ``objective/kl`` of the last w updates (the estimate of :class:`ppo_lib.kl.KLBudget`), at every
    evaluated update from ``first_update`` on, all seeds pooled."""
    from ..kl import KLBudget

    root = figures_dir() / TRAJECTORY_RUNS
    errors: dict[int, list[float]] = {w: [] for w in windows}
    for seed, evals in preset_trajectories().items():
        kls = [h["objective/kl"] for h in read_history(root / f"seed{seed}" / "history.jsonl")]
        for e in evals:
            if e["update"] >= max(first_update, *windows):
                for w in windows:
                    errors[w].append(e["kl"] - KLBudget(None, w, kls[: e["update"]]).estimate)
    return errors


@figure("07_preset_trajectories")
def preset_trajectories_figure(kl_limit: float = 8.0, target_score: float = 0.60):
    """The held-out score and KL of :func:`preset_trajectories` against the update (left) and on the
    reward–KL plane (right). Dashed: the preset's KL budget; dotted: the ``kl_limit`` and
    ``target_score`` it must meet. Left, black: the committed seeds' estimate of the KL
    (:class:`ppo_lib.kl.KLBudget`, from their training statistics) up to the update that reached
    the budget; right, stars: their final held-out evaluations (:data:`PRESET_RUNS`)."""
    from ..cli_train import KL_WINDOW, PRESETS
    from ..kl import KLBudget

    budget = PRESETS["sentiment"]["kl_budget"]
    runs = preset_trajectories()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (seed, evals) in enumerate(sorted(runs.items())):
        c = f"C{i}"
        a.plot([e["update"] for e in evals], [e["kl"] for e in evals], "o-", color=c, ms=4,
               label=f"seed {seed} (1 thread, held out)")
        b.plot([e["kl"] for e in evals], [e["score"] for e in evals], "o-", color=c, ms=4, alpha=0.8,
               label=f"seed {seed} (1 thread)")
    for seed, folder in PRESET_RUNS.items():
        first = seed == min(PRESET_RUNS)
        history = figures_dir() / folder / "history.jsonl"
        if history.exists():
            kls = [h["objective/kl"] for h in read_history(history)]
            updates = range(KL_WINDOW, len(kls) + 1)
            a.plot(list(updates), [KLBudget(None, KL_WINDOW, kls[:u]).estimate for u in updates], "-", color="k",
                   lw=0.8, alpha=0.6, label="the committed seeds' estimate (training)" if first else None)
        path = figures_dir() / folder / "eval.json"
        if path.exists():
            ev = json.loads(path.read_text())["after"]
            b.plot(ev["kl_mean"], ev["score_mean"], "*", color="k", ms=12,
                   label="the committed seeds (train command)" if first else None)
    for ax, line in ((a, a.axhline), (b, b.axvline)):
        line(kl_limit, color="0.5", ls=":", lw=1)
        line(budget, color="0.3", ls="--", lw=1)
    a.set(xlabel="update", ylabel="KL(π ‖ π_ref), nats per sequence",
          title=f"KL along the way (dashed: the budget, {budget:g} nats)")
    a.legend(fontsize=8)
    b.axhline(target_score, color="0.5", ls=":", lw=1)
    b.set(xlabel="held-out KL(π ‖ π_ref), nats per sequence", ylabel="held-out mean VADER score",
          title=f"score against KL (dotted: {kl_limit:g} nats, a score of {target_score:.2f})")
    b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
