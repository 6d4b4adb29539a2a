r"""Where an update's time goes, and small honest timers (chapter 07).

The trainer times every phase of an update into its statistics (``time/generate``,
``time/forward_old``, ``time/ref_forward``, ``time/score``, ``time/train_forward``,
``time/backward``, ``time/optimizer`` and the whole ``time/step``; CUDA is synchronised at each
boundary, so GPU time is not charged to the wrong phase). :func:`time_breakdown` turns a list of
such statistics into mean seconds per phase, with what no phase covers (shaping, advantages,
statistics) as ``"other"``; :func:`plot_time_breakdown` draws it.

:func:`interleaved_timing` times two or more functions A B A B ... rather than A A B B: a
machine whose speed drifts (other processes, thermal limits, a cold cache) then slows every
system alike, and the ratio of each pair is a fair sample.

Command line (the committed sampler measurement of chapter 07)::

    python -m ppo_lib.profiling samplers --out figures/runs/ch07_sampler   # ≈ 2 min on 2 CPU cores
    python -m ppo_lib.profiling products --repeats 5 --out figures/runs/ch07_products_amd   # ≈ 3 min
    python -m ppo_lib.profiling compile --out figures/runs/ch07_compile    # torch.compile: minutes on a CPU
    python -m ppo_lib.profiling first-update --out figures/runs/ch07_first_update   # ≈ 4 min: 2 warm-ups × 6 seeds
    python -m ppo_lib.profiling bf16-sampling --out figures/runs/ch07_bf16_sampling  # ≈ 1 min
    python -m ppo_lib.profiling int8-sampling --out figures/runs/ch07_int8_sampling  # ≈ 1 min
    python -m ppo_lib.profiling compiled-sampling --repeats 7 --out figures/runs/ch07_compiled_sampling  # ≈ 3 min
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["PHASES", "machine", "time_breakdown", "plot_time_breakdown", "interleaved_timing", "compare_samplers",
           "roofline_inputs", "compare_products", "compiled_sampling", "int8_copy", "reduced_precision_sampling",
           "compile_speedup", "first_updates"]

PHASES = ("generate", "forward_old", "ref_forward", "score", "train_forward", "backward", "optimizer")


def machine() -> dict:
    """What a timing depends on: CPU model, core count, the vector extensions that change which
    kernels run (AVX-512, bf16, AMX), and the platform. Stored with every committed measurement."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the platform string is all there is
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"cpu": cpu, "cpus": os.cpu_count(), "cpu_flags": [f for f in wanted if f in flags],
            "platform": platform.platform()}


def time_breakdown(history: Sequence[dict], skip: int = 0) -> dict[str, float]:
    """Mean seconds per phase over the updates of ``history`` (the trainer's statistics).

    Args:
        history: a list of ``PPOTrainer.step`` statistics (or lines of a run's ``history.jsonl``).
        skip: leave out the first ``skip`` updates (warm-up of caches, allocators, compilation).

    Returns:
        ``{phase: seconds}`` for every phase of :data:`PHASES` (0 for one that never ran),
        ``"other"`` (``time/step`` minus the phases) and ``"step"``.
    """
    rows = list(history)[skip:]
    if not rows:
        raise ValueError(f"time_breakdown needs at least one update after skip={skip}, got {len(history)} in all.")
    if any("time/step" not in r for r in rows):
        raise ValueError("every update needs a 'time/step' statistic (from PPOTrainer.step).")
    out = {p: statistics.fmean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}
    out["step"] = statistics.fmean(r["time/step"] for r in rows)
    out["other"] = max(0.0, out["step"] - sum(out[p] for p in PHASES))
    return out


