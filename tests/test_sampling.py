"""The static sampler (ppo_lib.sampling) against the eager one (ppo_lib.rollout.sample), on tiny-gpt2, CPU, fp32.

What "equal" means here: the tokens, the masks and the generator's state afterwards are
bitwise equal; the log-probs agree to 1e-5 (absolute). They cannot be bitwise equal in
general: the static sampler's attention runs over P + T key slots, the unused ones masked,
the eager one's over the P + t filled ones, and the float32 sums run in another order
(measured: 5e-7 on tiny-gpt2, 2e-5 on SmolLM2, whose log-probs are ≈ -5; see
figures/runs/ch07_sampler/).

The other forms of the decode step's products (ppo_lib.rollout.decode_products: MKL's packed GEMM,
the transposed product, and "auto", which times them) are checked on a tiny Llama, whose layers are
all nn.Linear: same tokens as the plain products, fresh weights at every entry, the layers restored
on exit."""

import shutil

import pytest
import torch

from ppo_lib.models import load_policy
from ppo_lib import rollout
from ppo_lib.rollout import (decode_products, draw_tokens, fastest_products, multinomial_tokens, packed_linears, sample,
                             tokenize_prompts, transposed_linears)
from ppo_lib.sampling import get_sampler, sample_static
from tiny import PROMPTS


@pytest.fixture(scope="module")
def tiny():
    policy, tokenizer = load_policy("tiny-gpt2")
    policy.eval()
    ids, mask = tokenize_prompts(tokenizer, PROMPTS)
    return policy, tokenizer, ids, mask


class EosTokenizer:
    """The ids a sampler needs, with EOS moved to ``eos`` (a token the test makes likely)."""

    def __init__(self, tokenizer, eos):
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, eos


def both(policy, tokenizer, ids, mask, T, **kw):
    g_eager, g_static = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = sample(policy, tokenizer, ids, mask, T, 1.0, generator=g_eager, return_logprobs=True, **kw)
    b = sample_static(policy, tokenizer, ids, mask, T, 1.0, generator=g_static, return_logprobs=True, **kw)
    return a, b, g_eager, g_static


def assert_same(a, b, g_eager, g_static):
    assert a.response_ids.shape == b.response_ids.shape
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(b.old_logprobs, a.old_logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.old_values, a.old_values, rtol=0, atol=1e-5)  # the shared value head's V(s_t)
    assert torch.equal(g_eager.get_state(), g_static.get_state())  # the next batch's draws are the same too


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_static_equals_eager_on_full_length_responses(tiny, stop_at_eos):
    policy, tokenizer, ids, mask = tiny
    assert_same(*both(policy, tokenizer, ids, mask, 12, stop_at_eos=stop_at_eos))


def test_static_equals_eager_when_rows_end_early_and_the_eager_loop_exits(tiny):
    """A logit bias makes a token likely (p ≈ 0.25 a step) and that token is EOS: rows end at
    different steps, the eager loop leaves early, and the static one masks the same tokens,
    keeps the same columns and rewinds the generator to the same state."""
    policy, tokenizer, ids, mask = tiny
    eos = 7
    V = policy.lm.config.vocab_size
    bias = torch.zeros(V)
    bias[eos] = float(torch.log(torch.tensor(0.25 / 0.75 * (V - 1))))
    handle = policy.lm.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    try:
        a, b, g1, g2 = both(policy, EosTokenizer(tokenizer, eos), ids, mask, 40)
    finally:
        handle.remove()
    lengths = a.response_mask.sum(1)
    assert a.response_ids.shape[1] < 40 and len(set(lengths.tolist())) > 2  # early exit, ragged ends
    assert_same(a, b, g1, g2)


def test_the_sampler_option_picks_the_function():
    assert get_sampler("eager") is sample
    assert get_sampler("static").func is sample_static
    with pytest.raises(ValueError, match="unknown sampler 'graph'"):
        get_sampler("graph")


