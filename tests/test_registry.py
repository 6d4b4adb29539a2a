"""The registry of advantage estimators, policy losses and algorithms, and the staged trainer
that runs them: unknown names are clear errors, each estimator equals a plain loop on a
hand-computable batch, PPO through the stages equals PPO before them, and REINFORCE learns."""

import functools
import json
import math
import string
from pathlib import Path

import pytest
import torch

from ppo_lib.advantages import gae_reference
from ppo_lib.losses import ppo_clip_loss
from ppo_lib.policy_gradient import group_mean
from ppo_lib.registry import (ADVANTAGE_ESTIMATORS, ALGORITHMS, POLICY_LOSSES, get_advantage_estimator,
                              get_algorithm, get_policy_loss)
from ppo_lib.rewards import target_token_fraction
from ppo_lib.rollout import multinomial_tokens, sample
from ppo_lib.trainer import PPOConfig, build_trainer
from tiny import PROMPTS

RECORDED = Path(__file__).parent / "data" / "ppo_tiny_history_main.json"


@pytest.mark.parametrize("get, kind", [(get_algorithm, "algorithm"), (get_advantage_estimator, "advantage estimator"),
                                       (get_policy_loss, "policy loss")])
def test_an_unknown_name_is_a_clear_error_that_lists_the_known_ones(get, kind):
    with pytest.raises(ValueError, match=rf"unknown {kind} 'nope'; registered: \["):
        get("nope")


def test_the_config_refuses_an_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'; registered: \\['dr_grpo', 'grpo', 'ppo', "
                                         "'reinforce', 'remax', 'rloo'\\]"):
        PPOConfig(algorithm="dpo")
    with pytest.raises(ValueError, match="trains no critic"):
        PPOConfig(algorithm="reinforce", separate_critic=True)


def test_the_built_ins_are_registered():
    get_algorithm("ppo")  # loads the built-in module
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", "reinforce", "rloo", "grpo", "dr_grpo", "remax"}
    assert set(POLICY_LOSSES) == {"ppo_clip", "vanilla_pg", "grpo", "dr_grpo"}
    ppo, reinforce = ALGORITHMS["ppo"], ALGORITHMS["reinforce"]
    assert (ppo.advantage_estimator, ppo.policy_loss, ppo.critic) == ("gae", "ppo_clip", True)
    assert (reinforce.advantage_estimator, reinforce.policy_loss, reinforce.critic) == ("reinforce", "vanilla_pg", False)


# A batch by hand: 3 responses of lengths 3, 1 and 2; the score sits on the last real token.
REWARDS = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.5, -1.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
VALUES = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0], [0.0, -0.4, 9.0]], dtype=torch.float64)


def test_gae_estimator_equals_the_plain_loop():
    adv, ret = get_advantage_estimator("gae")(REWARDS, MASK, None, values=VALUES, gamma=0.9, lam=0.8)
    ref_adv, ref_ret = gae_reference(REWARDS, VALUES, MASK, 0.9, 0.8)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    with pytest.raises(ValueError, match="needs values from a critic"):
        get_advantage_estimator("gae")(REWARDS, MASK)


def test_reinforce_estimator_by_hand():
    """γ = 0.5. Rewards-to-go: row 0 (0.25, 0.5, 1), row 1 (2), row 2 (0, -1).
    Sequence returns G_0 = 0.25, 2, 0: batch mean 0.75; groups {0, 2} and {1}: means 0.125 and 2."""
    adv, ret = get_advantage_estimator("reinforce")(REWARDS, MASK, None, gamma=0.5)
    expected_ret = torch.tensor([[0.25, 0.5, 1.0], [2.0, 0, 0], [0.0, -1.0, 0]], dtype=torch.float64)
    torch.testing.assert_close(ret, expected_ret)
    torch.testing.assert_close(adv, torch.where(MASK, expected_ret - 0.75, torch.zeros(())))
    grouped, _ = get_advantage_estimator("reinforce")(REWARDS, MASK, torch.tensor([7, 3, 7]), gamma=0.5)
    baseline = torch.tensor([0.125, 2.0, 0.125], dtype=torch.float64)
    torch.testing.assert_close(grouped, torch.where(MASK, expected_ret - baseline[:, None], torch.zeros(())))


