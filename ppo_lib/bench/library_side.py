"""The ppo_lib side of ``python -m ppo_lib bench``: the library's trainer on the workload.

:func:`run` builds the trainer exactly as a user would (:func:`~ppo_lib.trainer.build_trainer`
with the :class:`~ppo_lib.trainer.PPOConfig` that :func:`~ppo_lib.bench.workload.bench_config`
makes of the workload) and reads the time of each phase from the trainer's own ``time/*``
statistics. The config it ran with goes into the result, so the JSON shows what was measured.
"""

from __future__ import annotations

import time

from .workload import Workload, bench_config, bench_prompts

__all__ = ["run"]


def run(workload: Workload, mode: str, exact: bool = False, checkpointing: bool | None = None) -> dict:
    """Train ``workload.updates`` PPO updates of ppo_lib in ``mode`` and time their phases.

    ``exact`` and ``checkpointing`` are :func:`~ppo_lib.bench.workload.bench_config`'s: the
    library's exact π_old, and activation checkpointing on or off.

    Returns ``{"per_update": [{phase: seconds, ..., "total": s}, ...], "load_s": …,
    "config": the PPOConfig as a dict, ...}`` with a few statistics of the run beside them.
    """
    import torch

    from ..rewards import vader_sentiment
    from ..trainer import build_trainer

    w = workload
    torch.manual_seed(w.seed)
    t0 = time.perf_counter()
    config = bench_config(mode, exact, checkpointing, w)
    trainer = build_trainer(w.model, vader_sentiment, config)
    if trainer.device.type != w.device:
        raise RuntimeError(f"the workload asks for {w.device}, but the trainer runs on {trainer.device}.")
    if trainer.tokenizer.pad_token != w.pad_token:
        raise RuntimeError(f"{w.model}'s tokenizer pads with {trainer.tokenizer.pad_token!r}, but the workload (and "
                           f"so the TRL side) pads with {w.pad_token!r}: set Workload.pad_token to "
                           f"{trainer.tokenizer.pad_token!r}.")
    load_s = time.perf_counter() - t0
    gpu = w.device == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    history = trainer.train(bench_prompts(w), w.updates, progress=False)
    per_update = [{"generate": h["time/generate"], "old_forward": h["time/forward_old"],
                   "ref_forward": h["time/ref_forward"], "score": h["time/score"],
                   "train_forward": h["time/train_forward"], "backward": h["time/backward"],
                   "optimizer": h["time/optimizer"], "total": h["time/step"]} for h in history]
    return {"per_update": per_update, "load_s": load_s,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / (1024 * 1024) if gpu else None,
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
            "mixed_precision": config.mixed_precision,
            # update 1's statistics are those of its first minibatch when K = M = 1 (ratio 1 if exact)
            "first_minibatch": {k: history[0][k] for k in ("policy/ratio_max", "policy/approx_kl_k3", "policy/clipfrac")},
            "response_length_mean": sum(h["response/length_mean"] for h in history) / len(history),
            "score_mean": [h["env/score_mean"] for h in history], "kl": [h["objective/kl"] for h in history],
            "trainable_params": sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad),
            "reference": "base model, adapter disabled" if mode == "lora" else "frozen copy",
            "optimizer": "torch.optim.AdamW(fused=True), no grad clip",
            "old_logprobs": "a no-grad forward pass (exact)" if exact else "kept from the sampling pass",
            "activation_checkpointing": config.gradient_checkpointing,
            "config": config.to_dict()}