def test_draw_tokens_inverts_the_cumulative_distribution_for_its_own_uniforms():
    """One uniform per row, read from the same generator: the token is the first index whose
    cumulative probability exceeds u · total, found here by a plain Python loop."""
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    drawn = draw_tokens(probs, torch.Generator().manual_seed(3))
    u = torch.rand(4, 1, generator=torch.Generator().manual_seed(3))
    for row, ui, tok in zip(probs.tolist(), u[:, 0].tolist(), drawn[:, 0].tolist()):
        cum, expected = 0.0, None
        for i, p in enumerate(row):
            cum += p
            if cum > ui * sum(row):
                expected = i
                break
        assert tok == expected
    assert drawn.shape == (4, 1) and drawn[1, 0] == 3  # an unnormalised row: only its non-zero entry


def test_draw_tokens_samples_the_distribution_and_never_a_zero_probability_token():
    p = torch.tensor([0.0, 0.05, 0.0, 0.45, 0.3, 0.2, 0.0])
    n = 200_000
    drawn = draw_tokens(p.expand(n, -1), torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(drawn, minlength=len(p)).double() / n
    assert torch.all(freq[p == 0] == 0)
    sd = (p * (1 - p) / n).sqrt().double()
    assert torch.all((freq - p.double()).abs() <= 5 * sd + 1e-12)  # each frequency within 5 standard errors


def test_draw_tokens_and_multinomial_draw_the_same_distribution_from_logits():
    """The old draw (torch.multinomial) and the new one agree in distribution on a 50-token
    softmax: total variation between their empirical frequencies ≤ 0.015 over 100 000 draws."""
    probs = torch.randn(50, generator=torch.Generator().manual_seed(1)).mul(2).softmax(-1).expand(100_000, -1)
    a = draw_tokens(probs, torch.Generator().manual_seed(2))[:, 0]
    b = multinomial_tokens(probs, torch.Generator().manual_seed(2))[:, 0]
    fa, fb = (torch.bincount(x, minlength=50).double() / 1e5 for x in (a, b))
    assert 0.5 * (fa - fb).abs().sum() <= 0.015  # measured 0.006–0.008 over 5 seeds
    assert not torch.equal(a, b)  # the same law, other random numbers


# ----------------------------------------------------------------------------- packed products

needs_mkl = pytest.mark.skipif(not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")),
                               reason="MKL's packed GEMM needs a torch built with MKL (x86)")


@pytest.fixture(scope="module")
def tiny_llama(tiny):
    """A 2-layer Llama (every projection an nn.Linear, as in SmolLM2) on tiny-gpt2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, ids, mask = tiny
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer, ids, mask


def linears(lm):
    return [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("products", [pytest.param("packed", marks=needs_mkl), "transposed", "auto"])
@pytest.mark.parametrize("sampler", [sample, sample_static], ids=["eager", "static"])
def test_every_form_of_the_products_samples_the_same_tokens_as_the_plain_ones(tiny_llama, sampler, products):
    lm, tokenizer, ids, mask = tiny_llama
    runs = [sampler(lm, tokenizer, ids, mask, 12, 1.0, generator=torch.Generator().manual_seed(0),
                    return_logprobs=True, products=p) for p in ("plain", products)]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    assert torch.equal(runs[0].response_mask, runs[1].response_mask)
    # measured: 0 packed, 4.8e-7 transposed (the sums in another order)
    torch.testing.assert_close(runs[1].old_logprobs, runs[0].old_logprobs, rtol=0, atol=1e-5)


@needs_mkl
def test_packed_linears_packs_every_linear_computes_the_same_products_and_restores_the_layers(tiny_llama):
    lm = tiny_llama[0]
    layer = lm.model.layers[0].mlp.up_proj
    x4, x3 = torch.randn(4, 1, 64), torch.randn(3, 64)
    with torch.no_grad():
        plain4, plain3 = layer(x4), layer(x3)
        with packed_linears(lm, rows=4) as n:
            assert n == len(linears(lm)) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the LM head
            assert all("forward" in vars(m) for m in linears(lm))
            torch.testing.assert_close(layer(x4), plain4, rtol=0, atol=1e-6)  # 4 rows: the packed kernel
            assert torch.equal(layer(x3), plain3)  # another shape: the plain product itself
        assert not any("forward" in vars(m) for m in linears(lm))
        with pytest.raises(RuntimeError, match="inside"):
            with packed_linears(lm, rows=4):
                raise RuntimeError("an error inside the block")
        assert not any("forward" in vars(m) for m in linears(lm))  # restored on the way out of an error too


@needs_mkl
def test_packed_linears_packs_the_weights_as_they_are_at_each_entry(tiny_llama):
    """The packed copy is made when the block is entered, so sampling after an optimizer step
    uses the new weights (a stale copy would sample from the previous policy)."""
    import copy

    lm, tokenizer, ids, mask = tiny_llama
    lm = copy.deepcopy(lm)
    x = torch.randn(4, 1, 64)
    with torch.no_grad():
        with packed_linears(lm, rows=4):
            before = lm.model.layers[0].mlp.up_proj(x)
        opt = torch.optim.AdamW(lm.parameters(), lr=0.1, fused=True)  # the trainer's optimizer
    lm.train()
    lm(ids, attention_mask=mask).logits.square().mean().backward()
    opt.step()
    lm.eval()
    with torch.no_grad():
        plain = lm.model.layers[0].mlp.up_proj(x)
        with packed_linears(lm, rows=4):
            after = lm.model.layers[0].mlp.up_proj(x)
    assert (plain - before).abs().max() > 0.1  # the step changed the layer
    torch.testing.assert_close(after, plain, rtol=0, atol=1e-6)
    a, b = (sample(lm, tokenizer, ids, mask, 10, 1.0, generator=torch.Generator().manual_seed(1), products=p)
            for p in ("plain", "packed"))
    assert torch.equal(a.response_ids, b.response_ids)


def test_packed_linears_leaves_the_model_alone_with_gradients_or_when_disabled(tiny_llama):
    lm = tiny_llama[0]
    with torch.enable_grad(), packed_linears(lm, rows=4) as n:  # training: autograd needs the plain product
        assert n == 0
    with torch.no_grad(), packed_linears(lm, rows=4, enabled=False) as n:
        assert n == 0
    assert not any("forward" in vars(m) for m in linears(lm))


def test_transposed_linears_computes_the_same_products_and_restores_the_layers(tiny_llama):
    lm = tiny_llama[0]
    layer, head = lm.model.layers[0].mlp.down_proj, lm.lm_head
    g = torch.Generator().manual_seed(0)
    x4, x3, h4 = torch.randn(4, 1, 128, generator=g), torch.randn(3, 128, generator=g), torch.randn(4, 1, 64, generator=g)
    with torch.no_grad():
        plain4, plain3, head4 = layer(x4), layer(x3), head(h4)
        with transposed_linears(lm, rows=4) as n:
            assert n == len(linears(lm)) == 2 * 7 + 1
            out = layer(x4)
            assert out.shape == plain4.shape and out.is_contiguous()
            torch.testing.assert_close(out, plain4, rtol=1e-5, atol=1e-6)  # the same sums, in another order
            torch.testing.assert_close(head(h4), head4, rtol=1e-5, atol=1e-6)
            assert torch.equal(layer(x3), plain3)  # another shape: the plain product itself
        assert not any("forward" in vars(m) for m in linears(lm))
    with torch.enable_grad(), transposed_linears(lm, rows=4) as n:  # training: the plain product
        assert n == 0


def test_auto_times_the_forms_once_keeps_the_global_random_stream_and_chooses_by_a_margin(tiny_llama):
    lm = tiny_llama[0]
    state = torch.get_rng_state()
    with torch.no_grad():
        form, ms = fastest_products(lm, rows=4, steps=12)
        assert fastest_products(lm, rows=4, steps=12) == (form, ms)  # cached: measured once
        with decode_products(lm, 4, "auto", steps=12) as used:
            assert used == form
    assert torch.equal(torch.get_rng_state(), state)  # its inputs come from a private generator
    assert set(ms) == {"plain", "transposed"} | ({"packed"} if rollout._mkl_packing() else set())
    assert all(t > 0 for t in ms.values()) and form in ms
    assert ms[form] <= ms["plain"]
    with torch.enable_grad():  # nothing a decode step would use: the plain product, unmeasured
        assert fastest_products(lm, rows=4) == ("plain", {})
    # a form must be ≥ 5 % faster than the plain product to replace it
    assert rollout._choose({"plain": 10.0, "transposed": 9.6, "packed": 11.0}) == "plain"
    assert rollout._choose({"plain": 10.0, "transposed": 9.4, "packed": 9.0}) == "packed"


def test_an_unknown_form_of_the_products_is_a_clear_error(tiny_llama):
    lm, tokenizer, ids, mask = tiny_llama
    with pytest.raises(ValueError, match=r"products must be one of \('plain', 'packed', 'transposed', 'auto'\), got 'fast'"):
        sample(lm, tokenizer, ids, mask, 2, 1.0, products="fast")


# ----------------------------------------------------------------------------- a compiled decode step on a CPU

has_cxx = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


@pytest.mark.skipif(not has_cxx, reason="torch.compile on a CPU (Inductor) needs a C++ compiler")
@pytest.mark.parametrize("products", ["plain", pytest.param("packed", marks=needs_mkl), "transposed"])
def test_a_compiled_cpu_decode_step_samples_like_the_eager_one_and_follows_the_weights(tiny_llama, products):
    """``compile_cpu=True`` (chapter 07, Section 11): the same tokens, generator state and
    log-probs as the eager sampler; after the weights change, the same again, from the new
    weights and without compiling anew (the parameters are inputs of the graph, not constants)."""
    import copy

    from torch._dynamo.utils import counters

    lm, tokenizer, ids, mask = tiny_llama
    lm = copy.deepcopy(lm)  # a new model: its own compiled step

    def check():
        g_eager, g_comp = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        a = sample(lm, tokenizer, ids, mask, 10, 1.0, generator=g_eager, return_logprobs=True, products=products)
        b = sample_static(lm, tokenizer, ids, mask, 10, 1.0, generator=g_comp, return_logprobs=True, products=products,
                          compile_cpu=True)
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
        # Inductor's loops reduce in another order (vectorised sums, fused softmax): measured 3e-5 here, 2e-5 on SmolLM2
        torch.testing.assert_close(b.old_logprobs, a.old_logprobs, rtol=0, atol=1e-4)
        assert torch.equal(g_eager.get_state(), g_comp.get_state())
        return a.response_ids

    graphs = counters["stats"]["unique_graphs"]
    before = check()
    assert counters["stats"]["unique_graphs"] > graphs  # the decode step was compiled ...
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.5 * torch.randn_like(p))  # another policy
    after = check()
    assert not torch.equal(before, after)  # the new weights sample other tokens ...
    assert counters["stats"]["unique_graphs"] == graphs  # ... through the step compiled before, not a new one


@pytest.mark.skipif(not has_cxx, reason="torch.compile on a CPU (Inductor) needs a C++ compiler")
def test_one_compiled_decode_step_follows_a_change_of_the_products_form(tiny_llama):
    """The compiled step is cached per model and shape, not per form: switching the form in one
    process must still sample what the eager sampler with that form samples."""
    import copy

    lm, tokenizer, ids, mask = tiny_llama
    lm = copy.deepcopy(lm)  # a new model: its own compiled step
    forms = ["transposed", "plain"] + (["packed"] if rollout._mkl_packing() else [])
    for products in forms + forms[:1]:
        kw = dict(generator=torch.Generator().manual_seed(0), return_logprobs=True, products=products)
        a = sample(lm, tokenizer, ids, mask, 10, 1.0, **kw)
        b = sample_static(lm, tokenizer, ids, mask, 10, 1.0, compile_cpu=True,
                          **{**kw, "generator": torch.Generator().manual_seed(0)})
        assert torch.equal(a.response_ids, b.response_ids), products
        torch.testing.assert_close(b.old_logprobs, a.old_logprobs, rtol=0, atol=1e-4)  # measured: 4.8e-7
