"""Reward models learned from preference pairs, and best-of-n against them (chapter 08).

The Bradley–Terry model (Bradley & Terry 1952) says a response y_w is preferred to y_l with
probability

    P(y_w ≻ y_l) = σ(r(y_w) − r(y_l)),                                          (8.1)

so a reward model r_φ is fitted by minimising the negative log-likelihood of the observed
preferences, −log σ(r_φ(y_w) − r_φ(y_l)) (Eq. 8.2, :func:`bradley_terry_loss`), as in
Christiano et al. (2017), Ziegler et al. (2019), Stiennon et al. (2020) and Ouyang et al. (2022).
Only differences of rewards enter (8.1), so r is defined up to a constant; :meth:`RewardModel.normalize`
fixes the constant (and the scale) the way Ziegler et al. (2019) do: a gain and a bias so that
the reward has mean 0 and standard deviation 1 on samples of the policy.

:class:`RewardModel` puts a scalar head on the hidden state of the *last real token* of
``prompt + response``, on any backbone of :func:`ppo_lib.models.load_model`. What is trained
is a choice (``trainable``):

* ``"head"`` (the CPU default): the backbone is frozen and only the linear head learns, so the
  backbone's features of every pair are computed once and the head is fitted on them in
  seconds. It is an honest *small* reward model: a linear probe of a pretrained LM.
* ``"last_block"``: the last transformer block and the final norm learn too (a forward pass per
  step; better features, slower).
* ``"all"``: the whole backbone (what the papers do, on GPUs; also what the tests do with tiny-gpt2).

An instance is a ``reward_fn(prompts, responses) -> list[float]`` for :class:`~ppo_lib.trainer.PPOTrainer`:
batched, without gradients, normalised. It saves as ``safetensors`` + JSON only; loading checks
that the checkpoint fits the backbone and never runs code from the files.

Best-of-n (:func:`best_of_n_estimate`, :func:`best_of_n_kl_bound`) and Gao et al.'s functional
forms (:func:`fit_gao`) are the tools of the over-optimisation experiment.

References:
    Bradley & Terry (1952), "Rank analysis of incomplete block designs: I. The method of paired comparisons".
    Christiano et al. (2017), "Deep reinforcement learning from human preferences", arXiv:1706.03741.
    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593.
    Stiennon et al. (2020), "Learning to summarize from human feedback", arXiv:2009.01325.
    Ouyang et al. (2022), "Training language models to follow instructions with human feedback", arXiv:2203.02155.
    Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760.
    Beirami et al. (2024), "Theoretical guarantees on the best-of-n alignment policy", arXiv:2401.01879.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .preferences import check_pair
from .rollout import position_ids_from_mask

__all__ = [
    "bradley_terry_loss",
    "RewardModel",
    "RewardModelError",
    "pair_features",
    "layer_features",
    "gold_regression",
    "probe_layers",
    "train_reward_model",
    "evaluate_reward_model",
    "best_of_n_estimate",
    "best_of_n_kl_bound",
    "fit_gao",
    "TRAINABLE",
]

TRAINABLE = ("head", "last_block", "all")
WEIGHTS_FILE, CONFIG_FILE = "reward_model.safetensors", "reward_model.json"


class RewardModelError(ValueError):
    """A reward-model checkpoint or input that cannot be used; the message says what to change."""


# ----------------------------------------------------------------------------- the loss
def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood of the Bradley–Terry model, Eq. (8.2), chapter 08.

        loss = mean_i −log σ(Δ_i),  Δ_i = r_chosen_i − r_rejected_i,
        ∂loss/∂r_chosen_i = −σ(−Δ_i)/B  (< 0: a gradient step raises the chosen reward).

    Computed as ``softplus(−Δ)``, exact for any Δ (no log of a rounded-to-0 sigmoid).

    Args:
        r_chosen, r_rejected: ``(B,)`` rewards of the preferred and the other response.

    Returns:
        ``(loss, stats)``: a 0-dim loss; ``stats["accuracy"]`` the fraction with Δ > 0 and
        ``stats["margin"]`` the mean Δ, both detached 0-dim tensors.
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"r_chosen and r_rejected must both be (B,), got {tuple(r_chosen.shape)} and "
                         f"{tuple(r_rejected.shape)}.")
    if r_chosen.numel() == 0:
        raise ValueError("bradley_terry_loss needs at least one pair (B ≥ 1).")
    delta = r_chosen - r_rejected  # (B,)
    loss = F.softplus(-delta).mean()  # −log σ(Δ) = log(1 + e^{−Δ})
    stats = {"accuracy": (delta > 0).to(delta.dtype).mean().detach(), "margin": delta.mean().detach()}
    return loss, stats


# ----------------------------------------------------------------------------- the model
def _blocks(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The last transformer block and the final norm of a GPT-2 or Llama-style backbone."""
    if hasattr(backbone, "h"):  # GPT-2
        return backbone.h[-1], backbone.ln_f
    if hasattr(backbone, "layers"):  # Llama, SmolLM2
        return backbone.layers[-1], backbone.norm
    raise ValueError(f"trainable='last_block' does not know the blocks of {type(backbone).__name__}; "
                     f"use 'head' or 'all'.")


