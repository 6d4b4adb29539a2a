"""The benchmark's arithmetic and report: steady-state means, overhead over the floor, the
targets, the markdown table and the figure (chapter 07).

Everything here works on the results dict that :func:`~ppo_lib.bench.harness.run_all`
returns and ``figures/runs/bench_*.json`` stores, so ``python -m ppo_lib bench --report-only``
redraws a published run from its raw timings without running anything.

Phases (seconds per update, the first update excluded):

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
    "PHASES", "TARGETS", "MAX_OVERHEAD", "STEM", "steady_mean", "summarise_run", "system_summary", "overhead",
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
def _steady(values: list[float], skip_first: bool = True) -> list[float]:
    """Per-update values with the first (warm-up) one left out when there are at least two."""
    if not values:
        raise ValueError("a steady state needs at least one value.")
    return values[1:] if skip_first and len(values) > 1 else values


def steady_mean(values: list[float], skip_first: bool = True) -> float:
    """Mean of per-update values, the first (warm-up) one left out when there are at least two."""
    vals = _steady(values, skip_first)
    return sum(vals) / len(vals)


def summarise_run(per_update: list[dict], tokens_per_update: int) -> dict:
    """Per-update phase seconds ``[{phase: s, ..., "total": s}, ...]`` → steady-state summary.

    ``other`` is the update time not covered by a named phase (computed per update, so
    the phases add up to ``total`` exactly). Returns ``{"phases": {phase: s}, "total": s,
    "tokens_per_s": …, "n_steady": …}``.
    """
    rows = []
    for u in per_update:
        row = {p: float(u.get(p, 0.0)) for p in PHASES if p != "other"}
        row["other"] = max(float(u["total"]) - sum(row.values()), 0.0)
        row["total"] = float(u["total"])
        rows.append(row)
    phases = {p: steady_mean([r[p] for r in rows]) for p in PHASES}
    totals = [r["total"] for r in rows]
    total = steady_mean(totals)
    return {"phases": phases, "total": total, "tokens_per_s": tokens_per_update / total,
            "median": statistics.median(_steady(totals)),  # robust to a few disturbed updates
            "n_steady": max(len(rows) - 1, 1), "per_update_total": [r["total"] for r in rows]}


def system_summary(raw: dict, tokens_per_update: int) -> dict:
    """One system's raw child result → its summary: :func:`summarise_run` plus its peak memory."""
    summary = summarise_run(raw["per_update"], tokens_per_update)
    summary["peak_rss_mb"] = raw["peak_rss_mb"]
    if raw.get("peak_gpu_mb") is not None:
        summary["peak_gpu_mb"] = raw["peak_gpu_mb"]
    return summary


def overhead(library_seconds: float, floor_seconds: float) -> float:
    """Library time beyond the floor, as a fraction of the floor: ``lib / floor − 1``."""
    if floor_seconds <= 0:
        raise ValueError(f"floor_seconds must be > 0, got {floor_seconds}.")
    return library_seconds / floor_seconds - 1.0


def evaluate_targets(results: dict) -> list[dict]:
    """Check every target of the benchmark: returns rows ``{system, target, value, limit, met}``.

    ``results["systems"]`` maps ``trl`` / ``separate`` / ``shared`` / ``lora`` (and
    ``floor_<mode>``) to summaries with ``total`` (s per update) and ``peak_rss_mb``.
    Systems that did not run are skipped.
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
            ratio = s["total"] / trl["total"]
            rows.append({"system": mode, "target": "time / TRL", "value": ratio, "limit": t_max, "met": ratio <= t_max})
            if m_max is not None:
                mem = s[mem_key] / trl[mem_key]
                rows.append({"system": mode, "target": f"{MEMORY_LABELS[mem_key]} / TRL", "value": mem, "limit": m_max,
                             "met": mem <= m_max})
        floor = systems.get(f"floor_{mode}")
        if floor is not None:
            o = overhead(s["total"], floor["total"])
            row = {"system": mode, "target": "overhead over floor", "value": o, "limit": MAX_OVERHEAD,
                   "met": o <= MAX_OVERHEAD}
            if o < -0.05:  # a floor cannot be beaten by more than noise: say so rather than claim a win
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
    """The results as a markdown table (seconds per update by phase, throughput, memory) and the targets."""
    systems = results["systems"]
    names = [n for n in SYSTEM_ORDER if n in systems]
    trl = systems.get("trl")
    w = results["workload"]
    mem_key = memory_key(results)
    mem = MEMORY_LABELS[mem_key]
    where = f"{w['gpu']}" if w["device"] == "cuda" else f"CPU, {w['torch_threads']} torch threads"
    lines = [f"# ppo_lib vs TRL {TRL_VERSION} PPO" + (" (GPU)" if w["device"] == "cuda" else " vs the floor (CPU)"), "",
             f"{w['model']}, {w['dtype']}, {where}; B = {w['batch_size']}, "
             f"T = {w['response_length']} tokens, {w['updates']} updates (first excluded). "
             f"Load average (1, 5, 15 min) before {_fmt_load(results.get('loadavg_before'))}, "
             f"after {_fmt_load(results.get('loadavg_after'))}.", "",
             "Seconds per update by phase: the mean over the updates after the first (the median of their totals beside it):", "",
             "| system | " + " | ".join(PHASE_LABELS[p] for p in PHASES) + f" | **total** | median | tokens/s | {mem} (MiB) |"
             + (" time / TRL | memory / TRL |" if trl else ""),
             "| --- | " + " | ".join("---:" for _ in PHASES) + " | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if trl else "")]
    for n in names:
        s = systems[n]
        digits = 3 if w["device"] == "cuda" else 2
        row = f"| {system_label(n)} | " + " | ".join(f"{s['phases'][p]:.{digits}f}" for p in PHASES)
        median = f"{s['median']:.{digits}f}" if "median" in s else "–"
        row += f" | **{s['total']:.{digits}f}** | {median} | {s['tokens_per_s']:.1f} | {s[mem_key]:.0f} |"
        if trl:
            row += f" {s['total'] / trl['total']:.2f} | {s[mem_key] / trl[mem_key]:.2f} |"
        lines.append(row)
    if results.get("targets"):
        lines += ["", "Targets:", "", "| mode | target | value | limit | met |", "| --- | --- | ---: | ---: | --- |"]
        for t in results["targets"]:
            value = f"{t['value']:+.1%}" if t["target"] == "overhead over floor" else f"{t['value']:.2f}"
            limit = f"≤ {t['limit']:.0%}" if t["target"] == "overhead over floor" else f"≤ {t['limit']:.2f}"
            lines.append(f"| {t['system']} | {t['target']} | {value} | {limit} | "
                         f"{'yes' if t['met'] else '**no**'}{' (' + t['note'] + ')' if t.get('note') else ''} |")
    for name, err in results.get("errors", {}).items():
        lines += ["", f"**{name} did not run**: `{err.strip().splitlines()[-1] if err.strip() else err}`"]
    if results.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


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
