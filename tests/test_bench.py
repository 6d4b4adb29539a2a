"""``ppo_lib.bench``: the arithmetic and the report, from a small fixture (no timing, no TRL)."""

import argparse
import json

import pytest

from ppo_lib import bench

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
    assert bench.steady_mean([100.0, 2.0], skip_first=False) == 51.0
    with pytest.raises(ValueError):
        bench.steady_mean([])


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
