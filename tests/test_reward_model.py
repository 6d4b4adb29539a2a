"""Reward models (chapter 08): the Bradley–Terry loss on hand values and its invariants, a tiny-gpt2
reward model that learns a synthetic preference, normalisation, save/load, best-of-n, Gao's fits."""

import itertools
import math
import random

import pytest
import torch

from ppo_lib.models import tiny_gpt2
from ppo_lib.preferences import PreferenceDataError
from ppo_lib.reward_model import (RIDGE_GRID, RewardModel, RewardModelError, best_of_n_estimate, best_of_n_kl_bound,
                                  bradley_terry_loss, evaluate_reward_model, fit_gao, gold_regression, layer_features,
                                  probe_layers, train_reward_model)
from ppo_lib.rewards import score


# ----------------------------------------------------------------------------- the loss
def test_bradley_terry_loss_on_hand_values():
    r_c = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    r_r = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    loss, stats = bradley_terry_loss(r_c, r_r)
    # Δ = [1, 0, −2]: −log σ(Δ) = log(1 + e^{−Δ}) = [log(1+e^{−1}), log 2, log(1+e^{2})]
    hand = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert loss.item() == pytest.approx(hand, rel=1e-12)
    assert stats["accuracy"].item() == pytest.approx(1 / 3)  # only Δ = 1 is > 0
    assert stats["margin"].item() == pytest.approx(-1 / 3)
    assert stats["accuracy"].dim() == 0 and not stats["margin"].requires_grad


def test_loss_is_ln2_at_equal_rewards_and_exact_for_large_margins():
    r = torch.tensor([0.3, -5.0, 40.0])
    loss, stats = bradley_terry_loss(r, r.clone())
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert stats["accuracy"].item() == 0.0 and stats["margin"].item() == 0.0
    big, _ = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # log σ(−200) underflows naively
    assert big.item() == pytest.approx(200.0) and math.isfinite(big.item())


def test_loss_is_invariant_to_a_shift_of_both_rewards():
    g = torch.Generator().manual_seed(0)
    r_c, r_r = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    base, s0 = bradley_terry_loss(r_c, r_r)
    for c in (-3.0, 0.5, 100.0):
        shifted, s1 = bradley_terry_loss(r_c + c, r_r + c)
        torch.testing.assert_close(shifted, base)
        torch.testing.assert_close(s1["margin"], s0["margin"])


