"""Chapter 09's online algorithms: every estimator against a plain Python loop on 2 prompts × 4
samples, the RLOO identity, equal rewards (no NaN), ReMax's greedy baseline in the staged trainer,
the errors for bad settings and for ``--algo``, and learning on tiny-gpt2."""

import json
import math
import string

import pytest
import torch

from ppo_lib.__main__ import main
from ppo_lib.registry import ALGORITHMS, get_advantage_estimator
from ppo_lib.rewards import target_token_fraction
from ppo_lib.rollout import tokenize_prompts
from ppo_lib.trainer import PPOConfig, build_trainer
from tiny import PROMPTS

# 2 prompts × 4 samples. Lengths 3, 1, 2, 3 | 2, 3, 1, 1 (T = 3); the score sits on the last real
# token and a per-token −β·KL term on every token, so R_i is the row's sum over its real tokens.
LENGTHS = [3, 1, 2, 3, 2, 3, 1, 1]
SCORES = [1.0, 0.0, 2.0, 1.0, -1.0, 3.0, 0.5, 0.5]
KL_TERM = [-0.1, -0.2, 0.0, -0.05, 0.1, -0.1, 0.0, -0.3]
GREEDY = [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]  # ReMax: the greedy response's score of each prompt
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
T = 3


def _batch():
    rewards = torch.zeros(8, T, dtype=torch.float64)
    mask = torch.zeros(8, T, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = True
        rewards[i, :n] = KL_TERM[i]
        rewards[i, n - 1] += SCORES[i]
    return rewards, mask


def _plain(name: str, gamma: float = 1.0) -> list[list[float]]:
    """The estimators as the papers write them, with Python floats and loops."""
    rewards, mask = _batch()
    rows = [[float(rewards[i, t]) for t in range(LENGTHS[i])] for i in range(8)]
    R = [sum(r) for r in rows]
    out = []
    for i in range(8):
        group = [j for j in range(8) if int(GROUPS[j]) == int(GROUPS[i])]
        k = len(group)
        mean = sum(R[j] for j in group) / k
        if name == "rloo":
            a = [R[i] - sum(R[j] for j in group if j != i) / (k - 1)] * LENGTHS[i]
        elif name == "grpo":
            std = math.sqrt(sum((R[j] - mean) ** 2 for j in group) / (k - 1))
            a = [(R[i] - mean) / (std + 1e-6)] * LENGTHS[i]
        elif name == "dr_grpo":
            a = [R[i] - mean] * LENGTHS[i]
        else:  # reinforce (group-mean baseline of G_0) and remax (greedy baseline), both on G_t
            togo = [sum(gamma**l * rows[i][t + l] for l in range(LENGTHS[i] - t)) for t in range(LENGTHS[i])]
            G0 = [sum(gamma**l * rows[j][l] for l in range(LENGTHS[j])) for j in range(8)]
            b = GREEDY[i] if name == "remax" else sum(G0[j] for j in group) / k
            a = [g - b for g in togo]
        out.append(a + [0.0] * (T - LENGTHS[i]))
    return out


@pytest.mark.parametrize("name, gamma", [("reinforce", 1.0), ("reinforce", 0.9), ("rloo", 1.0), ("grpo", 1.0),
                                         ("dr_grpo", 1.0), ("remax", 1.0), ("remax", 0.9)])
def test_each_estimator_equals_a_plain_loop(name, gamma):
    rewards, mask = _batch()
    adv, _ = get_advantage_estimator(name)(rewards, mask, GROUPS, gamma=gamma,
                                           reward_baselines=torch.tensor(GREEDY, dtype=torch.float64))
    torch.testing.assert_close(adv, torch.tensor(_plain(name, gamma), dtype=torch.float64))


def test_rloo_is_k_over_k_minus_1_times_the_centred_return():
    rewards, mask = _batch()
    adv, _ = get_advantage_estimator("rloo")(rewards, mask, GROUPS)
    R = torch.where(mask, rewards, 0).sum(1)
    mean = torch.stack([R[GROUPS == g].mean() for g in GROUPS])
    torch.testing.assert_close(adv[:, 0], 4 / 3 * (R - mean))


@pytest.mark.parametrize("name", ["reinforce", "rloo", "grpo", "dr_grpo", "remax"])
def test_equal_rewards_give_zero_advantage_and_no_nan(name):
    rewards = torch.zeros(8, 2)
    rewards[:, -1] = 0.7  # every sample of every prompt scores the same: std = 0
    mask = torch.ones(8, 2, dtype=torch.bool)
    adv, ret = get_advantage_estimator(name)(rewards, mask, GROUPS, reward_baselines=torch.full((8,), 0.7))
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert adv.abs().max() == 0


def test_remax_needs_its_baseline():
    rewards, mask = _batch()
    with pytest.raises(ValueError, match="needs reward_baselines"):
        get_advantage_estimator("remax")(rewards, mask)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(8,\)"):
        get_advantage_estimator("remax")(rewards, mask, reward_baselines=torch.zeros(4))


@pytest.mark.parametrize("algo", ["rloo", "grpo", "dr_grpo"])
def test_group_algorithms_refuse_k_below_2(algo):
    with pytest.raises(ValueError, match="samples_per_prompt must be ≥ 2, got 1"):
        PPOConfig(algorithm=algo, samples_per_prompt=1, whiten_advantages=False)
    assert PPOConfig(algorithm=algo, samples_per_prompt=2, whiten_advantages=False).algorithm_spec.samples_per_prompt == 2


def test_a_batch_size_not_divisible_by_the_group_size_is_refused():
    with pytest.raises(ValueError, match="samples 4 responses per prompt; batch_size=6 must be a multiple of it"):
        PPOConfig(algorithm="rloo", batch_size=6)
    with pytest.raises(ValueError, match="samples 3 responses per prompt; batch_size=16 must be a multiple"):
        PPOConfig(algorithm="reinforce", samples_per_prompt=3)


def test_the_cli_algo_flag(capsys, tmp_path):
    from ppo_lib.cli_train import ALGOS

    assert set(ALGOS) == set(ALGORITHMS)
    with pytest.raises(SystemExit) as e:
        main(["train", "--algo", "nope", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    base = ["train", "--model", "tiny-gpt2", "--reward", "chars:ab", "--out", str(tmp_path / "y")]
    with pytest.raises(SystemExit, match="samples_per_prompt must be ≥ 2"):
        main(base + ["--algo", "grpo", "--set", "samples_per_prompt=1"])
    with pytest.raises(SystemExit, match="batch_size=10 must be a multiple"):
        main(base + ["--algo", "rloo", "--set", "batch_size=10"])
    assert not (tmp_path / "y").exists()  # nothing written for a bad configuration


def test_algo_is_an_alias_of_set_algorithm():
    import argparse

    from ppo_lib.cli_train import build_config

    args = argparse.Namespace(preset="sentiment", model=None, reward=None, updates=None, config=None, set=None,
                              algo="grpo")
    _, config = build_config(args)
    assert config.algorithm == "grpo" and config.whiten_advantages is False  # GRPO normalises within groups
    args.set = ["algorithm=rloo"]
    assert build_config(args)[1].algorithm == "rloo"  # --set still overrides


def _trainer(algo, **extra):
    cfg = PPOConfig(algorithm=algo, batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=1,
                    num_minibatches=1, learning_rate=3e-3, kl_coef=0.01, stop_at_eos=False, seed=0, **extra)
    return build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), cfg)


def test_remax_greedy_baseline_is_the_score_of_argmax_decoding():
    t = _trainer("remax")
    prompts = PROMPTS[:3]
    ids, mask = tokenize_prompts(t.tokenizer, prompts, 64)
    lm = t.unwrapped.lm
    with torch.no_grad():  # argmax decoding by hand: the prompts' positions, one token at a time
        for _ in range(12):
            logits = lm(input_ids=ids, attention_mask=mask.long(),
                        position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], 1)
    texts = [t.tokenizer.decode(r, skip_special_tokens=True) for r in ids[:, -12:]]
    want = target_token_fraction(string.ascii_lowercase)(prompts, texts)
    state = t.sample_rng.get_state()
    torch.testing.assert_close(t.greedy_scores(prompts), torch.tensor(want))
    assert torch.equal(t.sample_rng.get_state(), state)  # the rollout's sampling stream is untouched


