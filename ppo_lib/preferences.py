"""Preference pairs: the JSONL format, validated, and how chapter 08 makes them (chapters 08, 09).

One pair per line, with the field names TRL and most preference datasets use::

    {"prompt": "The film was", "chosen": " a delight from start to end.", "rejected": " dull."}

Other fields are kept (chapter 08 stores the gold scores of both responses), so a file written
by :func:`write_pairs` reads back equal. Every record is checked when it is read or written:
the three fields are present and are strings, the responses are not empty and not identical
(a pair that prefers a response to itself carries no information, and a reward model or DPO
would learn nothing from it). An error names the file and the line.

:func:`make_pairs` builds the synthetic data of Gao, Schulman & Hilton (2022): two sampled
continuations per prompt, labelled by a *gold* reward g with Bradley–Terry noise,

    P(a preferred to b) = σ((g(a) − g(b)) / τ),

so that τ → 0 gives noiseless labels and a larger τ noisier ones. :func:`noise_ceiling` is the
best accuracy any model can reach on such labels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

__all__ = [
    "FIELDS",
    "PreferenceDataError",
    "check_pair",
    "read_pairs",
    "write_pairs",
    "bradley_terry_labels",
    "noise_ceiling",
    "make_pairs",
]

FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(ValueError):
    """A preference pair or file that cannot be used; the message says where and what to change."""


def check_pair(pair: dict, where: str = "pair") -> dict:
    """Check one record and return it; ``where`` names it in the error (e.g. ``"pairs.jsonl line 3"``)."""
    if not isinstance(pair, dict):
        raise PreferenceDataError(f"{where}: expected a JSON object with fields {FIELDS}, got {type(pair).__name__}.")
    missing = [f for f in FIELDS if f not in pair]
    if missing:
        raise PreferenceDataError(f"{where}: missing field(s) {missing}; every pair needs {FIELDS}.")
    for f in FIELDS:
        if not isinstance(pair[f], str):
            raise PreferenceDataError(f"{where}: field {f!r} must be a string, got {type(pair[f]).__name__}.")
    for f in ("chosen", "rejected"):
        if not pair[f].strip():
            raise PreferenceDataError(f"{where}: the {f!r} response is empty; drop the pair or fill it in.")
    if pair["chosen"] == pair["rejected"]:
        raise PreferenceDataError(f"{where}: 'chosen' and 'rejected' are identical ({pair['chosen'][:40]!r}); "
                                  f"such a pair carries no preference, drop it.")
    return pair


def read_pairs(path: str | Path) -> list[dict]:
    """Read a JSONL file of pairs; blank lines are skipped. Raises :class:`PreferenceDataError`
    naming the line of the first bad record (invalid JSON, a missing field, an empty or
    duplicated response), and on a file with no pair at all."""
    path = Path(path)
    pairs = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PreferenceDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
            pairs.append(check_pair(record, where))
    if not pairs:
        raise PreferenceDataError(f"{path}: no preference pairs in the file.")
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[dict]) -> Path:
    """Check every pair, then write them as JSONL; the file appears whole or not at all."""
    path = Path(path)
    pairs = [check_pair(p, f"pair {i}") for i, p in enumerate(pairs)]
    if not pairs:
        raise PreferenceDataError("no pairs to write.")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for p in pairs:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def bradley_terry_labels(gold_a: torch.Tensor, gold_b: torch.Tensor, tau: float,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample labels ``a preferred to b`` ~ Bernoulli(σ((g_a − g_b)/τ)); τ = 0 gives the
    noiseless ``g_a > g_b`` (ties broken by a fair coin). Returns a bool tensor."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number ≥ 0 (the label noise), got {tau!r}.")
    diff = gold_a.double() - gold_b.double()
    p = torch.sigmoid(diff / tau) if tau > 0 else (diff > 0).double() + 0.5 * (diff == 0).double()
    return torch.rand(p.shape, generator=generator, dtype=torch.float64) < p


def noise_ceiling(gold_a: torch.Tensor, gold_b: torch.Tensor, tau: float) -> float:
    """The best expected accuracy of any predictor of Bradley–Terry labels with noise τ:
    predict the gold's preferred response and be right with probability σ(|g_a − g_b|/τ)."""
    if tau == 0:
        return 1.0 - 0.5 * float((gold_a == gold_b).double().mean())
    return float(torch.sigmoid((gold_a.double() - gold_b.double()).abs() / tau).mean())


def make_pairs(policy, tokenizer, prompts: Sequence[str], gold: Callable, *, tau: float, max_new_tokens: int = 24,
               temperature: float = 1.0, batch_size: int = 32, seed: int = 0,
               max_prompt_length: int | None = None) -> list[dict]:
    """Two sampled continuations of each prompt, labelled by ``gold`` with Bradley–Terry noise τ.

    Pairs whose responses are empty or identical after decoding are dropped (:func:`check_pair`
    would refuse them), so the result can be shorter than ``prompts``. Each record has the
    three fields plus ``gold_chosen`` and ``gold_rejected``. Deterministic for a given seed,
    model and batch size.
    """
    from .rewards import score
    from .rollout import sample, tokenize_prompts

    device = next(policy.parameters()).device
    g_sample = torch.Generator(device=device).manual_seed(seed)
    g_label = torch.Generator().manual_seed(seed + 1)
    pairs = []
    was_training = policy.training
    policy.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i: i + batch_size])
            ids, mask = tokenize_prompts(tokenizer, chunk + chunk, max_prompt_length, device)
            with torch.no_grad():
                batch = sample(policy, tokenizer, ids, mask, max_new_tokens, temperature, generator=g_sample)
            texts = [tokenizer.decode(r[m], skip_special_tokens=True)
                     for r, m in zip(batch.response_ids, batch.response_mask)]
            a, b = texts[: len(chunk)], texts[len(chunk):]
            ga, gb = score(gold, chunk, a), score(gold, chunk, b)
            a_wins = bradley_terry_labels(ga, gb, tau, g_label)
            for p, ta, tb, sa, sb, w in zip(chunk, a, b, ga.tolist(), gb.tolist(), a_wins.tolist()):
                if not ta.strip() or not tb.strip() or ta == tb:
                    continue
                chosen, rejected, g_c, g_r = (ta, tb, sa, sb) if w else (tb, ta, sb, sa)
                pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected,
                              "gold_chosen": g_c, "gold_rejected": g_r})
    finally:
        policy.train(was_training)
    return pairs
