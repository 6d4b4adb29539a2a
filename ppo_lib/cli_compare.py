"""``python -m ppo_lib dpo`` and ``python -m ppo_lib compare``: chapter 09 as commands.

    python -m ppo_lib dpo --pairs pairs.jsonl --model smollm2-135m --out runs/dpo --set beta=0.1
    python -m ppo_lib compare --out runs/compare --algos ppo,rloo,grpo,dr_grpo,remax,reinforce,dpo \\
        --seeds 0 1 --token-budget 13824 --eval-every 6

``dpo`` trains a policy on a JSONL file of ``{"prompt", "chosen", "rejected"}`` pairs
(:mod:`ppo_lib.preferences`) with :func:`ppo_lib.dpo.train_dpo` and scores it on the held-out
review prompts before and after: a run folder with ``config.json``, ``history.jsonl``,
``eval.json`` and ``samples_{before,after}.md``.

``compare`` runs every arm (an online algorithm of the registry, PPO with a separate critic,
or DPO) on the sentiment preset at an **equal budget of generated tokens**, each arm in its own
process so that its peak memory is its own, and writes ``summary.json`` (held-out score and KL
before and after, seconds and peak memory per update) plus one folder per arm and seed. The
budget is counted at ``max_new_tokens`` per sampled response: an update of batch B costs
B·T tokens, ReMax's 2·B·T (its greedy responses), and DPO's pairs 2·T each (two responses
sampled from π_ref per prompt by :func:`ppo_lib.preferences.make_pairs`, labelled by VADER).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

__all__ = ["ARMS", "add_dpo_parser", "add_compare_parser", "run_arm", "arm_updates"]

# Each arm: PPOConfig fields on top of the preset (None: the DPO arm).
ARMS: dict[str, dict | None] = {
    "ppo": dict(algorithm="ppo"),
    "ppo_separate": dict(algorithm="ppo", separate_critic=True),
    "reinforce": dict(algorithm="reinforce"),
    "rloo": dict(algorithm="rloo"),
    "grpo": dict(algorithm="grpo", whiten_advantages=False),
    "dr_grpo": dict(algorithm="dr_grpo", whiten_advantages=False),
    "remax": dict(algorithm="remax"),
    "dpo": None,
}


def _set_fields(items: list[str] | None) -> dict:
    from .cli_train import _parse_value

    fields = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects key=value, got {item!r}.")
        fields[key] = _parse_value(value)
    return fields


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def arm_updates(arm: str, token_budget: int, batch_size: int, max_new_tokens: int) -> int:
    """Updates (or, for DPO, pairs) that ``token_budget`` generated tokens buy; ≥ 1 or an error."""
    per_update = batch_size * max_new_tokens
    if arm == "dpo":
        n = token_budget // (2 * max_new_tokens)  # pairs: two sampled responses each
    else:
        from .trainer import PPOConfig

        greedy = PPOConfig(**{**ARMS[arm], "batch_size": batch_size}).algorithm_spec.greedy_baseline
        n = token_budget // (per_update * (2 if greedy else 1))
    if n < 1:
        raise SystemExit(f"error: --token-budget {token_budget} buys no update of arm {arm!r} "
                         f"({per_update} tokens per update of batch {batch_size} × {max_new_tokens} tokens); raise it.")
    return n


def _evaluate(policy_lm, ref, tokenizer, reward_fn, config, prompts, seed):
    """Held-out score and KL through :meth:`PPOTrainer.evaluate` (a DPO policy gets a trainer too)."""
    from .models import ActorCritic
    from .trainer import PPOTrainer

    trainer = PPOTrainer(ActorCritic(policy_lm), ref, tokenizer, reward_fn, config)
    return trainer.evaluate(prompts, seed=seed)


def run_arm(spec: dict) -> dict:
    """One arm and seed, in this process: train, evaluate on held-out prompts, return a summary.

    ``spec``: ``arm``, ``seed``, ``model``, ``reward``, ``preset_config`` (PPOConfig fields),
    ``budget`` (tokens), ``eval_prompts``, ``out`` (the arm's folder), ``dpo`` (DPOConfig fields),
    ``threads`` (torch threads, or None), ``eval_every`` (an online arm is also evaluated on the
    held-out prompts after every that many updates, or None: at the end only). Writes
    ``history.jsonl``, ``eval.json`` and ``samples_after.md`` into ``out``; an online arm's
    ``eval.json`` holds its ``trajectory`` of held-out ``{"update", "score", "kl"}``, the last
    entry being the final evaluation.
    """
    import torch

    from .cli_train import write_samples
    from .rewards import get_reward, review_prompts
    from .trainer import PPOConfig, build_trainer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    arm, seed, out = spec["arm"], spec["seed"], Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    reward_fn = get_reward(spec["reward"])
    heldout = review_prompts("heldout")[: spec["eval_prompts"]]
    train_prompts = review_prompts("train")
    base = PPOConfig.from_dict({**spec["preset_config"], "seed": seed})
    n = arm_updates(arm, spec["budget"], base.batch_size, base.max_new_tokens)
    t0 = time.perf_counter()
    if arm == "dpo":
        from .dpo import DPOConfig, train_dpo
        from .models import load_model, reference_copy
        from .preferences import make_pairs

        lm, tokenizer = load_model(spec["model"])
        ref = reference_copy(lm)
        rng = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_prompts), generator=rng).tolist()
        # n pairs, one per prompt, cycling through the shuffled prompts when the budget buys more
        # pairs than there are prompts (two draws of a prompt give two different pairs)
        prompts = [train_prompts[order[i % len(order)]] for i in range(n)]
        pairs = make_pairs(ref, tokenizer, prompts, reward_fn, tau=0.0, max_new_tokens=base.max_new_tokens,
                           temperature=base.temperature, batch_size=base.batch_size, seed=seed,
                           max_prompt_length=base.max_prompt_length)
        dpo_config = DPOConfig(**{"batch_size": min(base.batch_size, len(pairs)), "seed": seed,
                                  "learning_rate": base.learning_rate, "max_prompt_length": base.max_prompt_length,
                                  # decoded text re-tokenises to about as many tokens, rarely more
                                  "max_response_length": 3 * base.max_new_tokens + 1, **spec.get("dpo", {})})
        t_train = time.perf_counter()
        history = train_dpo(lm, ref, tokenizer, pairs, dpo_config)
        seconds = time.perf_counter() - t_train
        after = _evaluate(lm, ref, tokenizer, reward_fn, base, heldout, seed=0)
        extra = {"pairs": len(pairs), "config": dpo_config.to_dict(), "steps": len(history)}
        updates = len(history)
    else:
        config = PPOConfig.from_dict({**spec["preset_config"], **ARMS[arm], "seed": seed})
        trainer = build_trainer(spec["model"], reward_fn, config)
        every = spec.get("eval_every") or n
        history, trajectory = [], []
        while trainer.step_count < n:  # evaluation draws from its own generator: training is unchanged by it
            history += trainer.train(train_prompts, min(every, n - trainer.step_count), progress=False)
            after = trainer.evaluate(heldout, seed=0)
            trajectory.append({"update": trainer.step_count, "score": after["score_mean"], "kl": after["kl_mean"]})
        seconds = sum(h["time/step"] for h in history)
        extra = {"config": config.to_dict(), "samples_per_prompt": trainer.algorithm.samples_per_prompt,
                 "trajectory": trajectory}
        updates = n
    with open(out / "history.jsonl", "w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    write_samples(out / "samples_after.md", f"{arm}, seed {seed}, after {updates} updates (held-out prompts)", after)
    result = {"arm": arm, "seed": seed, "updates": updates, "token_budget": spec["budget"],
              "score_after": after["score_mean"], "kl_after": after["kl_mean"], "length_after": after["length_mean"],
              "seconds_per_update": seconds / max(updates, 1), "wall_seconds": time.perf_counter() - t0,
              "peak_rss_mb": peak_rss_mb(), **extra}
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def _in_child(spec: dict) -> dict:
    """``run_arm`` in a fresh (spawned) process, so its peak memory is the arm's alone."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_arm, spec).result()


def run_compare(args: argparse.Namespace) -> int:
    from .cli_train import PRESETS, write_samples
    from .rewards import get_reward, review_prompts
    from .trainer import PPOConfig, build_trainer

    arms = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise SystemExit(f"error: unknown arm(s) {unknown} in --algos; choose among {', '.join(ARMS)}.")
    if not args.seeds or any(s < 0 for s in args.seeds):
        raise SystemExit(f"error: --seeds must be integers ≥ 0, got {args.seeds}.")
    if args.eval_every is not None and args.eval_every < 1:
        raise SystemExit(f"error: --eval-every must be ≥ 1 (updates between held-out evaluations), got {args.eval_every}.")
    preset = PRESETS[args.preset]
    preset_config = {**preset["config"], **_set_fields(args.set)}
    try:
        base = PPOConfig.from_dict(preset_config)
        for arm in arms:
            if ARMS[arm] is not None:
                PPOConfig.from_dict({**preset_config, **ARMS[arm]})
            arm_updates(arm, args.token_budget, base.batch_size, base.max_new_tokens)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid configuration: {e}") from None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} already holds a comparison; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    model, reward = args.model or preset["model"], args.reward or preset["reward"]
    (out / "config.json").write_text(json.dumps({"model": model, "reward": reward, "preset": args.preset,
                                                 "preset_config": preset_config, "arms": arms, "seeds": args.seeds,
                                                 "token_budget": args.token_budget,
                                                 "eval_prompts": args.eval_prompts, "eval_every": args.eval_every},
                                                indent=1))
    heldout = review_prompts("heldout")[: args.eval_prompts]
    before = {}
    for seed in args.seeds:  # the policy before training is π_ref, the same for every arm
        trainer = build_trainer(model, get_reward(reward), PPOConfig.from_dict({**preset_config, "seed": seed}))
        ev = trainer.evaluate(heldout, seed=0)
        write_samples(out / f"samples_before_seed{seed}.md", "Before training (held-out prompts)", ev)
        before[seed] = {"score": ev["score_mean"], "kl": ev["kl_mean"]}
        del trainer
    results = []
    for seed in args.seeds:
        for arm in arms:
            spec = {"arm": arm, "seed": seed, "model": model, "reward": reward, "preset_config": preset_config,
                    "budget": args.token_budget, "eval_prompts": args.eval_prompts, "out": str(out / f"{arm}_seed{seed}"),
                    "dpo": _set_fields(args.dpo_set), "threads": args.threads, "eval_every": args.eval_every}
            r = _in_child(spec) if args.isolate else run_arm(spec)
            r["score_before"] = before[seed]["score"]
            results.append(r)
            print(f"{arm:>13} seed {seed}: score {r['score_before']:.3f} → {r['score_after']:.3f}, KL {r['kl_after']:.2f}, "
                  f"{r['seconds_per_update']:.1f} s/update, peak {r['peak_rss_mb']:.0f} MiB", flush=True)
            (out / "summary.json").write_text(json.dumps({"before": before, "runs": results}, indent=1))
    print(f"comparison folder: {out}")
    return 0


def run_dpo(args: argparse.Namespace) -> int:
    from .cli_train import PRESETS, write_samples
    from .dpo import DPOConfig, train_dpo
    from .models import HubUnreachableError, load_model, reference_copy
    from .preferences import PreferenceDataError, read_pairs
    from .rewards import get_reward, review_prompts
    from .trainer import PPOConfig

    if args.eval_prompts < 1:
        raise SystemExit(f"error: --eval-prompts must be ≥ 1, got {args.eval_prompts}.")
    try:
        pairs = read_pairs(args.pairs)
    except (OSError, PreferenceDataError) as e:
        raise SystemExit(f"error: --pairs: {e}") from None
    try:
        config = DPOConfig(**_set_fields(args.set))
    except TypeError as e:
        raise SystemExit(f"error: invalid DPO setting: {e}; the fields are {list(DPOConfig.__dataclass_fields__)}.") from None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if len(pairs) < config.batch_size:
        raise SystemExit(f"error: {args.pairs} holds {len(pairs)} pairs, fewer than batch_size={config.batch_size}; "
                         "lower it with --set batch_size=N.")
    out = Path(args.out or f"runs/dpo-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"error: {out} already exists and is not an empty folder; choose another --out.")
    try:
        reward_fn = get_reward(args.reward)
        lm, tokenizer = load_model(args.model)
    except (ValueError, HubUnreachableError) as e:
        raise SystemExit(f"error: {e}") from None
    ref = reference_copy(lm)
    sampling = PPOConfig.from_dict({**PRESETS["sentiment"]["config"], "max_prompt_length": config.max_prompt_length})
    heldout = review_prompts("heldout")[: args.eval_prompts]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model": args.model, "pairs": str(args.pairs), "n_pairs": len(pairs),
                                                 "reward": args.reward, "config": config.to_dict()}, indent=1))
    before = _evaluate(lm, ref, tokenizer, reward_fn, sampling, heldout, seed=0)
    write_samples(out / "samples_before.md", "Before DPO (held-out prompts)", before)
    try:
        with open(out / "history.jsonl", "w") as f:
            history = train_dpo(lm, ref, tokenizer, pairs, config, progress=True,
                                callback=lambda step, row: f.write(json.dumps(row) + "\n"))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    after = _evaluate(lm, ref, tokenizer, reward_fn, sampling, heldout, seed=0)
    write_samples(out / "samples_after.md", f"After {len(history)} DPO steps (held-out prompts)", after)
    result = {k: {m: v[m] for m in ("score_mean", "kl_mean", "length_mean")} for k, v in (("before", before), ("after", after))}
    result.update(score_gain=after["score_mean"] - before["score_mean"], steps=len(history),
                  final_accuracy=history[-1]["rewards/accuracy"])
    if args.save_model:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(out / "policy.safetensors"))
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"run folder: {out}")
    return 0