@pytest.mark.parametrize("algo, extra", [("dr_grpo", dict(whiten_advantages=False)), ("remax", {})])
def test_the_other_online_algorithms_learn(algo, extra):
    """0.10 → 0.35 (Dr. GRPO) and 0.10 → 0.38 (ReMax) in 30 updates with seed 0 when written;
    REINFORCE, RLOO, GRPO and PPO are tested the same way in test_registry.py and
    test_rollout_trainer.py."""
    history = _trainer(algo, **extra).train(PROMPTS, n_updates=30, progress=False)
    first = sum(h["env/score_mean"] for h in history[:5]) / 5
    last = sum(h["env/score_mean"] for h in history[-5:]) / 5
    assert first < 0.2 and last > first + 0.15, (first, last)


def test_the_compare_command_checks_its_arms_and_budget(tmp_path):
    from ppo_lib.cli_compare import arm_updates

    assert arm_updates("ppo", 16 * 24 * 3, 16, 24) == 3
    assert arm_updates("remax", 16 * 24 * 3, 16, 24) == 1  # its greedy responses cost as much again
    assert arm_updates("dpo", 16 * 24 * 3, 16, 24) == 24  # pairs: two sampled responses each
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit, match=r"unknown arm\(s\) \['ppo2'\]"):
        main(["compare", "--out", str(out), "--algos", "ppo,ppo2"])
    with pytest.raises(SystemExit, match="buys no update of arm 'remax'"):
        main(["compare", "--out", str(out), "--algos", "remax", "--token-budget", "400"])
    assert not out.exists()


