"""``python -m ppo_lib reward-model``: chapter 08's gold/proxy experiment as one command.

    python -m ppo_lib reward-model --out figures/runs/rm_full --pair-repeats 24 \\
        --train-sizes 250 1000 1901 --proxy smallest --bon-prompts 32 --bon-pool 32 \\
        --seeds 0 1 2 --ppo-updates 36 --eval-every 6 --eval-prompts 32 --batch-size 16   # the committed run

The synthetic setup of Gao, Schulman & Hilton (2022), offline and small:

1. **pairs**: two SmolLM2 continuations of each training review opening (repeated
   ``--pair-repeats`` times), labelled by the *gold* reward (VADER) with Bradley–Terry noise τ;
   a fifth of them is held out;
2. **reward models** (the *proxies*) trained on the first k pairs for each ``--train-sizes`` k;
   held-out accuracy, margin, agreement with the gold, and the noise ceiling;
3. the largest proxy (or, with ``--proxy smallest``, the one trained on the fewest pairs) is
   normalised (mean 0, std 1 on policy samples) and used for **best-of-n**: a pool of
   ``--bon-pool`` samples per held-out prompt, gold and proxy of the proxy-best of n by the
   unbiased estimator, against the analytic KL bound;
4. **PPO against the proxy** (``build_trainer`` with the reward model as ``reward_fn``) for
   each seed and each KL coefficient β of ``--kl-coef``, with gold and proxy measured on held-out
   prompts every ``--eval-every`` updates;
5. Gao et al.'s forms fitted to both curves (d = √KL), one RL fit per β.

``python -m ppo_lib reward-probe --pairs-from figures/runs/rm_full --out figures/runs/rm_probe``
fits linear probes (:func:`ppo_lib.reward_model.probe_layers`) on every layer of the backbone, on
the same pairs: which layer and which pooling carry the preference the proxy has to learn.

The run folder holds ``config.json``, ``pairs.jsonl``, ``pairs_heldout.jsonl``, ``results.json``,
``samples.md``, ``rm_overview.png``, ``wall_time.txt`` and ``reward_model/`` (safetensors + JSON).
``results.json`` is rewritten after every stage (and every PPO seed), atomically, with an
``"incomplete"`` field naming the last finished stage until the run ends: an interrupted run
keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

__all__ = ["add_reward_model_parser", "run_reward_model", "run_reward_probe", "command_line"]


def _bon_pool(lm, tokenizer, prompts, pool: int, max_new_tokens: int, temperature: float, seed: int):
    """``pool`` samples for each prompt: returns a list (one per prompt) of response strings."""
    from .rollout import sample, tokenize_prompts

    g = torch.Generator().manual_seed(seed)
    out = [[] for _ in prompts]
    for _ in range(pool):
        ids, mask = tokenize_prompts(tokenizer, prompts)
        batch = sample(lm, tokenizer, ids, mask, max_new_tokens, temperature, generator=g)
        for i, (r, m) in enumerate(zip(batch.response_ids, batch.response_mask)):
            out[i].append(tokenizer.decode(r[m], skip_special_tokens=True))
    return out


def _safe_scores(fn, prompts, responses):
    """Scores of responses, with an empty response scored by the gold/proxy of a single space."""
    return [float(x) for x in fn(prompts, [r if r.strip() else " " for r in responses])]


def run_reward_model(args: argparse.Namespace) -> int:
    from .models import load_model
    from .preferences import make_pairs, noise_ceiling, read_pairs, write_pairs
    from .reward_model import (RewardModel, best_of_n_estimate, best_of_n_kl_bound, evaluate_reward_model, fit_gao,
                               pair_features, train_reward_model)
    from .rewards import get_reward, review_prompts
    from .trainer import PPOConfig, build_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "run"}  # not the handler function
    (out / "config.json").write_text(json.dumps(settings, indent=1))
    gold = get_reward(args.gold)
    lm, tokenizer = load_model(args.model)
    results: dict = {"settings": settings, "command": command_line(settings)}

    def save(stage: str | None) -> None:  # atomically; "incomplete" names the last finished stage
        if stage is None:
            results.pop("incomplete", None)
        else:
            results["incomplete"] = f"stopped after {stage}"
        results["seconds"] = time.perf_counter() - t0
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(out / "results.json")

    # 1. pairs, labelled by the gold with Bradley–Terry noise τ
    if args.pairs_from:  # reuse the pairs of an earlier run (same model, gold and τ)
        train_pairs = read_pairs(Path(args.pairs_from) / "pairs.jsonl")
        held = read_pairs(Path(args.pairs_from) / "pairs_heldout.jsonl")
    else:
        prompts = review_prompts("train") * args.pair_repeats
        pairs = make_pairs(lm, tokenizer, prompts, gold, tau=args.tau, max_new_tokens=args.max_new_tokens,
                           temperature=args.pair_temperature, seed=args.seed_pairs)
        n_held = max(len(pairs) // 5, 8)
        train_pairs, held = pairs[:-n_held], pairs[-n_held:]
    write_pairs(out / "pairs.jsonl", train_pairs)
    write_pairs(out / "pairs_heldout.jsonl", held)
    g_c = torch.tensor([p["gold_chosen"] for p in held])
    g_r = torch.tensor([p["gold_rejected"] for p in held])
    results["pairs"] = {"train": len(train_pairs), "heldout": len(held), "tau": args.tau,
                        "noise_ceiling": noise_ceiling(g_c, g_r, args.tau),
                        "label_agrees_with_gold": float(((g_c - g_r) > 0).double().mean()),
                        "gold_ties": float((g_c == g_r).double().mean()),
                        "seconds": time.perf_counter() - t0}
    print("pairs:", results["pairs"])
    save("the pairs")

    # 2. reward models at several training sizes (frozen backbone: all share the policy's weights)
    results["reward_models"] = []
    sizes = sorted({min(k, len(train_pairs)) for k in args.train_sizes})
    rm = RewardModel(lm, tokenizer, name=args.model, trainable=args.trainable)
    feats = pair_features(rm, train_pairs) if args.trainable == "head" else None  # once for every size
    proxies = []
    for k in sizes:
        rm = RewardModel(lm, tokenizer, name=args.model, trainable=args.trainable)
        history = train_reward_model(rm, train_pairs[:k], epochs=args.rm_epochs, lr=args.rm_lr, seed=0,
                                     weight_decay=args.rm_weight_decay,
                                     features=None if feats is None else (feats[0][:k], feats[1][:k]))
        row = {"train_pairs": k, "train_accuracy": history[-1]["accuracy"], **evaluate_reward_model(rm, held)}
        row["fraction_of_ceiling"] = row["accuracy"] / results["pairs"]["noise_ceiling"]
        results["reward_models"].append(row)
        proxies.append(rm)
        print("reward model:", row)
    proxy = proxies[0] if args.proxy == "smallest" else proxies[-1]
    results["proxy"] = {"which": args.proxy, "train_pairs": sizes[0] if args.proxy == "smallest" else sizes[-1]}
    save("the reward models")

    # 3. best-of-n against the proxy, from one pool per held-out prompt; the pool (samples of the initial
    #    policy at its temperature) also sets the proxy's normalisation, mean 0 and std 1 (Ziegler et al. 2019)
    held_prompts = review_prompts("heldout")
    bon_prompts = held_prompts[: args.bon_prompts]
    pool = _bon_pool(lm, tokenizer, bon_prompts, args.bon_pool, args.max_new_tokens, args.temperature, seed=1)
    flat_p = [p for p, rs in zip(bon_prompts, pool) for _ in rs]
    flat_r = [r for rs in pool for r in rs]
    results["normalization"] = proxy.normalize(flat_p, [r if r.strip() else " " for r in flat_r])
    proxy.save(out / "reward_model")
    P = torch.tensor(_safe_scores(proxy, flat_p, flat_r)).view(len(bon_prompts), args.bon_pool)
    G = torch.tensor(_safe_scores(gold, flat_p, flat_r)).view(len(bon_prompts), args.bon_pool)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= args.bon_pool]
    bon = []
    for n in ns:
        gold_n, proxy_n = best_of_n_estimate(P, G, n), best_of_n_estimate(P, P, n)  # (M,) per prompt
        sem = lambda x: float(x.std() / math.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
        bon.append({"n": n, "kl_bound": best_of_n_kl_bound(n), "gold": float(gold_n.mean()), "gold_sem": sem(gold_n),
                    "proxy": float(proxy_n.mean()), "proxy_sem": sem(proxy_n)})
    results["best_of_n"] = bon
    best = P.argmax(1)
    samples = ["# Samples\n", f"## Best-of-{args.bon_pool} against the proxy (held-out prompts)\n",
               "| prompt | best-of-n response | proxy | gold |", "|---|---|---|---|"]
    for i in range(min(8, len(bon_prompts))):
        j = int(best[i])
        samples.append(f"| {bon_prompts[i]} | {pool[i][j]!r} | {P[i, j]:.2f} | {G[i, j]:.2f} |")
    print("best-of-n:", bon)
    save("best-of-n")

    # 4. PPO against the proxy, gold tracked on held-out prompts
    eval_prompts = held_prompts[: args.eval_prompts]
    results["ppo"] = []
    for beta, seed in [(beta, seed) for beta in args.kl_coef for seed in args.seeds]:
        config = PPOConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           ppo_epochs=2, num_minibatches=2, learning_rate=args.lr, kl_coef=beta, seed=seed,
                           max_prompt_length=128)
        trainer = build_trainer(args.model, proxy, config)
        curve = []

        def measure(update: int):
            ev = trainer.evaluate(eval_prompts, seed=1000 + seed)
            gold_scores = _safe_scores(gold, [s[0] for s in ev["samples"]], [s[1] for s in ev["samples"]])
            curve.append({"update": update, "kl": ev["kl_mean"], "proxy": ev["score_mean"],
                          "gold": sum(gold_scores) / len(gold_scores), "length": ev["length_mean"]})
            print(f"β {beta} seed {seed} update {update}:", curve[-1])
            return ev, gold_scores

        measure(0)
        for u in range(args.eval_every, args.ppo_updates + 1, args.eval_every):
            trainer.train(review_prompts("train"), args.eval_every, progress=False)
            ev, gold_scores = measure(u)
        results["ppo"].append({"seed": seed, "kl_coef": beta, "curve": curve})
        samples += [f"\n## PPO against the proxy, β = {beta}, seed {seed}, after {args.ppo_updates} updates "
                    "(held-out prompts)\n",
                    "| prompt | response | proxy | gold |", "|---|---|---|---|"]
        for (p, r, s, _), gs in list(zip(ev["samples"], gold_scores))[:8]:
            samples.append(f"| {p} | {r!r} | {s:.2f} | {gs:.2f} |")
        del trainer
        save(f"PPO β = {beta} seed {seed}")

    # 5. Gao et al.'s functional forms, d = √KL, R = gold − gold at d = 0
    g0 = bon[0]["gold"]
    results["fits"] = {"bon": _try_fit(fit_gao, [math.sqrt(b["kl_bound"]) for b in bon], [b["gold"] - g0 for b in bon], "bon")}
    for k, beta in enumerate(args.kl_coef):  # one RL fit per β ("rl" for the first), pooling its seeds
        d_rl, r_rl = [], []
        for run in results["ppo"]:
            if run["kl_coef"] == beta:
                base = run["curve"][0]["gold"]
                d_rl += [math.sqrt(max(c["kl"], 0.0)) for c in run["curve"]]
                r_rl += [c["gold"] - base for c in run["curve"]]
        results["fits"]["rl" if k == 0 else f"rl, β = {beta}"] = _try_fit(fit_gao, d_rl, r_rl, "rl")
    save(None)
    (out / "samples.md").write_text("\n".join(samples) + "\n", encoding="utf-8")
    (out / "wall_time.txt").write_text(f"{results['seconds']:.0f} s with {torch.get_num_threads()} threads\n")
    from .plotting.ch08 import overview_from_results

    import matplotlib.pyplot as plt

    fig = overview_from_results(results)
    fig.savefig(out / "rm_overview.png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {out} in {results['seconds']:.0f} s")
    return 0


def _try_fit(fit, d, R, form):
    try:
        return fit(d, R, form)
    except ValueError as e:  # too few points with d > 0: say so in the results
        return {"error": str(e)}


def run_reward_probe(args: argparse.Namespace) -> int:
    """Linear probes of every layer of the backbone on the pairs of a ``reward-model`` run."""
    from .models import load_model
    from .preferences import noise_ceiling, read_pairs
    from .reward_model import probe_layers

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "run"}
    train_pairs = read_pairs(Path(args.pairs_from) / "pairs.jsonl")
    held = read_pairs(Path(args.pairs_from) / "pairs_heldout.jsonl")
    lm, tokenizer = load_model(args.model)
    rows = probe_layers(lm, tokenizer, train_pairs, held, args.train_sizes, epochs=args.rm_epochs, lr=args.rm_lr,
                        weight_decay=args.rm_weight_decay)
    g_c = torch.tensor([p["gold_chosen"] for p in held])
    g_r = torch.tensor([p["gold_rejected"] for p in held])
    results = {"settings": settings, "command": command_line(settings), "train": len(train_pairs), "heldout": len(held),
               "noise_ceiling": noise_ceiling(g_c, g_r, _run_tau(args.pairs_from)), "rows": rows,
               "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    tmp = out / "probe.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "probe.json")  # no half-written file
    from .plotting.ch08 import probe_from_results

    import matplotlib.pyplot as plt

    fig = probe_from_results(results)
    fig.savefig(out / "probe.png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    for labels, how in (("pairs", "trained on the pairs"), ("gold", "regressed on the gold scores")):
        best = max((r for r in rows if r["labels"] == labels), key=lambda r: (r["train_pairs"], r["accuracy"]))
        print(f"best probe {how}, at {best['train_pairs']} pairs: layer {best['layer']} ({best['pooling']}), held-out "
              f"accuracy {best['accuracy']:.3f} (noise ceiling {results['noise_ceiling']:.3f})")
    print(f"wrote {out} in {results['seconds']:.0f} s")
    return 0


def _run_tau(run_folder: str | Path) -> float:
    """τ of the ``reward-model`` run whose pairs these are (its ``config.json``)."""
    return float(json.loads((Path(run_folder) / "config.json").read_text())["tau"])


def command_line(settings: dict) -> str:
    """The command that makes a run with these ``settings`` (a run's ``config.json``): its
    subcommand (``reward-model`` or ``reward-probe``), ``--out`` and every flag whose value differs
    from its default."""
    command = settings.get("command", "reward-model")
    parser = argparse.ArgumentParser()
    add_reward_model_parser(parser.add_subparsers(dest="command"))
    defaults = vars(parser.parse_args([command, "--out", "-"] + (["--pairs-from", "-"] if command == "reward-probe" else [])))
    parts = [f"python -m ppo_lib {command}", f"--out {settings['out']}"]
    for key, value in settings.items():
        if isinstance(defaults.get(key), list) and not isinstance(value, list):
            value = [value]  # a setting that became a list (--kl-coef): an older run's single value
        if key in ("command", "out", "run") or key not in defaults or value == defaults[key]:
            continue
        parts.append(f"--{key.replace('_', '-')} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return " ".join(parts)


def add_reward_model_parser(sub) -> None:
    p = sub.add_parser("reward-model", help="chapter 08: preference pairs, reward models, best-of-n and PPO against "
                                            "a proxy, with a gold reward", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the run folder (e.g. figures/runs/rm_full)")
    p.add_argument("--model", default="smollm2-135m", help="policy and reward-model backbone")
    p.add_argument("--gold", default="vader", help="the gold reward (as for `train --reward`)")
    p.add_argument("--tau", type=float, default=0.1, help="Bradley–Terry label noise τ of the gold labels")
    p.add_argument("--pair-repeats", type=int, default=2, help="pairs per training prompt (99 prompts)")
    p.add_argument("--pair-temperature", type=float, default=1.0, help="sampling temperature of the pairs")
    p.add_argument("--seed-pairs", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--train-sizes", type=int, nargs="+", default=[40, 80, 158], help="reward-model training sizes")
    p.add_argument("--trainable", default="head", choices=("head", "last_block", "all"))
    p.add_argument("--proxy", default="largest", choices=("largest", "smallest"),
                   help="the reward model best-of-n and PPO optimise: trained on the most or the fewest pairs")
    p.add_argument("--rm-epochs", type=int, default=30)
    p.add_argument("--rm-lr", type=float, default=3e-3)
    p.add_argument("--rm-weight-decay", type=float, default=0.1, help="AdamW weight decay of the head")
    p.add_argument("--pairs-from", default=None, help="reuse pairs.jsonl and pairs_heldout.jsonl of this run folder")
    p.add_argument("--temperature", type=float, default=0.7, help="the policy's sampling temperature (best-of-n, PPO)")
    p.add_argument("--bon-prompts", type=int, default=16)
    p.add_argument("--bon-pool", type=int, default=16, help="N, samples per prompt in the best-of-n pool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ppo-updates", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--kl-coef", type=float, nargs="+", default=[0.02],
                   help="β of PPO's KL penalty; with several values PPO runs at each, for every seed (a sweep)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(run=run_reward_model)

    q = sub.add_parser("reward-probe", help="chapter 08: linear probes of every layer of the backbone on the pairs "
                                            "of a reward-model run (which layer and pooling carry the preference)")
    q.add_argument("--out", required=True, help="the folder for probe.json and probe.png (e.g. figures/runs/rm_probe)")
    q.add_argument("--pairs-from", required=True, help="a reward-model run folder (its pairs and τ)")
    q.add_argument("--model", default="smollm2-135m", help="the backbone (as the run's)")
    q.add_argument("--train-sizes", type=int, nargs="+", default=[250, 1000, 1901], help="probe training sizes")
    q.add_argument("--rm-epochs", type=int, default=30)
    q.add_argument("--rm-lr", type=float, default=3e-3)
    q.add_argument("--rm-weight-decay", type=float, default=0.1, help="AdamW weight decay of each probe")
    q.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    q.set_defaults(run=run_reward_probe)