# Two prompts, two samples each; the score sits on the last real token: R = 1, 3 | 2, 6.
GROUP_REWARDS = torch.tensor([[0.0, 1.0], [0.0, 3.0], [2.0, 0.0], [0.0, 6.0]], dtype=torch.float64)
GROUP_MASK = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 1]], dtype=torch.bool)
GROUPS = torch.tensor([5, 5, 9, 9])


@pytest.mark.parametrize("name, per_sequence", [
    ("rloo", [1 - 3, 3 - 1, 2 - 6, 6 - 2]),                  # R_i minus the other sample
    ("grpo", [-0.5**0.5, 0.5**0.5, -0.5**0.5, 0.5**0.5]),  # (R - mean) / unbiased std, std = √2 and √8
    ("dr_grpo", [-1.0, 1.0, -2.0, 2.0]),                     # R - mean
])
def test_group_estimators_by_hand(name, per_sequence):
    adv, ret = get_advantage_estimator(name)(GROUP_REWARDS, GROUP_MASK, GROUPS)
    expected = torch.where(GROUP_MASK, torch.tensor(per_sequence, dtype=torch.float64)[:, None], torch.zeros(()))
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=1e-6)  # GRPO's ε = 1e-6 in the denominator
    torch.testing.assert_close(ret, adv)
    with pytest.raises(ValueError, match="needs group_index"):
        get_advantage_estimator(name)(GROUP_REWARDS, GROUP_MASK)
    with pytest.raises(ValueError, match="≥ 2 samples in every group"):
        get_advantage_estimator(name)(GROUP_REWARDS, GROUP_MASK, torch.tensor([5, 5, 9, 7]))


def test_rloo_equals_k_over_k_minus_1_times_the_centred_return():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(12, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(12, 5, dtype=torch.bool)
    groups = torch.arange(3).repeat_interleave(4)
    rloo, _ = get_advantage_estimator("rloo")(rewards, mask, groups)
    dr, _ = get_advantage_estimator("dr_grpo")(rewards, mask, groups)
    torch.testing.assert_close(rloo, 4 / 3 * dr)


def test_group_mean_equals_a_loop():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    groups = torch.tensor([3, 1, 3, 1, 9])
    loop = torch.tensor([x[groups == g].mean() for g in groups])
    torch.testing.assert_close(group_mean(x, groups), loop)
    torch.testing.assert_close(group_mean(x, None), x.mean().expand(5))


def test_the_losses_through_the_contract():
    g = torch.Generator().manual_seed(0)
    logprobs = torch.randn(3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 3, generator=g, dtype=torch.float64)
    got, _ = get_policy_loss("ppo_clip")(logprobs, old, adv, MASK, clip_eps=0.1, ref_logprobs=old, kl_coef=0.3)
    want, _ = ppo_clip_loss(logprobs, old, adv, MASK, 0.1)
    torch.testing.assert_close(got, want)
    # vanilla_pg at θ = θ_old: the gradient of the REINFORCE surrogate -mean(A · log π)
    loss, stats = get_policy_loss("vanilla_pg")(logprobs, logprobs.detach(), adv, MASK)
    (grad,) = torch.autograd.grad(loss, logprobs)
    (want_grad,) = torch.autograd.grad(-(adv * logprobs)[MASK].mean(), logprobs)
    torch.testing.assert_close(grad, want_grad)
    assert stats["clipfrac"] == 0 and stats["ratio_max"] == 1


def _recorded_run(name: str, extra: dict) -> list[dict]:
    """The recorded run, sampling its tokens with ``torch.multinomial`` as the trainer then did
    (the library now draws them with ``draw_tokens``: the same law, other random numbers)."""
    cfg = PPOConfig(batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=2, num_minibatches=2,
                    learning_rate=3e-3, kl_coef=0.05, seed=0, **extra)
    t = build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), cfg)
    t.sample = functools.partial(sample, draw=multinomial_tokens)
    return t.train(PROMPTS * 2, n_updates=3, progress=False)


