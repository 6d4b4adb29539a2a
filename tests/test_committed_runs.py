"""The committed benchmark runs under ``figures/runs/`` are runs of what the library does today.

A preset's defaults are a claim about every run of it, so they may change only together with its
committed runs: these tests fail when the ``sentiment`` preset and the runs that document it
(README "Results", chapter 07) drift apart, and when the README's table stops being the runs' own
numbers. Chapter 09's comparison ran at an earlier state of the preset; every one of its folders,
its PPO arm included, must record that one configuration (today's preset with
``COMPARED_SETTINGS``) and budget. Chapter 08's KL-penalty sweeps must be the committed
reward-model run on its own pairs, with only β and the seeds changed. Nothing here trains or times
anything: it reads JSON. Fields that change only the speed of a run (``SPEED_ONLY_FIELDS``: the
sampler, the form of the CPU products) are left out of these comparisons, except for the seeds of
the preset as it is (``AUTO_PRODUCTS_RUNS``), whose wall times are the preset's speed benchmark.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ppo_lib.cli_train import KL_WINDOW, PRESETS
from ppo_lib.kl import KLBudget
from ppo_lib.plotting.ch07 import AUTO_PRODUCTS_RUNS, PRESET_RUNS
from ppo_lib.plotting.ch08 import KL_SWEEPS
from ppo_lib.plotting.ch09 import COMPARE_RUN, COMPARED_SETTINGS, DPO_RUN, MEMORY_RUN, MORE_RUNS, PPO_RUNS, full_comparison
from ppo_lib.rollout import _choose
from ppo_lib.trainer import SPEED_ONLY_FIELDS, PPOConfig

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
PRESET = PRESETS["sentiment"]
COMPARED = {**PRESET["config"], **COMPARED_SETTINGS}  # chapter 09's shared configuration
COMPARED_UPDATES = 36


def read(folder: str, name: str) -> dict:
    return json.loads((FIGURES / folder / name).read_text())


def settings(config: dict) -> dict:
    """A PPOConfig's fields, defaults filled in, without those that change only the speed."""
    return {k: v for k, v in PPOConfig.from_dict(config).to_dict().items() if k not in SPEED_ONLY_FIELDS}


def check_train_run(folder: str, seed: int, config: dict, updates: int, kl_budget: float | None = None):
    """``folder`` ran ``config`` with ``seed`` for ``updates`` updates, or, under a KL budget, until
    the first update whose estimate (:class:`ppo_lib.kl.KLBudget`) reached it, and at most ``updates``."""
    saved = read(folder, "config.json")
    assert saved["preset"] == "sentiment" and saved["model"] == PRESET["model"] and saved["reward"] == PRESET["reward"]
    assert saved["updates"] == updates and saved.get("kl_budget") == kl_budget
    assert settings(saved["config"]) == settings({**config, "seed": seed})
    history = (FIGURES / folder / "history.jsonl").read_text().splitlines()
    done = read(folder, "eval.json")["updates"]
    assert [json.loads(line)["update"] for line in history] == list(range(1, done + 1))
    if kl_budget is None:
        assert done == updates
        return
    kls = [json.loads(line)["objective/kl"] for line in history]
    reached = [KLBudget(kl_budget, KL_WINDOW, kls[:t]).reached for t in range(1, done + 1)]
    result = read(folder, "eval.json")
    assert not any(reached[:-1])  # it ran on while under the budget ...
    if result["ended_by"] == "kl_budget":  # ... and ended at the first update that reached it
        assert reached[-1] and result["kl_estimate"] == pytest.approx(sum(kls[-KL_WINDOW:]) / KL_WINDOW, rel=1e-12)
    else:
        assert result["ended_by"] == "updates" and done == updates


@pytest.mark.parametrize("seed", sorted(PRESET_RUNS))
def test_each_committed_seed_ran_the_current_preset(seed):
    check_train_run(PRESET_RUNS[seed], seed, PRESET["config"], PRESET["updates"], PRESET["kl_budget"])


