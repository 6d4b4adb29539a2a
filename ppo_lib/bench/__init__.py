"""``python -m ppo_lib bench``: ppo_lib against TRL 1.12.0's PPO and against the raw-compute floor (chapter 07).

    python -m ppo_lib bench                      # everything: ppo_lib (3 modes + 2 variants), floors, TRL; ~20 min on 2 cores
    python -m ppo_lib bench --device cuda        # the same workload on a GPU in bf16 (no floors) -> bench_gpu.*
    python -m ppo_lib bench --updates 2 --skip-trl   # a quick check of the harness
    python -m ppo_lib bench --modes shared separate --skip-variants --repeats 3 --updates 10
                                                 # the headline, robust: 3 rounds A B A B, ratios within a round
    python -m ppo_lib bench --report-only        # redraw figures/runs/bench_cpu.{md,png} from its .json

One workload on every side: ``WORKLOAD`` in ``ppo_lib/bench/workload.py``, a frozen
``Workload`` and the only place where a setting of the benchmark is written (they are listed
at the end of ``--help`` and recorded in every results JSON). ``--updates``,
``--floor-updates`` and ``--device`` replace those three fields; every process reads the
result from one JSON file.

What runs, each in its own process (so each peak RSS is its own):

* ``ppo_lib`` in three modes: ``separate`` (a second backbone for the critic, TRL's
  design), ``shared`` (one backbone with a value head) and ``lora`` (LoRA adapters; the
  reference is the base model with the adapter disabled, no copy). Like TRL, they keep
  π_old's log-probs from the sampling pass (``reuse_sampling_logprobs``) and clip no
  gradient norm; LoRA also checkpoints activations (``gradient_checkpointing``). Two
  variants show what those settings cost or save: ``shared_exact`` (the library's default,
  one more no-grad forward pass for a first ratio of exactly 1) and ``lora_no_ckpt``;
* the **floor** of each mode: the same model operations on the same shapes (a KV-cache
  sampling loop that keeps the log-probs, a no-grad forward of the separate critic, the
  reference forward, training forwards, backwards, fused AdamW steps) written inline
  with no library logic;
* TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` (``ppo_lib/bench/trl_side.py``), in its
  own virtual environment (``.venv-trl/`` by default, created on first use), since TRL is
  never a dependency of ``ppo_lib``.

They run one after another, in ``--repeats`` rounds (default 1): every system once, TRL
first, then every system again (A B A B), so that a slow stretch of the machine reaches
every system alike. Each run's leading warm-up updates are left out
(``report.warmup_updates``: the first, then each next one while it is more than 20 % slower
than the median of the updates after it; at most half are left out). Each ratio to TRL or to
a floor is taken within a round; the targets use the median over the rounds, and the tables
give it with its min–max.

The package, one concept a module:

    workload.py      Workload: every setting, once; ppo_lib's PPOConfig and TRL's config are made from it
    library_side.py  ppo_lib's trainer on the workload, timed by its own time/* statistics
    floor.py         the raw-compute floor: the same model operations inline, no library logic
    trl_side.py      TRL's PPOTrainer on the workload, run by TRL's python (imports no ppo_lib)
    child.py         one system in its own process: python -m ppo_lib.bench.child KIND MODE ...
    harness.py       runs every system, in rounds, and collects the results; makes TRL's virtual environment
    report.py        warm-up detection, steady-state means, ratios within a round, overhead, targets, table, figure
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from .harness import run_all
from .report import (MAX_OVERHEAD, MEMORY_LABELS, PHASES, STEM, TARGETS, WARMUP_TOLERANCE, evaluate_targets, memory_key,
                     overhead, pairwise_ratios, render_figure, render_markdown, rounds_of, steady_mean, summarise_run,
                     summarise_runs, summarise_systems, system_summary, warmup_updates, write_report)
from .workload import (MODES, TRL_VERSION, WORKLOAD, Workload, bench_config, bench_prompts,
                       trl_config_kwargs)

__all__ = [
    "Workload", "WORKLOAD", "MODES", "TRL_VERSION", "LORA_RANK", "bench_config", "trl_config_kwargs", "bench_prompts",
    "PHASES", "TARGETS", "MAX_OVERHEAD", "MEMORY_LABELS", "WARMUP_TOLERANCE", "warmup_updates", "steady_mean",
    "summarise_run", "summarise_runs", "system_summary", "rounds_of", "summarise_systems", "pairwise_ratios",
    "overhead", "evaluate_targets", "memory_key", "render_markdown", "render_figure", "write_report", "run_all",
    "add_bench_parser", "run_bench",
]

LORA_RANK = WORKLOAD.lora_rank  # the published r; read it from the workload, never write it twice

FIG_DIR = Path("figures") / "runs"  # benchmark results live with the other run records


def run_bench(args: argparse.Namespace) -> int:
    """``python -m ppo_lib bench``: run every system (or, with ``--report-only``, only redraw),
    then write ``{stem}.json`` (a run only), ``{stem}.md`` and ``{stem}.png`` into ``--out-dir``."""
    out_dir = Path(args.out_dir)
    stem = "bench_gpu" if args.device == "cuda" else STEM
    json_path = out_dir / f"{stem}.json"
    if args.report_only:
        if not json_path.exists():
            raise SystemExit(f"error: {json_path} does not exist; run `python -m ppo_lib bench` first.")
        results = json.loads(json_path.read_text())
        # the summaries are recomputed from the raw timings of every round (a JSON from before
        # rounds existed has one round, "raw"), with the workload that run recorded
        results["systems"].update(summarise_systems(results))
        results["targets"] = evaluate_targets(results)
    else:
        args.modes = args.modes or list(MODES)
        results = run_all(args, json_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1) + "\n")
    for path in [json_path, *write_report(results, out_dir, stem)]:
        print(path)
    print(render_markdown(results))
    return 0


def add_bench_parser(sub) -> None:
    """Add the ``bench`` subcommand to the subparsers ``sub`` of ``python -m ppo_lib``."""
    settings = ", ".join(f"{k}={v!r}" for k, v in WORKLOAD.items())
    description = __doc__ + "\nThe workload (ppo_lib/bench/workload.py):\n\n" + textwrap.fill(
        settings, width=100, initial_indent="    ", subsequent_indent="    ")
    p = sub.add_parser("bench", help=f"benchmark ppo_lib against TRL {TRL_VERSION} PPO and the raw-compute floor",
                       description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=WORKLOAD.updates,
                   help=f"PPO updates per system and round (default {WORKLOAD.updates})")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="rounds: run every system R times, interleaved (TRL, the modes, ..., then all again), "
                        "and take each ratio to TRL within a round; the tables give the median and min–max over "
                        "the rounds (default 1)")
    p.add_argument("--floor-updates", type=int, default=WORKLOAD.floor_updates,
                   help=f"iterations of each floor (default {WORKLOAD.floor_updates})")
    p.add_argument("--modes", nargs="+", choices=MODES, help="ppo_lib modes (default: all three)")
    p.add_argument("--skip-trl", action="store_true", help="do not run TRL")
    p.add_argument("--skip-floor", action="store_true", help="do not run the floors")
    p.add_argument("--skip-variants", action="store_true",
                   help="do not run shared with exact π_old and LoRA without checkpointing")
    p.add_argument("--trl-venv", default=".venv-trl", help="virtual environment for TRL (default .venv-trl/, created once)")
    p.add_argument("--trl-python", help=f"a python that already has trl=={TRL_VERSION} (instead of --trl-venv)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=WORKLOAD.device,
                   help="cuda: the same workload on a GPU in bf16 autocast, without floors (bench_gpu.*)")
    p.add_argument("--out-dir", default=str(FIG_DIR), help="where bench_cpu.{json,md,png} go (default figures/runs/)")
    p.add_argument("--report-only", action="store_true", help="only redraw the table and figure from the JSON")
    p.set_defaults(run=run_bench)