def test_gradient_raises_the_chosen_reward_and_equals_the_formula():
    r_c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    r_r = torch.tensor([0.0, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    loss, _ = bradley_terry_loss(r_c, r_r)
    loss.backward()
    delta = (r_c - r_r).detach()
    torch.testing.assert_close(r_c.grad, -torch.sigmoid(-delta) / 3)  # ∂/∂r_c = −σ(−Δ)/B
    torch.testing.assert_close(r_r.grad, -r_c.grad)
    assert bool((r_c.grad < 0).all())  # gradient descent: r_c ← r_c − η·grad goes up


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one pair"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# ----------------------------------------------------------------------------- the model
def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Pairs of 12-character strings; the one with more 'a's is chosen (a noiseless preference)."""
    rng = random.Random(seed)

    def response():
        k = rng.randint(0, 12)
        chars = [rng.choice("bcdefgh ") for _ in range(12 - k)] + ["a"] * k
        rng.shuffle(chars)
        return "".join(chars), k

    pairs = []
    while len(pairs) < n:
        (a, ka), (b, kb) = response(), response()
        if ka != kb:
            chosen, rejected = (a, b) if ka > kb else (b, a)
            pairs.append({"prompt": "Say:", "chosen": chosen, "rejected": rejected,
                          "gold_chosen": max(ka, kb), "gold_rejected": min(ka, kb)})
    return pairs


@pytest.fixture(scope="module")
def trained():
    """A head-only reward model on frozen tiny-gpt2 features, trained on 300 synthetic pairs."""
    lm, tok = tiny_gpt2()
    rm = RewardModel(lm, tok, name="tiny-gpt2", trainable="head")
    history = train_reward_model(rm, synthetic_pairs(300, seed=0), epochs=15, lr=1e-2, progress=False)
    return rm, history


def test_tiny_reward_model_learns_a_synthetic_preference(trained):
    rm, history = trained
    assert history[-1]["loss"] < history[0]["loss"] < math.log(2) + 1e-6  # starts at ln 2 (zero head)
    held_out = evaluate_reward_model(rm, synthetic_pairs(200, seed=1))
    assert held_out["accuracy"] >= 0.9, held_out
    assert held_out["gold_agreement"] == pytest.approx(held_out["accuracy"])  # noiseless labels: labels = gold order


def test_last_block_training_learns_too():
    lm, tok = tiny_gpt2()
    rm = RewardModel(lm, tok, name="tiny-gpt2", trainable="last_block")
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and any(n.startswith("backbone.h.1.") for n in trainable)
    assert not any(n.startswith("backbone.h.0.") for n in trainable)
    history = train_reward_model(rm, synthetic_pairs(96, seed=0), epochs=3, lr=3e-3, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]


def test_layer_features_read_the_last_token_and_average_the_response_only():
    lm, tok = tiny_gpt2()
    rm = RewardModel(lm, tok, name="tiny-gpt2", trainable="head")
    prompts, responses = ["Say:", "Say: it"], ["aab", "b"]
    last, mean = layer_features(rm, prompts, responses)
    assert last.shape == mean.shape == (2, lm.config.n_layer + 1, lm.config.n_embd)
    assert torch.allclose(last[:, -1], rm.features(*rm.tokenize(prompts, responses)), atol=1e-6)  # the head's features
    ids = tok("Say: it" + "b")["input_ids"]  # one row alone: its hidden states without padding
    alone = rm.backbone(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    n_prompt = len(tok("Say: it")["input_ids"])
    assert torch.allclose(mean[1, 2], alone[2][0, n_prompt:].mean(0), atol=1e-5)  # the response's tokens only


def test_probe_layers_last_layer_is_the_head_only_reward_model_and_finds_the_preference():
    lm, tok = tiny_gpt2()
    train, held = synthetic_pairs(120, seed=0), synthetic_pairs(80, seed=1)
    rows = probe_layers(lm, tok, train, held, [40, 120], epochs=5, lr=1e-2, weight_decay=0.0, progress=False)
    n_layers = lm.config.n_layer + 1
    assert len(rows) == 2 * 2 * n_layers * 2  # (labels, pooling, layer, size): the pairs carry their gold scores
    rm = RewardModel(lm, tok, trainable="head")
    train_reward_model(rm, train, epochs=5, lr=1e-2, weight_decay=0.0, seed=0, progress=False)
    top = next(r for r in rows if (r["labels"], r["pooling"], r["layer"], r["train_pairs"])
               == ("pairs", "last", n_layers - 1, 120))
    assert top["accuracy"] == pytest.approx(evaluate_reward_model(rm, held)["accuracy"], abs=1e-9)
    best = max(r["accuracy"] for r in rows if r["train_pairs"] == 120 and r["labels"] == "pairs")
    assert best >= 0.9  # "more a's" is linearly readable from some layer
    gold = [r for r in rows if r["labels"] == "gold"]
    assert {r["ridge"] for r in gold} <= set(RIDGE_GRID)
    assert max(r["accuracy"] for r in gold if r["train_pairs"] == 120) >= 0.9  # the count of a's, regressed


def test_gold_regression_recovers_a_linear_score_and_picks_less_ridge_for_cleaner_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) * torch.tensor([1.0, 5.0, 0.2, 1.0, 3.0, 1.0])  # unequal scales
    w_true = torch.tensor([1.0, -0.4, 3.0, 0.0, 0.5, -1.0])
    clean = x @ w_true + 0.01 * torch.randn(300, generator=g)
    w, lam = gold_regression(x, clean)
    assert torch.nn.functional.cosine_similarity(w, w_true.double(), dim=0) > 0.999
    assert lam == min(RIDGE_GRID)  # almost no noise: the least shrinkage predicts best
    noisy = torch.randn(300, generator=g) * 10  # nothing to learn: the most shrinkage predicts best
    assert gold_regression(x, noisy)[1] == max(RIDGE_GRID)
    with pytest.raises(ValueError, match="at least 3 texts"):
        gold_regression(x[:2], clean[:2])


def test_normalize_gives_mean_0_std_1_and_shifts_no_preference(trained):
    rm, _ = trained
    prompts = ["Say:"] * 40
    responses = [p["chosen"] for p in synthetic_pairs(40, seed=3)]
    before = rm.score(prompts, responses, normalized=False)
    info = rm.normalize(prompts, responses)
    after = torch.tensor(rm(prompts, responses), dtype=torch.float64)  # the reward_fn call
    assert after.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert after.std().item() == pytest.approx(1.0, abs=1e-5)
    assert info["gain"] > 0  # a positive gain keeps every preference: same order as before
    assert torch.equal(torch.argsort(after), torch.argsort(before.double()))


def test_reward_model_is_a_batched_reward_fn_without_gradients(trained):
    rm, _ = trained
    prompts, responses = ["Say:", "Say: hi"] * 5, ["aaaa", "bcd"] * 5
    out = rm(prompts, responses)
    assert isinstance(out, list) and len(out) == 10 and all(isinstance(x, float) for x in out)
    scores = score(rm, prompts, responses)  # the trainer's checks pass
    torch.testing.assert_close(rm.score(prompts, responses, batch_size=3), rm.score(prompts, responses, batch_size=10))
    assert not rm.score(prompts, responses).requires_grad
    assert scores.shape == (10,)


def test_save_load_round_trip_and_a_mismatched_backbone_is_a_clear_error(trained, tmp_path):
    rm, _ = trained
    rm.save(tmp_path / "rm")
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == ["reward_model.json", "reward_model.safetensors"]
    lm, tok = tiny_gpt2()
    loaded = RewardModel.load(tmp_path / "rm", lm, tok)
    prompts, responses = ["Say:"] * 3, ["aaa", "bbb", "ab ab"]
    torch.testing.assert_close(loaded.score(prompts, responses), rm.score(prompts, responses))
    other, tok2 = tiny_gpt2(n_embd=32)
    with pytest.raises(RewardModelError, match="hidden_size saved 64 vs given 32"):
        RewardModel.load(tmp_path / "rm", other, tok2)
    with pytest.raises(RewardModelError, match="no reward_model"):
        RewardModel.load(tmp_path, lm, tok)


def test_bad_pairs_get_clear_errors(trained):
    rm, _ = trained
    with pytest.raises(PreferenceDataError, match="pair 1: the 'rejected' response is empty"):
        train_reward_model(rm, [{"prompt": "a", "chosen": "x", "rejected": "y"},
                                {"prompt": "a", "chosen": "x", "rejected": " "}], progress=False)
    with pytest.raises(PreferenceDataError, match="pair 0: 'chosen' and 'rejected' are identical"):
        evaluate_reward_model(rm, [{"prompt": "a", "chosen": "same", "rejected": "same"}])
    with pytest.raises(RewardModelError, match="prompt \\+ response 0 is empty"):
        rm([""], [""])
    assert len(rm(["a", "b"], ["fine", ""])) == 2  # as a reward_fn, a response cut at once is scored
    with pytest.raises(ValueError, match="trainable must be one of"):
        RewardModel(*tiny_gpt2(), trainable="everything")


# ----------------------------------------------------------------------------- best-of-n
def test_best_of_n_estimator_equals_enumeration():
    g = torch.Generator().manual_seed(0)
    N = 7
    proxy = torch.randn(3, N, generator=g, dtype=torch.float64)
    proxy[0, 2] = proxy[0, 5]  # a tie: broken by position, as in the enumeration below
    gold = torch.randn(3, N, generator=g, dtype=torch.float64)
    for n in range(1, N + 1):
        est = best_of_n_estimate(proxy, gold, n)
        for row in range(3):
            picks = [gold[row, max(s, key=lambda i: (proxy[row, i].item(), i))].item()
                     for s in itertools.combinations(range(N), n)]
            assert est[row].item() == pytest.approx(sum(picks) / len(picks), rel=1e-12, abs=1e-13)
    torch.testing.assert_close(best_of_n_estimate(proxy, gold, 1), gold.mean(-1))  # n = 1: the plain mean
    torch.testing.assert_close(best_of_n_estimate(proxy, proxy, N), proxy.max(-1).values)  # n = N: the max
    with pytest.raises(ValueError, match="n must be an integer"):
        best_of_n_estimate(proxy, gold, N + 1)


def test_best_of_n_kl_bound():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    ns = torch.tensor([1, 2, 4, 16])
    torch.testing.assert_close(best_of_n_kl_bound(ns), torch.log(ns.double()) - (ns - 1) / ns.double())
    # an upper bound (Beirami et al. 2024): with 3 outcomes of probabilities p (ascending reward),
    # best-of-n picks outcome i with probability F_i^n − F_{i−1}^n, and its exact KL is smaller
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    F = torch.cumsum(p, 0)
    F_below = torch.cat([torch.zeros(1, dtype=torch.float64), F[:-1]])
    for n in (2, 4, 8):
        bon = F ** n - F_below ** n
        exact = float((bon * torch.log(bon / p)).sum())
        assert 0 < exact < best_of_n_kl_bound(n), (n, exact)


def test_fit_gao_recovers_parameters():
    d = torch.linspace(0.2, 3.0, 15, dtype=torch.float64)
    fit = fit_gao(d, d * (1.5 - 0.4 * d), "bon")
    assert fit["alpha"] == pytest.approx(1.5) and fit["beta"] == pytest.approx(0.4) and fit["r2"] == pytest.approx(1.0)
    fit = fit_gao(torch.cat([torch.zeros(1, dtype=torch.float64), d]),
                  torch.cat([torch.zeros(1, dtype=torch.float64), d * (0.8 - 0.3 * torch.log(d))]), "rl")
    assert fit["alpha"] == pytest.approx(0.8) and fit["beta"] == pytest.approx(0.3) and fit["n_points"] == 15
    with pytest.raises(ValueError, match="form must be"):
        fit_gao(d, d, "ppo")


# ----------------------------------------------------------------------------- the command
def test_reward_model_command_writes_a_run_folder(tmp_path):
    from ppo_lib.__main__ import main

    out = tmp_path / "run"
    assert main(["reward-model", "--out", str(out), "--model", "tiny-gpt2", "--gold", "chars:e", "--pair-repeats", "1",
                 "--train-sizes", "20", "79", "--rm-epochs", "3", "--bon-prompts", "4", "--bon-pool", "4",
                 "--ppo-updates", "2", "--eval-every", "1", "--eval-prompts", "8", "--max-new-tokens", "6",
                 "--proxy", "smallest", "--kl-coef", "0.02", "0.5"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "pairs.jsonl", "pairs_heldout.jsonl", "results.json", "samples.md", "rm_overview.png",
            "reward_model"} <= names
    import json

    results = json.loads((out / "results.json").read_text())
    assert "incomplete" not in results and results["proxy"] == {"which": "smallest", "train_pairs": 20}
    assert results["command"] == (f"python -m ppo_lib reward-model --out {out} --model tiny-gpt2 --gold chars:e "
                                  "--pair-repeats 1 --max-new-tokens 6 --train-sizes 20 79 --proxy smallest --rm-epochs 3 "
                                  "--bon-prompts 4 --bon-pool 4 --ppo-updates 2 --eval-every 1 --eval-prompts 8 "
                                  "--kl-coef 0.02 0.5")
    from ppo_lib.cli_reward_model import command_line

    older = {**results["settings"], "kl_coef": 0.02}  # a run from before --kl-coef took a list
    assert "--kl-coef" not in command_line(older)
    bon = results["best_of_n"]
    assert [b["n"] for b in bon] == [1, 2, 4]
    assert bon[0]["proxy"] == pytest.approx(0.0, abs=1e-5)  # the proxy is normalised on this very pool
    assert bon[0]["proxy"] <= bon[1]["proxy"] <= bon[2]["proxy"]  # E[max of n] grows with n
    assert [(r["kl_coef"], r["seed"]) for r in results["ppo"]] == [(0.02, 0), (0.5, 0)]  # a sweep over β
    for run in results["ppo"]:
        assert [c["update"] for c in run["curve"]] == [0, 1, 2]
        assert run["curve"][0]["kl"] == pytest.approx(0.0, abs=1e-4)  # before training π = π_ref
    assert set(results["fits"]) == {"bon", "rl", "rl, β = 0.5"}  # one RL fit per β
    RewardModel.load(out / "reward_model")  # loads on the backbone it names

    probe = tmp_path / "probe"
    assert main(["reward-probe", "--out", str(probe), "--pairs-from", str(out), "--model", "tiny-gpt2",
                 "--train-sizes", "20", "79", "--rm-epochs", "2"]) == 0
    probed = json.loads((probe / "probe.json").read_text())
    assert probed["command"] == (f"python -m ppo_lib reward-probe --out {probe} --pairs-from {out} --model tiny-gpt2 "
                                 "--train-sizes 20 79 --rm-epochs 2")
    assert probed["noise_ceiling"] == pytest.approx(results["pairs"]["noise_ceiling"])  # same held-out pairs, same τ
    assert len(probed["rows"]) == 2 * 2 * 3 * 2 and (probe / "probe.png").exists()  # (labels, pooling, 3 layers, 2 sizes)


def test_an_interrupted_reward_model_run_keeps_what_it_measured(tmp_path, monkeypatch):
    import json

    import ppo_lib.trainer
    from ppo_lib.__main__ import main

    def no_ppo(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run were stopped when PPO starts

    monkeypatch.setattr(ppo_lib.trainer, "build_trainer", no_ppo)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        main(["reward-model", "--out", str(out), "--model", "tiny-gpt2", "--gold", "chars:e", "--pair-repeats", "1",
              "--train-sizes", "20", "79", "--rm-epochs", "3", "--bon-prompts", "4", "--bon-pool", "4",
              "--ppo-updates", "2", "--eval-every", "1", "--max-new-tokens", "6"])
    results = json.loads((out / "results.json").read_text())
    assert results["incomplete"] == "stopped after best-of-n"
    assert len(results["reward_models"]) == 2 and len(results["best_of_n"]) == 3  # every finished stage is there
    assert not (out / "results.json.tmp").exists()
