"""``ppo_lib.bench``: the arithmetic and the report, from a small fixture (no timing, no TRL);
and the workload's honesty: every side runs exactly the settings of one frozen ``Workload``."""

import argparse
import ast
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppo_lib import bench
from ppo_lib.bench import floor, library_side, trl_side
from ppo_lib.bench.workload import _FIXED, Workload, trl_config_kwargs

PHASES = ("generate", "old_forward", "ref_forward", "score", "train_forward", "backward", "optimizer")


def _system(total, rss, scale=1.0):
    phases = {p: scale * (i + 1) * 0.1 for i, p in enumerate(PHASES)}
    phases["other"] = total - sum(phases.values())
    return {"phases": phases, "total": total, "tokens_per_s": 384 / total, "n_steady": 2, "peak_rss_mb": rss}


FIXTURE = {
    "workload": {**bench.WORKLOAD, "updates": 3},
    "loadavg_before": [1.0, 1.5, 2.0], "loadavg_after": [2.0, 1.8, 1.9],
    "systems": {
        "trl": _system(10.0, 6000.0),
        "separate": _system(9.0, 6200.0),            # time 0.90 ≤ 1: met
        "floor_separate": _system(8.5, 6000.0),      # overhead 5.9 %: met
        "shared": _system(7.0, 3300.0, 0.8),         # time 0.70 > 0.65: missed; RSS 0.55 ≤ 0.6: met
        "floor_shared": _system(6.0, 3200.0, 0.8),   # overhead 16.7 %: missed
        "lora": _system(3.5, 1800.0, 0.5),           # time 0.35 ≤ 0.4; RSS 0.30 ≤ 0.35: met
        "floor_lora": _system(3.3, 1700.0, 0.5),
    },
    "errors": {},
}


def test_steady_mean_leaves_out_the_first_update():
    assert bench.steady_mean([100.0, 2.0, 4.0]) == 3.0
    assert bench.steady_mean([5.0]) == 5.0  # a single update is all there is
    assert bench.steady_mean([100.0, 2.0], warmup=0) == 51.0
    with pytest.raises(ValueError):
        bench.steady_mean([])


def test_warmup_is_the_leading_updates_well_above_the_median_of_the_rest():
    assert bench.warmup_updates([30, 25, 10, 11, 9, 10]) == 2  # 25 > 1.2 × median(10, 11, 9, 10); 10 is not
    assert bench.warmup_updates([10, 10.5, 9.5]) == 1  # the first always goes
    assert bench.warmup_updates([5.0]) == 0 and bench.warmup_updates([9.0, 5.0]) == 1
    assert bench.warmup_updates([40, 30, 20, 10]) == 2  # still falling, but at least half are kept
    assert bench.warmup_updates([30, 10, 25, 10, 11, 9]) == 1  # a slow update later on is steady state
    assert bench.warmup_updates([30, 11.9, 10, 10]) == 1 and bench.warmup_updates([30, 12.1, 10, 10]) == 2  # 20 %
    assert bench.steady_mean([30.0, 25.0, 10.0, 11.0, 9.0, 10.0]) == 10.0  # the rule decides what is averaged


def test_summarise_runs_drops_each_runs_warm_up_and_pools_the_rest():
    s = bench.summarise_runs([[{"total": 30.0}, {"total": 25.0}, {"total": 10.0}, {"total": 12.0}],
                              [{"total": 20.0}, {"total": 8.0}, {"total": 10.0}]], tokens_per_update=384)
    assert s["n_warmup"] == [2, 1] and s["n_steady"] == 4
    assert s["total"] == 10.0 and s["median"] == 10.0 and s["phases"]["other"] == 10.0
    assert s["cv"] == pytest.approx(statistics.stdev([10.0, 12.0, 8.0, 10.0]) / 10.0)
    assert s["per_update_total"] == [[30.0, 25.0, 10.0, 12.0], [20.0, 8.0, 10.0]]


