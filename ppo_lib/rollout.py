"""Sampling responses from a policy and scoring their tokens (chapters 01 and 06).

The padding contract (chapter 06, "The padding contract"):

* Prompts are **left**-padded to a common length P, so every prompt ends at column P-1
  and the first response token is at column P for every row.
* Responses are **right**-padded to a common length T. ``response_mask`` (B, T) is True on
  real response tokens, *including* the first EOS, and False after it. It travels with the
  ids and is never rebuilt from ``ids != pad_token_id``.
* Position ids come from the attention mask (``cumsum - 1``), so a prompt gets the same
  positions alone and inside a padded batch (tested: same log-probs).

Log-probs are taken with one function, :func:`forward_response`, both at rollout time
(``old_logprobs``) and in the PPO update, with the sampling temperature applied, so the
first PPO ratio is exactly 1. :func:`sample` can also return the log-probs (and shared-head
values) it saw while sampling, which saves that forward pass at the price of a first ratio
that is 1 only up to the rounding difference between cached and full-sequence attention
(``PPOConfig.reuse_sampling_logprobs``; TRL's design).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import ActorCritic

__all__ = [
    "Rollout",
    "tokenize_prompts",
    "position_ids_from_mask",
    "logprobs_from_logits",
    "sample",
    "draw_tokens",
    "multinomial_tokens",
    "PRODUCTS",
    "packed_linears",
    "transposed_linears",
    "fastest_products",
    "decode_products",
    "truncate_after_eos",
    "forward_response",
    "critic_values",
    "token_logprobs",
]


@dataclass
class Rollout:
    """One batch of prompts and sampled responses, with the one mask convention.

    Shapes: ``prompt_ids``/``prompt_mask`` ``(B, P)`` left-padded; ``response_ids``/
    ``response_mask`` ``(B, T)`` right-padded. ``old_logprobs`` and ``old_values`` ``(B, T)``
    are filled only by ``sample(..., return_logprobs=True)``: log π_old of the response tokens
    under the sampling policy and, for a shared value head, V_old(s_t), the value of the state
    before response token t (prompt plus tokens 0..t-1), as everywhere in the library.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, L)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)  # (B, L)

    def __getitem__(self, index) -> "Rollout":
        """Rows ``index`` (a slice or an index tensor) of the batch."""
        def rows(x):
            return None if x is None else x[index]

        return Rollout(self.prompt_ids[index], self.prompt_mask[index], self.response_ids[index],
                       self.response_mask[index], rows(self.old_logprobs), rows(self.old_values))


