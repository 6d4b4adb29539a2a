"""ppo_lib.profiling: the time breakdown on hand-made statistics, the interleaved order, and
the chapter 07 figures (cheap: committed files and pure functions)."""

import os
import shutil

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from ppo_lib.profiling import PHASES, interleaved_timing, machine, plot_time_breakdown, time_breakdown  # noqa: E402


def stats(generate, backward, step):
    return {"time/generate": generate, "time/backward": backward, "time/step": step, "policy/loss": 0.0}


def test_time_breakdown_averages_phases_and_puts_the_rest_in_other():
    history = [stats(9.0, 9.0, 30.0), stats(2.0, 3.0, 6.0), stats(4.0, 5.0, 10.0)]
    out = time_breakdown(history, skip=1)
    assert out["generate"] == pytest.approx(3.0) and out["backward"] == pytest.approx(4.0)
    assert out["step"] == pytest.approx(8.0) and out["other"] == pytest.approx(1.0)
    assert all(out[p] == 0.0 for p in PHASES if p not in ("generate", "backward"))  # never timed: 0
    assert sum(v for k, v in out.items() if k != "step") == pytest.approx(out["step"])


def test_time_breakdown_refuses_what_it_cannot_average():
    with pytest.raises(ValueError, match="at least one update after skip=2"):
        time_breakdown([stats(1, 1, 3)] * 2, skip=2)
    with pytest.raises(ValueError, match="'time/step'"):
        time_breakdown([{"time/generate": 1.0}])