def test_summarise_run_other_is_the_rest_of_the_update():
    per_update = [{"generate": 9.0, "backward": 1.0, "total": 20.0},   # warm-up, left out
                  {"generate": 2.0, "backward": 1.0, "total": 4.0},
                  {"generate": 2.0, "backward": 2.0, "total": 6.0}]
    s = bench.summarise_run(per_update, tokens_per_update=16 * 24)
    assert s["total"] == 5.0
    assert s["phases"]["generate"] == 2.0 and s["phases"]["backward"] == 1.5
    assert s["phases"]["other"] == pytest.approx(1.5)  # (4-3 + 6-4) / 2
    assert sum(s["phases"].values()) == pytest.approx(s["total"])
    assert s["tokens_per_s"] == pytest.approx(384 / 5.0)
    assert s["n_steady"] == 2 and s["median"] == 5.0  # median of the steady totals 4 and 6


def test_overhead_is_the_fraction_beyond_the_floor():
    assert bench.overhead(11.0, 10.0) == pytest.approx(0.10)
    assert bench.overhead(9.0, 10.0) == pytest.approx(-0.10)  # faster than the floor shows as negative
    with pytest.raises(ValueError):
        bench.overhead(1.0, 0.0)


def test_targets_from_the_fixture():
    rows = {(r["system"], r["target"]): r for r in bench.evaluate_targets(FIXTURE)}
    assert rows[("separate", "time / TRL")]["met"] and rows[("separate", "time / TRL")]["value"] == pytest.approx(0.9)
    assert ("separate", "peak RSS / TRL") not in rows  # no memory target for the separate critic
    assert not rows[("shared", "time / TRL")]["met"]
    assert rows[("shared", "peak RSS / TRL")]["value"] == pytest.approx(0.55) and rows[("shared", "peak RSS / TRL")]["met"]
    assert rows[("shared", "overhead over floor")]["value"] == pytest.approx(7 / 6 - 1)
    assert not rows[("shared", "overhead over floor")]["met"]
    assert rows[("lora", "time / TRL")]["met"] and rows[("lora", "peak RSS / TRL")]["met"]
    assert rows[("separate", "overhead over floor")]["met"]


def test_targets_skip_what_did_not_run():
    partial = {"systems": {k: v for k, v in FIXTURE["systems"].items() if k in ("shared", "floor_shared")}}
    rows = bench.evaluate_targets(partial)
    assert [(r["system"], r["target"]) for r in rows] == [("shared", "overhead over floor")]


def test_markdown_table_has_every_system_and_the_targets():
    results = {**FIXTURE, "targets": bench.evaluate_targets(FIXTURE), "errors": {"trl": "x\nImportError: boom"}}
    md = bench.render_markdown(results)
    for label in ("TRL 1.12.0 PPO", "ppo_lib, separate critic", "ppo_lib, shared value head", "ppo_lib, LoRA",
                  "floor (shared)"):
        assert f"| {label} |" in md
    assert "| **10.00** |" in md and "| 0.70 | 0.55 |" in md  # total, then time / TRL and RSS / TRL
    assert "1.00/1.50/2.00" in md  # load averages
    assert "| shared | overhead over floor | +16.7% | ≤ 10% | **no** |" in md
    assert "ImportError: boom" in md


def test_a_floor_beaten_by_more_than_noise_is_flagged():
    results = {"systems": {"shared": FIXTURE["systems"]["shared"], "floor_shared": _system(8.0, 3300.0)}}
    (row,) = bench.evaluate_targets(results)
    assert row["value"] == pytest.approx(-0.125) and row["met"] and "noise" in row["note"]
    assert "yes (the floor ran slower" in bench.render_markdown({**FIXTURE, **results, "targets": [row]})


