r"""Where the memory of RLHF goes, predicted from parameter counts and shapes (chapter 07).

RLHF with PPO holds up to four models: the policy, the reference, the value model and the
reward model. Each costs its **weights**; the ones that train also cost **gradients** and
Adam's two **moments**; every forward pass with gradients keeps **activations**, and sampling
keeps a **KV cache**. All but the activations follow exactly from shapes:

=================  ===============================================================
item               bytes
=================  ===============================================================
weights            :math:`\sum_p n_p \cdot s_p` (tied tensors once; :math:`s` bytes per element)
gradients          :math:`\sum_{p\ \text{trainable}} n_p \cdot s_p`
Adam moments       :math:`2 \sum_{p\ \text{trainable}} n_p \cdot 4` (``m`` and ``v`` in float32)
KV cache           :math:`2 \cdot n_{layer} \cdot B \cdot L \cdot n_{kv} \cdot d_{head} \cdot s`
logits             :math:`B \cdot (T + 1) \cdot V \cdot 4`, the float32 logits of one training pass
=================  ===============================================================

The other activations depend on the implementation (attention kernel, checkpointing); the
chapter measures them rather than predicts them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["parameter_bytes", "kv_cache_bytes", "logits_bytes", "model_memory"]


def parameter_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of ``model``'s parameters; a tensor shared by several modules (tied embeddings) counts once."""
    seen, total = set(), 0
    for p in model.parameters():  # .parameters() already yields a shared tensor once
        if (trainable_only and not p.requires_grad) or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def _text_config(model: nn.Module):
    return getattr(model, "config", None) or getattr(getattr(model, "lm", None), "config", None)


def kv_cache_bytes(model: nn.Module, batch_size: int, seq_len: int, bytes_per_element: int = 4) -> int:
    """Keys and values of every layer for ``batch_size`` sequences of ``seq_len`` tokens (prompt + response)."""
    cfg = _text_config(model)
    n_layer = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    n_head = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head  # grouped-query attention keeps fewer
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_head
    return 2 * n_layer * batch_size * seq_len * n_kv * head_dim * bytes_per_element


def logits_bytes(model: nn.Module, batch_size: int, response_len: int) -> int:
    """The float32 ``(B, T + 1, V)`` logits of one training forward pass over the responses."""
    return batch_size * (response_len + 1) * _text_config(model).vocab_size * 4


def model_memory(model: nn.Module, *, trains: bool, batch_size: int, prompt_len: int, response_len: int,
                 samples: bool = False) -> dict[str, int]:
    """Predicted bytes of one of RLHF's models, by item (see the module table).

    Args:
        model: the model (an ``ActorCritic``, an LM, a reward model).
        trains: it receives gradients and has an Adam state (policy, value model).
        batch_size, prompt_len, response_len: B, P and T of one (micro-)batch.
        samples: it generates the responses, so it holds a KV cache (the policy).
    """
    out = {"weights": parameter_bytes(model)}
    if trains:
        trainable = parameter_bytes(model, trainable_only=True)
        out["gradients"] = trainable
        out["adam_moments"] = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
        out["logits"] = logits_bytes(model, batch_size, response_len)
    if samples:
        out["kv_cache"] = kv_cache_bytes(model, batch_size, prompt_len + response_len)
    out["total"] = sum(out.values())
    return out
