"""``python -m ppo_lib bench``: ppo_lib against TRL 1.12.0's PPO and against the raw-compute floor (chapter 07).

    python -m ppo_lib bench                      # everything: ppo_lib (3 modes + 2 variants), floors, TRL; ~20 min on 2 cores
    python -m ppo_lib bench --device cuda        # the same workload on a GPU in bf16 (no floors) -> bench_gpu.*
    python -m ppo_lib bench --updates 2 --skip-trl   # a quick check of the harness
    python -m ppo_lib bench --report-only        # redraw figures/runs/bench_cpu.{md,png} from its .json

One workload on both sides: SmolLM2-135M in float32 on the CPU with 2 torch threads; 64
movie-review openings, left-padded; B = 16 prompts per update; exactly T = 24 response
tokens (no stop token), sampled at temperature 0.7 with top-k/top-p off; one PPO epoch of
one minibatch; AdamW at a constant lr of 1e-5; k1 KL penalty β = 0.05; ε = 0.2, ε_V = 0.2,
c_V = 0.1; γ = 1, λ = 0.95; VADER of the decoded response as the score; 8 updates, seed 42.

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
  reference forward, one training forward, backward, fused AdamW step) written inline
  with no library logic;
* TRL 1.12.0's ``trl.experimental.ppo.PPOTrainer`` (``ppo_lib/bench_trl.py``), in its own
  virtual environment (``.venv-trl/`` by default, created on first use), since TRL is never
  a dependency of ``ppo_lib``.

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

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "WORKLOAD", "MODES", "PHASES", "TARGETS", "add_bench_parser", "bench_config", "steady_mean", "summarise_run",
    "system_summary", "overhead", "evaluate_targets", "render_markdown", "render_figure", "peak_rss_mb",
]

MODEL = "smollm2-135m"
THREADS = 2
TRL_VERSION = "1.12.0"
TORCH_VERSION = "2.13.0"
PHASES = ("generate", "old_forward", "ref_forward", "score", "train_forward", "backward", "optimizer", "other")
PHASE_LABELS = {"generate": "generation", "old_forward": "old log-probs / value forward", "ref_forward": "reference forward",
                "score": "reward (VADER)", "train_forward": "training forward", "backward": "backward",
                "optimizer": "optimizer", "other": "other"}
MODES = ("separate", "shared", "lora")
MODE_LABELS = {"separate": "ppo_lib, separate critic", "shared": "ppo_lib, shared value head", "lora": "ppo_lib, LoRA",
               "shared_exact": "ppo_lib, shared value head, exact π_old", "lora_no_ckpt": "ppo_lib, LoRA, no checkpointing"}
# mode -> (system name, child flag): the same mode once more with the library's other setting
VARIANTS = {"shared": ("shared_exact", "--exact"), "lora": ("lora_no_ckpt", "--no-checkpointing")}
LORA_RANK = 16

WORKLOAD = dict(model=MODEL, dtype="float32", device="cpu", torch_threads=THREADS, n_prompts=64, batch_size=16,
                response_length=24, stop_token=None, temperature=0.7, top_k=0, top_p=1.0, ppo_epochs=1,
                num_minibatches=1, optimizer="AdamW", learning_rate=1e-5, lr_schedule="constant", kl_coef=0.05,
                kl_estimator="k1", clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, updates=8,
                seed=42, reward="VADER compound of the decoded response", pad_token="<empty_output>")

# system -> (max time ratio to TRL, max peak-RSS ratio to TRL); overhead over the floor ≤ MAX_OVERHEAD everywhere.
TARGETS = {"separate": (1.0, None), "shared": (0.65, 0.6), "lora": (0.4, 0.35)}
MAX_OVERHEAD = 0.10

FIG_DIR = Path("figures") / "runs"  # benchmark results live with the other run records
STEM = "bench_cpu"
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


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MiB; ``ru_maxrss`` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- children
def bench_config(mode: str, exact: bool = False, checkpointing: bool | None = None):
    """The benchmark's :class:`~ppo_lib.trainer.PPOConfig` for ``mode`` in :data:`MODES`.

    Like TRL, the three modes take π_old's log-probs from the sampling pass; ``exact=True``
    is the library's default instead, one more no-grad forward for a first ratio of exactly 1.
    ``checkpointing`` (activation checkpointing) defaults to on for LoRA, the memory-lean mode.
    """
    from .trainer import PPOConfig

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}.")
    return PPOConfig(batch_size=16, max_new_tokens=24, stop_at_eos=False, temperature=0.7, ppo_epochs=1,
                     num_minibatches=1, learning_rate=1e-5, kl_coef=0.05, clip_eps=0.2, vf_clip_eps=0.2, vf_coef=0.1,
                     gamma=1.0, lam=0.95, seed=42, whiten_advantages=True, max_grad_norm=None,  # TRL clips nothing
                     reuse_sampling_logprobs=not exact,  # TRL takes π_old from its generation scores
                     separate_critic=mode == "separate", lora_rank=LORA_RANK if mode == "lora" else 0,
                     gradient_checkpointing=(mode == "lora") if checkpointing is None else checkpointing)


def bench_prompts() -> list[str]:
    """The 64 movie-review openings of the workload (the first 64 training prompts)."""
    from .rewards import review_prompts

    return review_prompts("train")[:WORKLOAD["n_prompts"]]


def _child_ppo_lib(mode: str, updates: int, exact: bool = False, checkpointing: bool | None = None,
                   device: str = "cpu") -> dict:
    import dataclasses

    import torch

    from .rewards import vader_sentiment
    from .trainer import build_trainer

    torch.set_num_threads(THREADS)
    torch.manual_seed(WORKLOAD["seed"])
    t0 = time.perf_counter()
    config = bench_config(mode, exact, checkpointing)
    if device == "cuda":
        config = dataclasses.replace(config, mixed_precision="bf16")
    trainer = build_trainer(MODEL, vader_sentiment, config)
    if trainer.device.type != device:
        raise RuntimeError(f"asked for {device}, but the trainer runs on {trainer.device}.")
    load_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    history = trainer.train(bench_prompts(), updates, progress=False)
    per_update = [{"generate": h["time/generate"], "old_forward": h["time/forward_old"],
                   "ref_forward": h["time/ref_forward"], "score": h["time/score"],
                   "train_forward": h["time/train_forward"], "backward": h["time/backward"],
                   "optimizer": h["time/optimizer"], "total": h["time/step"]} for h in history]
    n_trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    return {"per_update": per_update, "peak_rss_mb": peak_rss_mb(), "load_s": load_s,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "mixed_precision": config.mixed_precision,
            # one epoch of one minibatch: update 1's statistics are those of its first minibatch (ratio 1 if exact)
            "first_minibatch": {k: history[0][k] for k in ("policy/ratio_max", "policy/approx_kl_k3", "policy/clipfrac")},
            "response_length_mean": sum(h["response/length_mean"] for h in history) / len(history),
            "score_mean": [h["env/score_mean"] for h in history], "kl": [h["objective/kl"] for h in history],
            "trainable_params": n_trainable,
            "reference": "base model, adapter disabled" if mode == "lora" else "frozen copy",
            "optimizer": "torch.optim.AdamW(fused=True), no grad clip",
            "old_logprobs": "a no-grad forward pass (exact)" if exact else "kept from the sampling pass",
            "activation_checkpointing": config.gradient_checkpointing}


def _child_floor(mode: str, updates: int) -> dict:
    """The raw-compute floor: the model operations of one PPO update, inline, no library logic."""
    import copy
    import inspect

    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    from .models import load_model
    from .rewards import vader_sentiment

    torch.set_num_threads(THREADS)
    torch.manual_seed(WORKLOAD["seed"])
    t0 = time.perf_counter()
    lm, tok = load_model(MODEL)
    if mode == "lora":  # the LoRA mode checkpoints activations (bench_config)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    B, T, tau = WORKLOAD["batch_size"], WORKLOAD["response_length"], WORKLOAD["temperature"]
    H = lm.config.hidden_size
    critic = copy.deepcopy(lm.model) if mode == "separate" else None
    head = torch.nn.Linear(H, 1)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=LORA_RANK, lora_alpha=32.0, target_modules="all-linear",
                                           lora_dropout=0.0, bias="none"))
        ref = None
    else:
        ref = copy.deepcopy(lm).eval().requires_grad_(False)
    params = [p for p in lm.parameters() if p.requires_grad] + list(head.parameters())
    if critic is not None:
        params += list(critic.parameters())
    opt = torch.optim.AdamW(params, lr=WORKLOAD["learning_rate"], fused=True)
    load_s = time.perf_counter() - t0
    base = lm.get_base_model() if mode == "lora" else lm
    cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    prompts = bench_prompts()
    gen = torch.Generator().manual_seed(WORKLOAD["seed"])
    tok.padding_side = "left"

    def values_of(ids, am, pos, out):
        hidden = out.hidden_states[-1] if critic is None else critic(input_ids=ids, attention_mask=am,
                                                                      position_ids=pos).last_hidden_state
        return head(hidden[:, -(T + 1):-1]).squeeze(-1)  # (B, T)

    def head_last(hidden):  # the value of the last position, (B, 1)
        return head(hidden[:, -1:]).squeeze(-1)

    per_update = []
    for u in range(updates):
        times = {}
        batch = prompts[(u * B) % len(prompts):][:B]
        t_start = time.perf_counter()
        enc = tok(batch, return_tensors="pt", padding=True)
        ids, am = enc["input_ids"], enc["attention_mask"]
        # generate: a KV-cache sampling loop that keeps log π_old (and a shared head's values)
        t = time.perf_counter()
        lm.eval()
        with torch.no_grad():
            cache, x, mask = DynamicCache(config=base.config), ids, am
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            new, old_lp, old_v = [], [], []
            for _ in range(T):
                out = lm(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=True,
                         output_hidden_states=critic is None, **{cache_kw: cache})
                logp = F.log_softmax(out.logits[:, -1] / tau, -1)  # (B, V)
                x = torch.multinomial(logp.exp(), 1, generator=gen)  # (B, 1)
                new.append(x)
                old_lp.append(logp.gather(-1, x))
                if critic is None:
                    old_v.append(head_last(out.hidden_states[-1]))
                mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
                pos = pos[:, -1:] + 1
        times["generate"] = time.perf_counter() - t
        resp, old_lp = torch.cat(new, 1), torch.cat(old_lp, 1)  # (B, T)
        full, fam = torch.cat([ids, resp], 1), mask  # (B, L)
        fpos = (fam.cumsum(-1) - 1).clamp(min=0)

        def logprobs(model):
            out = model(input_ids=full, attention_mask=fam, position_ids=fpos, logits_to_keep=T + 1, use_cache=False,
                        output_hidden_states=critic is None and model is lm)
            lp = F.log_softmax(out.logits[:, :-1] / tau, -1).gather(-1, resp[..., None]).squeeze(-1)
            return lp, out

        t = time.perf_counter()
        with torch.no_grad():  # only a separate critic needs a pass of its own
            old_v = values_of(full, fam, fpos, None) if critic is not None else torch.cat(old_v, 1)
        times["old_forward"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            if ref is None:
                with lm.disable_adapter():
                    ref_lp, _ = logprobs(lm)
            else:
                ref_lp, _ = logprobs(ref)
        times["ref_forward"] = time.perf_counter() - t
        t = time.perf_counter()
        scores = torch.tensor(vader_sentiment(batch, tok.batch_decode(resp, skip_special_tokens=True)))
        times["score"] = time.perf_counter() - t
        rewards = -WORKLOAD["kl_coef"] * (old_lp - ref_lp)
        rewards[:, -1] += scores
        adv = rewards.flip(1).cumsum(1).flip(1) - old_v  # a stand-in for GAE: same shapes, negligible cost
        ret = adv + old_v
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        t = time.perf_counter()
        lm.train()  # (activation checkpointing acts in train mode only; the model has no dropout)
        lp, out = logprobs(lm)
        v = values_of(full, fam, fpos, out)
        ratio = (lp - old_lp).exp()
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        vc = old_v + (v - old_v).clamp(-0.2, 0.2)
        vf = 0.5 * torch.max((v - ret) ** 2, (vc - ret) ** 2).mean()
        loss = pg + WORKLOAD["vf_coef"] * vf
        times["train_forward"] = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        times["backward"] = time.perf_counter() - t
        t = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times["optimizer"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - t_start
        per_update.append(times)
    return {"per_update": per_update, "peak_rss_mb": peak_rss_mb(), "load_s": load_s,
            "trainable_params": sum(p.numel() for p in params), "optimizer": "torch.optim.AdamW(fused=True), no grad clip"}


def _child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m ppo_lib.bench")
    p.add_argument("kind", choices=("ppo_lib", "floor"))
    p.add_argument("mode", choices=MODES)
    p.add_argument("--updates", type=int, required=True)
    p.add_argument("--exact", action="store_true", help="ppo_lib: old log-probs from a forward pass (the default config)")
    p.add_argument("--no-checkpointing", action="store_true", help="ppo_lib lora: keep activations (no checkpointing)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    if a.kind == "ppo_lib":
        result = _child_ppo_lib(a.mode, a.updates, a.exact, False if a.no_checkpointing else None, a.device)
    elif a.device != "cpu":
        raise SystemExit("the floors are CPU-only")
    else:
        result = _child_floor(a.mode, a.updates)
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


# ----------------------------------------------------------------------------- the TRL side
def trl_python(venv: Path, create: bool = True) -> Path:
    """The python of the TRL virtual environment, created on first use with torch (CPU),
    trl==1.12.0 and vaderSentiment. ``ppo_lib`` never imports TRL."""
    py = venv / "bin" / "python"
    marker = venv / ".ppo_lib_bench_ready"
    if py.exists() and marker.exists():
        return py
    if not create:
        raise FileNotFoundError(f"no TRL virtual environment at {venv}.")
    print(f"creating the TRL virtual environment in {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)  # the CPU wheel; plain `torch` pulls CUDA
    # trl 1.12.0 needs transformers>=4.56.2 and accelerate>=1.4: use the versions ppo_lib runs with, so
    # both sides run the same model code.
    import accelerate
    import transformers

    subprocess.run(pip + [f"trl=={TRL_VERSION}", "vaderSentiment", f"transformers=={transformers.__version__}",
                          f"accelerate=={accelerate.__version__}"], check=True)
    marker.write_text("ok\n")
    return py


def _run_child(cmd: list[str], out: Path, log: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    print("  $", " ".join(cmd[1:4]), "...", flush=True)
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
    """Run every system in its own process and collect the raw results and summaries."""
    import torch
    import transformers

    from .models import cache_dir, load_model

    tokens = WORKLOAD["batch_size"] * WORKLOAD["response_length"]
    load_model(MODEL)  # make sure the safetensors cache exists before the children start
    tmp = Path(tempfile.mkdtemp(prefix="ppo_lib_bench-"))
    workload = {**WORKLOAD, "updates": args.updates}
    if args.device == "cuda":
        workload.update(device="cuda", dtype="bf16 autocast, float32 weights", torch_threads=None,
                        gpu=torch.cuda.get_device_name(0))
    results = {"workload": workload, "lora_rank": LORA_RANK,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "loadavg_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "raw": {}, "systems": {}, "errors": {}}
    jobs = []
    child = [sys.executable, "-m", "ppo_lib.bench", "ppo_lib"]
    device = ["--device", args.device]
    for mode in args.modes:
        jobs.append((mode, child + [mode, "--updates", str(args.updates)] + device))
        if not args.skip_variants and mode in VARIANTS:
            name, flag = VARIANTS[mode]
            jobs.append((name, child + [mode, flag, "--updates", str(args.updates)] + device))
        if not args.skip_floor and args.device == "cpu":  # the floors are written for the CPU
            jobs.append((f"floor_{mode}", [sys.executable, "-m", "ppo_lib.bench", "floor", mode,
                                           "--updates", str(args.floor_updates)]))
    if not args.skip_trl:
        try:
            py = Path(args.trl_python) if args.trl_python else trl_python(Path(args.trl_venv))
            prompts_file = tmp / "prompts.json"
            prompts_file.write_text(json.dumps(bench_prompts()))
            script = Path(__file__).with_name("bench_trl.py")
            jobs.insert(0, ("trl", [str(py), str(script), "--model-dir", str(cache_dir() / MODEL), "--prompts",
                                    str(prompts_file), "--updates", str(args.updates)] + device))
        except (subprocess.CalledProcessError, OSError) as e:
            results["errors"]["trl"] = f"could not set up TRL {TRL_VERSION}: {type(e).__name__}: {e}"
    for name, cmd in jobs:
        out = tmp / f"{name}.json"
        try:
            raw = _run_child(cmd + ["--out", str(out)], out, tmp / f"{name}.log")
        except RuntimeError as e:
            print(f"  {name} FAILED: {str(e)[-1500:]}", flush=True)
            # the JSON keeps the exception's last line only: a traceback holds this machine's paths
            lines = [line for line in str(e).splitlines() if line.strip()]
            results["errors"][name] = f"exit status {getattr(e, 'returncode', '?')}: {lines[-1] if lines else e}"
            continue
        results["raw"][name] = raw
        results["systems"][name] = summary = system_summary(raw, tokens)
        mem_key = memory_key(results)
        print(f"  {name}: {summary['total']:.2f} s/update, {summary[mem_key]:.0f} MiB {MEMORY_LABELS[mem_key]}", flush=True)
        if json_path is not None:  # a partial result survives an interrupted run
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({**results, "partial": True}, indent=1) + "\n")
    if "trl" in results["raw"]:
        results["versions"]["trl_side"] = results["raw"]["trl"].get("versions", {})
    results["loadavg_after"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


# ----------------------------------------------------------------------------- report
SYSTEM_ORDER = ("trl", "separate", "floor_separate", "shared", "shared_exact", "floor_shared", "lora", "lora_no_ckpt",
                "floor_lora")


def system_label(name: str) -> str:
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
        row = f"| {system_label(n)} | " + " | ".join(f"{s['phases'][p]:.2f}" for p in PHASES)
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
            lines.append(f"| {t['mode'] if 'mode' in t else t['system']} | {t['target']} | {value} | {limit} | "
                         f"{'yes' if t['met'] else '**no**'}{' (' + t['note'] + ')' if t.get('note') else ''} |")
    for name, err in results.get("errors", {}).items():
        lines += ["", f"**{name} did not run**: `{err.strip().splitlines()[-1] if err.strip() else err}`"]
    if results.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _fmt_load(load) -> str:
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
               hatch=None, edgecolor="white", linewidth=0.5)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{stem}.md"
    md.write_text(render_markdown(results))
    png = render_figure(results, out_dir / f"{stem}.png")
    return [md, png]


def run_bench(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    stem = "bench_gpu" if args.device == "cuda" else STEM
    json_path = out_dir / f"{stem}.json"
    if args.report_only:
        if not json_path.exists():
            raise SystemExit(f"error: {json_path} does not exist; run `python -m ppo_lib bench` first.")
        results = json.loads(json_path.read_text())
        w = results["workload"]
        for name, raw in results.get("raw", {}).items():  # the summaries are recomputed from the raw timings
            results["systems"][name] = system_summary(raw, w["batch_size"] * w["response_length"])
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
    p = sub.add_parser("bench", help="benchmark ppo_lib against TRL 1.12.0 PPO and the raw-compute floor (CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=WORKLOAD["updates"], help="PPO updates per system (default 8)")
    p.add_argument("--floor-updates", type=int, default=5, help="iterations of each floor (default 5)")
    p.add_argument("--modes", nargs="+", choices=MODES, help="ppo_lib modes (default: all three)")
    p.add_argument("--skip-trl", action="store_true", help="do not run TRL")
    p.add_argument("--skip-floor", action="store_true", help="do not run the floors")
    p.add_argument("--skip-variants", action="store_true",
                   help="do not run shared with exact π_old and LoRA without checkpointing")
    p.add_argument("--trl-venv", default=".venv-trl", help="virtual environment for TRL (default .venv-trl/, created once)")
    p.add_argument("--trl-python", help="a python that already has trl==1.12.0 (instead of --trl-venv)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the same workload on a GPU in bf16 autocast, without floors (bench_gpu.*)")
    p.add_argument("--out-dir", default=str(FIG_DIR), help="where bench_cpu.{json,md,png} go (default figures/runs/)")
    p.add_argument("--report-only", action="store_true", help="only redraw the table and figure from the JSON")
    p.set_defaults(run=run_bench)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
