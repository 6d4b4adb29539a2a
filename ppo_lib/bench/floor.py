"""The raw-compute floor of one ppo_lib mode (chapter 07): the model operations of a PPO
update on the workload's shapes, written inline with no library logic.

A library cannot be faster than the operations it has to run; what it spends beyond them
is its overhead, the report's "overhead over floor". One update of the floor, in order:

1. generate: a KV-cache sampling loop of T steps at temperature τ that keeps log π_old
   (and, with a shared value head, V_old from the same passes);
2. old forward: a no-grad forward pass of the separate critic (the other modes have V_old);
3. reference forward: the frozen copy, or the base model with the adapter disabled (LoRA);
4. score: VADER of the decoded responses;
5. K epochs × M minibatches of: training forward with the clipped policy and value
   losses, backward, one fused AdamW step.

Between 4 and 5, the per-token KL penalty and the advantages are computed on the same
shapes as the library's, with a reverse cumulative sum standing in for GAE: it costs the
same (nothing, next to the model), and γ and λ do not change that cost.

Every setting comes from the :class:`~ppo_lib.bench.workload.Workload`: a test checks that
no number in this file repeats one of its values, and :func:`run` reports what it ran with,
read back from its tensors, optimizer and adapters.
"""

from __future__ import annotations

import time

from .workload import MODES, Workload, bench_prompts

__all__ = ["run"]