def plot_time_breakdown(breakdowns: dict[str, dict[str, float]], ax=None, title: str | None = None,
                        share: bool = False):
    """A stacked horizontal bar per breakdown (``{label: time_breakdown(...)}``): seconds per
    phase, or with ``share=True`` each phase's share of the update (the total is in the label)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.0, 1.0 + 0.55 * len(breakdowns)))
    colors = plt.get_cmap("tab10").colors
    names = PHASES + ("other",)
    labels = [f"{k}\n{b['step']:.2f} s" if share else k for k, b in breakdowns.items()]
    for i, phase in enumerate(names):
        scale = [1.0 / b["step"] if share else 1.0 for b in breakdowns.values()]
        left = [sum(b[p] for p in names[:i]) * s for b, s in zip(breakdowns.values(), scale)]
        widths = [b[phase] * s for b, s in zip(breakdowns.values(), scale)]
        ax.barh(labels, widths, left=left, color=colors[i % 10], label=phase)
    ax.set_xlabel("share of the update's time" if share else "seconds per update")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def interleaved_timing(fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict:
    """Time each function ``repeats`` times, interleaved (A B A B ...), after ``warmup`` untimed rounds.

    Returns:
        ``{"seconds": {name: [s, ...]}, "median": {name: s}}``, and with two functions
        ``"ratios"``: the first's time over the second's, round by round (their spread is the
        measurement's uncertainty).
    """
    names = list(fns)
    seconds = {n: [] for n in names}
    for round_ in range(warmup + repeats):
        for n in names:
            t0 = time.perf_counter()
            fns[n]()
            if round_ >= warmup:
                seconds[n].append(time.perf_counter() - t0)
    out = {"seconds": seconds, "median": {n: statistics.median(s) for n, s in seconds.items()}}
    if len(names) == 2:
        a, b = names
        out["ratios"] = [x / y for x, y in zip(seconds[a], seconds[b])]
    return out


def _agreement(a, b, g1, g2) -> dict:
    """How two samplings of the same prompts with equally seeded generators ``g1``, ``g2`` agree:
    same tokens, same generator state afterwards, and the largest log-prob difference."""
    import torch

    return {"tokens_equal": bool(torch.equal(a.response_ids, b.response_ids)),
            "generator_state_equal": bool(torch.equal(g1.get_state(), g2.get_state())),
            "logprob_max_abs_diff": float((a.old_logprobs - b.old_logprobs).abs().max())}


def compare_samplers(model_name: str = "smollm2-135m", batch_size: int = 16, max_new_tokens: int = 24,
                     repeats: int = 3, seed: int = 0) -> dict:
    """The eager and the static sampler on the same prompts: equal outputs, then timed interleaved,
    with two more arms of the eager sampler as it was before chapter 07's two changes (Section 11):
    ``eager_plain``, with the plain products instead of MKL's packed ones
    (:func:`~ppo_lib.rollout.packed_linears`), and ``eager_multinomial``, also drawing its tokens
    with ``torch.multinomial`` instead of :func:`~ppo_lib.rollout.draw_tokens`: the loop as the
    library first had it.

    Full-length responses (``stop_at_eos=False``), so all do the same number of decode steps.

    Returns:
        agreement of eager and static and of packed and plain products, ``seconds``/``median`` per
        arm, and ``speedup``, per round: ``eager_multinomial / eager`` (both changes),
        ``eager_multinomial / eager_plain`` (one uniform per row), ``eager_plain / eager`` (packed
        products) and ``eager / static``.
    """
    import torch

    from .models import load_policy
    from .rewards import review_prompts
    from .rollout import multinomial_tokens, sample, tokenize_prompts
    from .sampling import sample_static

    policy, tokenizer = load_policy(model_name)
    policy.eval()
    prompts = review_prompts("train")[:batch_size]
    ids, mask = tokenize_prompts(tokenizer, prompts)
    kw = dict(temperature=0.7, stop_at_eos=False, return_logprobs=True)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    a = sample(policy, tokenizer, ids, mask, max_new_tokens, generator=g1, **kw)
    b = sample_static(policy, tokenizer, ids, mask, max_new_tokens, generator=g2, **kw)
    agreement = _agreement(a, b, g1, g2)
    c = sample(policy, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(seed),
               products="plain", **kw)
    agreement["plain_products"] = {"tokens_equal": bool(torch.equal(a.response_ids, c.response_ids)),
                                   "logprobs_bitwise_equal": bool(torch.equal(a.old_logprobs, c.old_logprobs))}

    def run(sampler, **extra):
        return lambda: sampler(policy, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(1),
                               **kw, **extra)

    timing = interleaved_timing({"eager_multinomial": run(sample, draw=multinomial_tokens, products="plain"),
                                 "eager_plain": run(sample, products="plain"), "eager": run(sample),
                                 "static": run(sample_static)}, repeats=repeats)
    sec = timing["seconds"]
    timing["speedup"] = {f"{x}/{y}": [a / b for a, b in zip(sec[x], sec[y])]
                         for x, y in (("eager_multinomial", "eager"), ("eager_multinomial", "eager_plain"),
                                      ("eager_plain", "eager"), ("eager", "static"))}
    return {"model": model_name, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "prompt_length": ids.shape[1], "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine(),
            "agreement": agreement, **timing}


def compiled_sampling(model_name: str = "smollm2-135m", batch_size: int = 16, max_new_tokens: int = 24,
                      repeats: int = 3, seed: int = 0, products: str = "packed") -> dict:
    """The static sampler with its decode step compiled on a CPU (``compile_cpu=True``: Inductor's
    fused loops around the products in the form ``products``, MKL's packed ones by default)
    against the eager sampler with the same products and as it was (``eager_multinomial``, as in
    :func:`compare_samplers`): chapter 07, Section 11.

    The first compiled sampling pays the compilation; it is timed alone (``compile_s``) and the
    arms are then timed interleaved. ``payback_samplings`` is the compilation divided by the time
    one sampling saves against ``eager`` (medians): how many samplings at this shape it takes to
    win the compilation back.

    Returns:
        ``agreement`` (tokens, generator state and log-probs of the compiled against the eager
        sampler), ``compile_s``, ``seconds``/``median`` per arm, ``speedup`` per round
        (``eager_multinomial / static_compiled`` and ``eager / static_compiled``) and
        ``payback_samplings``.
    """
    import torch

    from .models import load_policy
    from .rewards import review_prompts
    from .rollout import multinomial_tokens, sample, tokenize_prompts
    from .sampling import sample_static

    policy, tokenizer = load_policy(model_name)
    policy.eval()
    ids, mask = tokenize_prompts(tokenizer, review_prompts("train")[:batch_size])
    kw = dict(temperature=0.7, stop_at_eos=False, return_logprobs=True)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    b = sample_static(policy, tokenizer, ids, mask, max_new_tokens, generator=g2, compile_cpu=True, products=products,
                      **kw)
    compile_s = time.perf_counter() - t0
    a = sample(policy, tokenizer, ids, mask, max_new_tokens, generator=g1, products=products, **kw)
    agreement = _agreement(a, b, g1, g2)

    def run(sampler, **extra):
        return lambda: sampler(policy, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(1),
                               **kw, **extra)

    timing = interleaved_timing({"eager_multinomial": run(sample, draw=multinomial_tokens, products="plain"),
                                 "eager": run(sample, products=products),
                                 "static_compiled": run(sample_static, compile_cpu=True, products=products)},
                                repeats=repeats)
    sec, med = timing["seconds"], timing["median"]
    timing["speedup"] = {f"{x}/static_compiled": [p / q for p, q in zip(sec[x], sec["static_compiled"])]
                         for x in ("eager_multinomial", "eager")}
    saved = med["eager"] - med["static_compiled"]
    return {"model": model_name, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "prompt_length": ids.shape[1], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": machine(), "products": products, "agreement": agreement, "compile_s": compile_s, **timing,
            "payback_samplings": compile_s / saved if saved > 0 else None}


def roofline_inputs(seed: int = 0) -> dict:
    """This machine's two limits for chapter 07's roofline (7.9), measured: the memory bandwidth
    ``bandwidth_gb_s`` (a copy of a 256 MB float32 tensor, bytes read + written per second) and
    the float32 matmul rate ``matmul_gflop_s`` (a 2048 × 2048 product); medians of 3."""
    import torch

    g = torch.Generator().manual_seed(seed)
    src = torch.randn(64 * 2**20, generator=g)
    dst = torch.empty_like(src)
    a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    t = interleaved_timing({"copy": lambda: dst.copy_(src), "matmul": lambda: a @ b})["median"]
    return {"bandwidth_gb_s": 2 * src.numel() * 4 / t["copy"] / 1e9, "matmul_gflop_s": 2 * 2048**3 / t["matmul"] / 1e9}


def compare_products(model_name: str = "smollm2-135m", batch_size: int = 16, max_new_tokens: int = 24,
                     repeats: int = 3, seed: int = 0) -> dict:
    """The forms of a decode step's products (:func:`~ppo_lib.rollout.decode_products`) on this
    machine (chapter 07, Section 11): the roofline's two limits here, each form's time per step
    for the products alone and the form "auto" would choose
    (:func:`~ppo_lib.rollout.fastest_products`), each form's agreement with the plain products,
    and whole samplings timed interleaved, with the eager loop as the library first had it
    (``eager_multinomial``: plain products, ``torch.multinomial``). Full-length responses.

    Returns:
        ``roofline`` (bandwidth, matmul rate, the step's weight bytes and FLOPs, and the bound
        in ms), ``products_ms`` and ``auto``, ``agreement`` per form, ``seconds``/``median`` per
        arm and ``speedup`` per round: ``eager_multinomial / form`` and ``packed / form``.
    """
    import torch

    from .models import load_model
    from .rewards import review_prompts
    from .rollout import _cpu_linears, fastest_products, multinomial_tokens, sample, tokenize_prompts

    lm, tokenizer = load_model(model_name)
    ids, mask = tokenize_prompts(tokenizer, review_prompts("train")[:batch_size])
    limits = roofline_inputs(seed)
    with torch.no_grad():
        weights = sum(m.weight.numel() for m in _cpu_linears(lm))
        auto, products_ms = fastest_products(lm, batch_size, max_new_tokens)
    flop, n_bytes = 2 * weights * batch_size, 4 * weights
    roofline = {**limits, "weight_bytes": n_bytes, "gflop": flop / 1e9, "memory_ms": n_bytes / limits["bandwidth_gb_s"] / 1e6,
                "flop_ms": flop / limits["matmul_gflop_s"] / 1e6}
    kw = dict(temperature=0.7, stop_at_eos=False, return_logprobs=True)
    forms = list(products_ms)
    generators = {f: torch.Generator().manual_seed(seed) for f in forms}
    runs = {f: sample(lm, tokenizer, ids, mask, max_new_tokens, generator=generators[f], products=f, **kw) for f in forms}
    agreement = {f: _agreement(runs[f], runs["plain"], generators[f], generators["plain"]) for f in forms if f != "plain"}

    def run(**extra):
        return lambda: sample(lm, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(1), **kw,
                              **extra)

    timing = interleaved_timing({"eager_multinomial": run(draw=multinomial_tokens, products="plain"),
                                 **{f: run(products=f) for f in forms}}, repeats=repeats)
    sec = timing["seconds"]
    pairs = [("eager_multinomial", f) for f in forms] + [("packed", f) for f in forms if f != "packed" and "packed" in sec]
    timing["speedup"] = {f"{x}/{y}": [a / b for a, b in zip(sec[x], sec[y])] for x, y in pairs}
    return {"model": model_name, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "prompt_length": ids.shape[1], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": machine(), "roofline": roofline, "products_ms": products_ms, "auto": auto,
            "agreement": agreement, **timing}


def int8_copy(lm):
    """A copy of ``lm`` with every ``nn.Linear`` except the output head quantized to int8 by
    ``torch.ao.quantization.quantize_dynamic``: weights per output channel, activations per tensor
    at run time (the dynamic scheme of PyTorch's eager-mode quantization, deprecated in favour of
    torchao but still in torch). The embeddings and the LM head stay float32.

    Raises a ``ValueError`` for a model without such layers (GPT-2's blocks use ``Conv1D``).
    """
    import copy
    import warnings

    import torch

    with warnings.catch_warnings():  # the deprecation notices of torch.ao.quantization (see the docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    q = copy.deepcopy(lm)
    head = q.get_output_embeddings()
    spec = {name: per_channel_dynamic_qconfig for name, m in q.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}
    if not spec:
        raise ValueError(f"{type(lm).__name__} has no nn.Linear layer besides its output head (GPT-2's blocks use "
                         "Conv1D), so there is nothing to quantize to int8; measure a Llama-style model such as "
                         "smollm2-135m.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated", category=UserWarning)
        return quantize_dynamic(q, spec, dtype=torch.qint8)


PRECISIONS = {"bfloat16": "a bf16 copy (every weight and activation)",
              "int8": "an int8 copy (int8_copy: the blocks' linear layers, weights and activations)"}


def reduced_precision_sampling(model_name: str = "smollm2-135m", batch_size: int = 16, max_new_tokens: int = 24,
                               repeats: int = 3, seed: int = 0, precision: str = "bfloat16") -> dict:
    """Sampling from a reduced-precision copy of the policy against float32: time and how far apart
    the two policies are (chapter 07, Section 11: "fewer bytes").

    The trainer recomputes ``old_logprobs`` in float32, so a reduced-precision sampler would draw
    from a different policy π_q than the π whose ratios PPO computes. The distance is measured on
    responses sampled from π_q: the per-token KL(π_q ‖ π) over the whole vocabulary, and the largest
    |log π − log π_q| of a sampled token.

    Args:
        precision: ``"bfloat16"`` or ``"int8"`` (see :data:`PRECISIONS` and :func:`int8_copy`).

    Returns:
        ``seconds``/``median`` per arm (``"float32"`` and ``precision``, interleaved), ``ratios``
        (float32 / reduced per round) and ``mismatch`` (``kl_mean``, ``kl_max`` per token,
        ``max_abs_logprob_diff``).
    """
    import copy

    import torch

    from .models import load_model
    from .rewards import review_prompts
    from .rollout import forward_response, sample, tokenize_prompts

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    lm32, tokenizer = load_model(model_name)
    lm_q = copy.deepcopy(lm32).to(torch.bfloat16) if precision == "bfloat16" else int8_copy(lm32)
    ids, mask = tokenize_prompts(tokenizer, review_prompts("train")[:batch_size])
    kw = dict(temperature=0.7, stop_at_eos=False, products="plain")  # plain products on both arms: the precision alone

    def run(lm):
        return lambda: sample(lm, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(1), **kw)

    timing = interleaved_timing({"float32": run(lm32), precision: run(lm_q)}, repeats=repeats)  # ratios: fp32 / reduced
    batch = sample(lm_q, tokenizer, ids, mask, max_new_tokens, generator=torch.Generator().manual_seed(seed), **kw)
    with torch.no_grad():
        logp = {}
        for name, lm in (("float32", lm32), (precision, lm_q)):
            logits = forward_response(lm, batch, kw["temperature"], return_logits=True)[2]  # (B, T, V)
            logp[name] = torch.log_softmax(logits.float() / kw["temperature"], dim=-1)
    kl = (logp[precision].exp() * (logp[precision] - logp["float32"])).sum(-1)  # (B, T) KL(π_q ‖ π)
    tok = batch.response_ids.unsqueeze(-1)
    diff = (logp["float32"].gather(-1, tok) - logp[precision].gather(-1, tok)).abs()
    mismatch = {"kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "max_abs_logprob_diff": float(diff.max())}
    return {"model": model_name, "precision": precision, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine(), "mismatch": mismatch,
            **timing}


def compile_speedup(model_name: str = "smollm2-135m", batch_size: int = 8, seq_len: int = 48, repeats: int = 3,
                    seed: int = 0) -> dict:
    """``torch.compile`` of the training forward and backward (what ``PPOConfig.compile`` does):
    the first call's time (compilation included) and the steady-state time, eager against compiled."""
    import torch

    from .models import load_policy

    torch.manual_seed(seed)
    policy, _ = load_policy(model_name)
    policy.train()
    ids = torch.randint(0, policy.lm.config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)

    def step(model):
        def run():
            logits, values = model(input_ids=ids, attention_mask=mask, logits_to_keep=seq_len, use_cache=False)
            (logits.float().logsumexp(-1).mean() + values.float().mean()).backward()
            policy.zero_grad(set_to_none=True)
        return run

    compiled = torch.compile(policy, dynamic=True)
    t0 = time.perf_counter()
    step(compiled)()
    first_compiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    step(policy)()
    first_eager = time.perf_counter() - t0
    timing = interleaved_timing({"eager": step(policy), "compiled": step(compiled)}, repeats=repeats, warmup=1)
    return {"model": model_name, "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": machine(), "first_call_s": {"eager": first_eager, "compiled": first_compiled},
            **timing}


FIRST_UPDATE_KEYS = ("policy/clipfrac", "policy/ratio_max", "policy/approx_kl_k3", "optimizer/lr")


def first_updates(warmups: Sequence[int], seeds: Sequence[int], preset: str = "sentiment", model: str | None = None,
                  reward: str | None = None, updates: int = 1, overrides: dict | None = None) -> dict:
    """The first ``updates`` updates of ``preset`` for each warm-up length and seed: how far the
    first updates move the policy (clip fraction, the largest ratio, approx-KL) before Adam's
    second-moment estimate has settled (chapter 07, Section 4). ``overrides``: other PPOConfig
    fields. No evaluation, nothing saved.

    Returns:
        ``{"preset", "model", "reward", "updates", "config" (the preset's PPOConfig fields, before
        the warm-up and seed of each run), "machine", "runs": {"lr_warmup_updates=W": {seed: [stats
        of update 1, ...]}}}`` with the statistics of :data:`FIRST_UPDATE_KEYS`.
    """
    from .cli_train import PRESETS
    from .rewards import get_reward, review_prompts
    from .trainer import PPOConfig, build_trainer

    spec = PRESETS[preset]
    model, reward = model or spec["model"], reward or spec["reward"]
    base = {**spec["config"], **(overrides or {})}
    runs = {}
    for w in warmups:
        runs[f"lr_warmup_updates={w}"] = per_seed = {}
        for seed in seeds:
            config = PPOConfig.from_dict({**base, "lr_warmup_updates": w, "seed": seed})
            trainer = build_trainer(model, get_reward(reward), config)
            history = trainer.train(review_prompts("train"), updates, progress=False)
            per_seed[str(seed)] = [{k: h[k] for k in FIRST_UPDATE_KEYS} for h in history]
    return {"preset": preset, "model": model, "reward": reward, "updates": updates,
            "config": base, "machine": machine(), "runs": runs}


def main(argv: Sequence[str] | None = None) -> None:
    from .cli_train import PRESETS

    parser = argparse.ArgumentParser(prog="python -m ppo_lib.profiling", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sampling = {"samplers": ("eager against static sampler, torch.multinomial against draw_tokens, plain against "
                             "packed products: agreement and interleaved timing", compare_samplers),
                "products": ("the forms of a decode step's products (plain, packed, transposed) and the one 'auto' "
                             "chooses: the roofline here, agreement and interleaved timing", compare_products),
                "compiled-sampling": ("the static sampler with its decode step compiled on a CPU against the eager "
                                      "sampler: compilation time, agreement and interleaved timing", compiled_sampling),
                **{f"{short}-sampling": (f"sampling from {PRECISIONS[precision]} of the policy: time against float32, "
                                         "and the KL between the two policies",
                                         functools.partial(reduced_precision_sampling, precision=precision))
                   for short, precision in (("bf16", "bfloat16"), ("int8", "int8"))}}
    for name, (help_, _) in sampling.items():
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--max-new-tokens", type=int, default=24)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--out", type=Path, required=True, help=f"folder for {name}.json")
        if name == "compiled-sampling":
            p.add_argument("--products", default="packed", choices=("plain", "packed", "transposed"),
                           help="the form of the products in the eager and compiled arms (default packed)")
    c = sub.add_parser("compile", help="torch.compile of the training forward+backward: first call and steady state")
    c.add_argument("--model", default="smollm2-135m")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--seq-len", type=int, default=48)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--out", type=Path, required=True, help="folder for compile.json")
    f = sub.add_parser("first-update", help="the first update's clip fraction and largest ratio, per warm-up and seed")
    f.add_argument("--warmups", type=int, nargs="+", default=[6, 12], help="lr_warmup_updates values (default 6 12)")
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    f.add_argument("--preset", default="sentiment", choices=sorted(PRESETS))
    f.add_argument("--updates", type=int, default=1, help="updates per run (default 1)")
    f.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a PPOConfig field of the preset, e.g. learning_rate=3e-5 (repeatable)")
    f.add_argument("--out", type=Path, required=True, help="folder for first-update.json")
    args = parser.parse_args(argv)
    if args.command == "first-update":
        if min(args.warmups) < 0 or args.updates < 1 or min(args.seeds) < 0:
            raise SystemExit("error: --warmups and --seeds must be ≥ 0 and --updates ≥ 1.")
        from .cli_compare import _set_fields

        result = first_updates(args.warmups, args.seeds, args.preset, updates=args.updates,
                               overrides=_set_fields(args.set))
        result["command"] = (f"python -m ppo_lib.profiling first-update --warmups {' '.join(map(str, args.warmups))} "
                             f"--seeds {' '.join(map(str, args.seeds))} --preset {args.preset} --updates {args.updates} "
                             + "".join(f"--set {item} " for item in args.set or []) + f"--out {args.out}")
    elif args.command in sampling:
        extra = {"products": args.products} if args.command == "compiled-sampling" else {}
        result = sampling[args.command][1](args.model, args.batch_size, args.max_new_tokens, args.repeats, **extra)
        result["command"] = (f"python -m ppo_lib.profiling {args.command} --model {args.model} --batch-size "
                             f"{args.batch_size} --max-new-tokens {args.max_new_tokens} --repeats {args.repeats} "
                             + "".join(f"--products {v} " for v in extra.values()) + f"--out {args.out}")
    else:
        result = compile_speedup(args.model, args.batch_size, args.seq_len, args.repeats)
        result["command"] = (f"python -m ppo_lib.profiling compile --model {args.model} --batch-size {args.batch_size} "
                             f"--seq-len {args.seq_len} --repeats {args.repeats} --out {args.out}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f"{args.command}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out / f"{args.command}.json")  # no half-written file
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))


if __name__ == "__main__":
    main()
