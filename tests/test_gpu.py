"""What only a CUDA GPU can check. Skipped without one, as on CI; on a lent GPU run

    python -m pytest -p no:cacheprovider tests/test_gpu.py -q

* The static sampler's CUDA-graph path (``sample_static(cuda_graph=True)``, which
  ``PPOConfig.sampler="static"`` uses) draws the same tokens as the eager sampler in float32, and
  still does after the weights change: a replayed graph reads the parameters' memory, which an
  optimizer step updates in place.
* A trainer update with the static sampler and bf16 autocast runs on the GPU and gives finite
  statistics.

Chapter 07's GPU measurements (``python -m ppo_lib bench --device cuda``) are separate: timings
are benchmarks, never tests."""

import math

import pytest
import torch

from ppo_lib.models import load_policy
from ppo_lib.rollout import sample, tokenize_prompts
from ppo_lib.sampling import sample_static
from tiny import PROMPTS, tiny_trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_cuda_graph_sampler_draws_the_eager_tokens_before_and_after_the_weights_change():
    policy, tokenizer = load_policy("tiny-gpt2")
    policy = policy.to("cuda").eval()
    ids, mask = tokenize_prompts(tokenizer, PROMPTS, device="cuda")

    def both():
        g_eager, g_graph = (torch.Generator(device="cuda").manual_seed(0) for _ in range(2))
        a = sample(policy, tokenizer, ids, mask, 12, 1.0, generator=g_eager, return_logprobs=True)
        b = sample_static(policy, tokenizer, ids, mask, 12, 1.0, generator=g_graph, return_logprobs=True,
                          cuda_graph=True)
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
        torch.testing.assert_close(b.old_logprobs, a.old_logprobs, rtol=0, atol=1e-4)
        torch.testing.assert_close(b.old_values, a.old_values, rtol=0, atol=1e-4)  # the shared value head
        assert torch.equal(g_eager.get_state(), g_graph.get_state())
        return a.response_ids

    before = both()
    assert torch.equal(both(), before)  # the second call replays the captured graph
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))  # in place, as an optimizer step writes
    assert not torch.equal(both(), before)


def test_an_update_with_the_static_sampler_and_bf16_autocast_on_a_gpu():
    trainer = tiny_trainer(sampler="static", mixed_precision="bf16")
    assert trainer.device.type == "cuda"
    stats = trainer.step(PROMPTS)
    assert stats and all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