def test_the_dpo_arm_spends_its_whole_budget_even_beyond_the_prompt_list(tmp_path):
    """288 pairs on the 99 training prompts: the arm cycles through them instead of stopping at 99."""
    from ppo_lib.cli_compare import run_arm
    from ppo_lib.rewards import review_prompts

    n_prompts = len(review_prompts("train"))
    pairs_wanted = n_prompts + 21
    result = run_arm({"arm": "dpo", "seed": 0, "model": "tiny-gpt2", "reward": "chars:abcdefghijklmnopqrstuvwxyz",
                      "preset_config": {"batch_size": 16, "max_new_tokens": 4, "max_prompt_length": 96},
                      "budget": pairs_wanted * 2 * 4, "eval_prompts": 4, "out": str(tmp_path / "dpo"), "dpo": {},
                      "threads": None})
    # a pair whose two responses decode identical or empty is dropped: a few at most
    assert n_prompts < result["pairs"] <= pairs_wanted
    assert result["steps"] == result["pairs"] // 16  # one epoch of full batches of 16


def test_evaluations_during_a_compare_arm_record_a_trajectory_and_leave_training_unchanged(tmp_path):
    """--eval-every 2 on 5 updates: held-out points after updates 2, 4 and 5 (the last is the final
    evaluation), and the training history equals that of the same arm evaluated at the end only."""
    from ppo_lib.cli_compare import run_arm

    spec = {"arm": "rloo", "seed": 0, "model": "tiny-gpt2", "reward": "chars:abcdefghijklmnopqrstuvwxyz",
            "preset_config": {"batch_size": 8, "max_new_tokens": 6, "learning_rate": 3e-3, "ppo_epochs": 1,
                              "num_minibatches": 1, "stop_at_eos": False, "max_prompt_length": 96},
            "budget": 8 * 6 * 5, "eval_prompts": 4, "dpo": {}, "threads": None}
    during = run_arm({**spec, "out": str(tmp_path / "during"), "eval_every": 2})
    end = run_arm({**spec, "out": str(tmp_path / "end"), "eval_every": None})
    assert [p["update"] for p in during["trajectory"]] == [2, 4, 5] and len(end["trajectory"]) == 1
    assert during["trajectory"][-1] == {"update": 5, "score": during["score_after"], "kl": during["kl_after"]}
    assert during["score_after"] == end["score_after"] and during["kl_after"] == end["kl_after"]
    drop = ("time/", "throughput/")
    history = [[{k: v for k, v in json.loads(line).items() if not k.startswith(drop)}
                for line in (tmp_path / name / "history.jsonl").read_text().splitlines()] for name in ("during", "end")]
    assert history[0] == history[1]
    with pytest.raises(SystemExit, match="--eval-every must be ≥ 1"):
        main(["compare", "--out", str(tmp_path / "bad"), "--algos", "rloo", "--eval-every", "0"])


def test_the_point_within_a_kl_budget_is_the_last_evaluation_below_it():
    from ppo_lib.plotting.ch09 import gain_over_ref, last_within_kl

    run = {"arm": "grpo", "seed": 1, "updates": 36, "score_before": 0.25, "score_after": 0.9, "kl_after": 12.0,
           "trajectory": [{"update": 12, "score": 0.4, "kl": 3.0}, {"update": 24, "score": 0.7, "kl": 7.9},
                          {"update": 30, "score": 0.6, "kl": 8.5}, {"update": 36, "score": 0.9, "kl": 12.0}]}
    assert last_within_kl(run, 8.0) == {"update": 24, "score": 0.7, "kl": 7.9}
    assert last_within_kl(run, 2.0) is None
    assert gain_over_ref(run, {}) == pytest.approx(0.65)
    final_only = {"seed": 0, "updates": 36, "score_after": 0.5, "kl_after": 6.0}  # no trajectory: the final point
    assert last_within_kl(final_only, 8.0) == {"update": 36, "score": 0.5, "kl": 6.0}
    assert gain_over_ref(final_only, {"before": {"0": {"score": 0.2}}}) == pytest.approx(0.3)
