"""Rollout and trainer on tiny-gpt2 (CPU, seconds): the padding contract, exact first ratios,
learning that actually happens, exact resume, and clear errors on bad input."""

import json
import math
import string

import pytest
import torch

from ppo_lib.models import load_policy, reference_copy
from ppo_lib.rewards import target_token_fraction
from ppo_lib.rollout import (critic_values, forward_response, sample, tokenize_prompts, token_logprobs,
                             truncate_after_eos)
from ppo_lib.trainer import CheckpointError, PPOConfig, PPOTrainer, build_trainer

from tiny import PROMPTS, tiny_trainer


def test_truncate_after_eos_keeps_the_eos():
    ids = torch.tensor([[5, 9, 7, 9], [1, 2, 3, 4]])
    out, mask = truncate_after_eos(ids, eos_token_id=9, pad_token_id=0)
    assert out.tolist() == [[5, 9, 0, 0], [1, 2, 3, 4]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4]


def test_left_padding_and_prompt_errors():
    _, tok = load_policy("tiny-gpt2")
    ids, mask = tokenize_prompts(tok, ["ab", "abcd"])
    assert ids[0, :2].tolist() == [tok.pad_token_id] * 2 and mask[0].tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="non-empty"):
        tokenize_prompts(tok, [])
    with pytest.raises(ValueError, match="max_prompt_length=3"):
        tokenize_prompts(tok, ["abcdef"], max_prompt_length=3)


def test_rollout_logprobs_equal_a_fresh_forward_pass():
    policy, tok = load_policy("tiny-gpt2")
    ids, mask = tokenize_prompts(tok, PROMPTS)
    batch = sample(policy, tok, ids, mask, 10, temperature=0.8, generator=torch.Generator().manual_seed(0))
    lp, values = forward_response(policy, batch, temperature=0.8)
    # Fresh, unpadded forward of each row alone, no cache, full logits.
    for b in range(len(PROMPTS)):
        p = ids[b][mask[b]]
        r = batch.response_ids[b][batch.response_mask[b]]
        full = torch.cat([p, r])[None]
        logits = policy.lm(full).logits[0, len(p) - 1 : -1] / 0.8
        expected = logits.log_softmax(-1).gather(-1, r[:, None]).squeeze(-1)
        torch.testing.assert_close(lp[b][batch.response_mask[b]], expected, atol=1e-5, rtol=0)


