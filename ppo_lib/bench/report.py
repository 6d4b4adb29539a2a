"""The benchmark's arithmetic and report: steady-state means, ratios to TRL round by round,
overhead over the floor, the targets, the markdown table and the figure (chapter 07).

Everything here works on the results dict that :func:`~ppo_lib.bench.harness.run_all`
returns and ``figures/runs/bench_*.json`` stores, so ``python -m ppo_lib bench --report-only``
redraws a published run from its raw timings without running anything.

Raw timings: ``results["rounds"]`` is a list with one dict ``{system: raw child result}`` per
round (``--repeats R``: every system once per round, TRL first, the rounds one after another,
A B A B); a JSON written before rounds existed has one ``results["raw"]`` dict instead, read
as a single round (:func:`rounds_of`).

Steady state: in every run, the leading warm-up updates are dropped by
:func:`warmup_updates` (at least the first, then each next one while its total exceeds the
median of the updates after it by more than ``WARMUP_TOLERANCE``; at least half are kept).
A system's summary pools the steady updates of all its rounds. A ratio to TRL (or to a
floor) is taken within each round, steady mean over steady mean, and the targets use the
median over the rounds (:func:`pairwise_ratios`), so a slow stretch of the machine that hits
one round does not decide the result.

Phases (seconds per update, the warm-up updates excluded):

============== ====================================== =============================================
phase          ppo_lib (``time/*`` stats)             TRL (timed by wrapping its module functions)
============== ====================================== =============================================
generate       ``time/generate``                      ``batch_generation``
old_forward    ``time/forward_old`` (V_old; and       value model forward (log-probs come from the
               π_old in the exact mode)               generation scores)
ref_forward    ``time/ref_forward``                   ``forward(ref_model)``
score          ``time/score``                         ``get_reward(reward_model)``
train_forward  ``time/train_forward`` (incl. losses)  ``forward(policy+value)``
backward       ``time/backward``                      ``accelerator.backward``
optimizer      ``time/optimizer`` (incl. grad clip)   ``optimizer.step`` + ``zero_grad``
other          update time minus the phases above     (shaping, GAE, losses, logging, gc.collect)
============== ====================================== =============================================
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .workload import TRL_VERSION

__all__ = [
    "PHASES", "TARGETS", "MAX_OVERHEAD", "STEM", "WARMUP_TOLERANCE", "warmup_updates", "steady_mean", "summarise_run",
    "summarise_runs", "system_summary", "rounds_of", "summarise_systems", "pairwise_ratios", "overhead",
    "evaluate_targets", "memory_key", "system_label", "render_markdown", "render_figure", "write_report",
]

PHASES = ("generate", "old_forward", "ref_forward", "score", "train_forward", "backward", "optimizer", "other")
PHASE_LABELS = {"generate": "generation", "old_forward": "old log-probs / value forward", "ref_forward": "reference forward",
                "score": "reward (VADER)", "train_forward": "training forward", "backward": "backward",
                "optimizer": "optimizer", "other": "other"}
MODE_LABELS = {"separate": "ppo_lib, separate critic", "shared": "ppo_lib, shared value head", "lora": "ppo_lib, LoRA",
               "shared_exact": "ppo_lib, shared value head, exact π_old", "lora_no_ckpt": "ppo_lib, LoRA, no checkpointing"}

# system -> (max time ratio to TRL, max peak-memory ratio to TRL); overhead over the floor ≤ MAX_OVERHEAD everywhere.
TARGETS = {"separate": (1.0, None), "shared": (0.65, 0.6), "lora": (0.4, 0.35)}
MAX_OVERHEAD = 0.10

STEM = "bench_cpu"  # bench_cpu.{json,md,png}; a GPU run writes bench_gpu.*
MEMORY_LABELS = {"peak_rss_mb": "peak RSS", "peak_gpu_mb": "peak GPU memory"}


def memory_key(results: dict) -> str:
    """Which memory the targets compare: host RSS on the CPU, allocated GPU memory on a GPU."""
    return "peak_gpu_mb" if results.get("workload", {}).get("device") == "cuda" else "peak_rss_mb"


# ----------------------------------------------------------------------------- arithmetic
WARMUP_TOLERANCE = 0.20  # an update this much slower than the median of the updates after it is still warming up


def warmup_updates(totals: list[float], tolerance: float = WARMUP_TOLERANCE) -> int:
    """How many leading updates of one run are warm-up, judged by their totals (seconds per update).

    The first update is warm-up whenever there are two or more; after it, each next update is
    warm-up while its total exceeds the median of the totals after it by more than ``tolerance``
    (20 %); at most half the updates are warm-up, so at least half are kept. Only leading
    updates are dropped: a slow update later in the run is part of the steady state.
    ``[30, 25, 10, 11, 9, 10]`` → 2, ``[10, 10.5, 9.5]`` → 1, ``[5]`` → 0.
    """
    n = 1 if len(totals) > 1 else 0
    while n < len(totals) // 2 and totals[n] > (1 + tolerance) * statistics.median(totals[n + 1:]):
        n += 1
    return n


def steady_mean(values: list[float], warmup: int | None = None) -> float:
    """Mean of per-update values after the first ``warmup`` ones; by default the warm-up that
    :func:`warmup_updates` finds in ``values`` themselves (``warmup=0``: the mean of all)."""
    if warmup is None:
        warmup = warmup_updates(values)
    steady = values[warmup:]
    if not steady:
        raise ValueError(f"a steady state needs at least one value after the warm-up ({len(values)} values, "
                         f"warmup={warmup}).")
    return sum(steady) / len(steady)


def _phase_rows(per_update: list[dict]) -> list[dict]:
    """Per-update phase seconds with ``other``, the update time not covered by a named phase
    (computed per update, so the phases of a row add up to its ``total`` exactly)."""
    rows = []
    for u in per_update:
        row = {p: float(u.get(p, 0.0)) for p in PHASES if p != "other"}
        row["other"] = max(float(u["total"]) - sum(row.values()), 0.0)
        row["total"] = float(u["total"])
        rows.append(row)
    return rows


def summarise_runs(runs: list[list[dict]], tokens_per_update: int) -> dict:
    """One system's runs (one per round), each per-update phase seconds ``[{phase: s, ...,
    "total": s}, ...]`` → one steady-state summary.

    Each run's warm-up (:func:`warmup_updates` of its totals) is dropped on its own; the means
    pool the steady updates of all runs. Returns ``{"phases": {phase: s}, "total": s,
    "tokens_per_s": …, "median": …, "cv": …, "n_warmup": [...], "n_steady": …,
    "per_update_total": [[...], ...]}``: the median of the steady totals, their coefficient
    of variation (standard deviation over mean), the updates dropped in each run, the updates
    kept in all runs, and every total, one list per run.
    """
    steady, n_warmup, per_run_totals = [], [], []
    for per_update in runs:
        rows = _phase_rows(per_update)
        totals = [r["total"] for r in rows]
        n = warmup_updates(totals)
        steady += rows[n:]
        n_warmup.append(n)
        per_run_totals.append(totals)
    if not steady:
        raise ValueError("a steady state needs at least one update.")
    phases = {p: statistics.fmean(r[p] for r in steady) for p in PHASES}
    totals = [r["total"] for r in steady]
    total = statistics.fmean(totals)
    return {"phases": phases, "total": total, "tokens_per_s": tokens_per_update / total,
            "median": statistics.median(totals),  # robust to a few disturbed updates
            "cv": statistics.stdev(totals) / total if len(totals) > 1 else 0.0,
            "n_warmup": n_warmup, "n_steady": len(totals), "per_update_total": per_run_totals}


def summarise_run(per_update: list[dict], tokens_per_update: int) -> dict:
    """One run's per-update phase seconds → its steady-state summary (:func:`summarise_runs` of one run)."""
    return summarise_runs([per_update], tokens_per_update)


