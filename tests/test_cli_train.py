"""``python -m ppo_lib train`` on tiny-gpt2: a resume never loses a run, whatever the moment of
the crash; every bad input is a one-line error before the run folder is touched."""

import json
import os

import pytest

from ppo_lib.__main__ import main

ARGS = ["train", "--model", "tiny-gpt2", "--reward", "chars:abcdefghijklmnopqrstuvwxyz", "--updates", "4",
        "--save-every", "1", "--eval-prompts", "4", "--set", "batch_size=4", "--set", "max_new_tokens=6",
        "--set", "ppo_epochs=1", "--set", "num_minibatches=1", "--set", "learning_rate=3e-3",
        "--set", "max_prompt_length=96", "--kl-budget", "off"]


def history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def learned(h):
    return {k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out


def test_the_cli_trains_a_learnable_reward_and_the_weights_move(straight):
    from safetensors.torch import load_file

    from ppo_lib.models import tiny_gpt2

    h = history(straight)
    assert [x["update"] for x in h] == [1, 2, 3, 4]
    # 4 responses × 6 random bytes: an update can score 0 (no lowercase letter), most do not
    assert sum(x["env/score_mean"] > 0 and x["policy/grad_norm"] > 0 for x in h) >= 3
    initial, _ = tiny_gpt2()
    trained = load_file(str(straight / "checkpoint" / "policy.safetensors"))
    start = {f"lm.{k}": v for k, v in initial.state_dict().items()}  # the ActorCritic holds the LM as .lm
    common = [k for k in start if k in trained]
    moved = [k for k in common if not (trained[k] == start[k]).all()]
    assert len(common) > 20 and len(moved) > len(common) // 2, (len(common), moved)


def test_the_preset_measures_the_form_of_the_products_and_the_run_records_its_choice(straight):
    """The ``sentiment`` preset samples with ``cpu_products="auto"``: the run measures the forms
    once per batch size (here the training batch and the evaluation's 4 prompts are both 4 rows)
    and ``eval.json`` says what it chose and why."""
    from ppo_lib.rollout import _choose

    saved = json.loads((straight / "config.json").read_text())["config"]
    assert saved["cpu_products"] == "auto"
    chosen = json.loads((straight / "eval.json").read_text())["cpu_products"]
    assert list(chosen) == ["4"]
    assert set(chosen["4"]["ms"]) >= {"plain", "transposed"} and chosen["4"]["form"] == _choose(chosen["4"]["ms"])


class Killed(BaseException):
    """Stands in for kill -9 at one point of the run."""


def kill_at(monkeypatch, target, name, call):
    """Make ``target.name`` raise Killed on its ``call``-th call (1-based); earlier calls run."""
    real, count = getattr(target, name), {"n": 0}

    def fake(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, fake)


@pytest.mark.parametrize("where", ["before the swap", "between the renames", "between the history line and the save"])
def test_a_run_killed_anywhere_resumes_into_the_uninterrupted_run(tmp_path, monkeypatch, straight, where):
    import safetensors.torch

    from ppo_lib import trainer

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        if where == "before the swap":  # the 3rd save dies writing its 2nd file (3 files a save)
            kill_at(m, safetensors.torch, "save_file", 2 * 3 + 2)
        elif where == "between the renames":  # 3rd save: checkpoint → checkpoint.old done, tmp → checkpoint not
            kill_at(m, os, "replace", 1 + 2 + 2)  # the 1st save renames once, the others twice
        else:  # update 3 is in history.jsonl, its checkpoint is never written
            kill_at(m, trainer.PPOTrainer, "save_checkpoint", 3)
        with pytest.raises(Killed):
            main(ARGS + ["--out", str(out)])
    assert len(history(out)) == 3
    (out / "checkpoint.tmp-stale").mkdir(exist_ok=True)  # what a kill -9 during a save leaves
    assert main(["train", "--out", str(out), "--resume"]) == 0
    got, want = history(out), history(straight)
    assert [x["update"] for x in got] == [1, 2, 3, 4]
    for g, w in zip(got, want):
        assert learned(g) == pytest.approx(learned(w), rel=1e-6, abs=1e-7, nan_ok=True)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


def evals(out):
    return [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]


def test_eval_every_scores_the_held_out_prompts_along_the_way_without_changing_training(tmp_path, straight):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out), "--eval-every", "2", "--save-every", "3"]) == 0
    for g, w in zip(history(out), history(straight), strict=True):  # the evaluations draw from their own generator
        assert learned(g) == pytest.approx(learned(w), rel=1e-6, abs=1e-7, nan_ok=True)
    lines = evals(out)
    assert [e["update"] for e in lines] == [0, 2, 4]
    before, result = json.loads((out / "eval_before.json").read_text()), json.loads((out / "eval.json").read_text())
    assert {k: v for k, v in lines[0].items() if k != "update"} == before
    assert {k: v for k, v in lines[-1].items() if k != "update"} == result["after"]
    assert not (straight / "evals.jsonl").exists()  # without the flag, nothing new in the folder


def test_a_resumed_run_drops_evaluations_past_its_checkpoint_and_goes_on_evaluating(tmp_path):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out), "--eval-every", "1", "--updates", "2"]) == 0
    with open(out / "evals.jsonl", "a") as f:  # as if a killed run had scored an update its checkpoint lacks
        f.write(json.dumps({"update": 3, "score_mean": 9.0}) + "\n")
    assert main(["train", "--out", str(out), "--resume", "--updates", "4", "--eval-every", "1"]) == 0
    lines = evals(out)
    assert [e["update"] for e in lines] == [0, 1, 2, 3, 4] and lines[3]["score_mean"] != 9.0