def test_gpu_results_compare_gpu_memory():
    gpu = {**FIXTURE, "workload": {**FIXTURE["workload"], "device": "cuda", "gpu": "NVIDIA H200", "dtype": "bf16"}}
    gpu["systems"] = {"trl": {**FIXTURE["systems"]["trl"], "peak_gpu_mb": 4000.0},
                      "shared": {**FIXTURE["systems"]["shared"], "peak_gpu_mb": 1000.0}}
    rows = {(r["system"], r["target"]): r for r in bench.evaluate_targets(gpu)}
    assert rows[("shared", "peak GPU memory / TRL")]["value"] == pytest.approx(0.25)  # not the host RSS ratio
    md = bench.render_markdown({**gpu, "targets": list(rows.values())})
    assert "NVIDIA H200" in md and "peak GPU memory (MiB)" in md and "torch threads" not in md


def test_report_only_regenerates_table_and_figure(tmp_path):
    (tmp_path / "bench_cpu.json").write_text(json.dumps(FIXTURE))
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--report-only", "--out-dir", str(tmp_path)])
    assert args.run(args) == 0
    md = (tmp_path / "bench_cpu.md").read_text()
    assert md == bench.render_markdown({**FIXTURE, "targets": bench.evaluate_targets(FIXTURE)})
    png = (tmp_path / "bench_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_only_without_json_says_what_to_run(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--report-only", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="python -m ppo_lib bench"):
        args.run(args)


def test_bench_config_matches_the_workload():
    cfg = bench.bench_config("shared")
    w = bench.WORKLOAD
    assert (cfg.batch_size, cfg.max_new_tokens, cfg.stop_at_eos) == (w["batch_size"], w["response_length"], False)
    assert (cfg.temperature, cfg.top_k, cfg.top_p) == (w["temperature"], w["top_k"], w["top_p"])
    assert (cfg.ppo_epochs, cfg.num_minibatches, cfg.learning_rate) == (1, 1, w["learning_rate"])
    assert (cfg.kl_coef, cfg.kl_estimator, cfg.clip_eps, cfg.vf_clip_eps, cfg.vf_coef) == (0.05, "k1", 0.2, 0.2, 0.1)
    assert (cfg.gamma, cfg.lam, cfg.seed) == (1.0, 0.95, 42)
    assert bench.bench_config("separate").separate_critic and not cfg.separate_critic
    assert bench.bench_config("lora").lora_rank == bench.LORA_RANK
    # TRL's choices: π_old from the sampling pass, no gradient clipping; the variants switch one setting back
    assert cfg.reuse_sampling_logprobs and cfg.max_grad_norm is None
    assert not bench.bench_config("shared", exact=True).reuse_sampling_logprobs
    assert bench.bench_config("lora").gradient_checkpointing and not cfg.gradient_checkpointing
    assert not bench.bench_config("lora", checkpointing=False).gradient_checkpointing
    assert len(bench.bench_prompts()) == 64
    with pytest.raises(ValueError):
        bench.bench_config("nope")


def test_report_only_recomputes_the_summaries_from_the_raw_timings(tmp_path):
    raw = {"per_update": [{"generate": 9.0, "total": 20.0}, {"generate": 2.0, "total": 4.0},
                          {"generate": 2.0, "total": 6.0}, {"generate": 2.0, "total": 5.0}],
           "peak_rss_mb": 3000.0, "peak_gpu_mb": 900.0}
    stale = {**FIXTURE, "raw": {"shared": raw}, "systems": {"shared": FIXTURE["systems"]["shared"]}}  # says 7.0 s
    (tmp_path / "bench_gpu.json").write_text(json.dumps({**stale, "workload": {**stale["workload"], "device": "cuda",
                                                                              "gpu": "NVIDIA H200"}}))
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--report-only", "--device", "cuda", "--out-dir", str(tmp_path)])
    assert args.run(args) == 0
    md = (tmp_path / "bench_gpu.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ppo_lib, shared value head |"))
    assert "| **5.000** | 5.000 |" in row and "| 900 |" in row  # mean and median of 4, 6, 5; GPU memory