def test_prompt_alone_and_inside_a_padded_batch_get_the_same_logprobs():
    policy, tok = load_policy("tiny-gpt2")
    text = "the quick brown fox"
    alone = token_logprobs(policy, tok([text], return_tensors="pt").input_ids)
    ids, mask = tokenize_prompts(tok, [text, "a much, much longer prompt than the first one"])
    batched = token_logprobs(policy, ids, mask.long())
    n = alone.shape[1]
    torch.testing.assert_close(batched[0, -n:], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("separate_critic", [False, True])
def test_sampling_pass_logprobs_and_values_equal_a_forward_pass(separate_critic):
    """``return_logprobs=True`` keeps what the cached sampling pass saw; it must agree with the
    full-sequence forward pass up to rounding, and must not change what is sampled."""
    torch.manual_seed(0)
    policy, tok = load_policy("tiny-gpt2", separate_critic=separate_critic)
    torch.nn.init.normal_(policy.value_head.linear.weight, std=0.5)  # zero-initialised heads would hide errors
    ids, mask = tokenize_prompts(tok, PROMPTS)
    plain = sample(policy, tok, ids, mask, 10, temperature=0.8, generator=torch.Generator().manual_seed(1))
    batch = sample(policy, tok, ids, mask, 10, temperature=0.8, generator=torch.Generator().manual_seed(1),
                   return_logprobs=True)
    assert torch.equal(batch.response_ids, plain.response_ids) and plain.old_logprobs is None
    lp, values = forward_response(policy, batch, temperature=0.8)
    m = batch.response_mask
    torch.testing.assert_close(batch.old_logprobs[m], lp[m], atol=1e-5, rtol=0)
    if separate_critic:
        assert batch.old_values is None  # a separate critic needs its own pass
        torch.testing.assert_close(critic_values(policy, batch)[m], values[m], atol=1e-5, rtol=0)
    else:
        assert values[m].std() > 0.1
        torch.testing.assert_close(batch.old_values[m], values[m], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="separate critic"):
            critic_values(policy, batch)


@pytest.mark.parametrize("separate_critic", [False, True])
def test_reused_sampling_logprobs_give_a_first_ratio_of_one_up_to_rounding(separate_critic):
    trainer = tiny_trainer(reuse_sampling_logprobs=True, separate_critic=separate_critic)
    trainer.step(PROMPTS)
    first = trainer.minibatch_stats[0]
    assert first["policy/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert abs(first["policy/approx_kl_k3"]) < 1e-6 and first["policy/clipfrac"] == 0.0


def test_sampling_is_reproducible_with_a_generator():
    policy, tok = load_policy("tiny-gpt2")
    ids, mask = tokenize_prompts(tok, PROMPTS)
    a = sample(policy, tok, ids, mask, 8, generator=torch.Generator().manual_seed(3))
    b = sample(policy, tok, ids, mask, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.response_ids, b.response_ids)


def test_first_minibatch_has_ratio_one_and_kl_zero_when_policy_is_reference():
    trainer = tiny_trainer()
    stats = trainer.step(PROMPTS)
    first = trainer.minibatch_stats[0]
    assert first["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["policy/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert abs(first["policy/approx_kl_k1"]) < 1e-6 and abs(first["policy/approx_kl_k3"]) < 1e-6
    assert first["policy/clipfrac"] == 0.0
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # π = π_ref before the first update
    assert all(math.isfinite(v) for k, v in stats.items() if k != "value/explained_variance")


def test_reward_rises_on_a_synthetic_task():
    """The fraction of lowercase letters: 26/258 ≈ 0.1 for the random byte-level policy;
    30 PPO updates must raise it clearly (0.45–0.55 over seeds 0, 1, 2 when written)."""
    trainer = tiny_trainer(ppo_epochs=4, stop_at_eos=False)
    history = trainer.train(PROMPTS, n_updates=30, progress=False)
    first = sum(h["env/score_mean"] for h in history[:5]) / 5
    last = sum(h["env/score_mean"] for h in history[-5:]) / 5
    assert first < 0.2 and last > 0.3 and last > first + 0.2, (first, last)
    assert history[-1]["objective/kl"] > 0


def test_resume_gives_the_same_next_update(tmp_path):
    a = tiny_trainer()
    a.train(PROMPTS * 2, n_updates=2, progress=False)
    a.save_checkpoint(tmp_path / "ckpt")
    expected = a.step(a.next_prompts(PROMPTS * 2))

    b = tiny_trainer(seed=0)
    b.load_checkpoint(tmp_path / "ckpt")
    got = b.step(b.next_prompts(PROMPTS * 2))
    for k, v in expected.items():
        if not k.startswith(("time/", "throughput/")):
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7, nan_ok=True), k
    assert b.step_count == a.step_count == 3


def test_bad_checkpoints_are_clear_errors_and_change_nothing(tmp_path):
    t = tiny_trainer()
    before = {k: v.clone() for k, v in t.unwrapped.state_dict().items()}
    with pytest.raises(CheckpointError, match="no checkpoint"):
        t.load_checkpoint(tmp_path / "nope")
    t.save_checkpoint(tmp_path / "ok")
    (tmp_path / "ok" / "policy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        t.load_checkpoint(tmp_path / "ok")
    t.save_checkpoint(tmp_path / "ok2")
    (tmp_path / "ok2" / "rng.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        t.load_checkpoint(tmp_path / "ok2")
    t.save_checkpoint(tmp_path / "ok3")
    with pytest.raises(CheckpointError, match="another config"):
        tiny_trainer(clip_eps=0.1).load_checkpoint(tmp_path / "ok3")
    after = t.unwrapped.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob("*.tmp-*"))  # no half-written folders left behind


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="num_minibatches=3 must divide batch_size=8"):
        PPOConfig(batch_size=8, num_minibatches=3)
    with pytest.raises(ValueError, match="lam"):
        PPOConfig(lam=1.5)
    with pytest.raises(ValueError, match="unknown field"):
        PPOConfig.from_dict({"learning_rte": 1e-5})
    t = tiny_trainer()
    with pytest.raises(ValueError, match="batch_size=8"):
        t.step([])
    with pytest.raises(ValueError, match="non-empty"):
        t.train([], 1)
    with pytest.raises(ValueError, match="max_prompt_length"):
        t.step(["x" * 100] * 8)

    def nan_reward(prompts, responses):
        return [float("nan")] * len(responses)

    policy, tok = load_policy("tiny-gpt2")
    bad = PPOTrainer(policy, reference_copy(policy.lm), tok, nan_reward, PPOConfig(batch_size=8, max_new_tokens=4))
    before = {k: v.clone() for k, v in bad.unwrapped.state_dict().items()}
    with pytest.raises(ValueError, match="nan_reward"):
        bad.step(PROMPTS)
    assert all(torch.equal(before[k], v) for k, v in bad.unwrapped.state_dict().items())  # nothing was updated


@pytest.mark.parametrize("returned, message", [
    (None, "returned NoneType None"), (0.5, "returned float 0.5"), ({"a": 1.0}, "returned dict"),
    ("good", "returned str"), ([1.0] * 3, "returned 3 scores for 8"), ([True] * 8, "a bool"),
])
def test_a_reward_that_returns_no_list_of_numbers_is_named(returned, message):
    from ppo_lib.rewards import score

    def odd_reward(prompts, responses):
        return returned

    with pytest.raises(ValueError, match="odd_reward") as info:
        score(odd_reward, PROMPTS, ["x"] * 8)
    assert message in str(info.value)


def test_train_and_evaluate_refuse_empty_work():
    t = tiny_trainer()
    for n in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="n_updates ≥ 1"):
            t.train(PROMPTS, n)
    with pytest.raises(ValueError, match="non-empty"):
        t.evaluate([])


def test_evaluate_reports_means_and_their_standard_errors():
    t = tiny_trainer()
    out = t.evaluate(PROMPTS)
    scores, kls = [s[2] for s in out["samples"]], [s[3] for s in out["samples"]]
    n = len(PROMPTS)
    for key, xs in (("score", scores), ("kl", kls)):
        mean = sum(xs) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))  # sample standard deviation, by hand
        assert out[f"{key}_mean"] == pytest.approx(mean, abs=1e-12)
        assert out[f"{key}_se"] == pytest.approx(sd / math.sqrt(n), abs=1e-12)
    assert max(kls) == pytest.approx(0.0, abs=1e-5)  # untrained: the policy is π_ref
    assert t.evaluate(PROMPTS[:1])["score_se"] is None  # one prompt has no spread to measure


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("ppo_epochs", True, "ppo_epochs must be an integer"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number"),
    ("clip_eps", float("inf"), "clip_eps must be a finite number"),
    ("vf_coef", float("nan"), "vf_coef must be a finite number"),
    ("temperature", float("inf"), "temperature must be a finite number"),
    ("kl_target", float("inf"), "kl_target must be a finite number"),
    ("max_grad_norm", float("inf"), "max_grad_norm must be a finite number"),
    ("weight_decay", -1, "weight_decay must be ≥ 0"),
    ("stop_at_eos", "no", "stop_at_eos must be true or false"),
    ("learning_rate", "1e-5", "learning_rate must be a number, got '1e-5'"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("seed", -1, "seed must be in"),
    ("max_grad_norm", 0, r"max_grad_norm must be > 0, got 0.0. None turns clipping off"),
])
def test_every_config_field_is_checked_for_type_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**{field: value})