def test_a_kl_budget_ends_the_run_where_its_estimate_first_reaches_it_and_a_resume_keeps_it_ended(tmp_path):
    from ppo_lib.cli_train import KL_WINDOW
    from ppo_lib.kl import KLBudget

    args = ARGS[: ARGS.index("--kl-budget")] + ["--updates", "8", "--save-every", "5", "--set", "learning_rate=1e-2"]
    assert main(args + ["--out", str(tmp_path / "free"), "--kl-budget", "off"]) == 0
    free = history(tmp_path / "free")
    kls = [h["objective/kl"] for h in free]
    estimates = {t: KLBudget(None, KL_WINDOW, kls[:t]).estimate for t in range(KL_WINDOW, 9)}
    end = max(estimates, key=lambda t: (estimates[t], -t))  # the budget is first reached there
    budget = estimates[end]
    assert budget > 0, estimates
    out = tmp_path / "run"
    assert main(args + ["--out", str(out), "--kl-budget", repr(budget)]) == 0
    for g, w in zip(history(out), free[:end], strict=True):  # the same updates, up to the end
        assert learned(g) == pytest.approx(learned(w), rel=1e-6, abs=1e-7, nan_ok=True)
    result = json.loads((out / "eval.json").read_text())
    assert result["updates"] == end and result["ended_by"] == "kl_budget" and result["kl_budget"] == budget
    assert result["kl_estimate"] == pytest.approx(budget, rel=1e-6)
    assert json.loads((out / "config.json").read_text())["kl_budget"] == budget
    assert main(["train", "--out", str(out), "--resume", "--updates", "12"]) == 0  # ended: no more updates
    assert len(history(out)) == end


def test_a_budget_never_reached_leaves_the_run_as_it_was(tmp_path, straight):
    out = tmp_path / "run"
    assert main(ARGS[: ARGS.index("--kl-budget")] + ["--out", str(out), "--kl-budget", "1e6"]) == 0
    for g, w in zip(history(out), history(straight), strict=True):
        assert learned(g) == pytest.approx(learned(w), rel=1e-6, abs=1e-7, nan_ok=True)
    assert json.loads((out / "eval.json").read_text())["ended_by"] == "updates"
    assert json.loads((straight / "eval.json").read_text())["kl_budget"] is None  # --kl-budget off


def test_the_sentiment_preset_ends_at_a_kl_budget_and_a_config_file_does_not_change_that():
    import argparse

    from ppo_lib.cli_train import PRESETS, build_config

    args = argparse.Namespace(preset=None, model=None, reward=None, updates=None, config=None, set=None, algo=None,
                              kl_budget=None)
    run, _ = build_config(args)
    assert run["kl_budget"] == PRESETS["sentiment"]["kl_budget"] == 6.0 and run["updates"] == 40
    args.kl_budget = "off"
    assert build_config(args)[0]["kl_budget"] is None
    args.preset, args.kl_budget = "sentiment-gpt2", None
    assert build_config(args)[0]["kl_budget"] is None  # the Colab preset keeps its adaptive β and 150 updates


def test_resume_without_a_checkpoint_is_an_error_that_changes_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": "tiny-gpt2", "reward": "chars:ab", "updates": 2,
                                                 "config": {"batch_size": 4, "max_new_tokens": 6,
                                                            "max_prompt_length": 96}}))
    (out / "history.jsonl").write_text('{"update": 1}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match="no checkpoint to resume from"):
        main(["train", "--out", str(out), "--resume"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_refuses_flags_that_would_change_the_run(straight):
    with pytest.raises(SystemExit, match="leave out --set"):
        main(["train", "--out", str(straight), "--resume", "--set", "kl_coef=0.2"])


@pytest.mark.parametrize("extra, message", [
    (["--save-every", "0"], "--save-every must be ≥ 1"),
    (["--updates", "0"], "--updates must be ≥ 1"),
    (["--eval-prompts", "0"], "--eval-prompts must be ≥ 1"),
    (["--eval-every", "0"], "--eval-every must be ≥ 1"),
    (["--set", "learning_rate=abc"], "learning_rate must be a number, got 'abc'"),
    (["--set", "batch_size=true"], "batch_size must be an integer, got True"),
    (["--set", "clip_eps=Infinity"], "clip_eps must be a finite number"),
    (["--set", "top_k=100000"], "top_k=100000 exceeds the model's vocabulary"),
    (["--set", "max_prompt_length=251"], "exceeds the model's context of 256 tokens"),
    (["--reward", "chars:"], "targets must name at least one character"),
    (["--set", "max_prompt_length=8"], "more than max_prompt_length=8"),
])
def test_bad_input_is_a_one_line_error_before_the_run_folder_exists(tmp_path, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=message):
        main(ARGS + ["--out", str(out)] + extra)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "six"])
def test_a_bad_kl_budget_is_a_one_line_error(tmp_path, capsys, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(ARGS + ["--out", str(out), "--kl-budget", value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"expects a positive number of nats per sequence or 'off', got '{value}'" in err
    assert not out.exists()


def test_bad_config_files_and_an_out_that_is_a_file_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{lr: 1")
    with pytest.raises(SystemExit, match="is not valid JSON"):
        main(ARGS + ["--out", str(tmp_path / "run"), "--config", str(bad)])
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="must hold a JSON object"):
        main(ARGS + ["--out", str(tmp_path / "run"), "--config", str(bad)])
    with pytest.raises(SystemExit, match="is a file"):
        main(ARGS + ["--out", str(bad)])