class RewardModel(nn.Module):
    """A scalar reward ``r(x, y) = gain · (wᵀ h_last + b) + bias`` on a causal LM's backbone.

    ``h_last`` is the backbone's final hidden state at the last real token of ``prompt + response``
    (the text is right-padded; the last real token is ``attention_mask.sum(1) − 1``). ``gain`` and
    ``bias`` are buffers set by :meth:`normalize` (1 and 0 until then).

    Args:
        lm: a causal LM from :func:`ppo_lib.models.load_model` (its ``base_model`` is the backbone).
        tokenizer: its tokenizer (with a pad token).
        name: the model's name in :func:`load_model`, stored in checkpoints.
        trainable: ``"head"``, ``"last_block"`` or ``"all"`` (see the module docstring).
        max_length: the most tokens of ``prompt + response``; longer inputs are an error.
    """

    def __init__(self, lm: nn.Module, tokenizer, name: str = "", trainable: str = "head", max_length: int = 256):
        super().__init__()
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}.")
        self.backbone = lm.base_model
        self.tokenizer = tokenizer
        self.name, self.trainable, self.max_length = name, trainable, max_length
        self.config = lm.config
        hidden = lm.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(device=next(lm.parameters()).device)
        self.register_buffer("gain", torch.ones((), device=self.head.weight.device))
        self.register_buffer("bias", torch.zeros((), device=self.head.weight.device))
        for p in self.backbone.parameters():
            p.requires_grad_(trainable == "all")
        if trainable == "last_block":
            for module in _blocks(self.backbone):
                for p in module.parameters():
                    p.requires_grad_(True)
        self.backbone.eval()  # dropout off (load_model already set every p to 0)

    @classmethod
    def from_name(cls, name: str, trainable: str = "head", device=None, **kwargs) -> "RewardModel":
        """A fresh reward model on the backbone :func:`ppo_lib.models.load_model` gives for ``name``."""
        from .models import load_model

        lm, tokenizer = load_model(name, device=device)
        return cls(lm, tokenizer, name=name, trainable=trainable, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompt + response`` texts → right-padded ``(input_ids, attention_mask)``, both ``(B, L)``."""
        if len(prompts) != len(responses) or not len(prompts):
            raise ValueError(f"need as many prompts as responses (≥ 1), got {len(prompts)} and {len(responses)}.")
        encoded = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            # An empty response is scored (a policy may stop at once: that is an action with a reward);
            # training pairs with an empty response are refused earlier, by check_pair.
            ids = self.tokenizer(p + r, add_special_tokens=True)["input_ids"]
            if not ids:
                raise RewardModelError(f"prompt + response {i} is empty; there is no token to read a reward from.")
            if len(ids) > self.max_length:
                raise RewardModelError(f"prompt + response {i} has {len(ids)} tokens, more than max_length="
                                       f"{self.max_length}: shorten it or raise max_length.")
            encoded.append(ids)
        L = max(map(len, encoded))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([x + [pad] * (L - len(x)) for x in encoded], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in encoded], device=self.device)
        return ids, mask

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` right-padded ids and mask → ``(B, H)`` final hidden state at each last real token."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask),
                               use_cache=False).last_hidden_state  # (B, L, H)
        last = attention_mask.sum(1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()  # (B, H)

    def raw_reward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, H)`` features → ``(B,)`` un-normalised rewards wᵀh + b (what the loss trains)."""
        return self.head(features).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` → ``(B,)`` normalised rewards."""
        return self.gain * self.raw_reward(self.features(input_ids, attention_mask)) + self.bias

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 32,
              normalized: bool = True) -> torch.Tensor:
        """Rewards of many ``(prompt, response)`` pairs, ``batch_size`` at a time, no gradients: ``(B,)``."""
        out = []
        for i in range(0, len(prompts), batch_size):
            ids, mask = self.tokenize(prompts[i: i + batch_size], responses[i: i + batch_size])
            raw = self.raw_reward(self.features(ids, mask))
            out.append(self.gain * raw + self.bias if normalized else raw)
        return torch.cat(out)

    def __call__(self, *args, **kwargs):
        """``rm(prompts, responses)`` with two lists of strings is a ``reward_fn``: a list of floats.
        With tensors it is the module's forward (``(B, L)`` ids and mask → ``(B,)``)."""
        if len(args) == 2 and not isinstance(args[0], torch.Tensor):
            prompts, responses = list(args[0]), list(args[1])
            was_training = self.training
            self.eval()
            try:
                return self.score(prompts, responses).tolist()
            finally:
                self.train(was_training)
        return super().__call__(*args, **kwargs)

    @torch.no_grad()
    def normalize(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """Set gain and bias so that the rewards of these samples (the policy's) have mean 0 and
        standard deviation 1 (sample std, n − 1), as Ziegler et al. (2019) do before RL.

        Returns ``{"gain", "bias", "raw_mean", "raw_std"}``.
        """
        if len(prompts) < 2:
            raise ValueError("normalize needs at least 2 samples (a standard deviation).")
        raw = self.score(prompts, responses, normalized=False).double()
        mean, std = raw.mean(), raw.std()
        if not std > 0:
            raise RewardModelError("the reward model gives the same reward to every sample; it cannot be normalised "
                                   "(train it first, or pass varied samples).")
        self.gain.fill_(float(1.0 / std))
        self.bias.fill_(float(-mean / std))
        return {"gain": float(self.gain), "bias": float(self.bias), "raw_mean": float(mean), "raw_std": float(std)}

    # ------------------------------------------------------------------ save / load
    def _saved_state(self) -> dict[str, torch.Tensor]:
        trained = {f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad}
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                if k in trained or not k.startswith("backbone.")}

    def _fingerprint(self) -> dict:
        c = self.config
        return {"model_type": c.model_type, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
                "num_hidden_layers": c.num_hidden_layers,
                "num_parameters": sum(p.numel() for p in self.backbone.parameters())}

    def save(self, folder: str | Path) -> Path:
        """Write ``reward_model.safetensors`` (head, gain, bias and every trained backbone tensor)
        and ``reward_model.json`` (backbone name and fingerprint, ``trainable``, ``max_length``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": "ppo_lib.reward_model/1", "name": self.name, "trainable": self.trainable,
                "max_length": self.max_length, "backbone": self._fingerprint(),
                "gain": float(self.gain), "bias": float(self.bias)}
        for fname, write in ((WEIGHTS_FILE, lambda p: save_file(self._saved_state(), str(p))),
                             (CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=1)))):
            tmp = folder / f".{fname}.tmp-{os.getpid()}"
            try:
                write(tmp)
                os.replace(tmp, folder / fname)
            finally:
                tmp.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, lm: nn.Module | None = None, tokenizer=None, device=None) -> "RewardModel":
        """Load a reward model saved by :meth:`save`, on ``lm`` (else on ``load_model(<saved name>)``).

        Raises:
            RewardModelError: the folder lacks a file, or the checkpoint was made on another
                backbone (type, sizes or tensor shapes differ), naming what differs.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        for fname in (WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / fname).is_file():
                raise RewardModelError(f"{folder}: no {fname}; is this a folder written by RewardModel.save?")
        try:
            meta = json.loads((folder / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise RewardModelError(f"{folder / CONFIG_FILE}: not valid JSON ({e.msg}).") from None
        if lm is None:
            from .models import load_model

            lm, tokenizer = load_model(meta["name"], device=device)
        rm = cls(lm, tokenizer, name=meta["name"], trainable=meta["trainable"], max_length=meta["max_length"])
        have = rm._fingerprint()
        diff = {k: (v, have.get(k)) for k, v in meta["backbone"].items() if have.get(k) != v}
        if diff:
            raise RewardModelError(
                f"{folder}: this reward model was trained on backbone {meta['name']!r} and does not match the one "
                f"given ({type(lm).__name__}): " + ", ".join(f"{k} saved {a} vs given {b}" for k, (a, b) in diff.items())
                + f". Load it on {meta['name']!r}.")
        state = load_file(str(folder / WEIGHTS_FILE), device=str(rm.device))
        own = rm.state_dict()
        for k, v in state.items():
            if k not in own or own[k].shape != v.shape:
                raise RewardModelError(f"{folder}: tensor {k!r} {tuple(v.shape)} does not fit this backbone "
                                       f"({tuple(own[k].shape) if k in own else 'no such tensor'}).")
        missing = set(rm._saved_state()) - set(state)
        if missing:
            raise RewardModelError(f"{folder}: the checkpoint lacks {sorted(missing)[:3]}...; it is incomplete.")
        rm.load_state_dict(state, strict=False)
        return rm


# ----------------------------------------------------------------------------- training
def _pair_texts(pairs: Sequence[dict]) -> tuple[list[str], list[str], list[str]]:
    for i, p in enumerate(pairs):
        check_pair(p, f"pair {i}")
    return [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]


@torch.no_grad()
def pair_features(rm: RewardModel, pairs: Sequence[dict], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's last-token features ``(B, H)`` of every chosen and every rejected response. With a
    frozen backbone they are all a head needs: compute them once and pass them to :func:`train_reward_model`."""
    prompts, chosen, rejected = _pair_texts(pairs)
    return tuple(torch.cat([rm.features(*rm.tokenize(prompts[i: i + batch_size], side[i: i + batch_size]))
                            for i in range(0, len(pairs), batch_size)]) for side in (chosen, rejected))


@torch.no_grad()
def layer_features(rm: RewardModel, prompts: Sequence[str], responses: Sequence[str],
                   batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's hidden states of ``prompt + response`` at *every* layer, two ways: ``(N, L + 1, H)``
    at the last real token (index −1 is what :meth:`RewardModel.features` reads) and ``(N, L + 1, H)``
    averaged over the response's tokens (those after ``len(tokenize(prompt))``). Index 0 is the
    embeddings' output, index i the input of block i, the last one the final norm's output."""
    last, mean = [], []
    for i in range(0, len(prompts), batch_size):
        ids, mask = rm.tokenize(prompts[i: i + batch_size], responses[i: i + batch_size])
        out = rm.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                          use_cache=False, output_hidden_states=True)
        hs = torch.stack(out.hidden_states, 1).float()  # (B, L + 1, T, H)
        rows = torch.arange(len(ids), device=ids.device)
        last.append(hs[rows, :, mask.sum(1) - 1])
        start = torch.tensor([len(rm.tokenizer(p, add_special_tokens=True)["input_ids"])
                              for p in prompts[i: i + batch_size]], device=ids.device)
        response = (mask.bool() & (torch.arange(ids.shape[1], device=ids.device) >= start[:, None])).float()  # (B, T)
        mean.append((hs * response[:, None, :, None]).sum(2) / response.sum(1).clamp(min=1)[:, None, None])
    return torch.cat(last), torch.cat(mean)


RIDGE_GRID = (10.0, 100.0, 1000.0, 10000.0)  # λ of gold_regression, on standardised features


def gold_regression(x: torch.Tensor, gold: torch.Tensor, grid: Sequence[float] = RIDGE_GRID) -> tuple[torch.Tensor, float]:
    """Ridge regression of each text's gold score on its features ``x`` ``(N, H)``: the linear
    read-out that *perfect* labels would allow, where a comparison gives one noisy bit per pair.
    The features are standardised; λ from ``grid`` is the one with the least squared error on the
    last fifth of the rows when fitted on the rest, and the fit is then redone on every row.

    Returns ``(w, λ)``: ``x @ w`` orders texts as the fit does (the intercept is left out: it
    cancels in every comparison).
    """
    x, gold = x.double(), gold.double()

    def fit(xs, ys, lam):  # -> (w, b): predictions xs @ w + b
        mu, sd = xs.mean(0), xs.std(0).clamp_min(1e-8)
        z = (xs - mu) / sd
        w = torch.linalg.solve(z.T @ z + lam * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (ys - ys.mean())) / sd
        return w, ys.mean() - mu @ w

    n_fit = len(x) * 4 // 5
    if n_fit < 2 or n_fit == len(x):
        raise ValueError(f"gold_regression needs at least 3 texts, got {len(x)}.")
    errors = {}
    for lam in grid:
        w, b = fit(x[:n_fit], gold[:n_fit], lam)
        errors[lam] = float((x[n_fit:] @ w + b - gold[n_fit:]).square().mean())
    lam = min(errors, key=errors.get)
    return fit(x, gold, lam)[0], lam


def probe_layers(lm: nn.Module, tokenizer, train_pairs: Sequence[dict], held_pairs: Sequence[dict],
                 sizes: Sequence[int], *, epochs: int = 30, lr: float = 3e-3, weight_decay: float = 0.1,
                 progress: bool = True) -> list[dict]:
    """Linear probes: a Bradley–Terry head (as :func:`train_reward_model` trains it, on frozen features)
    on every layer's hidden states, read at the last real token (``"last"``, the reward model's own
    choice) or averaged over the response (``"mean"``), for the first k pairs of ``train_pairs`` for each
    k in ``sizes``. Which layer and which pooling carry the preference is what it measures; the last
    layer with ``"last"`` is exactly the reward model with ``trainable="head"``.

    When the pairs carry their gold scores (``gold_chosen``, ``gold_rejected``), each (pooling,
    layer, k) also gets a :func:`gold_regression` on the same 2k texts: what the same features give
    when every text's gold score is known, instead of one noisy comparison per pair. The gap between
    the two is what better labels could add; what stays short of the ceiling is the features and
    the number of texts.

    Returns one row per (labels, pooling, layer, k): ``{"labels", "pooling", "layer", "train_pairs",
    "train_accuracy", "accuracy"}`` (``labels``: ``"pairs"`` or ``"gold"``, which also has ``"ridge"``,
    its λ); the accuracies are on the pairs' labels, ``accuracy`` on ``held_pairs``.
    """
    from tqdm.auto import tqdm

    rm = RewardModel(lm, tokenizer, trainable="head")
    feats = {}
    for name, pairs in (("train", train_pairs), ("held", held_pairs)):
        prompts, chosen, rejected = _pair_texts(pairs)
        c_last, c_mean = layer_features(rm, prompts, chosen)
        r_last, r_mean = layer_features(rm, prompts, rejected)
        feats[name] = {"last": (c_last, r_last), "mean": (c_mean, r_mean)}
    n_layers = feats["train"]["last"][0].shape[1]
    sizes = sorted({min(k, len(train_pairs)) for k in sizes})
    gold = (torch.tensor([[p["gold_chosen"], p["gold_rejected"]] for p in train_pairs], dtype=torch.float64)
            if all("gold_chosen" in p and "gold_rejected" in p for p in train_pairs) else None)  # (N, 2)
    rows = []
    jobs = [(pooling, layer, k) for pooling in ("last", "mean") for layer in range(n_layers) for k in sizes]
    for pooling, layer, k in tqdm(jobs, desc="probes", disable=not progress):
        head = RewardModel(lm, tokenizer, trainable="head")  # a fresh head on the same frozen backbone
        c, r = (f[:k, layer] for f in feats["train"][pooling])
        history = train_reward_model(head, train_pairs[:k], epochs=epochs, lr=lr, weight_decay=weight_decay, seed=0,
                                     progress=False, features=(c, r))
        hc, hr = (f[:, layer] for f in feats["held"][pooling])
        accuracy = float((head.raw_reward(hc) > head.raw_reward(hr)).double().mean())
        rows.append({"labels": "pairs", "pooling": pooling, "layer": layer, "train_pairs": k,
                     "train_accuracy": history[-1]["accuracy"], "accuracy": accuracy})
        if gold is not None:  # rows alternate chosen, rejected: the validation fifth is whole pairs
            w, lam = gold_regression(torch.stack([c, r], 1).flatten(0, 1), gold[:k].flatten())
            rows.append({"labels": "gold", "pooling": pooling, "layer": layer, "train_pairs": k, "ridge": lam,
                         "train_accuracy": float(((c.double() @ w) > (r.double() @ w)).double().mean()),
                         "accuracy": float(((hc.double() @ w) > (hr.double() @ w)).double().mean())})
    return rows


def train_reward_model(rm: RewardModel, pairs: Sequence[dict], *, epochs: int = 20, lr: float = 1e-3,
                       batch_size: int = 32, weight_decay: float = 0.0, seed: int = 0,
                       progress: bool = True, features: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Fit ``rm`` to ``pairs`` (``{"prompt", "chosen", "rejected"}``) by Adam on Eq. (8.2).

    With ``trainable="head"`` the frozen backbone's features of every response are computed
    once (or taken from ``features``, :func:`pair_features` of the same pairs), then the head is
    trained on them (identical gradients, one forward pass per text).

    Returns one dict per epoch: ``{"epoch", "loss", "accuracy", "margin"}`` (training-set means).
    """
    if not len(pairs):
        raise ValueError("train_reward_model needs at least one pair.")
    prompts, chosen, rejected = _pair_texts(pairs)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    cached = rm.trainable == "head"
    if features is not None and (not cached or any(len(f) != len(pairs) for f in features)):
        raise ValueError("features are for trainable='head' and need one row per pair (see pair_features).")
    if cached:
        feats = features if features is not None else pair_features(rm, pairs, batch_size)
    from tqdm.auto import tqdm

    history = []
    bar = tqdm(range(epochs), desc="reward model", disable=not progress)
    for epoch in bar:
        order = torch.randperm(len(pairs), generator=g).tolist()
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        for i in range(0, len(pairs), batch_size):
            idx = order[i: i + batch_size]
            if cached:
                r_c, r_r = rm.raw_reward(feats[0][idx]), rm.raw_reward(feats[1][idx])
            else:
                r_c = rm.raw_reward(rm.features(*rm.tokenize([prompts[j] for j in idx], [chosen[j] for j in idx])))
                r_r = rm.raw_reward(rm.features(*rm.tokenize([prompts[j] for j in idx], [rejected[j] for j in idx])))
            loss, stats = bradley_terry_loss(r_c, r_r)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in (("loss", loss.detach()), *stats.items()):
                sums[k] += float(v) * len(idx)
        row = {"epoch": epoch + 1, **{k: v / len(pairs) for k, v in sums.items()}}
        history.append(row)
        bar.set_postfix({"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.2f}"})
    return history


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, pairs: Sequence[dict], batch_size: int = 32) -> dict:
    """Held-out quality of ``rm`` on ``pairs``.

    Returns ``{"accuracy", "margin", "loss", "n"}`` against the labels (chosen over rejected) and,
    when the pairs carry ``gold_chosen``/``gold_rejected``, ``"gold_agreement"``: the fraction of
    pairs with distinct gold scores on which the model orders the two responses as the gold does.
    """
    prompts, chosen, rejected = _pair_texts(pairs)
    r_c = rm.score(prompts, chosen, batch_size, normalized=False)
    r_r = rm.score(prompts, rejected, batch_size, normalized=False)
    r_c, r_r = r_c.double(), r_r.double()
    loss, stats = bradley_terry_loss(r_c, r_r)
    out = {"accuracy": float(stats["accuracy"]), "margin": float(stats["margin"]), "loss": float(loss), "n": len(pairs)}
    if all("gold_chosen" in p and "gold_rejected" in p for p in pairs):
        g = torch.tensor([p["gold_chosen"] - p["gold_rejected"] for p in pairs], dtype=torch.float64)
        distinct = g != 0
        if bool(distinct.any()):
            agree = (torch.sign(g) == torch.sign((r_c - r_r).double()))[distinct]
            out["gold_agreement"] = float(agree.double().mean())
    return out


# ----------------------------------------------------------------------------- best-of-n
def best_of_n_estimate(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased estimate of E[gold of the proxy-best of n samples] from a pool of N ≥ n samples.

    Draw n of the pool's N samples without replacement and keep the one with the highest proxy
    score: sorted by proxy (ascending), sample i (1-based) is the kept one with probability
    C(i−1, n−1) / C(N, n), so

        E[gold of best-of-n] = Σ_i C(i−1, n−1)/C(N, n) · gold_(i),                   (8.6)

    the average over all C(N, n) subsets, computed in O(N log N) instead of enumerated. Ties in
    the proxy are broken by position in the pool (a stable sort). Averaged over prompts, it is
    an unbiased estimate of the best-of-n policy's expected gold score (the same weights give
    its proxy score with ``gold=proxy``).

    Args:
        proxy, gold: ``(..., N)`` scores of the same N samples (e.g. one row per prompt).
        n: 1 ≤ n ≤ N.

    Returns:
        ``(...)`` float64 estimates.
    """
    if proxy.shape != gold.shape or proxy.dim() == 0:
        raise ValueError(f"proxy and gold must have the same shape (..., N), got {tuple(proxy.shape)}, "
                         f"{tuple(gold.shape)}.")
    N = proxy.shape[-1]
    if not (isinstance(n, int) and 1 <= n <= N):
        raise ValueError(f"n must be an integer in [1, N={N}], got {n!r}.")
    order = torch.sort(proxy.double(), dim=-1, stable=True).indices
    gold_sorted = gold.double().gather(-1, order)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    # log C(i−1, n−1) − log C(N, n), −inf where i < n
    log_w = torch.full((N,), -math.inf, dtype=torch.float64)
    ok = i >= n
    log_binom_N_n = math.lgamma(N + 1) - math.lgamma(n + 1) - math.lgamma(N - n + 1)
    log_w[ok] = torch.lgamma(i[ok]) - math.lgamma(n) - torch.lgamma(i[ok] - n + 1) - log_binom_N_n
    return (log_w.exp() * gold_sorted).sum(-1)


def best_of_n_kl_bound(n: int | torch.Tensor) -> torch.Tensor | float:
    """The analytic KL(π_bon ‖ π) = log n − (n − 1)/n (nats) of best-of-n, Eq. (8.7).

    Beirami et al. (2024) prove it is an *upper bound* on the true KL, tight only when no two
    samples can share a reward (e.g. many distinct responses); the true KL can be far smaller.
    """
    if isinstance(n, torch.Tensor):
        return torch.log(n.double()) - (n.double() - 1) / n.double()
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}.")
    return math.log(n) - (n - 1) / n


def fit_gao(d: Sequence[float] | torch.Tensor, R: Sequence[float] | torch.Tensor, form: str) -> dict:
    """Least-squares fit of Gao, Schulman & Hilton's (2022) functional forms, d = √KL:

        best-of-n:  R(d) = d (α − β d)                                               (8.8)
        RL:         R(d) = d (α − β log d)                                           (8.9)

    R is the gold score *minus the initial policy's* (both forms are 0 at d = 0). Both are linear
    in (α, β), so the fit is one ``lstsq``; points with d = 0 carry no information and are dropped.

    Returns:
        ``{"alpha", "beta", "r2", "form", "n_points"}``; r2 is 1 − SS_res/SS_tot of R (without intercept:
        it can be negative when the form fits worse than the mean).
    """
    if form not in ("bon", "rl"):
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}.")
    d, R = torch.as_tensor(d, dtype=torch.float64).flatten(), torch.as_tensor(R, dtype=torch.float64).flatten()
    if d.shape != R.shape:
        raise ValueError(f"d and R need the same length, got {len(d)} and {len(R)}.")
    if bool((d < 0).any()) or not bool(torch.isfinite(d).all() & torch.isfinite(R).all()):
        raise ValueError("d = √KL must be finite and ≥ 0, and R finite.")
    keep = d > 0
    d, R = d[keep], R[keep]
    if len(d) < 3:
        raise ValueError(f"fit_gao needs at least 3 points with d > 0, got {len(d)}.")
    second = d * d if form == "bon" else d * torch.log(d)
    X = torch.stack([d, -second], dim=1)  # (n, 2): R = α d − β (d² or d log d)
    coef = torch.linalg.lstsq(X, R.unsqueeze(1)).solution.squeeze(1)
    resid = R - X @ coef
    ss_tot = ((R - R.mean()) ** 2).sum()
    r2 = float(1 - (resid ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")
    return {"alpha": float(coef[0]), "beta": float(coef[1]), "r2": r2, "form": form, "n_points": len(d)}
