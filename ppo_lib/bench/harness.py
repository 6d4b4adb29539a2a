"""Run every system of the benchmark, each in its own process, round after round, and collect the results.

:func:`run_all` writes the workload to one JSON file, starts one process per system (the
ppo_lib modes and their variants and floors through :mod:`ppo_lib.bench.child`, TRL through
:mod:`ppo_lib.bench.trl_side` in its own virtual environment), each reading that file, and
gathers their raw timings and summaries. With ``--repeats R`` it does so R times, in rounds:
every system once (TRL first), then every system again, ... (A B A B), so that a slow
stretch of the machine reaches every system alike and each ratio to TRL can be taken
within one round. ``ppo_lib`` never imports TRL: :func:`trl_python` makes a virtual
environment for it on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..profiling import machine
from .report import MEMORY_LABELS, evaluate_targets, memory_key, pairwise_ratios, summarise_systems, system_summary
from .workload import TRL_VERSION, WORKLOAD, bench_prompts

__all__ = ["VARIANTS", "TORCH_VERSION", "trl_python", "run_all"]

TORCH_VERSION = "2.13.0"  # torch of TRL's virtual environment (the CPU wheel)
# mode -> (system name, child flag): the same mode once more with the library's other setting
VARIANTS = {"shared": ("shared_exact", "--exact"), "lora": ("lora_no_ckpt", "--no-checkpointing")}


def trl_python(venv: Path) -> Path:
    """The python of the TRL virtual environment, created on first use with torch (CPU),
    ``trl==TRL_VERSION`` and vaderSentiment, and the transformers and accelerate that ppo_lib
    runs with, so that both sides run the same model code."""
    py = venv / "bin" / "python"
    marker = venv / ".ppo_lib_bench_ready"
    if py.exists() and marker.exists():
        return py
    print(f"creating the TRL virtual environment in {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)  # the CPU wheel; plain `torch` pulls CUDA
    import accelerate
    import transformers

    subprocess.run(pip + [f"trl=={TRL_VERSION}", "vaderSentiment", f"transformers=={transformers.__version__}",
                          f"accelerate=={accelerate.__version__}"], check=True)
    marker.write_text("ok\n")
    return py


def _run_child(name: str, cmd: list[str], out: Path, log: Path, threads: int) -> dict:
    """Run one system's process (its output into ``log``) and return the JSON it wrote to ``out``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    print(f"  {name} ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        error = RuntimeError(f"benchmark child failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
        error.returncode = proc.returncode
        raise error
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def run_all(args: argparse.Namespace, json_path: Path | None = None) -> dict:
    """Run every system in its own process, ``args.repeats`` rounds of them, and collect the raw
    results and summaries.

    ``args`` are those of ``python -m ppo_lib bench``; ``--updates``, ``--floor-updates``
    and ``--device`` replace those fields of :data:`~ppo_lib.bench.workload.WORKLOAD`, and
    nothing else changes it. The raw child results go to ``results["rounds"]``, one dict
    ``{system: raw}`` per round; ``results["systems"]`` are the summaries over all rounds.
    A child that fails is recorded in ``results["errors"]`` (with its round) and the rest
    go on. With ``json_path``, the results so far are written there after every system, so
    an interrupted run keeps what it measured.
    """
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be at least 1, got {args.repeats}.")
    import torch
    import transformers

    from ..models import cache_dir, load_model

    workload = dataclasses.replace(WORKLOAD, updates=args.updates, floor_updates=args.floor_updates,
                                   device=args.device)
    load_model(workload.model)  # make sure the safetensors cache exists before the children start
    tmp = Path(tempfile.mkdtemp(prefix="ppo_lib_bench-"))
    workload_file = tmp / "workload.json"
    workload_file.write_text(workload.to_json())  # the one file every side reads
    gpu = torch.cuda.get_device_name(0) if workload.device == "cuda" else None
    results = {"workload": workload.record(gpu),
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__},
               "machine": machine(),
               "loadavg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "repeats": args.repeats, "rounds": [], "systems": {}, "errors": {}}
    jobs = []
    child = [sys.executable, "-m", "ppo_lib.bench.child"]
    reads = ["--workload", str(workload_file)]
    for mode in args.modes:
        jobs.append((mode, child + ["ppo_lib", mode] + reads))
        if not args.skip_variants and mode in VARIANTS:
            name, flag = VARIANTS[mode]
            jobs.append((name, child + ["ppo_lib", mode, flag] + reads))
        if not args.skip_floor and workload.device == "cpu":  # the floors are written for the CPU
            jobs.append((f"floor_{mode}", child + ["floor", mode] + reads))
    if not args.skip_trl:
        try:
            py = Path(args.trl_python) if args.trl_python else trl_python(Path(args.trl_venv))
            prompts_file = tmp / "prompts.json"  # the TRL side has no ppo_lib to read them from
            prompts_file.write_text(json.dumps(bench_prompts(workload)))
            script = Path(__file__).with_name("trl_side.py")
            jobs.insert(0, ("trl", [str(py), str(script), "--model-dir", str(cache_dir() / workload.model),
                                    "--prompts", str(prompts_file)] + reads))
        except (subprocess.CalledProcessError, OSError) as e:
            results["errors"]["trl"] = f"could not set up TRL {TRL_VERSION}: {type(e).__name__}: {e}"
    for r in range(args.repeats):  # A B A B: every system once, then every system again
        results["rounds"].append({})
        label = f"round {r + 1}/{args.repeats}"
        print(f"{label}:", flush=True)
        for name, cmd in jobs:
            out = tmp / f"{name}.json"
            out.unlink(missing_ok=True)  # never read the previous round's result
            try:
                raw = _run_child(name, cmd + ["--out", str(out)], out, tmp / f"{name}.log", workload.torch_threads)
            except RuntimeError as e:
                print(f"  {name} FAILED: {str(e)[-1500:]}", flush=True)
                # the JSON keeps the exception's last line only: a traceback holds this machine's paths
                lines = [line for line in str(e).splitlines() if line.strip()]
                error = f"exit status {getattr(e, 'returncode', '?')}: {lines[-1] if lines else e}"
                results["errors"][name] = f"{label}: {error}" if args.repeats > 1 else error
                continue
            results["rounds"][r][name] = raw
            results["systems"].update(summarise_systems(results))  # over every round so far
            this = system_summary([raw], workload.tokens_per_update)  # this round alone
            mem_key = memory_key(results)
            line = f"  {name}: {this['total']:.2f} s/update, {this[mem_key]:.0f} MiB {MEMORY_LABELS[mem_key]}"
            if name != "trl" and "trl" in results["rounds"][r]:
                (ratio,) = pairwise_ratios({"rounds": [results["rounds"][r]]}, name)
                line += f", {ratio:.2f} × TRL's time in this round"
            print(line, flush=True)
            if json_path is not None:  # a partial result survives an interrupted run
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps({**results, "partial": True}, indent=1) + "\n")
    trl_raw = next((rnd["trl"] for rnd in results["rounds"] if "trl" in rnd), None)
    if trl_raw is not None:
        results["versions"]["trl_side"] = trl_raw.get("versions", {})
    results["loadavg_after"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    shutil.rmtree(tmp, ignore_errors=True)
    return results
