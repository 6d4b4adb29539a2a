"""``python -m ppo_lib train``: the trainer of chapter 06 as a command.

    python -m ppo_lib train --preset sentiment                    # offline: SmolLM2-135M + VADER
    python -m ppo_lib train --preset sentiment-gpt2               # Colab: gpt2 + a DistilBERT IMDB classifier
    python -m ppo_lib train --model gpt2 --reward lvwerra/distilbert-imdb --updates 100
    python -m ppo_lib train --preset sentiment --set kl_coef=0.1 --set learning_rate=2e-5
    python -m ppo_lib train --config my_config.json --out runs/mine
    python -m ppo_lib train --out runs/mine --resume                 # the settings come from runs/mine/config.json
    python -m ppo_lib train --preset sentiment --algo rloo           # another registered algorithm (chapter 09)
    python -m ppo_lib train --preset sentiment --eval-every 2        # the held-out score and KL along the way
    python -m ppo_lib train --preset sentiment --kl-budget off --updates 26   # a fixed number of updates

A run folder holds ``config.json``, ``history.jsonl``, ``samples_before.md``,
``samples_after.md``, ``eval.json`` (held-out reward and KL, before and after),
``curves.png`` and ``checkpoint/`` (saved every ``--save-every`` updates and at the end); with
``--eval-every K`` also ``evals.jsonl``, one held-out evaluation per line: before training, every
K updates and at the end.

**The KL budget.** The ``sentiment`` preset ends at a KL budget, not after a fixed number of
updates. After each update the run estimates KL(π ‖ π_ref), in nats per sequence, as the mean of
the training statistic ``objective/kl`` over the last :data:`KL_WINDOW` updates
(:class:`ppo_lib.kl.KLBudget`: 64 responses at the preset's batch of 16, at no extra cost). Once
that reaches ``--kl-budget`` the run saves its checkpoint and ends; ``--updates`` is then the most
it may take. ``eval.json`` says which of the two ended the run. The held-out prompts never decide
anything. ``--kl-budget off`` trains for exactly ``--updates``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from .kl import KL_BUDGET_WINDOW
from .trainer import PPOConfig

# The registered algorithms (ppo_lib.policy_gradient), as --algo offers them.
ALGOS = ("ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax")

__all__ = ["PRESETS", "ALGOS", "KL_WINDOW", "add_train_parser", "run_training", "write_samples", "truncate_history"]

KL_WINDOW = KL_BUDGET_WINDOW
"""Updates whose training KL the budget's estimate averages (:class:`ppo_lib.kl.KLBudget`);
chapter 07, Section 4 measures this estimate against the held-out KL."""

# Each preset: the model, the reward, the most updates, the KL budget (nats per sequence, or None
# for a fixed number of updates) and the PPOConfig fields it sets.
PRESETS: dict[str, dict] = {
    "sentiment": {  # offline, a laptop CPU: 6–15 minutes on 2 cores (figures/runs/sentiment_cpu*/, 5 seeds)
        "model": "smollm2-135m", "reward": "vader", "updates": 40, "kl_budget": 6.0,
        "config": dict(batch_size=16, max_new_tokens=24, temperature=0.7, ppo_epochs=2, num_minibatches=2,
                       learning_rate=2e-5, lr_warmup_updates=12, kl_coef=0.02, vf_coef=0.1, gamma=1.0, lam=0.95,
                       cpu_products="auto"),
    },
    "sentiment-gpt2": {  # network + GPU: TRL's IMDB example (Ziegler et al. 2019 used the 774M GPT-2 on BookCorpus)
        "model": "gpt2", "reward": "lvwerra/distilbert-imdb", "updates": 150, "kl_budget": None,
        "config": dict(batch_size=64, max_new_tokens=32, temperature=1.0, ppo_epochs=4, num_minibatches=4,
                       learning_rate=1.41e-5, kl_coef=0.1, adaptive_kl=True, kl_target=6.0, vf_coef=0.1,
                       mixed_precision="bf16"),
    },
}


def _parse_value(text: str):
    """``--set key=value``: JSON values (numbers, true/false, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _kl_budget_arg(text: str) -> float | str:
    """``--kl-budget``: a positive number of nats per sequence, or ``off``."""
    if text.strip().lower() in ("off", "none"):
        return "off"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expects a positive number of nats per sequence or 'off', got {text!r}")
    return value


def build_config(args: argparse.Namespace) -> tuple[dict, PPOConfig]:
    """Merge preset < config file < --set into (run settings, PPOConfig), all validated."""
    preset_name = args.preset or "sentiment"
    preset = PRESETS[preset_name]
    budget = getattr(args, "kl_budget", None)  # None: the preset's; "off": none
    if budget is None:
        budget = preset["kl_budget"]
    run = {"model": args.model or preset["model"], "reward": args.reward or preset["reward"],
           "updates": preset["updates"] if args.updates is None else args.updates, "preset": preset_name,
           "kl_budget": None if budget == "off" else budget}
    fields = dict(preset["config"])
    if args.config:
        fields.update(_read_json(Path(args.config), "--config"))
    if getattr(args, "algo", None):  # --algo X is --set algorithm=X; group-normalising ones need no whitening
        from .registry import get_algorithm

        fields["algorithm"] = args.algo
        if not get_algorithm(args.algo).whiten_advantages:
            fields["whiten_advantages"] = False
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects key=value, got {item!r}.")
        fields[key] = _parse_value(value)
    if fields.get("mixed_precision") == "bf16":
        import torch

        if not torch.cuda.is_available():
            fields["mixed_precision"] = "no"  # bf16 autocast is for GPUs; keep float32 on a CPU
    return run, _config(fields, "the configuration")


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``, or a one-line error that names the file and the problem."""
    if not path.is_file():
        raise SystemExit(f"error: {what} {path} does not exist or is not a file.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {what} {path} is not valid JSON: {e}.") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {what} {path} must hold a JSON object of PPOConfig fields, not a {type(data).__name__}.")
    return data


def _config(fields: dict, where: str) -> PPOConfig:
    try:
        return PPOConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid {where}: {e}") from None


def resume_config(args: argparse.Namespace, out: Path) -> tuple[dict, PPOConfig]:
    """The run settings and PPOConfig recorded in ``out/config.json``: a resumed run is the run
    that was started, so flags that would change it are refused. ``--updates`` may raise the
    total number of updates."""
    changed = [flag for flag, value in (("--preset", args.preset), ("--model", args.model), ("--reward", args.reward),
                                        ("--config", args.config), ("--set", args.set),
                                        ("--algo", getattr(args, "algo", None)),
                                        ("--kl-budget", getattr(args, "kl_budget", None))) if value]
    if changed:
        raise SystemExit(f"error: --resume continues the run recorded in {out / 'config.json'}; leave out "
                         f"{', '.join(changed)} (to change the configuration, start a new run in another --out).")
    saved = _read_json(out / "config.json", "the run's config file")
    missing = [k for k in ("model", "reward", "updates", "config") if k not in saved]
    if missing or not isinstance(saved.get("config"), dict):
        raise SystemExit(f"error: {out / 'config.json'} lacks {missing or ['config']}; it was not written by this command.")
    run = {k: saved[k] for k in ("model", "reward", "updates")}
    run["preset"] = saved.get("preset")
    run["kl_budget"] = saved.get("kl_budget")  # runs from before the KL budget had none
    if args.updates is not None:
        run["updates"] = args.updates
    return run, _config(saved["config"], f"{out / 'config.json'}")


def check_counts(args: argparse.Namespace) -> None:
    """``--updates``, ``--save-every``, ``--eval-prompts``, ``--eval-batch-size`` and ``--eval-every`` are ≥ 1."""
    for flag in ("updates", "save_every", "eval_prompts", "eval_batch_size", "eval_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be ≥ 1, got {value}.")


def truncate_history(path: Path, step: int) -> int:
    """Keep the lines of ``history.jsonl`` up to update ``step`` (the checkpoint's): a run killed
    after logging an update but before saving it redoes that update on resume. Returns the
    number of lines dropped. The file is replaced atomically."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            update = json.loads(line)["update"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the crash
        if update <= step:
            keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
    return len(lines) - len(keep)


def write_samples(path: Path, title: str, evaluation: dict) -> None:
    """Held-out samples as a markdown table: prompt, response, score, KL."""
    lines = [f"# {title}", "", f"mean score {evaluation['score_mean']:.3f}, mean KL {evaluation['kl_mean']:.2f} nats",
             "", "| prompt | response | score | KL |", "| --- | --- | ---: | ---: |"]
    for prompt, response, s, kl in evaluation["samples"]:
        cell = response.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {prompt} | {cell} | {s:.3f} | {kl:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def run_training(args: argparse.Namespace) -> int:
    """The ``train`` command. Every input is validated and the model is loaded before the run
    folder is touched; under ``accelerate launch`` only the main process writes files."""
    from .checkpoint import CheckpointError
    from .models import HubUnreachableError

    check_counts(args)
    if args.resume:
        if not args.out:
            raise SystemExit("error: --resume needs --out, the run folder to continue.")
        out = Path(args.out)
        if not out.is_dir():
            raise SystemExit(f"error: --resume: {out} is not a run folder.")
        run, config = resume_config(args, out)
    else:
        run, config = build_config(args)
        out = Path(args.out or f"runs/{run['preset']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if out.exists() and not out.is_dir():
            raise SystemExit(f"error: --out {out} is a file; choose a folder.")
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out.")
    try:
        return _train(args, run, config, out)
    except (CheckpointError, HubUnreachableError) as e:
        raise SystemExit(f"error: {e}") from None


def _auto_products(trainer, config: PPOConfig, batch_sizes: list[int]) -> dict:
    """With ``cpu_products="auto"`` on a CPU, measure the products' forms now, for each batch size
    the run samples at (the measurement is cached, so the sampler reuses it): ``{rows: {"form",
    "ms"}}``, empty otherwise."""
    import torch

    from .rollout import fastest_products

    if config.cpu_products != "auto":
        return {}
    lm = trainer.unwrapped.lm  # what the sampler samples with
    with torch.no_grad():
        chosen = {rows: fastest_products(lm, rows, config.max_new_tokens) for rows in dict.fromkeys(batch_sizes)}
    return {str(rows): {"form": form, "ms": ms} for rows, (form, ms) in chosen.items() if ms}


def _train(args: argparse.Namespace, run: dict, config: PPOConfig, out: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .checkpoint import CheckpointError, recover_checkpoint
    from .kl import KLBudget
    from .plotting.training import plot_history
    from .rewards import get_reward, review_prompts
    from .rollout import tokenize_prompts
    from .trainer import build_trainer

    try:  # the model's context and vocabulary, and the launch, are checked here
        trainer = build_trainer(run["model"], get_reward(run["reward"]), config)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    acc = trainer.accelerator
    main = acc.is_main_process
    train_prompts, heldout = review_prompts("train"), review_prompts("heldout")[: args.eval_prompts]
    try:  # every prompt must fit max_prompt_length: fail before the run folder is touched
        tokenize_prompts(trainer.tokenizer, train_prompts + heldout, config.max_prompt_length)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    history_path, ckpt, evals_path = out / "history.jsonl", out / "checkpoint", out / "evals.jsonl"
    budget = KLBudget(run.get("kl_budget"), KL_WINDOW)
    products = _auto_products(trainer, config, [config.batch_size, min(args.eval_batch_size, len(heldout))])
    if main and products:
        print("cpu_products=auto chose, per batch size (ms per decode step for the products alone): "
              + "; ".join(f"{rows} rows: {p['form']} ({', '.join(f'{f} {t:.0f}' for f, t in p['ms'].items())})"
                          for rows, p in products.items()))

    def log_evaluation(evaluation: dict) -> None:  # one line of evals.jsonl (--eval-every), main process only
        if main and args.eval_every:
            line = {"update": trainer.step_count, **{k: v for k, v in evaluation.items() if k != "samples"}}
            with open(evals_path, "a") as f:
                f.write(json.dumps(line) + "\n")

    stopped = False
    if args.resume:
        if main:
            for note in recover_checkpoint(ckpt):
                print(note)
        acc.wait_for_everyone()
        if not ckpt.is_dir():
            raise CheckpointError(f"{out} has no checkpoint to resume from (nothing was changed); "
                                  "start a new run in another --out.")
        trainer.load_checkpoint(ckpt)
        if main:
            dropped = truncate_history(history_path, trainer.step_count)
            truncate_history(evals_path, trainer.step_count)  # evaluations past the checkpoint are redone
            if dropped:
                print(f"dropped {dropped} line(s) of history.jsonl after update {trainer.step_count}, "
                      "the last one the checkpoint holds")
            print(f"resumed from {ckpt} at update {trainer.step_count}")
        acc.wait_for_everyone()
        budget.kls = [json.loads(line)["objective/kl"] for line in history_path.read_text().splitlines()]
        stopped = budget.reached  # a run that reached its budget stays ended
        if stopped and main:
            print(f"the run ended at its KL budget of {budget.nats:g} nats at update {trainer.step_count}; "
                  "to train on, start a new run in another --out")
    else:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps({**run, "config": dataclasses.asdict(config)}, indent=1))
        before = trainer.evaluate(heldout, batch_size=args.eval_batch_size)
        if main:
            write_samples(out / "samples_before.md", "Before training (held-out prompts)", before)
            (out / "eval_before.json").write_text(json.dumps({k: v for k, v in before.items() if k != "samples"}))
        log_evaluation(before)
    since_save = 0
    while not stopped and trainer.step_count < run["updates"]:
        n = min(args.save_every - since_save, run["updates"] - trainer.step_count)
        if args.eval_every:
            n = min(n, args.eval_every - trainer.step_count % args.eval_every)
        n = len(trainer.train(train_prompts, n, log_path=history_path, stop=budget))
        stopped = budget.reached
        last_update = trainer.step_count == run["updates"] or stopped
        if args.eval_every and trainer.step_count % args.eval_every == 0 and not last_update:
            # before the checkpoint: a run killed in between redoes both from the last one
            log_evaluation(trainer.evaluate(heldout, batch_size=args.eval_batch_size))
        since_save += n
        if since_save == args.save_every or last_update:
            trainer.save_checkpoint(ckpt)
            since_save = 0
    after = trainer.evaluate(heldout, batch_size=args.eval_batch_size)
    log_evaluation(after)
    if main:
        history = [json.loads(line) for line in history_path.read_text().splitlines()]
        fig = plot_history(history)
        fig.savefig(out / "curves.png", bbox_inches="tight")
        write_samples(out / "samples_after.md", f"After {trainer.step_count} PPO updates (held-out prompts)", after)
        before = json.loads((out / "eval_before.json").read_text())
        result = {"before": before, "after": {k: v for k, v in after.items() if k != "samples"},
                  "score_gain": after["score_mean"] - before["score_mean"], "updates": trainer.step_count,
                  "kl_budget": budget.nats, "kl_estimate": budget.estimate,
                  "ended_by": "kl_budget" if stopped else "updates",
                  "train_seconds": sum(h["time/step"] for h in history)}
        if products:
            result["cpu_products"] = products
        (out / "eval.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        print(f"run folder: {out}")
    acc.wait_for_everyone()
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a language model with PPO against a reward",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="task and defaults (default: sentiment)")
    p.add_argument("--model", help="smollm2-135m, tiny-gpt2, or a Hub id such as gpt2 (overrides the preset)")
    p.add_argument("--reward", help="'vader', 'chars:<characters>' (a toy reward: the fraction of the response's "
                   "characters among them), or a Hub sequence-classifier id (overrides the preset)")
    p.add_argument("--updates", type=int, help="number of PPO updates, or the most of them under a KL budget "
                   "(overrides the preset)")
    p.add_argument("--kl-budget", type=_kl_budget_arg, metavar="NATS|off",
                   help=f"end the run once its estimate of the KL to π_ref (the mean training objective/kl of the "
                   f"last {KL_WINDOW} updates) reaches NATS per sequence; 'off' trains for --updates "
                   "(default: the preset's, 6 for sentiment)")
    p.add_argument("--config", help="a JSON file of PPOConfig fields")
    p.add_argument("--algo", choices=ALGOS, help="the algorithm (chapter 09): the same as --set algorithm=NAME, "
                   "and whiten_advantages=false for grpo and dr_grpo; --set still overrides")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="set one PPOConfig field (repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<preset>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings in its config.json "
                        "(--updates may raise the total)")
    p.add_argument("--save-every", type=int, default=10, help="checkpoint every N updates (default 10)")
    p.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts scored before and after (default 64)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="held-out prompts sampled at once (default 64)")
    p.add_argument("--eval-every", type=int, help="also score the held-out prompts every K updates, into evals.jsonl "
                   "(training is the same with or without it; default: before and after only)")
    p.set_defaults(run=run_training)