def _raw(totals, rss):
    """A child's raw result: per-update totals (all in ``generate``) and a peak RSS."""
    return {"per_update": [{"generate": t, "total": t} for t in totals], "peak_rss_mb": rss}


# Two rounds, A B A B: the machine was slower in round 2, so the pooled means mislead and the
# ratios within a round agree. Steady totals (first update dropped): TRL 20, 30; shared 11, 15;
# floor_shared 10, 14. Pairwise shared / TRL: 0.55, 0.50; pooled: 13 / 25 = 0.52.
ROUNDS = {**FIXTURE, "systems": {}, "rounds": [
    {"trl": _raw([40.0, 20.0, 20.0], 6000.0), "shared": _raw([20.0, 11.0, 11.0], 3300.0),
     "floor_shared": _raw([15.0, 10.0, 10.0], 3200.0)},
    {"trl": _raw([50.0, 30.0, 30.0], 6100.0), "shared": _raw([25.0, 15.0, 15.0], 3400.0),
     "floor_shared": _raw([20.0, 14.0, 14.0], 3100.0)},
]}


def test_ratios_are_taken_within_each_round():
    results = {**ROUNDS, "systems": bench.summarise_systems(ROUNDS)}
    assert results["systems"]["trl"]["total"] == 25.0 and results["systems"]["shared"]["total"] == 13.0
    assert results["systems"]["shared"]["n_warmup"] == [1, 1] and results["systems"]["shared"]["peak_rss_mb"] == 3400.0
    assert bench.pairwise_ratios(results, "shared") == pytest.approx([0.55, 0.5])
    assert bench.pairwise_ratios(results, "shared", "floor_shared") == pytest.approx([1.1, 15 / 14])
    assert bench.pairwise_ratios(results, "lora") == []  # did not run
    partial = {**results, "rounds": [ROUNDS["rounds"][0], {"shared": ROUNDS["rounds"][1]["shared"]}]}
    assert bench.pairwise_ratios(partial, "shared") == pytest.approx([0.55])  # TRL missing from round 2: one pair


def test_targets_use_the_median_of_the_pairwise_ratios():
    results = {**ROUNDS, "systems": bench.summarise_systems(ROUNDS)}
    rows = {(r["system"], r["target"]): r for r in bench.evaluate_targets(results)}
    time = rows[("shared", "time / TRL")]
    assert time["value"] == pytest.approx(0.525) and time["value"] != pytest.approx(13 / 25)  # not the pooled means
    assert (time["min"], time["max"], time["pairs"]) == (pytest.approx(0.5), pytest.approx(0.55), 2) and time["met"]
    over = rows[("shared", "overhead over floor")]
    assert over["value"] == pytest.approx((0.1 + 1 / 14) / 2) and over["met"]
    assert rows[("shared", "peak RSS / TRL")]["value"] == pytest.approx(3400 / 6100)  # the largest peak of each


def test_markdown_with_rounds_gives_the_spread_and_says_how_they_ran():
    results = {**ROUNDS, "systems": bench.summarise_systems(ROUNDS)}
    md = bench.render_markdown({**results, "targets": bench.evaluate_targets(results)})
    row = next(line for line in md.splitlines() if line.startswith("| ppo_lib, shared value head |"))
    assert "| **13.00** | 13.00 | 18% | 1/1 |" in row  # total, median, CV, warm-up dropped per round
    assert "| 0.53 (0.50–0.55, 2 pairs) | 0.56 |" in row  # time / TRL, memory / TRL
    assert "| shared | time / TRL | 0.53 (0.50–0.55, 2 pairs) | ≤ 0.65 | yes |" in md
    assert "| shared | overhead over floor | +8.6% (+7.1% to +10.0%, 2 pairs) | ≤ 10% | yes |" in md
    assert "interleaved over 2 rounds" in md and "within a round" in md and "in each of 2 rounds" in md
    one_round = {**FIXTURE, "targets": bench.evaluate_targets(FIXTURE)}
    assert "interleaved" not in bench.render_markdown(one_round)  # one round: nothing to say