def system_summary(raws: list[dict], tokens_per_update: int) -> dict:
    """One system's raw child results, one per round → its summary: :func:`summarise_runs`
    plus its peak memory (the largest of the rounds)."""
    summary = summarise_runs([raw["per_update"] for raw in raws], tokens_per_update)
    summary["peak_rss_mb"] = max(raw["peak_rss_mb"] for raw in raws)
    gpu = [raw["peak_gpu_mb"] for raw in raws if raw.get("peak_gpu_mb") is not None]
    if gpu:
        summary["peak_gpu_mb"] = max(gpu)
    return summary


def rounds_of(results: dict) -> list[dict]:
    """The raw child results, one dict ``{system: raw}`` per round: ``results["rounds"]``; for a
    JSON written before rounds existed, its one ``results["raw"]`` as the only round; [] if neither."""
    if "rounds" in results:
        return results["rounds"]
    return [results["raw"]] if results.get("raw") else []


def summarise_systems(results: dict) -> dict:
    """Every system that has raw timings → its :func:`system_summary` over all its rounds."""
    w = results["workload"]
    rounds = rounds_of(results)
    names = dict.fromkeys(name for r in rounds for name in r)  # in order of first appearance
    return {name: system_summary([r[name] for r in rounds if name in r], w["batch_size"] * w["response_length"])
            for name in names}


