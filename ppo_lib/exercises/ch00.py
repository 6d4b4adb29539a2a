"""Self-checks for the exercises of chapter 00 (setup)."""

from __future__ import annotations

import torch
from torch import nn

from . import passed

__all__ = ["check_count_trainable", "check_keyword_reward"]


def check_count_trainable(count_trainable, hidden: bool = False) -> None:
    """Exercise 0.1: ``count_trainable(model) -> int``, the number of trainable parameters."""
    lin = nn.Linear(3, 4)
    got = count_trainable(lin)
    assert isinstance(got, int), f"return a Python int, got {type(got).__name__} (use int(...) or .numel())."
    assert got == 16, f"nn.Linear(3, 4) has 3·4 weights + 4 biases = 16 parameters, you returned {got}."
    net = nn.Sequential(nn.Linear(5, 2), nn.Linear(2, 7))
    want = 5 * 2 + 2 + 2 * 7 + 7
    got = count_trainable(net)
    assert got == want, (f"expected {want} for Linear(5,2) + Linear(2,7), got {got}; count elements "
                         "(p.numel()), not tensors.")
    net[0].weight.requires_grad_(False)
    got = count_trainable(net)
    assert got == want - 10, (f"with the first weight frozen the answer is {want - 10}, got {got}: "
                              "skip parameters whose requires_grad is False.")
    if hidden:
        from ..models import load_model

        model, _ = load_model("tiny-gpt2")
        want = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert count_trainable(model) == want, "wrong count on tiny-gpt2."
    passed("count_trainable")


def check_keyword_reward(keyword_reward, hidden: bool = False) -> None:
    """Exercise 0.2: a reward ``f(prompts, responses) -> list[float]``, 1.0 if the response contains
    the word "great" (any case), else 0.0."""
    from ..rewards import score

    prompts = ["This movie was"] * 4
    responses = [" great fun.", " not GREAT at all.", " a bore.", " grating."]
    out = keyword_reward(prompts, responses)
    assert len(out) == len(responses), f"one score per response: got {len(out)} for {len(responses)}."
    torch.testing.assert_close(score(keyword_reward, prompts, responses), torch.tensor([1.0, 1.0, 0.0, 0.0]),
                               msg=lambda m: "expected [1, 1, 0, 0]: match 'great' in any case, as a whole word "
                               "('grating' is not 'great').\n" + m)
    if hidden:
        responses = ["Great!", "greatly overrated", "", "the great escape"]
        torch.testing.assert_close(score(keyword_reward, [""] * 4, responses), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    passed("keyword_reward")
