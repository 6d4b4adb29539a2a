"""ppo_lib.models and ppo_lib.rewards: offline loading, value head, pad != eos, reward checks."""

import math
import time

import pytest
import torch

from ppo_lib.models import ActorCritic, HubUnreachableError, load_model, load_policy, reference_copy
from ppo_lib.rewards import review_prompts, score, target_token_fraction, vader_sentiment
from ppo_lib.rollout import sample, tokenize_prompts


def test_tiny_gpt2_offline_and_deterministic():
    m1, tok = load_model("tiny-gpt2")
    m2, _ = load_model("tiny-gpt2")
    assert tok.pad_token_id != tok.eos_token_id
    text = "Ünïcode round-trips, too!"
    assert tok.decode(tok(text)["input_ids"]) == text
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert not m1.training


def test_value_head_starts_at_zero_and_has_the_right_shape():
    policy, tok = load_policy("tiny-gpt2")
    ids, mask = tokenize_prompts(tok, ["hello", "a longer prompt"])
    logits, values = policy(ids, mask.long())
    assert logits.shape == (*ids.shape, len(tok)) and values.shape == ids.shape
    assert (values == 0).all()
    critic_policy, _ = load_policy("tiny-gpt2", separate_critic=True)
    assert critic_policy.critic is not None
    assert critic_policy(ids, mask.long())[1].shape == ids.shape


def test_reference_copy_is_frozen_and_equal():
    policy, tok = load_policy("tiny-gpt2")
    ref = reference_copy(policy.lm)
    assert all(not p.requires_grad for p in ref.parameters())
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(ref(ids).logits, policy.lm(ids).logits)


def test_unreachable_hub_fails_fast_and_names_the_offline_preset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(HubUnreachableError, match="smollm2-135m"):
        load_model("distilgpt2-not-cached/for-this-test")
    assert time.time() - t0 < 10


@pytest.mark.slow
def test_smollm2_loads_offline_and_writes_english():
    model, tok = load_model("smollm2-135m")
    assert tok.pad_token_id != tok.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids, mask = tokenize_prompts(tok, ["The capital of France is"])
    out = sample(model, tok, ids, mask, max_new_tokens=12, temperature=0.1, generator=torch.Generator().manual_seed(0))
    text = tok.decode(out.response_ids[0][out.response_mask[0]])
    assert "Paris" in text, text


def test_vader_and_score_checks():
    s = vader_sentiment(["p", "p"], ["What a wonderful, moving film!", "Awful. Boring and terrible."])
    assert s[0] > 0.5 and s[1] < -0.5
    torch.testing.assert_close(score(target_token_fraction("a"), ["", ""], ["aab", "bbbb"]), torch.tensor([2 / 3, 0.0]))

    def short(prompts, responses):
        return [1.0]

    def nan(prompts, responses):
        return [math.nan] * len(responses)

    def text(prompts, responses):
        return ["good"] * len(responses)

    def boom(prompts, responses):
        raise RuntimeError("network down")

    for fn, msg in [(short, "1 scores for 2"), (nan, "finite"), (text, "numbers"), (boom, "network down")]:
        with pytest.raises(ValueError, match=msg) as e:
            score(fn, ["a", "b"], ["x", "y"])
        assert fn.__name__ in str(e.value)


def test_review_prompts_split_is_disjoint():
    train, held = review_prompts("train"), review_prompts("heldout")
    assert len(held) == 64 and len(train) >= 64 and not set(train) & set(held)


def test_hub_classifier_reward_fails_fast_offline(monkeypatch):
    from ppo_lib.rewards import get_reward

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(HubUnreachableError, match="vader"):
        get_reward("lvwerra/distilbert-imdb-not-cached-here")
    assert time.time() - t0 < 10
    assert get_reward("vader") is vader_sentiment