def add_dpo_parser(sub) -> None:
    p = sub.add_parser("dpo", help="DPO on a JSONL file of preference pairs (chapter 09)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help='JSONL, one {"prompt", "chosen", "rejected"} object per line')
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (default), tiny-gpt2 or a Hub id")
    p.add_argument("--reward", default="vader", help="scores held-out samples before and after (default vader)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a DPOConfig field (beta, learning_rate, "
                   "batch_size, epochs, max_prompt_length, max_response_length, max_grad_norm, seed)")
    p.add_argument("--out", help="run folder (default: runs/dpo-<time>)")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts scored before and after (default 64)")
    p.add_argument("--save-model", action="store_true", help="also write the trained weights (policy.safetensors)")
    p.set_defaults(run=run_dpo)


def add_compare_parser(sub) -> None:
    from .cli_train import PRESETS

    p = sub.add_parser("compare", help="every algorithm on one task at an equal token budget (chapter 09)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the comparison's folder (must be new or empty)")
    p.add_argument("--algos", default=",".join(ARMS), help=f"comma-separated arms among {', '.join(ARMS)} (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--token-budget", type=int, default=16 * 24 * 36,
                   help="generated tokens per arm and seed (default 13824, chapter 09's budget: 36 updates of 16 × 24)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="sentiment")
    p.add_argument("--model", help="instead of the preset's model")
    p.add_argument("--reward", help="instead of the preset's reward")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a PPOConfig field for every arm")
    p.add_argument("--dpo-set", action="append", metavar="FIELD=VALUE", help="a DPOConfig field of the DPO arm")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts (default 64)")
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="also evaluate each online arm on the held-out prompts every N updates: its trajectory on "
                        "the reward–KL plane (default: at the end only)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per arm (default: torch's)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run the arms in this process (faster start; peak memory is then cumulative)")
    p.set_defaults(run=run_compare)