@pytest.mark.parametrize("seed", sorted(AUTO_PRODUCTS_RUNS))
def test_each_seed_of_the_preset_as_it_is_ran_it_exactly_and_recorded_what_auto_chose(seed):
    folder = AUTO_PRODUCTS_RUNS[seed]
    check_train_run(folder, seed, PRESET["config"], PRESET["updates"], PRESET["kl_budget"])
    saved = PPOConfig.from_dict(read(folder, "config.json")["config"]).to_dict()
    preset = PPOConfig.from_dict(PRESET["config"]).to_dict()
    assert {k: saved[k] for k in SPEED_ONLY_FIELDS} == {k: preset[k] for k in SPEED_ONLY_FIELDS}
    chosen = read(folder, "eval.json")["cpu_products"]  # per batch size: the training batch and the evaluation's
    assert set(chosen) == {str(preset["batch_size"]), "64"}
    assert all(c["form"] == _choose(c["ms"]) for c in chosen.values())  # the fastest, or plain within 5 %


@pytest.mark.parametrize("seed", sorted(PPO_RUNS))
def test_the_ppo_arm_of_chapter_09_ran_the_compared_configuration(seed):
    check_train_run(PPO_RUNS[seed], seed, COMPARED, COMPARED_UPDATES)


def test_the_comparison_ran_the_preset_at_its_token_budget():
    more = ["reinforce", "dr_grpo", "remax"]
    for folder, arms, seeds, every in ((COMPARE_RUN, ["rloo", "grpo"], [0, 1], 6), (DPO_RUN, ["dpo"], [0, 1], None),
                                       (MORE_RUNS[0], more, [0], None), (MORE_RUNS[1], more, [1], 6),
                                       (MEMORY_RUN, None, None, None)):
        config = read(folder, "config.json")
        assert config["preset"] == "sentiment" and settings(config["preset_config"]) == settings(COMPARED)
        if arms is not None:
            assert config["arms"] == arms and config["seeds"] == seeds and config["eval_prompts"] == 64
            assert config["token_budget"] == COMPARED_UPDATES * COMPARED["batch_size"] * COMPARED["max_new_tokens"]
            assert config.get("eval_every") == every
    runs = full_comparison()["runs"]
    assert sorted({r["arm"] for r in runs}) == ["dpo", "dr_grpo", "grpo", "ppo", "reinforce", "remax", "rloo"]
    for r in runs:  # a trajectory ends at the final evaluation
        if "trajectory" in r:
            assert r["trajectory"][-1] == {"update": r["updates"], "score": r["score_after"], "kl": r["kl_after"]}
    # π_ref is scored with a fixed evaluation seed, so every seed of a folder starts from the same
    # number; folders made the same way agree. `train` samples the 64 held-out prompts 64 at a time,
    # `compare` 16 at a time, and the library drew tokens with torch.multinomial before draw_tokens:
    # same law, other random numbers, so those give other (equally valid) scores of π_ref.
    ppo = [r["score_before"] for r in runs if r["arm"] == "ppo"]
    assert max(ppo) - min(ppo) < 1e-9
    before = {folder: {round(b["score"], 9) for b in read(folder, "summary.json")["before"].values()}
              for folder in (COMPARE_RUN, DPO_RUN, *MORE_RUNS)}
    assert all(len(b) == 1 for b in before.values())
    assert before[DPO_RUN] == before[MORE_RUNS[0]]  # both drew with torch.multinomial
    assert before[COMPARE_RUN] == before[MORE_RUNS[1]]  # both with draw_tokens


def test_the_readme_reports_every_seed_of_the_preset_as_committed():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for seed, folder in PRESET_RUNS.items():
        ev = read(folder, "eval.json")
        row = re.search(rf"^\| {seed} \|(.*)$", readme, re.M)
        assert row, f"README Results lack the row of seed {seed}"
        cells = [c.strip().strip("*") for c in row.group(1).split("|")]
        before, after, gain, kl = (float(c.replace("+", "")) for c in cells[:4])
        assert before == pytest.approx(ev["before"]["score_mean"], abs=5e-4)
        assert after == pytest.approx(ev["after"]["score_mean"], abs=5e-4)
        assert gain == pytest.approx(ev["score_gain"], abs=5e-4)
        assert kl == pytest.approx(ev["after"]["kl_mean"], abs=5e-3)


