r"""Direct Preference Optimization: the KL-regularised RL objective solved in closed form (chapter 09).

The objective of chapter 06, :math:`\max_\pi \mathbb E_{y\sim\pi}[r(x,y)] - \beta\,\mathrm{KL}(\pi\|\pi_{ref})`,
has the maximiser (Eq. 9.8 of chapter 09)

.. math:: \pi^*(y|x) = \frac{1}{Z(x)}\,\pi_{ref}(y|x)\,\exp(r(x,y)/\beta),

so :math:`r(x,y) = \beta\log\frac{\pi^*(y|x)}{\pi_{ref}(y|x)} + \beta\log Z(x)`. In a Bradley–Terry
model of preferences the :math:`\log Z(x)` cancels between two responses of one prompt, and the
likelihood of a preference pair :math:`(y_w \succ y_l)` becomes a loss on the policy alone
(Rafailov et al. 2023, Eq. 7):

.. math:: \mathcal L_{DPO} = -\log\sigma\Big(\beta\big[\log\tfrac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)}
          - \log\tfrac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)}\big]\Big).

:math:`\hat r(x,y) = \beta\log\frac{\pi_\theta(y|x)}{\pi_{ref}(y|x)}` is the *implicit reward*.
At initialisation (:math:`\pi_\theta = \pi_{ref}`) the loss is :math:`\log 2` for every pair.

* :func:`dpo_loss` is the pure, torch-only loss on sequence log-probs ``(B,)``.
* :func:`sequence_logprobs` computes :math:`\log\pi(y|x)` of prompt + response with the rollout's
  tokenisation and forward pass (:func:`ppo_lib.rollout.forward_response`), the prompt masked.
* :func:`train_dpo` is a small offline loop over preference pairs (:mod:`ppo_lib.preferences`),
  the reference frozen.

References:
    Rafailov et al. (2023), "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", arXiv:2305.18290.
    TRL, ``DPOTrainer`` (``loss_type="sigmoid"``): the same loss and the same statistics' names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .masking import masked_sum
from .rollout import Rollout, forward_response, tokenize_prompts

__all__ = ["dpo_loss", "tokenize_pairs", "sequence_logprobs", "DPOConfig", "train_dpo"]


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The DPO loss, Eq. (9.11) of chapter 09 (Rafailov et al. 2023, Eq. 7), averaged over pairs.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` :math:`\log\pi_\theta(y|x)` of the
            chosen (:math:`y_w`) and rejected (:math:`y_l`) responses, with gradient.
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` the same under :math:`\pi_{ref}` (constants).
        beta: β > 0, the KL coefficient of the objective DPO solves. 0.01–0.5.

    Returns:
        ``(loss, stats)``: the mean of :math:`-\log\sigma(\hat r_w - \hat r_l)` and detached 0-dim
        statistics: ``rewards/chosen`` and ``rewards/rejected`` (mean implicit rewards
        :math:`\hat r = \beta\log\pi_\theta/\pi_{ref}`), ``rewards/margin`` (their mean difference),
        ``rewards/accuracy`` (fraction of pairs with :math:`\hat r_w > \hat r_l`).
    """
    shapes = {tuple(x.shape) for x in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss takes four (B,) tensors of one shape, got shapes {sorted(shapes)}.")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}.")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps.detach())  # (B,) implicit rewards r̂_w
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps.detach())  # (B,) r̂_l
    margin = chosen_rewards - rejected_rewards  # (B,)
    loss = -F.logsigmoid(margin).mean()  # logsigmoid, not log(sigmoid): finite for a large negative margin
    with torch.no_grad():
        stats = {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                 "rewards/margin": margin.mean(), "rewards/accuracy": (margin > 0).float().mean()}
    return loss, stats