def test_config_keeps_floats_floats_and_accepts_none_where_documented():
    c = PPOConfig(kl_coef=0, vf_clip_eps=None, max_grad_norm=None, missing_eos_penalty=None)
    assert type(c.kl_coef) is float and c.vf_clip_eps is None
    assert PPOConfig.from_dict(c.to_dict()) == c


def test_a_config_the_model_cannot_run_fails_when_the_trainer_is_built():
    with pytest.raises(ValueError, match="context of 256 tokens"):
        tiny_trainer(max_prompt_length=250, max_new_tokens=12)
    with pytest.raises(ValueError, match="top_k=100000 exceeds the model's vocabulary"):
        tiny_trainer(top_k=100000)


def test_n_undistributed_processes_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=true torchrun"):
        tiny_trainer()


def test_lora_uses_the_adapter_free_base_as_reference():
    pytest.importorskip("peft")
    t = tiny_trainer(lora_rank=4, learning_rate=1e-2)
    assert t.ref_policy is None
    stats = t.step(PROMPTS)
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at 0: π = base
    stats = t.step(PROMPTS)
    assert stats["objective/kl"] != 0.0


def ragged(rollout_fn):
    """Wrap a trainer's rollout so that response b keeps only its first b + 1 tokens."""

    def wrapped(prompts):
        batch = rollout_fn(prompts)
        keep = torch.arange(batch.response_ids.shape[1])[None] <= torch.arange(len(prompts))[:, None]
        batch.response_mask = batch.response_mask & keep
        return batch

    return wrapped