def test_report_only_reads_a_json_with_rounds(tmp_path):
    (tmp_path / "bench_cpu.json").write_text(json.dumps(ROUNDS))  # systems empty: all from the raw rounds
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--report-only", "--out-dir", str(tmp_path)])
    assert args.run(args) == 0
    md = (tmp_path / "bench_cpu.md").read_text()
    results = {**ROUNDS, "systems": bench.summarise_systems(ROUNDS)}
    assert md == bench.render_markdown({**results, "targets": bench.evaluate_targets(results)})
    assert "| 0.53 (0.50–0.55, 2 pairs) |" in md and "floor (shared)" in md


def test_harness_runs_the_systems_in_interleaved_rounds(monkeypatch, tmp_path):
    """A B A B with stand-in children (no model, no process): every round runs every system, TRL
    first; each round's raw results are kept; a child that fails in one round is an error of that round."""
    from ppo_lib import models
    from ppo_lib.bench import harness

    calls = []

    def child(name, cmd, out, log, threads):
        calls.append(name)
        if name == "shared" and calls.count("shared") == 3:
            error = RuntimeError("benchmark child failed (1): ...\nMemoryError")
            error.returncode = 1  # as harness._run_child raises it
            raise error
        k = calls.count(name)
        return _raw([40.0, 20.0 * k, 20.0 * k] if name == "trl" else [20.0, 11.0 * k, 11.0 * k], 1000.0 * k)

    monkeypatch.setattr(harness, "_run_child", child)
    monkeypatch.setattr(harness, "bench_prompts", lambda workload: ["a prompt"])
    monkeypatch.setattr(models, "load_model", lambda name: None)
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--modes", "shared", "--skip-floor", "--skip-variants", "--repeats", "3",
                              "--trl-python", sys.executable, "--out-dir", str(tmp_path)])
    results = harness.run_all(args, tmp_path / "bench_cpu.json")
    assert calls == ["trl", "shared"] * 3
    assert [sorted(r) for r in results["rounds"]] == [["shared", "trl"], ["shared", "trl"], ["trl"]]
    assert results["errors"] == {"shared": "round 3/3: exit status 1: MemoryError"}
    assert bench.pairwise_ratios(results, "shared") == pytest.approx([0.55, 0.55])  # two pairs: round 3 has one side
    assert results["systems"]["trl"]["n_warmup"] == [1, 1, 1] and results["systems"]["shared"]["total"] == 16.5
    assert json.loads((tmp_path / "bench_cpu.json").read_text())["partial"]  # written after every child


# ----------------------------------------------------------------------------- one workload, every side
# A workload unlike the published one in every setting that is free to change: a side that
# hard-codes a value of its own (a `clamp(0.8, 1.2)`, a `B = 16`) fails the tests below.
UNUSUAL = Workload(model="tiny-gpt2", pad_token="<pad>", torch_threads=3, n_prompts=9, batch_size=6, response_length=7,
                   temperature=0.9, kl_coef=0.07, kl_estimator="k3", gamma=0.97, lam=0.9, whiten_rewards=True,
                   ppo_epochs=2, num_minibatches=3, clip_eps=0.13, vf_clip_eps=0.31, vf_coef=0.23, learning_rate=1.7e-5,
                   weight_decay=0.03, lora_rank=3, lora_alpha=11.0, updates=2, floor_updates=1, seed=7)