def run(workload: Workload, mode: str) -> dict:
    """Time ``workload.floor_updates`` floor updates of ``mode`` (one of :data:`MODES`) on the CPU.

    Returns ``{"per_update": [{phase: seconds, ..., "total": s}, ...], "load_s": …,
    "trainable_params": …, "optimizer": …, "settings": {…}}``, where ``settings`` holds the
    sizes and hyperparameters the floor ran with, read back from what it built.
    """
    import copy
    import inspect

    import torch
    import torch.nn.functional as F
    from transformers import DynamicCache

    from ..models import load_model
    from ..rewards import vader_sentiment

    w = workload
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}.")
    if w.device != "cpu":
        raise ValueError(f"the floors are written for the CPU in float32, not device={w.device!r}; "
                         "run them with a CPU workload (python -m ppo_lib bench leaves them out on a GPU).")
    torch.manual_seed(w.seed)  # the value head's initialisation
    t0 = time.perf_counter()
    lm, tok = load_model(w.model)
    if tok.pad_token != w.pad_token:
        raise RuntimeError(f"{w.model}'s tokenizer pads with {tok.pad_token!r}, but the workload (and so the TRL "
                           f"side) pads with {w.pad_token!r}: set Workload.pad_token to {tok.pad_token!r}.")
    if mode == "lora":  # the LoRA mode checkpoints activations (bench_config)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    B, T, tau = w.batch_size, w.response_length, w.temperature
    eps, eps_v = w.clip_eps, w.vf_clip_eps
    minibatch = B // w.num_minibatches
    critic = copy.deepcopy(lm.base_model) if mode == "separate" else None  # a second backbone, TRL's design
    head = torch.nn.Linear(lm.config.hidden_size, 1)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=w.lora_rank, lora_alpha=w.lora_alpha, target_modules="all-linear",
                                           lora_dropout=0.0, bias="none"))
        ref = None  # the base model with the adapter disabled
    else:
        ref = copy.deepcopy(lm).eval().requires_grad_(False)
    params = [p for p in lm.parameters() if p.requires_grad] + list(head.parameters())
    if critic is not None:
        params += list(critic.parameters())
    opt = torch.optim.AdamW(params, lr=w.learning_rate, weight_decay=w.weight_decay, fused=True)
    load_s = time.perf_counter() - t0
    base = lm.get_base_model() if mode == "lora" else lm
    cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    prompts = bench_prompts(w)
    gen = torch.Generator().manual_seed(w.seed)
    tok.padding_side = "left"

    per_update, steps = [], 0
    for u in range(w.floor_updates):
        times = dict.fromkeys(("generate", "old_forward", "ref_forward", "score", "train_forward", "backward",
                               "optimizer"), 0.0)
        batch = [prompts[(u * B + i) % len(prompts)] for i in range(B)]  # the prompts in order, cycling
        t_start = time.perf_counter()
        enc = tok(batch, return_tensors="pt", padding=True)
        ids, am = enc["input_ids"], enc["attention_mask"]  # (B, P)

        # 1 generate: a KV-cache sampling loop that keeps log π_old (and a shared head's values)
        t = time.perf_counter()
        lm.eval()
        with torch.no_grad():
            cache, x, mask = DynamicCache(config=base.config), ids, am
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            new, old_lp, old_v = [], [], []
            for _ in range(T):
                out = lm(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=True,
                         output_hidden_states=critic is None, **{cache_kw: cache})
                logp = F.log_softmax(out.logits[:, -1] / tau, -1)  # (B, V)
                x = torch.multinomial(logp.exp(), 1, generator=gen)  # (B, 1)
                new.append(x)
                old_lp.append(logp.gather(-1, x))
                if critic is None:
                    old_v.append(head(out.hidden_states[-1][:, -1:]).squeeze(-1))  # V of the last position, (B, 1)
                mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
                pos = pos[:, -1:] + 1
        times["generate"] += time.perf_counter() - t
        resp, old_lp = torch.cat(new, 1), torch.cat(old_lp, 1)  # (B, T)
        full, fam = torch.cat([ids, resp], 1), mask  # (B, L)
        fpos = (fam.cumsum(-1) - 1).clamp(min=0)

        def logprobs(model, rows=slice(None)):
            """log π(response) of ``rows`` under ``model``, (b, T), and the model's output."""
            out = model(input_ids=full[rows], attention_mask=fam[rows], position_ids=fpos[rows], logits_to_keep=T + 1,
                        use_cache=False, output_hidden_states=critic is None and model is lm)
            lp = F.log_softmax(out.logits[:, :-1] / tau, -1).gather(-1, resp[rows, :, None]).squeeze(-1)
            return lp, out

        def values(rows, out):
            """V of ``rows``' response tokens, (b, T): the critic's own pass, or the head on the policy's states."""
            hidden = out.hidden_states[-1] if critic is None else critic(
                input_ids=full[rows], attention_mask=fam[rows], position_ids=fpos[rows]).last_hidden_state
            return head(hidden[:, -(T + 1):-1]).squeeze(-1)

        # 2 old forward: only a separate critic needs a pass of its own
        t = time.perf_counter()
        with torch.no_grad():
            old_v = values(slice(None), None) if critic is not None else torch.cat(old_v, 1)  # (B, T)
        times["old_forward"] += time.perf_counter() - t

        # 3 reference forward
        t = time.perf_counter()
        with torch.no_grad():
            if ref is None:
                with lm.disable_adapter():
                    ref_lp, _ = logprobs(lm)
            else:
                ref_lp, _ = logprobs(ref)
        times["ref_forward"] += time.perf_counter() - t

        # 4 score
        t = time.perf_counter()
        scores = torch.tensor(vader_sentiment(batch, tok.batch_decode(resp, skip_special_tokens=True)))  # (B,)
        times["score"] += time.perf_counter() - t

        # KL penalty per token, the score on the last one; a reverse cumsum stands in for GAE
        log_ratio = old_lp - ref_lp  # log π_old / π_ref, (B, T)
        kl = log_ratio if w.kl_estimator == "k1" else (-log_ratio).exp() - 1 + log_ratio  # k3
        rewards = -w.kl_coef * kl
        rewards[:, -1] += scores
        adv = rewards.flip(1).cumsum(1).flip(1) - old_v  # same shapes as GAE, negligible cost
        ret = adv + old_v
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # whitened over the batch, as on every side

        # 5 K epochs × M minibatches: forward with the losses, backward, optimizer step
        for _ in range(w.ppo_epochs):
            for start in range(0, B, minibatch):
                rows = slice(start, start + minibatch)  # contiguous minibatches cost what shuffled ones do
                t = time.perf_counter()
                lm.train()  # (activation checkpointing acts in train mode only; the model has no dropout)
                lp, out = logprobs(lm, rows)
                v = values(rows, out)
                ratio = (lp - old_lp[rows]).exp()
                pg = torch.max(-adv[rows] * ratio, -adv[rows] * ratio.clamp(1 - eps, 1 + eps)).mean()
                v_clipped = old_v[rows] + (v - old_v[rows]).clamp(-eps_v, eps_v)
                vf = 0.5 * torch.max((v - ret[rows]).square(), (v_clipped - ret[rows]).square()).mean()
                loss = pg + w.vf_coef * vf
                times["train_forward"] += time.perf_counter() - t
                t = time.perf_counter()
                loss.backward()
                times["backward"] += time.perf_counter() - t
                t = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times["optimizer"] += time.perf_counter() - t
                steps += 1
        times["total"] = time.perf_counter() - t_start
        per_update.append(times)

    group = opt.param_groups[0]
    settings = {"batch_size": resp.shape[0], "response_length": resp.shape[1], "n_prompts": len(prompts),
                "optimizer_steps_per_update": steps // w.floor_updates, "learning_rate": group["lr"],
                "weight_decay": group["weight_decay"]}
    if mode == "lora":
        lora = lm.peft_config["default"]
        settings.update(lora_rank=lora.r, lora_alpha=lora.lora_alpha)
    return {"per_update": per_update, "load_s": load_s, "trainable_params": sum(p.numel() for p in params),
            "optimizer": "torch.optim.AdamW(fused=True), no grad clip", "settings": settings}