def pairwise_ratios(results: dict, name: str, base: str = "trl") -> list[float]:
    """``name``'s time over ``base``'s, one ratio per round in which both ran: the steady mean
    of ``name``'s totals in that round over ``base``'s in the same round.

    Without raw timings for the pair (a results dict of summaries only), the one ratio of the
    two summaries' totals; [] when either did not run.
    """
    def steady_total(raw: dict) -> float:
        return steady_mean([float(u["total"]) for u in raw["per_update"]])

    ratios = [steady_total(r[name]) / steady_total(r[base]) for r in rounds_of(results) if name in r and base in r]
    systems = results.get("systems", {})
    if not ratios and name in systems and base in systems:
        ratios = [systems[name]["total"] / systems[base]["total"]]
    return ratios


def _spread(values: list[float]) -> dict:
    """The median of per-round values (the one a target is checked on), their min and max, and how many."""
    return {"value": statistics.median(values), "min": min(values), "max": max(values), "pairs": len(values)}


def overhead(library_seconds: float, floor_seconds: float) -> float:
    """Library time beyond the floor, as a fraction of the floor: ``lib / floor − 1``."""
    if floor_seconds <= 0:
        raise ValueError(f"floor_seconds must be > 0, got {floor_seconds}.")
    return library_seconds / floor_seconds - 1.0


def evaluate_targets(results: dict) -> list[dict]:
    """Check every target of the benchmark: returns rows ``{system, target, value, limit, met}``
    (the time and overhead rows also ``min``, ``max`` and ``pairs``: the range over the rounds).

    ``results["systems"]`` maps ``trl`` / ``separate`` / ``shared`` / ``lora`` (and
    ``floor_<mode>``) to summaries with ``total`` (s per update) and ``peak_rss_mb``.
    The time ratio to TRL and the overhead over the floor are the median of the ratios
    taken within each round (:func:`pairwise_ratios`); from the summaries' totals when there
    are no raw timings. Memory compares the summaries' peaks. Systems that did not run are skipped.
    """
    systems = results.get("systems", {})
    rows = []
    trl = systems.get("trl")
    mem_key = memory_key(results)
    for mode, (t_max, m_max) in TARGETS.items():
        s = systems.get(mode)
        if s is None:
            continue
        if trl is not None:
            ratio = _spread(pairwise_ratios(results, mode))
            rows.append({"system": mode, "target": "time / TRL", **ratio, "limit": t_max,
                         "met": ratio["value"] <= t_max})
            if m_max is not None:
                mem = s[mem_key] / trl[mem_key]
                rows.append({"system": mode, "target": f"{MEMORY_LABELS[mem_key]} / TRL", "value": mem, "limit": m_max,
                             "met": mem <= m_max})
        if f"floor_{mode}" in systems:
            o = _spread([r - 1.0 for r in pairwise_ratios(results, mode, f"floor_{mode}")])  # overhead, round by round
            row = {"system": mode, "target": "overhead over floor", **o, "limit": MAX_OVERHEAD,
                   "met": o["value"] <= MAX_OVERHEAD}
            if o["value"] < -0.05:  # a floor cannot be beaten by more than noise: say so rather than claim a win
                row["note"] = "the floor ran slower than the library: within run-to-run noise"
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report
SYSTEM_ORDER = ("trl", "separate", "floor_separate", "shared", "shared_exact", "floor_shared", "lora", "lora_no_ckpt",
                "floor_lora")


