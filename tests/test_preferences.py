"""Preference pairs: JSONL round trip, every bad record named by its line, Bradley–Terry labels."""

import json
import string

import pytest
import torch

from ppo_lib.models import tiny_gpt2
from ppo_lib.preferences import (PreferenceDataError, bradley_terry_labels, check_pair, make_pairs, noise_ceiling,
                                 read_pairs, write_pairs)
from ppo_lib.rewards import target_token_fraction

PAIRS = [{"prompt": "The film", "chosen": " was great.", "rejected": " was bad.", "gold_chosen": 0.6},
         {"prompt": "Ünïcode", "chosen": " 好", "rejected": " 坏"}]


def test_round_trip_keeps_extra_fields(tmp_path):
    path = write_pairs(tmp_path / "p.jsonl", PAIRS)
    assert read_pairs(path) == PAIRS
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temporary file left


@pytest.mark.parametrize("record, message", [
    ({"prompt": "a", "chosen": "b"}, "missing field(s) ['rejected']"),
    ({"prompt": "a", "chosen": "  ", "rejected": "c"}, "'chosen' response is empty"),
    ({"prompt": "a", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "a", "chosen": 3, "rejected": "c"}, "must be a string"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_line_is_named(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match="p.jsonl line 3") as e:
        read_pairs(path)
    assert message in str(e.value)


def test_invalid_json_and_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", \n', encoding="utf-8")
    with pytest.raises(PreferenceDataError, match="line 1: not valid JSON"):
        read_pairs(path)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match="no preference pairs"):
        read_pairs(path)


def test_write_refuses_bad_pair_and_writes_nothing(tmp_path):
    with pytest.raises(PreferenceDataError, match="pair 1"):
        write_pairs(tmp_path / "p.jsonl", [PAIRS[0], {"prompt": "a", "chosen": "x", "rejected": "x"}])
    assert list(tmp_path.iterdir()) == []


def test_labels_follow_bradley_terry():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    diff = torch.tensor([0.0, 0.5, -1.0]).repeat(n)
    wins = bradley_terry_labels(diff, torch.zeros_like(diff), tau=0.5, generator=g).double().view(n, 3).mean(0)
    expected = torch.sigmoid(torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(wins, expected, atol=4 * 0.5 / n ** 0.5, rtol=0)
    assert bradley_terry_labels(torch.tensor([1.0, -1.0]), torch.zeros(2), tau=0).tolist() == [True, False]
    with pytest.raises(ValueError, match="tau"):
        bradley_terry_labels(diff, diff, tau=-1.0)


def test_noise_ceiling_is_the_gold_predictors_accuracy():
    g = torch.Generator().manual_seed(1)
    ga, gb = torch.rand(50_000, generator=g), torch.rand(50_000, generator=g)
    labels = bradley_terry_labels(ga, gb, tau=0.2, generator=g)
    gold_says = ga > gb
    accuracy = (labels == gold_says).double().mean().item()
    assert abs(accuracy - noise_ceiling(ga, gb, 0.2)) < 4 * (0.25 / 50_000) ** 0.5
    assert noise_ceiling(ga, gb, 0.0) == 1.0


def test_make_pairs_on_tiny_gpt2_is_labelled_and_valid():
    lm, tok = tiny_gpt2()
    gold = target_token_fraction(string.ascii_lowercase)
    prompts = ["hello", "the film", "a", "once upon", "xy", "PPO"] * 2
    pairs = make_pairs(lm, tok, prompts, gold, tau=0.0, max_new_tokens=8, batch_size=4, seed=0)
    assert 0 < len(pairs) <= len(prompts)
    for p in pairs:
        check_pair(p)
        assert p["gold_chosen"] >= p["gold_rejected"]  # τ = 0: the gold's preference, exactly
        assert p["gold_chosen"] == pytest.approx(gold([p["prompt"]], [p["chosen"]])[0], abs=1e-6)
    again = make_pairs(lm, tok, prompts, gold, tau=0.0, max_new_tokens=8, batch_size=4, seed=0)
    assert again == pairs
    assert lm.training  # the model's mode is restored