def tokenize_prompts(
    tokenizer, prompts: Sequence[str], max_prompt_length: int | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a list of prompts: returns ``(prompt_ids, prompt_mask)``, both ``(B, P)``.

    Raises:
        ValueError: on an empty list, an empty prompt, or a prompt longer than
            ``max_prompt_length`` tokens (never silently truncated).
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings.")
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token.")
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}: "
                f"shorten it or raise max_prompt_length ({prompts[i][:60]!r}...)."
            )
    P = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (P - len(ids)) + ids for ids in encoded], device=device)
    prompt_mask = torch.tensor([[0] * (P - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    return prompt_ids, prompt_mask.bool()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` position ids: 0 at each row's first real token, counting real tokens only."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` at ``tokens``: ``(B, T, V), (B, T) -> (B, T)``.

    Computed in float32 whatever the logits' dtype (bf16 log-probs are too coarse for ratios).
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of ``(B, V)`` logits; 0 / 1.0 switch them off."""
    if top_k > 0:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set with mass ≥ top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``(B, V)`` probabilities, by inverting the cumulative distribution.

    Draws one uniform ``u`` per row and returns the first index whose cumulative probability
    exceeds ``u`` times the row's total, ``(B, 1)``. A token of probability 0 (filtered out by
    top-k/top-p) is never drawn: its cumulative sum equals its predecessor's.

    ``torch.multinomial(probs, 1)`` draws the same distribution but, on a CPU, generates an
    exponential random number for *every* entry (``probs / Exp(1)``, then an argmax): 786 432 of
    them for 16 rows of a 49 152-token vocabulary, 17–30 ms per decode step on a 2-core CPU, a
    fifth to a quarter of the step (chapter 07, Section 11). This draws ``B`` numbers.

    Accuracy: the sums and ``u`` are float32, so each token's probability is honoured to about
    one float32 rounding of its cumulative sum (≈ 1e-7 absolute). Measured on SmolLM2's
    next-token distributions: a total variation of at most 1.3e-4 from the exact distribution,
    a relative error of at most 0.5 % for every token above 1e-5 (99.7 % of the mass), more for
    rarer ones. Float64 sums and uniforms would remove this for 0.2 ms more per step; they would
    also change the random stream the committed runs were drawn with.
    """
    cdf = probs.float().cumsum(-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1), 1 up to rounding
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total, even after rounding
    return torch.searchsorted(cdf, u, right=True)  # first index with cdf > u


def multinomial_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.multinomial(probs, 1)``: the same distribution as :func:`draw_tokens`, other
    random numbers, and 17–30 ms slower per 16 × 49 152 decode step on a 2-core CPU. Kept so
    the difference can be measured (``python -m ppo_lib.profiling samplers``)."""
    return torch.multinomial(probs, 1, generator=generator)


@torch.library.custom_op("ppo_lib::mkl_packed_linear", mutates_args=())
def _mkl_packed_linear(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       rows: int) -> torch.Tensor:
    """MKL's packed product as an opaque operator: what ``torch.compile`` calls inside a compiled
    decode step, since Inductor cannot lower ``mkl::_mkl_linear`` with a packed weight it did not
    make itself. Eager code calls the MKL operator directly (this wrapper costs ≈ 50 µs a call)."""
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, rows)


@_mkl_packed_linear.register_fake
def _(x, packed, weight, bias, rows):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _packed_forward(linear: nn.Linear, packed: torch.Tensor, rows: int, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or x.shape[:-1].numel() != rows:  # another shape: the plain product
        return F.linear(x, linear.weight, linear.bias)
    if torch.compiler.is_compiling():
        return _mkl_packed_linear(x, packed, linear.weight, linear.bias, rows)
    return torch.ops.mkl._mkl_linear(x, packed, linear.weight, linear.bias, rows)


def _cpu_linears(model: nn.Module) -> list[nn.Linear]:
    """The layers a decode step's product forms apply to: float32 ``nn.Linear`` on a CPU, whose
    ``forward`` is not already replaced, outside autograd and autocast (else none)."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return []
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.float32 and "forward" not in vars(m)]


def _mkl_packing() -> bool:
    """Whether this torch has MKL's packed GEMM (x86 builds)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


@contextlib.contextmanager
def packed_linears(model: nn.Module, rows: int, enabled: bool = True) -> Iterator[int]:
    """Inside the block, every float32 ``nn.Linear`` of ``model`` on a CPU multiplies inputs of
    ``rows`` rows with MKL's *packed* GEMM (chapter 07, Section 11): its weight is copied once, on
    entry, into the layout MKL's kernel reads (``cblas_sgemm_pack``), and the copy is freed on exit.

    The products are the same ones. On the 2-core CPU measured (chapter 07), a whole SmolLM2 sampling
    gave log-probs bitwise equal to the plain products' in 52 of 55 fresh processes; in the other
    three the first packed sampling of the process differed by up to 5.4e-4, with the same tokens
    (MKL does not promise bitwise-identical results from run to run). On an Intel Xeon with AVX-512
    the thin (B-row) products of a decode step ran 1.3–2.9× faster and a whole sampling 1.14×
    (median of 7 interleaved rounds); on an AMD EPYC without it a whole sampling was 0.85× as fast.
    :func:`fastest_products` measures which form is fastest on the machine at hand.
    Other input shapes, another dtype, autocast, gradients, a GPU, or a torch without MKL fall back
    to the plain product; GPT-2's blocks use ``Conv1D``, not ``nn.Linear``, so there only the LM
    head is packed. The copy is made on entry, after the last optimizer step, so it is
    never stale; do not change the weights inside the block. It costs one pass over the weights
    (≈ 0.2 s for SmolLM2 on 2 cores) and their size in memory while the block runs.

    Yields the number of layers packed (0 when nothing applies).
    """
    linears = _cpu_linears(model) if enabled and _mkl_packing() else []
    for m in linears:  # an instance attribute shadows nn.Linear.forward for this module only
        packed = torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), rows)
        m.forward = lambda x, m=m, packed=packed: _packed_forward(m, packed, rows, x)
    try:
        yield len(linears)
    finally:
        for m in linears:
            del m.forward


def _transposed_forward(linear: nn.Linear, rows: int, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or x.shape[:-1].numel() != rows:  # another shape: the plain product
        return F.linear(x, linear.weight, linear.bias)
    y = torch.mm(linear.weight, x.reshape(rows, -1).t()).t()  # (W xᵀ)ᵀ = x Wᵀ, (rows, out)
    if linear.bias is not None:
        y = y + linear.bias
    return y.contiguous().view(*x.shape[:-1], -1)


@contextlib.contextmanager
def transposed_linears(model: nn.Module, rows: int) -> Iterator[int]:
    """Inside the block, every float32 ``nn.Linear`` of ``model`` on a CPU multiplies inputs of
    ``rows`` rows as ``(W xᵀ)ᵀ`` instead of ``x Wᵀ`` (chapter 07, Section 11): the same product,
    handed to the BLAS as a tall matrix times a thin one instead of a thin one times a wide one,
    so it runs other kernels. Nothing is copied but the result, made contiguous. The sums may run
    in another order, so the results agree with the plain product's to rounding: 4.8e-7 in a
    log-prob on the tests' tiny Llama; on the AMD machine of chapter 07 a whole run of the
    ``sentiment`` preset came out bitwise the same as with the packed products.

    On the 2-core AMD EPYC without AVX-512 measured in chapter 07 this form was the fastest of
    the three, and MKL's packed one the slowest; on the Intel Xeon the packed one was faster
    than the plain one. Which wins depends on the CPU: :func:`fastest_products` measures it.
    Other shapes, dtypes, gradients, autocast or a GPU keep the plain product.

    Yields the number of layers changed (0 when nothing applies).
    """
    linears = _cpu_linears(model)
    for m in linears:  # an instance attribute shadows nn.Linear.forward for this module only
        m.forward = lambda x, m=m: _transposed_forward(m, rows, x)
    try:
        yield len(linears)
    finally:
        for m in linears:
            del m.forward


PRODUCTS = ("plain", "packed", "transposed", "auto")
_FORMS = {"plain": lambda model, rows: contextlib.nullcontext(0), "packed": packed_linears,
          "transposed": transposed_linears}
_FASTEST: dict = {}  # (weight shapes, rows, steps, threads) -> (form, {form: ms per decode step})
AUTO_MARGIN = 0.95  # "auto" leaves the plain product only for a form at least 5 % faster
log = logging.getLogger(__name__)


def fastest_products(model: nn.Module, rows: int, steps: int = 1, rounds: int = 3) -> tuple[str, dict[str, float]]:
    """Measure, on this machine, each form of the decode step's products ("plain",
    "transposed", and "packed" where MKL has it) over all the float32 CPU ``nn.Linear`` layers
    of ``model`` at ``rows`` rows, and return the fastest with the measured milliseconds per
    decode step: ``(form, {form: ms})``.

    Each form's time is one pass over the layers (after one untimed pass) plus its set-up
    (packing the weights, for "packed") shared among ``steps`` decode steps; ``rounds``
    interleaved rounds, medians. A form other than "plain" is chosen only if it is at least
    5 % faster (:data:`AUTO_MARGIN`), so close timings keep the plain product. The result is
    cached per layer shapes, rows, steps and thread count, so a process measures once (about
    3 s for SmolLM2 at 16 rows on 2 cores). The inputs come from a private generator: the
    global random stream is untouched. Without such layers (a GPU model) it returns ``("plain", {})``.
    """
    linears = _cpu_linears(model)
    if not linears:
        return "plain", {}
    key = (tuple(tuple(m.weight.shape) for m in linears), rows, steps, torch.get_num_threads())
    if key not in _FASTEST:
        g = torch.Generator().manual_seed(0)
        inputs = {m.in_features: torch.randn(rows, m.in_features, generator=g) for m in linears}
        forms = [f for f in _FORMS if f != "packed" or _mkl_packing()]
        seconds = {f: [] for f in forms}
        for r in range(rounds):
            for f in forms[r % len(forms):] + forms[: r % len(forms)]:  # rotate the order every round
                t0 = time.perf_counter()
                with _FORMS[f](model, rows):
                    t_setup = time.perf_counter() - t0
                    for m in linears:  # untimed: the first call of a kernel
                        m(inputs[m.in_features])
                    t1 = time.perf_counter()
                    for m in linears:
                        m(inputs[m.in_features])
                    seconds[f].append(time.perf_counter() - t1 + t_setup / steps)
        ms = {f: statistics.median(s) * 1e3 for f, s in seconds.items()}
        _FASTEST[key] = _choose(ms), ms
        log.info("decode-step products at %d rows: %s (ms per step: %s)", rows, _FASTEST[key][0],
                 ", ".join(f"{f} {t:.1f}" for f, t in ms.items()))
    return _FASTEST[key]


def _choose(ms: dict[str, float]) -> str:
    """The fastest form in ``ms`` (form -> time), unless it beats "plain" by less than 5 %."""
    best = min(ms, key=ms.get)
    return "plain" if ms[best] > AUTO_MARGIN * ms["plain"] else best


@contextlib.contextmanager
def decode_products(model: nn.Module, rows: int, products: str = "packed", steps: int = 1) -> Iterator[str]:
    """Run the block with the decode step's products in the form ``products`` (:data:`PRODUCTS`):
    "plain" (``F.linear``), "packed" (:func:`packed_linears`), "transposed"
    (:func:`transposed_linears`) or "auto" (the one :func:`fastest_products` measures fastest
    here, for ``steps`` decode steps per block). All compute the same products, up to rounding;
    each leaves what it cannot speed up (a GPU, other dtypes, gradients) to the plain product.
    Yields the form used.
    """
    if products not in PRODUCTS:
        raise ValueError(f"products must be one of {PRODUCTS}, got {products!r}.")
    if products == "auto":
        products = fastest_products(model, rows, steps)[0]
    with _FORMS[products](model, rows):
        yield products


def truncate_after_eos(response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int):
    """Cut each row after its first EOS: returns ``(response_ids, response_mask)``, ``(B, T)``.

    The EOS itself stays (mask True: the policy chose to stop, and that choice is rewarded);
    everything after it becomes ``pad_token_id`` with mask False.
    """
    is_eos = response_ids == eos_token_id  # (B, T)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = ~after_eos
    return response_ids.masked_fill(after_eos, pad_token_id), mask


def _kv_cache(lm: nn.Module):
    """An empty KV cache and the keyword it is passed by (transformers ≥ 5.2x renamed
    ``past_key_values`` to ``cache``; both spellings are supported)."""
    from transformers import DynamicCache

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # unwrap a peft model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return name, DynamicCache(config=base.config)


@torch.no_grad()
def sample(
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
    draw: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = draw_tokens,
    products: str = "packed",
) -> Rollout:
    """Sample responses token by token with a KV cache.

    Args:
        model: a causal LM or an :class:`~ppo_lib.models.ActorCritic` (its LM is used).
        tokenizer: gives ``eos_token_id`` and ``pad_token_id``.
        prompt_ids, prompt_mask: ``(B, P)`` from :func:`tokenize_prompts`.
        max_new_tokens: T, the most tokens a response may have.
        temperature: τ > 0; the same τ must be used for log-probs (:func:`forward_response`).
        top_k, top_p: filtering; 0 and 1.0 (the defaults) sample from the full softmax,
            the only setting under which the log-probs are those of the sampling policy.
        stop_at_eos: cut responses after their first EOS; False keeps exactly T tokens.
        generator: a seeded ``torch.Generator`` on the model's device, for reproducibility.
        return_logprobs: also keep ``log softmax(logits / τ)`` of each sampled token (unfiltered,
            as :func:`forward_response` computes it) in ``Rollout.old_logprobs`` and, when ``model``
            is an ActorCritic with a shared value head, V(s_t) in ``Rollout.old_values``.
        draw: ``(probs (B, V), generator) -> tokens (B, 1)``; :func:`draw_tokens` (one uniform
            number per row) or :func:`multinomial_tokens`.
        products: on a CPU, the form of the decode steps' linear products
            (:func:`decode_products`): "packed" (MKL's packed GEMM, :func:`packed_linears`),
            "transposed" (:func:`transposed_linears`), "plain", or "auto" (the fastest here,
            measured once per process). The same products up to rounding; only the speed differs.

    Returns:
        A :class:`Rollout`. T shrinks to the longest response when every row stopped early.
    """
    lm = model.lm if isinstance(model, ActorCritic) else model
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    attention_mask = prompt_mask.long()
    input_ids = prompt_ids
    cache_kwarg, cache = _kv_cache(lm)  # filled in place by every forward call
    position_ids = position_ids_from_mask(attention_mask)
    shared_head = return_logprobs and isinstance(model, ActorCritic) and model.critic is None
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens, logprobs, values = [], [], []
    with decode_products(lm, prompt_ids.shape[0], products, max_new_tokens):  # the same products, faster on a CPU
        for _ in range(max_new_tokens):
            # logits_to_keep=1: the prompt's pass computes logits for its last column only
            out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1,
                     use_cache=True, output_hidden_states=shared_head, **{cache_kwarg: cache})
            scaled = out.logits[:, -1, :].float() / temperature  # (B, V)
            next_token = draw(_filter_logits(scaled, top_k, top_p).softmax(-1), generator)  # (B, 1)
            tokens.append(next_token)
            if return_logprobs:
                logprobs.append(scaled.log_softmax(-1).gather(-1, next_token))  # (B, 1)
            if shared_head:
                values.append(model.value_head(out.hidden_states[-1][:, -1:]))  # (B, 1): V(s_t), before token t
            if stop_at_eos:
                done |= next_token.squeeze(1) == eos
                if bool(done.all()):  # CPU-GPU sync once per token: stop when every row has ended
                    break
            input_ids = next_token
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
            position_ids = position_ids[:, -1:] + 1
    response_ids = torch.cat(tokens, dim=1)  # (B, T)
    if stop_at_eos:
        response_ids, response_mask = truncate_after_eos(response_ids, eos, pad)
    else:
        response_mask = torch.ones_like(response_ids, dtype=torch.bool)
    return Rollout(prompt_ids, prompt_mask.bool(), response_ids, response_mask,
                   torch.cat(logprobs, dim=1) if logprobs else None,
                   torch.cat(values, dim=1).float() if values else None)


def forward_response(model: nn.Module, batch: Rollout, temperature: float = 1.0, return_logits: bool = False):
    """Log-probs (and values) of the response tokens of ``batch`` in one forward pass.

    The logits that predict response token t sit at column ``P + t - 1``, so only the last
    ``T + 1`` columns are computed and the final one is dropped.

    Args:
        model: an :class:`~ppo_lib.models.ActorCritic` (log-probs and values), possibly
            wrapped by Accelerate/DDP, or a plain causal LM such as the reference
            (log-probs only; values are None).
        batch: a :class:`Rollout`.
        temperature: τ used when sampling.
        return_logits: also return the ``(B, T, V)`` logits (for the entropy).

    Returns:
        ``(logprobs, values)`` or ``(logprobs, values, logits)``; ``logprobs`` and
        ``values`` are ``(B, T)``, float32. Values at padded positions are not meaningful;
        every consumer masks them.
    """
    T = batch.response_ids.shape[1]
    attention_mask = batch.attention_mask
    out = model(input_ids=batch.input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), logits_to_keep=T + 1, use_cache=False)
    if isinstance(out, tuple):  # ActorCritic: (logits, values)
        logits, values = out
        values = values[:, :-1].float()  # (B, T): V(s_t), the state before response token t
    else:  # a causal LM's output
        logits, values = out.logits, None
    logits = logits[:, :-1]  # (B, T, V)
    logprobs = logprobs_from_logits(logits, batch.response_ids, temperature)
    return (logprobs, values, logits) if return_logits else (logprobs, values)


@torch.no_grad()
def critic_values(model: ActorCritic, batch: Rollout) -> torch.Tensor:
    """V(s_t) ``(B, T)`` from a separate critic's backbone alone, without the LM's forward pass."""
    if model.critic is None:
        raise ValueError("critic_values needs an ActorCritic with a separate critic; a shared value head "
                         "gets its values from forward_response or sample(..., return_logprobs=True).")
    T = batch.response_ids.shape[1]
    attention_mask = batch.attention_mask
    hidden = model.critic(input_ids=batch.input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    return model.value_head(hidden[:, -(T + 1):-1]).float()  # (B, T)


@torch.no_grad()
def token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of every token given the ones before it: ``(B, L) -> (B, L-1)`` (chapter 01).

    ``out[:, i] = log π(x_{i+1} | x_0..x_i)``; summing over a response's positions gives the
    sequence log-probability, Eq. (1.2) of chapter 01. Padding positions are not meaningful.
    """
    lm = model.lm if isinstance(model, ActorCritic) else model
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    logits = lm(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits  # (B, L, V)
    return logprobs_from_logits(logits[:, :-1], input_ids[:, 1:], temperature)
