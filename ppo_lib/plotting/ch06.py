"""Figures of chapter 06, "RLHF with PPO", and the script behind its precomputed run.

The reward-hacking figure plots a run that is too long for the notebook's CPU budget. It
was made once by this module's script and committed as ``figures/06_beta0_history.json``::

    python -m ppo_lib.plotting.ch06 --updates 40            # about 20 minutes on 2 CPU cores

Two runs with the same seed and settings, one with β = 0 (no KL penalty) and one with β > 0,
each followed by a held-out evaluation. The figure only reads the JSON, so it is cheap and
deterministic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import figure, figures_dir

HISTORY_FILE = "06_beta0_history.json"
KEPT_STATS = ("env/score_mean", "objective/kl", "policy/clipfrac", "policy/entropy", "policy/approx_kl_k3",
              "value/explained_variance", "response/length_mean")
# The settings of the precomputed run: the notebook's CPU run, with a larger learning rate so
# that the drift shows within a few dozen updates.
HACKING_CONFIG = dict(batch_size=8, max_new_tokens=16, ppo_epochs=2, num_minibatches=2, learning_rate=5e-5, seed=0)
HACKING_BETAS = (0.0, 0.1)


def padding_example():
    """A hand-made batch in the layout of ``ppo_lib.rollout`` (no model): 3 prompts, 3 responses.

    Returns ``(prompt_mask, response_ids, response_mask, eos)``: prompts of 2, 4 and 3 tokens
    left-padded to P = 4; responses right-padded to T = 5, the EOS (id ``eos``) included in
    the mask, as :func:`ppo_lib.rollout.truncate_after_eos` makes it.
    """
    prompt_mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=bool)
    eos = 2
    response_ids = np.array([[11, 12, eos, 0, 0], [13, 14, 15, 16, 17], [18, eos, 0, 0, 0]])
    response_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=bool)
    return prompt_mask, response_ids, response_mask, eos


@figure("06_padding_contract")
def padding_contract():
    """The padding contract: left-padded prompts, right-padded responses, one response mask with the EOS,
    position ids from the attention mask, the score on the last real token."""
    prompt_mask, response_ids, response_mask, eos = padding_example()
    B, P = prompt_mask.shape
    T = response_ids.shape[1]
    attention = np.concatenate([prompt_mask, response_mask], axis=1)  # (B, L)
    positions = np.clip(attention.cumsum(1) - 1, 0, None)
    colors = {"pad": "#eeeeee", "prompt": "#9ecae1", "response": "#a1d99b", "eos": "#fdae6b"}
    fig, ax = plt.subplots(figsize=(9, 2.8))
    for b in range(B):
        for j in range(P + T):
            if j < P:
                kind = "prompt" if prompt_mask[b, j] else "pad"
            else:
                t = j - P
                kind = ("eos" if response_ids[b, t] == eos else "response") if response_mask[b, t] else "pad"
            ax.add_patch(plt.Rectangle((j, B - 1 - b), 0.95, 0.9, color=colors[kind]))
            label = "pad" if kind == "pad" else f"pos {positions[b, j]}"
            ax.text(j + 0.47, B - 1 - b + 0.45, label, ha="center", va="center", fontsize=7)
        last = P + int(response_mask[b].sum()) - 1
        ax.text(last + 0.47, B - 1 - b + 0.12, "+ score", ha="center", va="center", fontsize=6, color="tab:red")
    ax.axvline(P - 0.025, color="k", lw=1.5)
    ax.set(xlim=(0, P + T), ylim=(0, B), xticks=np.arange(P + T) + 0.47,
           xticklabels=[f"p{j}" for j in range(P)] + [f"t={t}" for t in range(T)],
           yticks=np.arange(B) + 0.45, yticklabels=[f"row {b}" for b in reversed(range(B))],
           title="prompts left-padded (end at column P−1) | responses right-padded (start at column P)")
    ax.grid(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, ["padding (mask 0)", "prompt", "response (mask 1)", "EOS (mask 1)"], fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)
    fig.tight_layout()
    return fig


def load_hacking_history(path: str | Path | None = None) -> dict:
    """Read the precomputed β = 0 vs β > 0 runs (see the module docstring for the command)."""
    path = Path(path) if path is not None else figures_dir() / HISTORY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m ppo_lib.plotting.ch06` to make it.")
    return json.loads(path.read_text())


@figure("06_reward_hacking")
def reward_hacking(path: str | None = None):
    """Score and KL to the reference of the precomputed runs, β = 0 against β > 0."""
    data = load_hacking_history(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("env/score_mean", "reward (VADER score)"), ("objective/kl", "KL to reference (nats / sequence)"),
              ("policy/entropy", "entropy (nats / token)"))
    for label, run in data["runs"].items():
        xs = np.arange(1, len(run["history"]["env/score_mean"]) + 1)
        for ax, (key, title) in zip(axes, panels):
            ax.plot(xs, run["history"][key], label=label)
            ax.set(title=title, xlabel="PPO update")
    axes[0].legend(fontsize=8)
    fig.suptitle("precomputed: " + data["command"], fontsize=8, y=1.0)
    fig.tight_layout()
    return fig


def run_hacking(updates: int, out: Path, eval_prompts: int = 16, betas=HACKING_BETAS) -> dict:
    """Train the two runs (β = 0 and β > 0) and write their histories and held-out samples to ``out``."""
    from ..rewards import review_prompts, vader_sentiment
    from ..trainer import PPOConfig, build_trainer

    data = {"command": f"python -m ppo_lib.plotting.ch06 --updates {updates}",
            "config": HACKING_CONFIG, "model": "smollm2-135m", "reward": "vader", "runs": {}}
    heldout = review_prompts("heldout")[:eval_prompts]
    for beta in betas:
        trainer = build_trainer("smollm2-135m", vader_sentiment, PPOConfig(kl_coef=beta, **HACKING_CONFIG))
        run = data["runs"][f"β = {beta}"] = {"kl_coef": beta, "history": {k: [] for k in KEPT_STATS}}

        def log(update: int, stats: dict, run=run) -> None:  # written after every update: a partial run survives
            for k in KEPT_STATS:
                run["history"][k].append(round(stats[k], 4))
            run["samples_last_update"] = [[p, r, round(s, 4)] for p, r, s in trainer.last_samples[:4]]
            out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")

        trainer.train(review_prompts("train"), updates, callback=log, progress=True)
        after = trainer.evaluate(heldout)
        run["heldout_after"] = {"score_mean": round(after["score_mean"], 4), "kl_mean": round(after["kl_mean"], 3),
                                "samples": [[p, r, round(s, 4), round(k, 3)] for p, r, s, k in after["samples"][:8]]}
        out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Precompute chapter 06's β = 0 vs β > 0 runs (figures/06_beta0_history.json).")
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--betas", type=float, nargs="+", default=list(HACKING_BETAS), help="KL coefficients to run")
    p.add_argument("--out", default=None, help=f"output JSON (default: figures/{HISTORY_FILE})")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else figures_dir() / HISTORY_FILE
    run_hacking(args.updates, out, betas=args.betas)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    import sys

    print("note: `python -m ppo_lib.plotting.ch06` is now `python -m ppo_lib figures --train-ch06`.", file=sys.stderr)
    raise SystemExit(main())