def test_gradient_accumulation_is_exact():
    """One minibatch of 8 in one pass, or in 4 micro-batches of ragged lengths: the same gradient.

    Compared before the optimizer step: Adam divides by sqrt(v) + eps and so magnifies
    float noise in near-zero gradients, which would hide what is being tested."""
    grads = []
    for accum in (1, 4):
        t = tiny_trainer(num_minibatches=1, ppo_epochs=1, grad_accum_steps=accum, max_grad_norm=None)
        params = dict(t.unwrapped.named_parameters())
        recorded = {}
        t.optimizer.step = lambda: recorded.update({n: p.grad.clone() for n, p in params.items() if p.grad is not None})
        t.rollout = ragged(t.rollout)
        t.step(PROMPTS)
        grads.append(recorded)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-7, rtol=1e-5)


def test_train_writes_jsonl(tmp_path):
    t = tiny_trainer()
    t.train(PROMPTS, n_updates=2, log_path=tmp_path / "h.jsonl", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == [1, 2] and "policy/clipfrac" in lines[0]


def test_train_ends_early_when_stop_says_so_and_logs_only_what_ran(tmp_path):
    t = tiny_trainer()
    seen = []
    history = t.train(PROMPTS, n_updates=5, log_path=tmp_path / "h.jsonl", progress=False,
                      stop=lambda stats: seen.append(stats["update"]) or stats["update"] == 2)
    assert [h["update"] for h in history] == [1, 2] and seen == [1, 2] and t.step_count == 2
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 2


def test_cli_train_writes_a_run_folder_and_refuses_to_overwrite(tmp_path):
    from ppo_lib.__main__ import main

    out = tmp_path / "run"
    args = ["train", "--model", "tiny-gpt2", "--reward", "chars:abcdefghijklmnopqrstuvwxyz", "--updates", "2", "--save-every", "1", "--eval-prompts", "4",
            "--out", str(out), "--set", "batch_size=4", "--set", "max_prompt_length=96", "--set", "max_new_tokens=6"]
    assert main(args) == 0
    for name in ("config.json", "history.jsonl", "samples_before.md", "samples_after.md", "eval.json", "curves.png",
                 "checkpoint/policy.safetensors"):
        assert (out / name).exists(), name
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit, match="--resume"):
        main(args)
    with pytest.raises(SystemExit, match="lam must be in"):
        main(["train", "--set", "lam=3"])


@pytest.mark.slow
def test_sentiment_preset_smoke_on_smollm2(tmp_path):
    """Two updates of the offline preset on the real 135M model (batch cut to 8 × 12 tokens to keep
    CI short): it runs, its statistics are finite, and it writes its run folder."""
    from ppo_lib.__main__ import main

    out = tmp_path / "sentiment"
    assert main(["train", "--preset", "sentiment", "--updates", "2", "--eval-prompts", "4", "--out", str(out),
                 "--set", "batch_size=8", "--set", "max_new_tokens=12"]) == 0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    for h in history:
        assert all(math.isfinite(h[k]) for k in ("env/score_mean", "objective/kl", "policy/loss", "value/loss"))
    assert -1 <= history[0]["env/score_mean"] <= 1  # VADER compound range


def test_a_non_finite_loss_stops_training_before_the_weights_change(monkeypatch):
    t = tiny_trainer()
    before = {k: v.clone() for k, v in t.unwrapped.state_dict().items()}
    t.reward_fn = lambda prompts, responses: [1e39] * len(responses)  # a Python float, inf in float32
    with pytest.raises(ValueError, match="float32"):
        t.step(PROMPTS)

    original = t.policy_loss  # the algorithm's registered loss (PPO: ppo_clip)

    def nan_loss(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(t, "policy_loss", nan_loss)
    t.reward_fn = target_token_fraction("a")
    with pytest.raises(FloatingPointError, match="non-finite"):
        t.step(PROMPTS)
    assert all(torch.equal(before[k], v) for k, v in t.unwrapped.state_dict().items())


def test_gradient_checkpointing_gives_the_same_update():
    """Recomputing activations in the backward pass changes memory, not arithmetic."""
    trainers = [tiny_trainer(gradient_checkpointing=ckpt) for ckpt in (False, True)]
    lm = trainers[1].unwrapped.lm
    assert getattr(lm, "is_activation_checkpointing", False) or lm.is_gradient_checkpointing
    stats = [t.step(PROMPTS) for t in trainers]
    for key in ("policy/loss", "value/loss", "policy/grad_norm", "policy/clipfrac", "env/score_mean"):
        assert stats[1][key] == pytest.approx(stats[0][key], rel=1e-5, abs=1e-7), key


def test_building_and_stepping_a_trainer_leaves_the_global_rngs_alone():
    """Sampling and shuffling draw from the trainer's own seeded generators; even the value
    head's (zeroed) initialisation does not advance the caller's RNG."""
    import random

    torch.manual_seed(5), random.seed(5)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    t = tiny_trainer(separate_critic=True)
    t.step(PROMPTS)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