def system_label(name: str) -> str:
    """A system's row label: "TRL 1.12.0 PPO", "floor (shared)", "ppo_lib, LoRA", ..."""
    if name == "trl":
        return f"TRL {TRL_VERSION} PPO"
    if name.startswith("floor_"):
        return f"floor ({name[6:]})"
    return MODE_LABELS.get(name, name)


def render_markdown(results: dict) -> str:
    """The results as a markdown table (seconds per update by phase, their spread, throughput,
    memory, ratios to TRL) and the targets; with several rounds, a note that says how they ran."""
    systems = results["systems"]
    names = [n for n in SYSTEM_ORDER if n in systems]
    trl = systems.get("trl")
    w = results["workload"]
    n_rounds = max(len(rounds_of(results)), 1)
    mem_key = memory_key(results)
    mem = MEMORY_LABELS[mem_key]
    where = f"{w['gpu']}" if w["device"] == "cuda" else f"CPU, {w['torch_threads']} torch threads"
    per_round, of_all = (f" in each of {n_rounds} rounds", " of all rounds") if n_rounds > 1 else ("", "")
    lines = [f"# ppo_lib vs TRL {TRL_VERSION} PPO" + (" (GPU)" if w["device"] == "cuda" else " vs the floor (CPU)"), "",
             f"{w['model']}, {w['dtype']}, {where}; B = {w['batch_size']}, "
             f"T = {w['response_length']} tokens, {w['updates']} updates per system{per_round} (warm-up excluded). "
             f"Load average (1, 5, 15 min) before {_fmt_load(results.get('loadavg_before'))}, "
             f"after {_fmt_load(results.get('loadavg_after'))}.", "",
             f"Seconds per update by phase: the mean over the steady updates{of_all}; "
             "beside the total, the median of their totals, their coefficient of variation (CV), and the warm-up "
             f"updates left out{per_round} (the first, then each next one while it is more than "
             f"{WARMUP_TOLERANCE:.0%} slower than the median of the updates after it; at most half)."
             + (" Time / TRL: the median of the ratios taken within each round (min–max, number of pairs)."
                if n_rounds > 1 else ""), "",
             "| system | " + " | ".join(PHASE_LABELS[p] for p in PHASES)
             + f" | **total** | median | CV | warm-up | tokens/s | {mem} (MiB) |"
             + (" time / TRL | memory / TRL |" if trl else ""),
             "| --- | " + " | ".join("---:" for _ in PHASES) + " | ---: | ---: | ---: | ---: | ---: | ---: |"
             + (" ---: | ---: |" if trl else "")]
    for n in names:
        s = systems[n]
        digits = 3 if w["device"] == "cuda" else 2
        row = f"| {system_label(n)} | " + " | ".join(f"{s['phases'][p]:.{digits}f}" for p in PHASES)
        median = f"{s['median']:.{digits}f}" if "median" in s else "–"
        cv = f"{s['cv']:.0%}" if "cv" in s else "–"
        warmup = "/".join(str(k) for k in s["n_warmup"]) if "n_warmup" in s else "–"
        row += f" | **{s['total']:.{digits}f}** | {median} | {cv} | {warmup} | {s['tokens_per_s']:.1f}"
        row += f" | {s[mem_key]:.0f} |"
        if trl:
            ratio = "1.00" if n == "trl" else _fmt_spread(_spread(pairwise_ratios(results, n)), "{:.2f}", "–")
            row += f" {ratio} | {s[mem_key] / trl[mem_key]:.2f} |"
        lines.append(row)
    if results.get("targets"):
        lines += ["", "Targets:", "", "| mode | target | value | limit | met |", "| --- | --- | ---: | ---: | --- |"]
        for t in results["targets"]:
            if t["target"] == "overhead over floor":
                value, limit = _fmt_spread(t, "{:+.1%}", " to "), f"≤ {t['limit']:.0%}"
            else:
                value, limit = _fmt_spread(t, "{:.2f}", "–"), f"≤ {t['limit']:.2f}"
            lines.append(f"| {t['system']} | {t['target']} | {value} | {limit} | "
                         f"{'yes' if t['met'] else '**no**'}{' (' + t['note'] + ')' if t.get('note') else ''} |")
    for name, err in results.get("errors", {}).items():
        lines += ["", f"**{name} did not run**: `{err.strip().splitlines()[-1] if err.strip() else err}`"]
    notes = list(results.get("notes", []))
    if n_rounds > 1:
        notes.insert(0, f"The systems ran interleaved over {n_rounds} rounds (A B A B: every system once per round, "
                        "TRL first, then the next round); each ratio to TRL or to a floor is taken within a round, "
                        "and the tables give the median over the rounds with its min–max.")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _fmt_spread(spread: dict, fmt: str, dash: str) -> str:
    """A ratio as "0.53", or, over several rounds, "0.53 (0.50–0.57, 3 pairs)": median, range, count
    (``fmt`` formats each number, ``dash`` joins min and max)."""
    text = fmt.format(spread["value"])
    if spread.get("pairs", 1) > 1:
        text += f" ({fmt.format(spread['min'])}{dash}{fmt.format(spread['max'])}, {spread['pairs']} pairs)"
    return text


