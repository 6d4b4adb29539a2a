"""Figures of chapter 08, "Reward models".

``08_bradley_terry`` is computed (the loss −log σ(Δ) and its gradient). The others read committed
runs, so they are cheap and deterministic: ``08_gold_proxy`` the run of ``python -m ppo_lib
reward-model`` (``figures/runs/rm_full/results.json``; the same drawing is the run folder's
``rm_overview.png``), ``08_kl_penalty`` it and its KL-coefficient sweeps (``KL_SWEEPS``), and
``08_probe`` the layer probes of ``python -m ppo_lib reward-probe`` (``rm_probe``).
"""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import torch

from . import figure, figures_dir

RUN = "rm_full"


def load_run(name: str = RUN) -> dict:
    """``results.json`` of a committed run under ``figures/runs/``. Every PPO row carries its KL
    coefficient ``kl_coef`` (a run from before ``--kl-coef`` took several values has the one β of
    its settings, filled in here)."""
    results = json.loads((figures_dir() / "runs" / name / "results.json").read_text())
    for run in results.get("ppo", []):
        run.setdefault("kl_coef", results["settings"]["kl_coef"])
    return results


@figure("08_bradley_terry")
def bradley_terry():
    """The Bradley–Terry loss −log σ(Δ) and its derivative −σ(−Δ) against the margin Δ."""
    delta = torch.linspace(-6, 6, 241, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot(delta, torch.nn.functional.softplus(-delta), label=r"loss $-\log\sigma(\Delta)$")
    ax.plot(delta, -torch.sigmoid(-delta), label=r"$\partial\,\mathrm{loss}/\partial r_w = -\sigma(-\Delta)$")
    ax.axhline(math.log(2), color="gray", lw=0.8, ls=":")
    ax.annotate("ln 2 at Δ = 0", (0, math.log(2)), (1.0, 1.6), arrowprops={"arrowstyle": "->"}, fontsize=8)
    ax.set(xlabel=r"margin $\Delta = r(y_w) - r(y_l)$", title="Bradley–Terry loss (8.2) and gradient (8.3)")
    ax.legend()
    fig.tight_layout()
    return fig


def _ppo_runs(results: dict):
    """``(run, color, name, first)`` for each PPO run: one color per KL coefficient β, in the order of
    ``--kl-coef``; ``first`` marks the first seed of each β, the one to label."""
    betas = list(dict.fromkeys(run["kl_coef"] for run in results["ppo"]))
    seen = set()
    for run in results["ppo"]:
        beta = run["kl_coef"]
        color = ("C3", "C2", "C4", "C5", "C6")[betas.index(beta) % 5]
        yield run, color, "PPO" if len(betas) == 1 else f"PPO β = {beta}", beta not in seen
        seen.add(beta)


def overview_from_results(results: dict):
    """Three panels of a reward-model run: RM accuracy vs training pairs; gold and proxy vs √KL
    for best-of-n (analytic KL bound) and PPO (measured KL); the proxy − gold gap vs √KL."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rms = results["reward_models"]
    ceiling = results["pairs"]["noise_ceiling"]
    ax = axes[0]
    ax.plot([r["train_pairs"] for r in rms], [r["accuracy"] for r in rms], "o-", label="held-out accuracy")
    if all("gold_agreement" in r for r in rms):
        ax.plot([r["train_pairs"] for r in rms], [r["gold_agreement"] for r in rms], "s--", label="agreement with gold")
    ax.axhline(ceiling, color="k", ls=":", label=f"noise ceiling {ceiling:.2f}")
    ax.axhline(0.5, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="training pairs", ylabel="accuracy", title="reward model (proxy)", ylim=(0.4, 1.02))
    sizes = [r["train_pairs"] for r in rms]
    ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes themselves, not log-scale decades
    ax.minorticks_off()
    ax.legend(fontsize=8)
    bon = results["best_of_n"]
    d_bon = [math.sqrt(b["kl_bound"]) for b in bon]
    ax = axes[1]
    ax.errorbar(d_bon, [b["gold"] for b in bon], [b["gold_sem"] for b in bon], fmt="o-", color="C0",
                label="best-of-n, gold")
    ax.plot(d_bon, [b["proxy"] for b in bon], "o--", color="C0", alpha=0.5, label="best-of-n, proxy (normalised)")
    for run, color, name, first in _ppo_runs(results):
        d = [math.sqrt(max(c["kl"], 0)) for c in run["curve"]]
        ax.plot(d, [c["gold"] for c in run["curve"]], "s-", color=color, label=f"{name}, gold" if first else None)
        ax.plot(d, [c["proxy"] for c in run["curve"]], "s--", color=color, alpha=0.5,
                label=f"{name}, proxy (normalised)" if first else None)
    ax.set(xlabel=r"$d=\sqrt{\mathrm{KL}}$ (best-of-n: analytic bound)", ylabel="score",
           title="gold and proxy against KL")
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot(d_bon, [b["proxy"] - b["gold"] for b in bon], "o-", color="C0", label="best-of-n")
    for run, color, name, first in _ppo_runs(results):
        d = [math.sqrt(max(c["kl"], 0)) for c in run["curve"]]
        ax.plot(d, [c["proxy"] - c["gold"] for c in run["curve"]], "s-", color=color, label=name if first else None)
    ax.set(xlabel=r"$d=\sqrt{\mathrm{KL}}$", ylabel="proxy − gold", title="the gap grows with KL")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def probe_from_results(results: dict):
    """Held-out accuracy of a linear probe on each layer's hidden states (``reward-probe``), at the
    last real token and averaged over the response, at the largest training size: trained on the
    comparisons (solid) and regressed on every text's gold score (dashed); the noise ceiling and
    90 % of it for scale."""
    k = max(r["train_pairs"] for r in results["rows"])
    ceiling = results["noise_ceiling"]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for pooling, marker, color in (("last", "o", "C0"), ("mean", "s", "C1")):
        for labels, ls in (("pairs", "-"), ("gold", "--")):
            rows = sorted((r for r in results["rows"] if (r["labels"], r["pooling"], r["train_pairs"])
                           == (labels, pooling, k)), key=lambda r: r["layer"])
            label = "last real token (the reward model's)" if pooling == "last" else "mean over the response"
            label += ", trained on the pairs" if labels == "pairs" else ", regressed on the gold scores"
            ax.plot([r["layer"] for r in rows], [r["accuracy"] for r in rows], marker=marker, ls=ls, color=color, ms=3,
                    label=label)
    ax.axhline(ceiling, color="k", ls=":", label=f"noise ceiling {ceiling:.2f}")
    ax.axhline(0.9 * ceiling, color="gray", ls="--", lw=0.8, label=f"90 % of it, {0.9 * ceiling:.2f}")
    ax.axhline(0.5, color="gray", lw=0.8)
    ax.set(xlabel="layer (0: embeddings; last: after the final norm)", ylabel="held-out accuracy",
           title=f"linear probes on the features of {k} pairs", ylim=(0.45, 0.92))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return fig


def load_probe(name: str = "rm_probe") -> dict:
    """``probe.json`` of a committed ``reward-probe`` run under ``figures/runs/``."""
    return json.loads((figures_dir() / "runs" / name / "probe.json").read_text())


@figure("08_probe")
def probe(run: str = "rm_probe"):
    """The committed ``python -m ppo_lib reward-probe`` run (see chapter 08)."""
    return probe_from_results(load_probe(run))


def kl_penalty_from_results(*runs: dict):
    """Gold and proxy against √KL for PPO at every KL coefficient β of these ``reward-model`` runs
    (the same proxy: a sweep run made with ``--pairs-from`` of the main one), one color per β."""
    by_beta: dict[float, list[dict]] = {}
    for results in runs:
        for run in results["ppo"]:
            by_beta.setdefault(run["kl_coef"], []).append(run)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for k, beta in enumerate(sorted(by_beta)):
        for i, run in enumerate(by_beta[beta]):
            d = [math.sqrt(max(c["kl"], 0)) for c in run["curve"]]
            label = f"β = {beta} ({len(by_beta[beta])} seeds)" if i == 0 else None
            axes[0].plot(d, [c["gold"] for c in run["curve"]], "o-", ms=3, color=f"C{k}", label=label)
            axes[1].plot(d, [c["proxy"] for c in run["curve"]], "o-", ms=3, color=f"C{k}", label=label)
    axes[0].set(xlabel=r"$d=\sqrt{\mathrm{KL}}$ (held-out prompts)", ylabel="gold (VADER)", title="gold against KL")
    axes[1].set(xlabel=r"$d=\sqrt{\mathrm{KL}}$ (held-out prompts)", ylabel="proxy (normalised)",
                title="proxy against KL")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


KL_SWEEPS = ("rm_kl_sweep", "rm_kl_sweep_seed2")  # β = 0 and 0.1 on rm_full's proxy: seeds 0 and 1, then seed 2


@figure("08_kl_penalty")
def kl_penalty(run: str = RUN, sweeps: tuple[str, ...] = KL_SWEEPS):
    """PPO against the same proxy at three KL coefficients: the committed run and its sweeps (chapter 08)."""
    return kl_penalty_from_results(load_run(run), *(load_run(s) for s in sweeps))


@figure("08_gold_proxy")
def gold_proxy(run: str = RUN):
    """The committed run of ``python -m ppo_lib reward-model`` (see chapter 08)."""
    return overview_from_results(load_run(run))