@pytest.mark.parametrize("sweep", KL_SWEEPS)
def test_each_kl_sweep_of_chapter_08_ran_the_committed_run_on_its_pairs_but_for_beta_and_seeds(sweep):
    from ppo_lib.plotting.ch08 import RUN

    main, swept = read(f"runs/{RUN}", "config.json"), read(f"runs/{sweep}", "config.json")
    assert swept["pairs_from"] == f"figures/runs/{RUN}"
    differ = {"out", "pairs_from", "pair_repeats", "kl_coef", "seeds"}  # pair_repeats: unused with --pairs-from
    assert {k: v for k, v in swept.items() if k not in differ} == {k: v for k, v in main.items() if k not in differ}
    assert main["kl_coef"] not in swept["kl_coef"]  # new coefficients, beside the committed one
    results = read(f"runs/{sweep}", "results.json")
    assert "incomplete" not in results
    assert {(r["kl_coef"], r["seed"]) for r in results["ppo"]} == {(b, s) for b in swept["kl_coef"] for s in swept["seeds"]}


def frontier_folders() -> list[str]:
    from ppo_lib.plotting.ch07 import FRONTIER_RUNS

    return sorted(f"{FRONTIER_RUNS}/{p.name}" for p in (FIGURES / FRONTIER_RUNS).iterdir() if p.is_dir())


def test_each_preset_variant_of_chapter_07_changed_only_the_settings_it_names():
    from ppo_lib.plotting.ch07 import _SETTING_NAMES, preset_frontier_points

    folders = frontier_folders()
    assert len(folders) >= 6
    for folder in folders:
        saved = read(folder, "config.json")
        assert saved["preset"] == "sentiment" and saved["model"] == PRESET["model"] and saved["reward"] == PRESET["reward"]
        ran = {**settings(saved["config"]), "updates": saved["updates"], "kl_budget": saved.get("kl_budget")}
        preset = {**settings(PRESET["config"]), "updates": PRESET["updates"], "kl_budget": PRESET["kl_budget"]}
        changed = {k for k in preset if ran[k] != preset[k]} - {"seed"}
        assert changed and changed <= set(_SETTING_NAMES), (folder, changed)
        history = (FIGURES / folder / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["update"] for line in history] == list(range(1, read(folder, "eval.json")["updates"] + 1))
        ev = read(folder, "eval.json")
        assert ev["score_gain"] == pytest.approx(ev["after"]["score_mean"] - ev["before"]["score_mean"], abs=1e-12)
    points = {p["folder"]: p for p in preset_frontier_points()}
    assert set(folders) | set(PRESET_RUNS.values()) | set(PPO_RUNS.values()) == set(points)


def test_the_trajectories_of_chapter_07_ran_the_current_preset_and_were_evaluated_where_they_say():
    from ppo_lib.plotting.ch07 import TRAJECTORY_RUNS, preset_trajectories

    runs = preset_trajectories()
    assert sorted(runs) == [0, 1, 2, 3]
    for seed, evals in runs.items():
        folder = FIGURES / TRAJECTORY_RUNS / f"seed{seed}"
        fields = read(f"{TRAJECTORY_RUNS}/seed{seed}", "config.json")
        assert settings(fields) == settings({**PRESET["config"], "seed": seed})
        updates = [e["update"] for e in evals]
        assert updates[0] == 0 and evals[0]["kl"] == 0 and updates == sorted(set(updates))
        history = [json.loads(line)["update"] for line in (folder / "history.jsonl").read_text().splitlines()]
        assert history == list(range(1, updates[-1] + 1))
        assert max(e["kl"] for e in evals) > PRESET["kl_budget"]  # each went past the preset's budget
    assert len({round(evals[0]["score"], 9) for evals in runs.values()}) == 1  # one π_ref, one evaluation seed