def tokenize_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_prompt_length: int | None = None,
                   max_response_length: int | None = None, add_eos: bool = True, device=None) -> Rollout:
    """Prompts and given responses as a :class:`~ppo_lib.rollout.Rollout`, with the padding contract
    of the rollout: prompts left-padded (:func:`~ppo_lib.rollout.tokenize_prompts`), responses
    tokenised on their own, right-padded, ``response_mask`` True on their tokens.

    ``add_eos`` appends the EOS token, as a sampled response that ended carries it (and as TRL
    does): the policy then also learns where a preferred response stops. A response longer than
    ``max_response_length`` tokens is an error, never silently cut.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses.")
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, max_prompt_length, device)
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
               for r in responses]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"response {i} is empty; every response needs at least one token.")
        if max_response_length is not None and len(ids) > max_response_length:
            raise ValueError(f"response {i} has {len(ids)} tokens, more than max_response_length={max_response_length}: "
                             f"raise it or drop the pair ({responses[i][:60]!r}...).")
    T = max(len(ids) for ids in encoded)
    response_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (T - len(ids)) for ids in encoded], device=device)
    response_mask = torch.tensor([[True] * len(ids) + [False] * (T - len(ids)) for ids in encoded], device=device)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask)


def sequence_logprobs(model: nn.Module, batch: Rollout) -> torch.Tensor:
    r"""``(B,)`` :math:`\log\pi(y|x) = \sum_t \log\pi(y_t|x, y_{<t})`, Eq. (1.2) of chapter 01, over
    the response tokens only (the prompt is masked), through :func:`~ppo_lib.rollout.forward_response`
    at temperature 1. Keeps the gradient when called with one."""
    logprobs, *_ = forward_response(model, batch, 1.0)  # (B, T)
    return masked_sum(logprobs, batch.response_mask, dim=1)  # (B,)


@dataclass(frozen=True)
class DPOConfig:
    """Settings of an offline DPO run (chapter 09). Frozen; bad values fail here."""

    beta: float = 0.1
    """β, the KL coefficient of the objective DPO solves. 0.01–0.5; larger stays nearer π_ref."""
    learning_rate: float = 1e-6
    """η, AdamW learning rate. 5e-7–5e-6 for full fine-tuning (Rafailov et al. used 1e-6)."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    epochs: int = 1
    """Passes over the pairs."""
    max_prompt_length: int = 64
    """Longest prompt in tokens; longer is an error."""
    max_response_length: int = 64
    """Longest response in tokens (with its EOS); longer is an error."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None is off."""
    seed: int = 0
    """Seeds the order of the pairs."""

    def __post_init__(self):
        for name in ("beta", "learning_rate"):
            value = getattr(self, name)
            if not (type(value) in (int, float) and math.isfinite(value) and value > 0):
                raise ValueError(f"DPOConfig: {name} must be a finite number > 0, got {value!r}.")
        for name in ("batch_size", "epochs", "max_prompt_length", "max_response_length"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"DPOConfig: {name} must be an integer ≥ 1, got {value!r}.")
        if self.max_grad_norm is not None and not (type(self.max_grad_norm) in (int, float) and self.max_grad_norm > 0):
            raise ValueError(f"DPOConfig: max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}.")
        if type(self.seed) is not int or self.seed < 0:
            raise ValueError(f"DPOConfig: seed must be an integer ≥ 0, got {self.seed!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[dict], config: DPOConfig, device) -> tuple:
    """``(chosen, rejected)`` sequence log-probs ``(B,)`` of a list of pairs, in one forward pass."""
    prompts = [p["prompt"] for p in pairs]
    batch = tokenize_pairs(tokenizer, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                           config.max_prompt_length, config.max_response_length, device=device)
    logps = sequence_logprobs(model, batch)  # (2B,)
    return logps[: len(pairs)], logps[len(pairs):]


def train_dpo(policy: nn.Module, ref_policy: nn.Module, tokenizer, pairs: Sequence[dict], config: DPOConfig,
              callback: Callable[[int, dict], None] | None = None, progress: bool = False) -> list[dict]:
    """Offline DPO: ``config.epochs`` passes over ``pairs`` in seeded order, one AdamW step per
    ``batch_size`` pairs; ``ref_policy`` stays frozen (its log-probs are computed without gradient).

    Args:
        policy: a causal LM (trained in place).
        ref_policy: the frozen :math:`\\pi_{ref}`, usually :func:`ppo_lib.models.reference_copy` of ``policy``.
        tokenizer: pad token distinct from EOS.
        pairs: records with ``prompt``, ``chosen``, ``rejected`` (:func:`ppo_lib.preferences.read_pairs`).
        config: a :class:`DPOConfig`.
        callback: ``callback(step, stats)`` after every step.

    Returns:
        One dict of floats per step: ``loss``, the ``rewards/*`` statistics of :func:`dpo_loss`,
        ``grad_norm`` and ``step``.
    """
    from tqdm.auto import tqdm

    from .preferences import check_pair

    pairs = [check_pair(p, f"pair {i}") for i, p in enumerate(pairs)]
    if len(pairs) < config.batch_size:
        raise ValueError(f"train_dpo needs at least batch_size={config.batch_size} pairs, got {len(pairs)}.")
    device = next(policy.parameters()).device
    ref_policy.eval()
    for p in ref_policy.parameters():
        p.requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    order_rng = torch.Generator().manual_seed(config.seed)
    n_steps = config.epochs * (len(pairs) // config.batch_size)  # a last, partial batch is dropped
    history = []
    bar = tqdm(total=n_steps, desc="DPO", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(len(pairs), generator=order_rng).tolist()
        for i in range(0, len(order) - config.batch_size + 1, config.batch_size):
            chunk = [pairs[j] for j in order[i : i + config.batch_size]]
            with torch.no_grad():
                ref_chosen, ref_rejected = _pair_logprobs(ref_policy, tokenizer, chunk, config, device)
            policy.train()
            chosen, rejected = _pair_logprobs(policy, tokenizer, chunk, config, device)
            loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
            row = {"loss": loss.item(), **{k: v.item() for k, v in stats.items()}, "grad_norm": grad_norm.item()}
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"non-finite DPO loss or gradient at step {len(history) + 1} ({row}); "
                                         "lower learning_rate or check the pairs.")
            optimizer.step()
            row["step"] = len(history) + 1
            history.append(row)
            bar.update(1)
            bar.set_postfix({"loss": f"{row['loss']:.3f}", "acc": f"{row['rewards/accuracy']:.2f}"})
            if callback is not None:
                callback(row["step"], row)
    bar.close()
    policy.eval()
    return history
