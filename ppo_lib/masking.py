"""Masked reductions over response tokens: the only place token statistics are computed.

Every token-level statistic in ``ppo_lib`` (a loss, a KL, a whitened advantage) goes
through these four functions, so that the one mask convention of the book holds
everywhere (chapter 04, "Token-level GAE"):

* ``mask`` has the shape of ``x`` (usually ``(B, T)``) and is True on real response
  tokens, including the EOS, and False on padding;
* padded positions never change a result, whatever value they hold;
* an all-False mask is a ``ValueError``, never a silent ``nan`` from ``0 / 0``.

Modelled on TRL's ``masked_mean``/``masked_whiten`` helpers, with the empty-mask case
made an error instead of a NaN.
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "check_mask"]


def check_mask(x: torch.Tensor, mask: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Check that ``mask`` has the shape of ``x`` and return it as ``x``'s dtype (0./1.).

    Raises:
        ValueError: if the shapes differ.
    """
    if mask.shape != x.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but {name} has shape {tuple(x.shape)}; "
            "pass the response_mask that came with these tokens (same (B, T) shape)."
        )
    return mask.to(x.dtype)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is True.

    Args:
        x: values, any shape, e.g. ``(B, T)``.
        mask: bool or 0/1 tensor of the same shape.
        dim: reduce over this dimension only; ``None`` reduces over everything.

    Returns:
        A scalar, or ``x`` with ``dim`` removed.
    """
    m = check_mask(x, mask)
    # where() rather than x * m, so that inf or nan on padding cannot leak in (0 * inf = nan).
    xm = torch.where(m.bool(), x, torch.zeros_like(x))
    return xm.sum() if dim is None else xm.sum(dim)


def _count(mask: torch.Tensor, dim: int | None, what: str) -> torch.Tensor:
    n = mask.sum() if dim is None else mask.sum(dim)
    if bool((n == 0).any()):  # CPU-GPU sync: the price of a clear error instead of a NaN
        raise ValueError(
            f"{what} over an empty mask: no position is True"
            + ("" if dim is None else f" in some slice along dim={dim}")
            + ". Every sequence needs at least one real response token (its EOS counts)."
        )
    return n


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True: ``Σ m·x / Σ m``.

    Equal to ``x[mask].mean()`` (tested), but works along one dimension as well.

    Args:
        x: values, e.g. ``(B, T)``.
        mask: same shape, True on real tokens.
        dim: reduce over this dimension only (e.g. ``dim=1`` for a per-sequence mean).

    Raises:
        ValueError: if the mask is empty (in any slice, when ``dim`` is given).
    """
    m = check_mask(x, mask)
    return masked_sum(x, m, dim) / _count(m, dim, "masked_mean")


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x``, over all of them (a scalar).

    ``unbiased=True`` divides by ``n - 1`` (Bessel's correction), as ``torch.var`` does.

    Raises:
        ValueError: if the mask is empty, or holds a single entry with ``unbiased=True``.
    """
    m = check_mask(x, mask)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        if bool(n < 2):  # CPU-GPU sync
            raise ValueError("masked_var(unbiased=True) needs at least two masked entries.")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise the masked entries of ``x`` to mean 0 and variance 1; padding is set to 0.

    ``(x - mean) / sqrt(var + eps)``, mean and (unbiased) variance taken over the masked
    entries of the whole batch. With ``shift_mean=False`` the mean is added back, so only
    the scale changes (used for reward whitening, where the sign of a reward matters).

    Args:
        x: e.g. advantages ``(B, T)``.
        mask: same shape.
        shift_mean: subtract the mean (True for advantages).
        eps: added to the variance; keeps a constant input finite.

    Returns:
        Tensor of ``x``'s shape, 0 where ``mask`` is False.
    """
    m = check_mask(x, mask)
    mean, var = masked_mean(x, m), masked_var(x, m)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m.bool(), whitened, torch.zeros_like(whitened))