@pytest.mark.parametrize("name", ["shared", "separate_critic", "accum_k3_whiten"])
def test_ppo_through_the_stages_equals_ppo_before_them(name):
    """Statistics of 3 updates on tiny-gpt2, against a history recorded with the trainer as it
    was before the registry (commit 78ea35f, ``tests/data/ppo_tiny_history_main.json``).

    On the machine that recorded it the difference is exactly 0. Another thread count or CPU sums
    in another order (a KL 1e-6 apart with one thread), so the tolerance is a rounding one: any
    change to the algorithm moves these statistics by orders of magnitude more.

    A clip fraction counts the tokens beyond a threshold, and one token sitting on the threshold
    flips with the last bit: on a CPU with AVX-512 BF16, ``value/vf_clipfrac`` of the separate
    critic was 9 tokens of 192 where the recording has 16, while every continuous statistic (the
    losses, the KL, the values, the gradient norm) agreed to 1e-5. Counts get a loose bound; the
    continuous statistics carry the check."""
    recorded = json.loads(RECORDED.read_text())[name]
    history = _recorded_run(name, recorded["config"])
    for got, want in zip(history, recorded["history"], strict=True):
        for key, value in want.items():
            if math.isnan(value):
                assert math.isnan(got[key]), key
            elif key.endswith("clipfrac"):
                assert abs(got[key] - value) <= 0.1, key
            else:
                assert got[key] == pytest.approx(value, abs=1e-5, rel=1e-4), key


def test_rloo_through_the_same_loop_draws_groups_and_learns():
    cfg = PPOConfig(algorithm="rloo", batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=1,
                    num_minibatches=1, learning_rate=3e-3, kl_coef=0.01, stop_at_eos=False, seed=0)
    t = build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), cfg)
    prompts = t.next_prompts(PROMPTS)
    assert len(prompts) == 8 and prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4
    assert t.group_index(prompts).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="repeated 4 times in a row"):
        t.step(PROMPTS)
    history = t.train(PROMPTS, n_updates=30, progress=False)
    first = sum(h["env/score_mean"] for h in history[:5]) / 5
    last = sum(h["env/score_mean"] for h in history[-5:]) / 5
    assert first < 0.2 and last > first + 0.1, (first, last)


def test_reinforce_through_the_same_loop_learns():
    """No critic, no clip: REINFORCE with a batch-mean baseline raises the fraction of lowercase
    letters from ≈ 0.1 (a random byte policy) within 30 updates (0.10–0.14 → 0.36–0.42 over seeds
    0, 1, 2 when written)."""
    cfg = PPOConfig(algorithm="reinforce", batch_size=8, max_new_tokens=12, temperature=1.0, ppo_epochs=1,
                    num_minibatches=1, learning_rate=3e-3, kl_coef=0.01, stop_at_eos=False, seed=0)
    t = build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), cfg)
    history = t.train(PROMPTS, n_updates=30, progress=False)
    first = sum(h["env/score_mean"] for h in history[:5]) / 5
    last = sum(h["env/score_mean"] for h in history[-5:]) / 5
    assert first < 0.2 and last > first + 0.15, (first, last)
    assert "value/loss" not in history[0] and history[0]["policy/clipfrac"] == 0


