r"""A sampler with fixed shapes: a preallocated KV cache, no data-dependent exit (chapter 07).

:func:`ppo_lib.rollout.sample` (the *eager* sampler) grows its KV cache and its attention mask
by one column per token and leaves the loop as soon as every row has emitted EOS. Both are
natural on a CPU and both are obstacles on a GPU, where one decode step of a 135M model is a few
hundred small kernels whose *launch* time, not their arithmetic, sets the pace: a step whose
shapes change every time cannot be captured once in a CUDA graph and replayed, and a Python
``if done.all(): break`` forces a CPU–GPU synchronisation per token.

:func:`sample_static` keeps every shape fixed:

* the KV cache is preallocated for :math:`P + T` tokens (``transformers.StaticCache``), written
  in place;
* the attention mask is one ``(B, P + T)`` tensor whose response columns are switched on one by
  one, in place;
* every row keeps sampling after its EOS; the tokens after it are masked afterwards by
  :func:`~ppo_lib.rollout.truncate_after_eos`, exactly as the eager sampler's are, and the
  columns after the step at which every row had ended are dropped at the very end.

So the decode step is the same computation every time: with ``cuda_graph=True`` on a GPU it is
compiled with ``torch.compile(mode="reduce-overhead")``, which captures it in a CUDA graph and
replays it. With ``compile_cpu=True`` on a CPU it is compiled with Inductor's default mode, which
fuses the normalisations, rotary embeddings and attention glue into generated C++ loops and leaves
the matrix products to MKL (chapter 07, Section 11 measures what that buys, 1.07× on SmolLM2, and
what it costs: 43 s of compilation per prompt length on 2 cores). Sampling itself
(:func:`~ppo_lib.rollout.draw_tokens` with the caller's generator) stays outside the compiled
region, so the random stream is the eager sampler's.

**Same tokens, same log-probs, same generator state.** For the same seeded generator the static
sampler draws the same tokens as the eager one: both call :func:`~ppo_lib.rollout.draw_tokens` once per step
with the same generator, on probabilities computed by the same model from the same keys and
values. The eager sampler stops drawing at the step where every row has ended; the static one
draws :math:`T` times, so it saves the generator's state after each step and restores the one
of that step, leaving the generator exactly where the eager sampler leaves it (the next
update's draws are the same too). The probabilities are not always bit-identical: attention
over :math:`P + T` key slots, the unused ones masked to :math:`-\infty`, sums in another order
than attention over the :math:`P + t` filled ones (see ``tests/test_sampling.py`` for what
"equal" means there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from .models import ActorCritic
from .rollout import (Rollout, _filter_logits, _kv_cache, decode_products, draw_tokens, position_ids_from_mask, sample,
                      truncate_after_eos)

__all__ = ["SAMPLERS", "sample_static", "get_sampler"]

SAMPLERS = ("eager", "static")


GRAPH_PAD = 16  # on a compiled path prompts are left-padded to a multiple of this: fewer shapes, fewer compilations
_COMPILED: dict = {}  # (model, device, B, P + T, shared head) -> (cache, compiled decode step), reused across calls


def _static_cache(lm: nn.Module, max_len: int):
    """An empty ``StaticCache`` for ``max_len`` tokens and the keyword the model takes it by."""
    from transformers import StaticCache

    name, _ = _kv_cache(lm)
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # unwrap a peft model
    return name, StaticCache(config=base.config, max_cache_len=max_len)


def _decode_step(lm: nn.Module, cache_kwarg: str, cache, shared_head: bool):
    """``(input_ids, position_ids, attention_mask) -> (float32 logits (B, V), last hidden (B, 1, H) or None)``."""
    def forward(input_ids, position_ids, attention_mask):
        out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1,
                 use_cache=True, output_hidden_states=shared_head, **{cache_kwarg: cache})
        hidden = out.hidden_states[-1][:, -1:] if shared_head else None
        return out.logits[:, -1, :].float(), hidden
    return forward


def _compiled_step(lm: nn.Module, device: torch.device, B: int, L: int, shared_head: bool):
    """A preallocated cache and its decode step compiled, built once per model, device and shape
    and reset before each use: mode="reduce-overhead" (a CUDA graph) on a GPU, Inductor's default
    mode on a CPU. The compiled step reads the model's parameters at every call (they are inputs
    of the graph, not constants folded into it), so it samples from the weights of the moment."""
    key = (id(lm), device.type, B, L, shared_head)
    if key not in _COMPILED:
        cache_kwarg, cache = _static_cache(lm, L)
        forward = _decode_step(lm, cache_kwarg, cache, shared_head)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        _COMPILED[key] = (cache_kwarg, cache, forward, torch.compile(forward, mode=mode))
    cache_kwarg, cache, forward, compiled = _COMPILED[key]
    cache.reset()
    return forward, compiled


@torch.no_grad()
def sample_static(
    model: nn.Module,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_at_eos: bool = True,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    cuda_graph: bool = False,
    compile_cpu: bool = False,
    draw: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = draw_tokens,
    products: str = "packed",
) -> Rollout:
    """:func:`ppo_lib.rollout.sample` with a preallocated cache and fixed shapes: same arguments,
    same :class:`~ppo_lib.rollout.Rollout`, same tokens for the same generator.

    Args:
        cuda_graph: on a GPU, run each decode step through
            ``torch.compile(mode="reduce-overhead")`` (captured once in a CUDA graph, replayed
            afterwards). The first call pays the compilation (tens of seconds). Ignored on a CPU,
            where there is no launch overhead to remove.
        compile_cpu: on a CPU, run each decode step through ``torch.compile`` (Inductor, default
            mode; needs a C++ compiler). The first call at each prompt length pays the
            compilation (43 s for SmolLM2 on 2 cores); the trainer does not use it.
        draw: how each step's token is drawn, as in :func:`~ppo_lib.rollout.sample`.
        products: the form of the decode steps' products on a CPU, as in
            :func:`~ppo_lib.rollout.sample`.

    Shapes: ``prompt_ids``/``prompt_mask`` ``(B, P)``; every decode step sees ``input_ids`` and
    ``position_ids`` ``(B, 1)``, an attention mask ``(B, P + T)`` and a cache of ``P + T`` slots.
    """
    lm = model.lm if isinstance(model, ActorCritic) else model
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    shared_head = return_logprobs and isinstance(model, ActorCritic) and model.critic is None
    graphed = cuda_graph and prompt_ids.device.type == "cuda"
    compiled = graphed or (compile_cpu and prompt_ids.device.type == "cpu")
    ids, mask = prompt_ids, prompt_mask.long()
    if compiled:  # left-pad to a multiple of GRAPH_PAD: one compilation serves many prompt lengths
        extra = -ids.shape[1] % GRAPH_PAD
        ids = torch.cat([ids.new_full((ids.shape[0], extra), pad), ids], dim=1)
        mask = torch.cat([mask.new_zeros(mask.shape[0], extra), mask], dim=1)
    B, P = ids.shape
    T = max_new_tokens
    if compiled:
        forward, step = _compiled_step(lm, ids.device, B, P + T, shared_head)
    else:
        forward = step = _decode_step(lm, *_static_cache(lm, P + T), shared_head)
    attention_mask = torch.zeros(B, P + T, dtype=torch.long, device=ids.device)  # fixed shape, filled in place
    attention_mask[:, :P] = mask
    position_ids = position_ids_from_mask(mask)

    tokens, logprobs, values, states = [], [], [], []
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    ended_at = torch.full((B,), T, dtype=torch.long, device=prompt_ids.device)  # step of each row's first EOS
    # The prompt's pass (the prefill) has its own shape and runs uncompiled.
    with decode_products(lm, B, products, T):  # a CPU only (a compiled step calls these products too)
        logits, hidden = forward(ids, position_ids, attention_mask[:, :P])
        for t in range(T):
            scaled = logits / temperature  # (B, V)
            next_token = draw(_filter_logits(scaled, top_k, top_p).softmax(-1), generator)
            if generator is not None:
                states.append(generator.get_state())  # host-side copy; lets us rewind to the eager sampler's stop
            tokens.append(next_token)
            if return_logprobs:
                logprobs.append(scaled.log_softmax(-1).gather(-1, next_token))
            if shared_head:
                values.append(model.value_head(hidden))
            if stop_at_eos:  # no branch on it: rows keep sampling, the mask cuts them afterwards
                newly = (next_token.squeeze(1) == eos) & ~done
                ended_at = torch.where(newly, torch.full_like(ended_at, t), ended_at)
                done |= newly
            if t == T - 1:
                break
            attention_mask[:, P + t] = 1
            position_ids = position_ids[:, -1:] + 1
            logits, hidden = step(next_token, position_ids, attention_mask)
            if graphed:  # outputs of a replayed graph are overwritten by the next replay
                logits = logits.clone()
                hidden = hidden.clone() if hidden is not None else None

    response_ids = torch.cat(tokens, dim=1)  # (B, T)
    keep = T
    if stop_at_eos:
        keep = int(ended_at.max()) + 1 if bool(done.all()) else T  # where the eager sampler would have stopped
        response_ids, response_mask = truncate_after_eos(response_ids[:, :keep], eos, pad)
    else:
        response_mask = torch.ones_like(response_ids, dtype=torch.bool)
    if generator is not None and states:
        generator.set_state(states[keep - 1])  # exactly as many draws as the eager sampler made
    return Rollout(prompt_ids, prompt_mask.bool(), response_ids, response_mask,
                   torch.cat(logprobs, dim=1)[:, :keep] if logprobs else None,
                   torch.cat(values, dim=1)[:, :keep].float() if values else None)


def get_sampler(name: str):
    """The sampling function called ``name`` (``PPOConfig.sampler``): "eager" or "static"."""
    if name == "eager":
        return sample
    if name == "static":
        return functools.partial(sample_static, cuda_graph=True)  # the CUDA graph on a GPU; plain static on a CPU
    raise ValueError(f"unknown sampler {name!r}; use one of {SAMPLERS}.")
