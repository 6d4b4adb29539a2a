"""DPO (chapter 09): the loss on hand values, ln 2 at initialisation, a gradient step that raises the
chosen response's log-ratio, sequence log-probs that mask the prompt, the offline loop, the CLI."""

import json
import math

import pytest
import torch

from ppo_lib.__main__ import main
from ppo_lib.dpo import DPOConfig, dpo_loss, sequence_logprobs, tokenize_pairs, train_dpo
from ppo_lib.models import load_model, reference_copy
from ppo_lib.preferences import write_pairs
from ppo_lib.rollout import token_logprobs

PAIRS = [{"prompt": p, "chosen": " good and kind", "rejected": " BAD!!"} for p in ("a", "hello there", "the film", "xy")]


def test_dpo_loss_by_hand():
    """β = 0.5; log-ratios chosen −1 − (−1.5) = 0.5, rejected −2 − (−1.5) = −0.5: margin 0.5·1 = 0.5."""
    d = dict(dtype=torch.float64)
    loss, stats = dpo_loss(torch.tensor([-1.0], **d), torch.tensor([-2.0], **d), torch.tensor([-1.5], **d),
                           torch.tensor([-1.5], **d), beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert stats["rewards/chosen"].item() == pytest.approx(0.25)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.25)
    assert stats["rewards/margin"].item() == pytest.approx(0.5) and stats["rewards/accuracy"].item() == 1.0
    # a margin of −1000 is a finite loss of 1000 (logsigmoid), not inf
    big, _ = dpo_loss(torch.tensor([-2000.0], **d), torch.zeros(1, **d), torch.zeros(1, **d), torch.zeros(1, **d), 0.5)
    assert big.item() == pytest.approx(1000.0)


def test_dpo_loss_gradient_by_hand():
    """∂L/∂log π(y_w) = −β σ(−margin) / B and ∂L/∂log π(y_l) = +β σ(−margin) / B."""
    pc = torch.tensor([-1.0, -3.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-2.0, -1.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -2.0], dtype=torch.float64)
    loss, _ = dpo_loss(pc, pr, ref, ref, beta=0.2)
    loss.backward()
    margin = 0.2 * ((pc - ref) - (pr - ref)).detach()
    torch.testing.assert_close(pc.grad, -0.2 * torch.sigmoid(-margin) / 2)
    torch.testing.assert_close(pr.grad, 0.2 * torch.sigmoid(-margin) / 2)


def test_bad_inputs_are_clear_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="four \\(B,\\) tensors of one shape"):
        dpo_loss(x, torch.zeros(2), x, x, beta=0.1)
    with pytest.raises(ValueError, match="DPOConfig: batch_size must be an integer ≥ 1"):
        DPOConfig(batch_size=0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    lm, tokenizer = load_model("tiny-gpt2")
    return lm, reference_copy(lm), tokenizer


def test_sequence_logprobs_mask_the_prompt_and_ignore_padding(tiny):
    lm, _, tok = tiny
    batch = tokenize_pairs(tok, ["a", "hello there"], [" good and kind", " no"])
    got = sequence_logprobs(lm, batch)
    for i, (p, r) in enumerate([("a", " good and kind"), ("hello there", " no")]):
        p_ids = tok(p)["input_ids"]
        ids = torch.tensor([p_ids + tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        alone = token_logprobs(lm, ids)[0, len(p_ids) - 1:].sum()  # the response's tokens (and EOS) only
        torch.testing.assert_close(got[i], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="more than max_response_length=3"):
        tokenize_pairs(tok, ["a"], [" good and kind"], max_response_length=3)


def test_the_loss_is_ln2_at_initialisation_and_a_step_raises_the_chosen_log_ratio(tiny):
    lm, ref, tok = tiny
    policy = reference_copy(lm).train()
    for p in policy.parameters():
        p.requires_grad_(True)
    batch = tokenize_pairs(tok, [p["prompt"] for p in PAIRS] * 2,
                           [p["chosen"] for p in PAIRS] + [p["rejected"] for p in PAIRS])
    with torch.no_grad():
        ref_logps = sequence_logprobs(ref, batch)
    logps = sequence_logprobs(policy, batch)
    loss, stats = dpo_loss(logps[:4], logps[4:], ref_logps[:4], ref_logps[4:], beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # π_θ = π_ref: every margin is 0
    assert stats["rewards/margin"].abs().item() < 1e-6
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-2 * p.grad  # one plain gradient step
        after = sequence_logprobs(policy, batch)
    assert ((after - ref_logps)[:4] > 0).all()  # the chosen responses' log-ratios rise ...
    assert ((after - ref_logps)[4:] < 0).all()  # ... and the rejected ones' fall


def test_train_dpo_learns_the_preference_and_keeps_the_reference(tiny):
    lm, ref, tok = tiny
    policy = reference_copy(lm)
    for p in policy.parameters():
        p.requires_grad_(True)
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    history = train_dpo(policy, ref, tok, PAIRS * 2, DPOConfig(learning_rate=1e-3, batch_size=4, epochs=3))
    assert len(history) == 6 and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert history[-1]["loss"] < 0.3 and history[-1]["rewards/accuracy"] == 1.0
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ref_before.items())
    with pytest.raises(ValueError, match="at least batch_size=16 pairs, got 4"):
        train_dpo(policy, ref, tok, PAIRS, DPOConfig())


def test_the_dpo_command_writes_a_run_folder(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS * 2)
    out = tmp_path / "run"
    args = ["dpo", "--pairs", str(pairs), "--model", "tiny-gpt2", "--reward", "chars:abcdefghijklmnopqrstuvwxyz",
            "--eval-prompts", "2", "--set", "batch_size=4", "--set", "learning_rate=1e-3", "--set", "max_prompt_length=96"]
    assert main(args + ["--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["steps"] == 2 and set(result) >= {"before", "after", "score_gain"}
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "x"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl line 1: missing field"):
        main(["dpo", "--pairs", str(bad), "--out", str(tmp_path / "r2")])
    with pytest.raises(SystemExit, match="fewer than batch_size=16"):
        main(["dpo", "--pairs", str(pairs), "--out", str(tmp_path / "r3")])
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