# ------------------------------------------------------------------------------ GRPO and Dr. GRPO
def _grpo_batch():
    """Two responses of lengths 1 and 3 (T = 3), on-policy (ρ = 1), advantages ±1."""
    logprobs = torch.tensor([[-1.0, 0.0, 0.0], [-2.0, -0.5, -1.5]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([[1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    return logprobs, mask, adv


def test_grpo_loss_at_beta_0_on_policy_is_zero_but_its_gradient_is_not():
    """The misconception "GRPO's loss is ≈ 0, so nothing learns": its value is -mean_i A_i = 0 by
    group normalisation, its gradient is -A_i / (|o_i| · B) on each token of response i."""
    logprobs, mask, adv = _grpo_batch()
    loss, stats = get_policy_loss("grpo")(logprobs, logprobs.detach(), adv, mask, ref_logprobs=logprobs.detach(),
                                          kl_coef=0.0)
    assert abs(loss.item()) < 1e-12 and stats["kl_ref"] == 0
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, torch.tensor([[-1 / 2, 0, 0], [1 / 6, 1 / 6, 1 / 6]], dtype=torch.float64))


def test_dr_grpo_weighs_every_token_alike_and_both_carry_the_k3_kl():
    logprobs, mask, adv = _grpo_batch()
    loss, _ = get_policy_loss("dr_grpo")(logprobs, logprobs.detach(), adv, mask, ref_logprobs=logprobs.detach())
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, torch.tensor([[-1 / 6, 0, 0], [1 / 6, 1 / 6, 1 / 6]], dtype=torch.float64))
    # β · k3 with π_ref = π_θ·e^{-0.1} on every token: k3 = e^{-0.1} - 1 + 0.1 per token
    ref = logprobs.detach() - 0.1
    k3 = math.exp(-0.1) - 1 + 0.1
    for name, per_seq_weight in (("grpo", [1, 1]), ("dr_grpo", [1 / 3, 1])):  # Σ_t/|o_i| or Σ_t/T
        with_kl, stats = get_policy_loss(name)(logprobs, logprobs.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.5)
        without, _ = get_policy_loss(name)(logprobs, logprobs.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.0)
        assert (with_kl - without).item() == pytest.approx(0.5 * k3 * sum(per_seq_weight) / 2)
        assert stats["kl_ref"].item() == pytest.approx(k3)
    with pytest.raises(ValueError, match="pass ref_logprobs"):
        get_policy_loss("grpo")(logprobs, logprobs.detach(), adv, mask)


def test_grpo_config_rules():
    with pytest.raises(ValueError, match="set whiten_advantages=False"):
        PPOConfig(algorithm="grpo")
    with pytest.raises(ValueError, match="must be a multiple of it"):
        PPOConfig(algorithm="grpo", whiten_advantages=False, batch_size=6)


def _grpo_trainer(**overrides):
    cfg = dict(algorithm="grpo", whiten_advantages=False, batch_size=8, max_new_tokens=12, temperature=1.0,
               ppo_epochs=1, num_minibatches=1, learning_rate=3e-3, kl_coef=0.01, stop_at_eos=False, seed=0)
    cfg.update(overrides)
    return build_trainer("tiny-gpt2", target_token_fraction(string.ascii_lowercase), PPOConfig(**cfg))


def test_accumulating_a_sequence_mean_loss_is_exact():
    """GRPO's 1/|o_i| loss over one minibatch of 8, or over 4 micro-batches of ragged lengths."""
    from test_rollout_trainer import ragged

    grads = []
    for accum in (1, 4):
        t = _grpo_trainer(grad_accum_steps=accum, max_grad_norm=None, stop_at_eos=True)
        params = dict(t.unwrapped.named_parameters())
        recorded = {}
        t.optimizer.step = lambda: recorded.update({n: p.grad.clone() for n, p in params.items() if p.grad is not None})
        t.rollout = ragged(t.rollout)
        t.step(t.next_prompts(PROMPTS))
        grads.append(recorded)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-7, rtol=1e-5)


def test_grpo_through_the_same_loop_learns_with_the_kl_in_the_loss():
    """0.11–0.13 → 0.37–0.50 over seeds 0, 1, 2 when written (RLOO: 0.11–0.13 → 0.36–0.41)."""
    t = _grpo_trainer()
    history = t.train(PROMPTS, n_updates=30, progress=False)
    first = sum(h["env/score_mean"] for h in history[:5]) / 5
    last = sum(h["env/score_mean"] for h in history[-5:]) / 5
    assert first < 0.2 and last > first + 0.1, (first, last)
    assert history[0]["objective/non_score_reward"] == 0  # the KL is not in the reward ...
    assert history[-1]["policy/kl_ref"] > 0  # ... but in the loss