def test_interleaved_timing_alternates_and_pairs_the_ratios():
    calls = []
    out = interleaved_timing({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # A B A B ..., the warm-up round first
    assert len(out["seconds"]["a"]) == 3 and len(out["ratios"]) == 3
    assert out["ratios"] == pytest.approx([x / y for x, y in zip(out["seconds"]["a"], out["seconds"]["b"])])


def test_the_breakdown_figure_stacks_every_phase():
    b = {p: 1.0 for p in PHASES} | {"other": 1.0, "step": 8.0}
    fig = plot_time_breakdown({"run": b}, share=True)
    bars = fig.axes[0].patches
    assert len(bars) == len(PHASES) + 1
    assert bars[-1].get_x() + bars[-1].get_width() == pytest.approx(1.0)  # shares add up to the whole update


def test_first_updates_runs_the_preset_at_each_warm_up_and_records_its_rate():
    from ppo_lib.cli_train import PRESETS
    from ppo_lib.profiling import FIRST_UPDATE_KEYS, first_updates

    out = first_updates([0, 4], [0], model="tiny-gpt2", reward="chars:abcdefghijklmnopqrstuvwxyz", updates=2,
                        overrides={"max_prompt_length": 96})  # GPT-2's tokenizer makes some review prompts longer
    eta = PRESETS["sentiment"]["config"]["learning_rate"]
    no_warmup, warm = out["runs"]["lr_warmup_updates=0"]["0"], out["runs"]["lr_warmup_updates=4"]["0"]
    assert [u["optimizer/lr"] for u in no_warmup] == pytest.approx([eta, eta])
    assert [u["optimizer/lr"] for u in warm] == pytest.approx([eta / 4, eta / 2])  # (u + 1) / W
    assert all(set(u) == set(FIRST_UPDATE_KEYS) and u["policy/ratio_max"] >= 1.0 for u in no_warmup + warm)


def test_first_update_command_passes_its_overrides_on_and_records_them(tmp_path, monkeypatch):
    import json

    import ppo_lib.profiling as profiling

    seen = {}

    def fake(warmups, seeds, preset, updates, overrides):
        seen.update(warmups=warmups, seeds=seeds, preset=preset, updates=updates, overrides=overrides)
        return {"runs": {}}

    monkeypatch.setattr(profiling, "first_updates", fake)
    profiling.main(["first-update", "--warmups", "6", "--seeds", "0", "--set", "learning_rate=3e-5",
                    "--set", "kl_coef=0.05", "--out", str(tmp_path)])
    assert seen == {"warmups": [6], "seeds": [0], "preset": "sentiment", "updates": 1,
                    "overrides": {"learning_rate": 3e-5, "kl_coef": 0.05}}
    command = json.loads((tmp_path / "first-update.json").read_text())["command"]
    assert "--set learning_rate=3e-5 --set kl_coef=0.05 --out" in command


def test_machine_names_the_cpu_its_core_count_and_only_known_vector_extensions():
    m = machine()
    assert m["cpu"] and m["platform"]
    assert m["cpus"] == os.cpu_count()
    assert set(m["cpu_flags"]) <= {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}
    if os.path.exists("/proc/cpuinfo") and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in m["cpu_flags"]


def test_bf16_sampling_times_both_arms_and_measures_a_small_positive_kl(tmp_path):
    import json

    from ppo_lib.profiling import main

    main(["bf16-sampling", "--model", "tiny-gpt2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "1",
          "--out", str(tmp_path)])
    out = json.loads((tmp_path / "bf16-sampling.json").read_text())
    assert out["command"].startswith("python -m ppo_lib.profiling bf16-sampling --model tiny-gpt2 --batch-size 2")
    assert set(out["seconds"]) == {"float32", "bfloat16"} and len(out["ratios"]) == 1
    mismatch = out["mismatch"]
    assert 0 < mismatch["kl_mean"] <= mismatch["kl_max"] < 0.1  # bf16 rounding moves the policy, a little
    assert 0 < mismatch["max_abs_logprob_diff"] < 1.0


def test_samplers_command_times_four_arms_interleaved_and_checks_they_agree(tmp_path):
    import json

    from ppo_lib.profiling import main

    main(["samplers", "--model", "tiny-gpt2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "2",
          "--out", str(tmp_path)])
    out = json.loads((tmp_path / "samplers.json").read_text())
    arms = {"eager_multinomial", "eager_plain", "eager", "static"}
    assert set(out["seconds"]) == arms and all(len(v) == 2 for v in out["seconds"].values())
    assert set(out["speedup"]) == {"eager_multinomial/eager", "eager_multinomial/eager_plain", "eager_plain/eager",
                                   "eager/static"}
    pair = out["speedup"]["eager_plain/eager"]  # each ratio is taken round by round
    assert pair == pytest.approx([a / b for a, b in zip(out["seconds"]["eager_plain"], out["seconds"]["eager"])])
    agreement = out["agreement"]
    assert agreement["tokens_equal"] and agreement["generator_state_equal"] and agreement["plain_products"]["tokens_equal"]
    assert agreement["logprob_max_abs_diff"] < 1e-4


def test_products_command_measures_the_roofline_times_each_form_and_checks_they_agree(tmp_path):
    import json

    from ppo_lib.profiling import main
    from ppo_lib.rollout import _mkl_packing

    main(["products", "--model", "tiny-gpt2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "2",
          "--out", str(tmp_path)])
    out = json.loads((tmp_path / "products.json").read_text())
    forms = {"plain", "transposed"} | ({"packed"} if _mkl_packing() else set())
    assert set(out["products_ms"]) == forms and out["auto"] in forms
    assert set(out["seconds"]) == forms | {"eager_multinomial"} and all(len(v) == 2 for v in out["seconds"].values())
    sec = out["seconds"]
    assert out["speedup"]["eager_multinomial/transposed"] == pytest.approx(
        [a / b for a, b in zip(sec["eager_multinomial"], sec["transposed"])])
    r = out["roofline"]
    assert r["weight_bytes"] == 4 * 258 * 64  # tiny-gpt2's one nn.Linear: the 258 × 64 LM head, float32
    assert r["gflop"] == pytest.approx(2 * 258 * 64 * 2 / 1e9)  # one multiply-add per weight per row
    assert r["memory_ms"] == pytest.approx(r["weight_bytes"] / r["bandwidth_gb_s"] / 1e6)
    assert r["flop_ms"] == pytest.approx(r["gflop"] / r["matmul_gflop_s"] * 1e3)
    assert all(a["tokens_equal"] and a["logprob_max_abs_diff"] < 1e-5 for a in out["agreement"].values())


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on a CPU (Inductor) needs a C++ compiler")
def test_compiled_sampling_command_times_the_compilation_apart_and_three_arms_interleaved(tmp_path):
    import json

    from ppo_lib.profiling import main

    main(["compiled-sampling", "--model", "tiny-gpt2", "--batch-size", "2", "--max-new-tokens", "4", "--repeats", "2",
          "--products", "transposed", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "compiled-sampling.json").read_text())
    assert out["products"] == "transposed" and "--repeats 2 --products transposed --out" in out["command"]
    assert set(out["seconds"]) == {"eager_multinomial", "eager", "static_compiled"}
    assert all(len(v) == 2 for v in out["seconds"].values())
    sec, med = out["seconds"], out["median"]
    assert out["speedup"]["eager/static_compiled"] == pytest.approx([a / b for a, b in zip(sec["eager"],
                                                                                            sec["static_compiled"])])
    assert out["compile_s"] > max(sec["static_compiled"])  # the first call compiled; the timed ones did not
    saved = med["eager"] - med["static_compiled"]
    assert out["payback_samplings"] == (pytest.approx(out["compile_s"] / saved) if saved > 0 else None)
    agreement = out["agreement"]
    assert agreement["tokens_equal"] and agreement["generator_state_equal"] and agreement["logprob_max_abs_diff"] < 1e-4


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_int8_copy_quantizes_every_linear_layer_but_the_head_and_leaves_the_original_alone():
    from ppo_lib.models import load_model
    from ppo_lib.profiling import int8_copy

    lm = _tiny_llama()
    q = int8_copy(lm)
    quantized = [n for n, m in q.named_modules() if type(m).__module__.endswith("quantized.dynamic.modules.linear")]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    assert type(q.get_output_embeddings()) is torch.nn.Linear  # the head stays float32
    assert not any("quantized" in type(m).__module__ for m in lm.modules())  # a copy, not in place
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = lm(input_ids=ids).logits, q(input_ids=ids).logits
    assert 0 < (a - b).abs().max() < 0.1 * a.abs().max()  # rounded, not broken
    with pytest.raises(ValueError, match="Conv1D"):
        int8_copy(load_model("tiny-gpt2")[0])


def test_int8_sampling_command_names_its_arms_and_measures_a_kl(tmp_path):
    import json

    from ppo_lib.profiling import main

    main(["int8-sampling", "--model", "smollm2-135m", "--batch-size", "2", "--max-new-tokens", "3", "--repeats", "1",
          "--out", str(tmp_path)])
    out = json.loads((tmp_path / "int8-sampling.json").read_text())
    assert out["precision"] == "int8" and set(out["seconds"]) == {"float32", "int8"}
    assert out["mismatch"]["kl_mean"] > 0 and out["mismatch"]["max_abs_logprob_diff"] > 0
