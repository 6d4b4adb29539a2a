r"""Chapter 01 (a language model is a policy): temperature and entropy, KL estimators.

Both figures use the next-token distribution of the offline model (SmolLM2-135M-Instruct)
after one prompt, :math:`\pi(\cdot\,|\,s_0) = \mathrm{softmax}(z/\tau)` with the logits
:math:`z \in \mathbb{R}^V` of one forward pass (about a second on a CPU, after a load of
a few seconds).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..kl import kl_estimate
from ..losses import entropy_from_logits
from . import figure

__all__ = ["PROMPT", "next_token_logits", "decode", "temperature_entropy", "kl_estimators"]

PROMPT = "This movie was"


@lru_cache(maxsize=1)
def _model(model_name: str = "smollm2-135m"):
    from ..models import load_model

    return load_model(model_name)


@lru_cache(maxsize=4)
def next_token_logits(prompt: str = PROMPT) -> torch.Tensor:
    """Logits ``(V,)`` (float64) of the offline model for the token after ``prompt``."""
    model, tok = _model()
    ids = tok(prompt, return_tensors="pt")["input_ids"]  # (1, P)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]  # (V,)
    return logits.double()


def decode(ids) -> list[str]:
    """Each token id as its own string, e.g. ``' a'``."""
    _, tok = _model()
    return [tok.decode([int(i)]) for i in ids]


@figure("01_temperature_entropy")
def temperature_entropy(prompt: str = PROMPT, taus=(0.5, 1.0, 2.0), top: int = 8):
    """Entropy of softmax(z / τ) against τ, and the top tokens at a few temperatures."""
    import matplotlib.pyplot as plt

    z = next_token_logits(prompt)
    grid = torch.logspace(-1.5, 1.5, 121, dtype=torch.float64)
    H = entropy_from_logits(z[None, :] / grid[:, None])  # (121,)
    logV = float(torch.log(torch.tensor(float(z.shape[0]))))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(grid, H, color="C0")
    ax1.axhline(logV, color="k", ls="--", lw=1, label=f"log V = {logV:.2f} nats (uniform)")
    for tau in taus:
        h = float(entropy_from_logits(z / tau))
        ax1.plot([tau], [h], "o", label=f"τ = {tau}: H = {h:.2f} nats")
    ax1.set(xscale="log", xlabel="temperature τ", ylabel="entropy H(π_τ) [nats]",
            title=f"Entropy of the next token after “{prompt}”")
    ax1.legend(loc="upper left")
    order = torch.argsort(z, descending=True)[:top]
    width = 0.8 / len(taus)
    labels = [repr(t) for t in decode(order)]
    for i, tau in enumerate(taus):
        p = torch.softmax(z / tau, dim=-1)[order]
        ax2.bar((torch.arange(top) + (i - (len(taus) - 1) / 2) * width).numpy(), p.numpy(), width, label=f"τ = {tau}")
    ax2.set_xticks(range(top), labels, rotation=45, ha="right")
    ax2.set(ylabel="probability", title=f"Top {top} tokens at three temperatures")
    ax2.legend()
    fig.tight_layout()
    return fig


@figure("01_kl_estimators")
def kl_estimators(prompt: str = PROMPT, taus=None):
    r"""Bias and spread of the one-token KL estimators k1, k2, k3 of KL(π_τ ‖ π_1), computed exactly.

    For each policy temperature τ, the expectation and standard deviation of each estimator
    under :math:`a \sim \pi_\tau` are sums over the whole vocabulary: no sampling.
    """
    import matplotlib.pyplot as plt

    z = next_token_logits(prompt)
    taus = torch.linspace(0.5, 1.6, 45, dtype=torch.float64) if taus is None else torch.as_tensor(taus, dtype=torch.float64)
    logq = torch.log_softmax(z, -1)[None]  # (1, V) the reference π_1
    logp = torch.log_softmax(z[None] / taus[:, None], -1)  # (n_tau, V) the policies π_τ
    p = logp.exp()
    exact = (p * (logp - logq)).sum(-1)  # (n_tau,)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(taus, exact, "k--", lw=2, label="exact KL")
    for kind, color in zip(("k1", "k2", "k3"), ("C3", "C2", "C0")):
        k = kl_estimate(logp, logq.expand_as(logp), kind)  # (n_tau, V): the estimate if token v is drawn
        mean = (p * k).sum(-1)
        std = ((p * (k - mean[:, None]) ** 2).sum(-1)).sqrt()
        ax1.plot(taus, mean, color=color, lw=1.5, label=f"E[{kind}]")
        ax2.plot(taus, std, color=color, lw=1.5, label=kind)
    ax1.set(xlabel="policy temperature τ (reference: τ = 1)", ylabel="nats",
            title=f"Expected estimate vs exact KL(π_τ ‖ π_1), after “{prompt}”")
    ax1.legend()
    ax2.set(xlabel="policy temperature τ", ylabel="std of one token's estimate [nats]", yscale="log",
            title="Spread of a single-token estimate")
    ax2.legend()
    fig.tight_layout()
    return fig