def _fmt_load(load) -> str:
    """Load averages (1, 5, 15 min) as "1.00/1.50/2.00", or "n/a"."""
    return "n/a" if not load else "/".join(f"{x:.2f}" for x in load)


def render_figure(results: dict, path: Path):
    """Stacked bars of seconds per update by phase (one bar per system) beside peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    names = [n for n in SYSTEM_ORDER if n in systems]
    labels = [system_label(n).replace(", ", "\n") for n in names]
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1.4]})
    colors = plt.get_cmap("tab10").colors
    bottom = [0.0] * len(names)
    for i, p in enumerate(PHASES):
        vals = [systems[n]["phases"][p] for n in names]
        ax.bar(range(len(names)), vals, bottom=bottom, color=colors[i % 10], label=PHASE_LABELS[p],
               edgecolor="white", linewidth=0.5)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        ax.text(i, bottom[i], f"{systems[n]['total']:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), labels, fontsize=7)
    ax.set_ylabel("seconds per PPO update")
    w = results["workload"]
    where = w["gpu"] + ", bf16" if w["device"] == "cuda" else f"fp32, CPU ×{w['torch_threads']} threads"
    ax.set_title(f"{w['model']} {where}, B={w['batch_size']}, T={w['response_length']}")
    ax.legend(fontsize=7, ncol=2)
    mem_key = memory_key(results)
    mem = [systems[n][mem_key] / 1024 for n in names]
    ax_mem.barh(range(len(names)), mem, color=["#888" if n.startswith("floor") else "#d62" if n == "trl" else "#3a7" for n in names])
    for i, m in enumerate(mem):
        ax_mem.text(m, i, f" {m:.2f}", va="center", fontsize=7)
    ax_mem.set_yticks(range(len(names)), [system_label(n) for n in names], fontsize=7)
    ax_mem.invert_yaxis()
    ax_mem.set_xlabel(f"{MEMORY_LABELS[mem_key]} (GiB)")
    ax_mem.set_xlim(0, max(mem) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: Path, stem: str = STEM) -> list[Path]:
    """Write ``{stem}.md`` (:func:`render_markdown`) and ``{stem}.png`` (:func:`render_figure`) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(render_markdown(results))
    png = render_figure(results, out_dir / f"{stem}.png")
    return [md, png]
