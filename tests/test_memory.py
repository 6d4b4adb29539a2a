"""The memory estimator of chapter 07 against counts made by hand for tiny-gpt2
(V = 258, d = 64, 2 layers, 2 heads, 256 positions, tied LM head)."""

from ppo_lib.memory import kv_cache_bytes, logits_bytes, model_memory, parameter_bytes
from ppo_lib.models import load_policy, tiny_gpt2

V, D, LAYERS, POSITIONS = 258, 64, 2, 256
# wte + wpe + per layer (ln 2d, qkv d·3d + 3d, proj d² + d, ln 2d, fc d·4d + 4d, proj 4d·d + d) + final ln
PARAMS = V * D + POSITIONS * D + LAYERS * (12 * D * D + 13 * D) + 2 * D


def test_weights_count_tied_embeddings_once():
    lm, _ = tiny_gpt2()
    assert PARAMS == 132_992
    assert parameter_bytes(lm) == 4 * PARAMS


def test_kv_cache_and_logits_by_hand():
    lm, _ = tiny_gpt2()
    assert kv_cache_bytes(lm, batch_size=16, seq_len=88) == 2 * LAYERS * 16 * 88 * D * 4  # n_kv · d_head = d
    assert logits_bytes(lm, batch_size=16, response_len=24) == 16 * 25 * V * 4


def test_policy_with_a_value_head_and_a_frozen_reference():
    policy, _ = load_policy("tiny-gpt2")
    head = D + 1  # the value head: w and b
    got = model_memory(policy, trains=True, batch_size=4, prompt_len=8, response_len=6, samples=True)
    assert got["weights"] == got["gradients"] == 4 * (PARAMS + head)
    assert got["adam_moments"] == 8 * (PARAMS + head)
    assert got["kv_cache"] == 2 * LAYERS * 4 * 14 * D * 4 and got["logits"] == 4 * 7 * V * 4
    assert got["total"] == sum(v for k, v in got.items() if k != "total")
    for p in policy.lm.parameters():  # a LoRA-like setting: only the head trains
        p.requires_grad_(False)
    frozen = model_memory(policy, trains=True, batch_size=4, prompt_len=8, response_len=6)
    assert frozen["gradients"] == 4 * head and frozen["adam_moments"] == 8 * head
    assert model_memory(policy.lm, trains=False, batch_size=4, prompt_len=8, response_len=6) == \
        {"weights": 4 * PARAMS, "total": 4 * PARAMS}


def test_grouped_query_attention_keeps_fewer_keys_and_values():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64)
    lm = LlamaForCausalLM(cfg)
    assert kv_cache_bytes(lm, batch_size=2, seq_len=10) == 2 * 3 * 2 * 10 * 2 * (64 // 8) * 4