# config field -> workload field, for ppo_lib's PPOConfig and TRL's PPOConfig
PPO_LIB_FIELDS = {
    "batch_size": "batch_size", "max_new_tokens": "response_length", "temperature": "temperature", "top_k": "top_k",
    "top_p": "top_p", "kl_coef": "kl_coef", "kl_estimator": "kl_estimator", "gamma": "gamma", "lam": "lam",
    "whiten_rewards": "whiten_rewards", "whiten_advantages": "whiten_advantages", "ppo_epochs": "ppo_epochs",
    "num_minibatches": "num_minibatches", "clip_eps": "clip_eps", "vf_clip_eps": "vf_clip_eps", "vf_coef": "vf_coef",
    "learning_rate": "learning_rate", "lr_schedule": "lr_schedule", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "lora_alpha": "lora_alpha", "seed": "seed",
}
TRL_FIELDS = {
    "per_device_train_batch_size": "batch_size", "local_rollout_forward_batch_size": "batch_size",
    "response_length": "response_length", "stop_token": "stop_token", "temperature": "temperature",
    "kl_coef": "kl_coef", "kl_estimator": "kl_estimator", "gamma": "gamma", "lam": "lam",
    "whiten_rewards": "whiten_rewards", "num_ppo_epochs": "ppo_epochs", "num_mini_batches": "num_minibatches",
    "cliprange": "clip_eps", "cliprange_value": "vf_clip_eps", "vf_coef": "vf_coef", "learning_rate": "learning_rate",
    "weight_decay": "weight_decay", "lr_scheduler_type": "lr_schedule", "seed": "seed",
}
# Fields that no config carries: read by the processes themselves (and checked by the tests below)
NOT_A_CONFIG_FIELD = {"model", "device", "torch_threads", "pad_token", "n_prompts", "updates", "floor_updates",
                      "lora_rank", "stop_token", "optimizer", "reward"}


def test_the_unusual_workload_differs_from_the_published_one_in_every_free_setting():
    free = [f.name for f in dataclasses.fields(Workload) if f.name not in _FIXED and f.name != "device"]
    assert [name for name in free if UNUSUAL[name] == bench.WORKLOAD[name]] == []


def test_ppo_lib_side_reads_every_setting_from_the_workload():
    for mode in bench.MODES:
        cfg = bench.bench_config(mode, workload=UNUSUAL)
        assert {k: getattr(cfg, k) for k in PPO_LIB_FIELDS} == {k: UNUSUAL[v] for k, v in PPO_LIB_FIELDS.items()}
        assert cfg.lora_rank == (UNUSUAL.lora_rank if mode == "lora" else 0)
        assert cfg.stop_at_eos is False and cfg.mixed_precision == "no"
        assert (cfg.lr_warmup_updates, cfg.adaptive_lr_kl_target) == (0, None)  # η constant, as TRL's warmup_steps=0
    gpu = dataclasses.replace(UNUSUAL, device="cuda")
    assert bench.bench_config("shared", workload=gpu).mixed_precision == "bf16"
    # a field added to Workload must be wired into the config, or named here as read elsewhere
    fields = {f.name for f in dataclasses.fields(Workload)}
    assert fields - set(PPO_LIB_FIELDS.values()) == NOT_A_CONFIG_FIELD


def test_trl_side_reads_every_setting_from_the_workload():
    kwargs = trl_side.ppo_config_kwargs(UNUSUAL, "out")  # TRL's PPOConfig(**kwargs); no TRL needed to build them
    assert {k: kwargs[k] for k in TRL_FIELDS} == {k: UNUSUAL[v] for k, v in TRL_FIELDS.items()}
    assert kwargs["total_episodes"] == UNUSUAL.batch_size * UNUSUAL.updates  # TRL counts updates in episodes
    assert (kwargs["use_cpu"], kwargs["bf16"]) == (True, False)
    gpu = trl_config_kwargs(dataclasses.replace(UNUSUAL, device="cuda"))
    assert (gpu["use_cpu"], gpu["bf16"]) == (False, True)
    # the harness's own arguments (output, logging) never override a setting of the workload
    assert set(trl_side.HARNESS_ARGS).isdisjoint(trl_config_kwargs(UNUSUAL))


def test_trl_side_loads_without_ppo_lib():
    """The TRL side runs with the python of TRL's own virtual environment, which has no ppo_lib."""
    code = ("import sys; sys.modules['ppo_lib'] = None  # any import of ppo_lib now fails\n"
            f"sys.path.insert(0, {str(Path(trl_side.__file__).parent)!r}); import trl_side\n"
            "w = trl_side.Workload(batch_size=6, n_prompts=6, clip_eps=0.13)\n"
            "print(trl_side.ppo_config_kwargs(w, 'out')['cliprange'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0.13"]


@pytest.fixture
def one_thread():
    """The sides run in a process of their own; here they share the test's, so leave it as found."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", bench.MODES)
def test_floor_runs_the_workload(mode, one_thread):
    result = floor.run(UNUSUAL, mode)
    w = UNUSUAL
    expected = {"batch_size": w.batch_size, "response_length": w.response_length, "n_prompts": w.n_prompts,
                "optimizer_steps_per_update": w.ppo_epochs * w.num_minibatches, "learning_rate": w.learning_rate,
                "weight_decay": w.weight_decay}
    if mode == "lora":
        expected.update(lora_rank=w.lora_rank, lora_alpha=w.lora_alpha)
    assert result["settings"] == expected
    assert len(result["per_update"]) == w.floor_updates


def test_ppo_lib_side_runs_the_workload(one_thread):
    result = library_side.run(UNUSUAL, "shared")
    assert result["config"] == bench.bench_config("shared", workload=UNUSUAL).to_dict()
    assert len(result["per_update"]) == UNUSUAL.updates
    assert result["response_length_mean"] == UNUSUAL.response_length  # exactly T tokens, no stop token


def test_a_side_that_pads_differently_from_the_workload_is_an_error(one_thread):
    with pytest.raises(RuntimeError, match="Workload.pad_token"):
        floor.run(dataclasses.replace(UNUSUAL, pad_token="<empty_output>"), "shared")


BENCH_DIR = Path(bench.__file__).parent
SIDES = ("floor.py", "library_side.py", "trl_side.py", "child.py", "harness.py")


def test_no_side_writes_a_setting_of_its_own():
    """No number or name of the published workload appears as a literal in a side's code, nor
    1 ± a fraction of it (a clip range written as 0.8 and 1.2): each must come from the Workload.
    0 and 1 are left out: they mean "none" and "one"."""
    numbers = {v for v in bench.WORKLOAD.values() if type(v) in (int, float) and v not in (0, 1)}
    numbers |= {1 + sign * v for v in numbers if v < 1 for sign in (-1, 1)}
    names = {bench.WORKLOAD.model, bench.WORKLOAD.pad_token}
    found = []
    for name in SIDES:
        for node in ast.walk(ast.parse((BENCH_DIR / name).read_text())):
            if not isinstance(node, ast.Constant) or type(node.value) is bool:
                continue
            if (type(node.value) in (int, float) and any(abs(node.value - v) < 1e-12 for v in numbers)
                    or node.value in names):
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    assert found == []


def test_workload_checks_what_every_side_relies_on():
    with pytest.raises(ValueError, match="top_k must be 0"):
        Workload(top_k=50)  # TRL 1.12.0 cannot sample with top-k
    with pytest.raises(ValueError, match="n_prompts=8 must be ≥ batch_size=16"):
        Workload(n_prompts=8)
    with pytest.raises(ValueError, match="num_minibatches=5 must divide batch_size=16"):
        Workload(num_minibatches=5)
    with pytest.raises(ValueError, match="kl_estimator"):
        Workload(kl_estimator="k2")
    assert Workload.from_json(UNUSUAL.to_json()) == UNUSUAL  # what every child process reads
    with pytest.raises(ValueError, match="unknown field"):
        Workload.from_json(json.dumps({"batch_sise": 8}))
    assert UNUSUAL.record("NVIDIA H200") == {**dataclasses.asdict(UNUSUAL), "dtype": "float32", "gpu": "NVIDIA H200"}
