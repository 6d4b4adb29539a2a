"""Reward functions: ``f(prompts, responses) -> list[float]`` (chapters 00 and 06).

Any callable with that signature is a reward. The library ships two:

* :func:`vader_sentiment`: the VADER compound sentiment of the response, in ``[-1, 1]``;
  rule-based, offline, its lexicon ships inside the ``vaderSentiment`` package.
* :func:`hf_sentiment`: the positive-class logit of a Hugging Face text classifier, such as
  ``lvwerra/distilbert-imdb`` (the original TRL PPO example, an IMDB stand-in for the learned
  reward model of Ziegler et al. 2019). Needs the Hub.

:func:`score` calls a reward function and checks what it returns, so a bad reward fails
with a message naming it instead of poisoning training with NaN.

References:
    Hutto & Gilbert (2014), "VADER: A Parsimonious Rule-based Model for Sentiment Analysis
    of Social Media Text", ICWSM.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

__all__ = [
    "RewardFn", "vader_sentiment", "hf_sentiment", "score", "get_reward", "target_token_fraction", "review_prompts",
]

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_sentiment(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each response (the prompt is ignored), in ``[-1, 1]``."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(r)["compound"]) for r in responses]


def hf_sentiment(
    model_id: str = "lvwerra/distilbert-imdb",
    positive_label: str | int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> RewardFn:
    """A reward from a Hub sequence classifier: the logit of its positive class.

    The raw logit (not the probability) keeps a gradient signal when the classifier is
    confident, as in TRL's original PPO example. Responses are scored alone, without the prompt.

    Args:
        model_id: a Hub id of an ``AutoModelForSequenceClassification``.
        positive_label: the label name (e.g. ``"POSITIVE"``) or index; by default the
            label whose name contains "pos", else index 1.
        device: where to run the classifier.
        batch_size: responses per forward pass.

    Raises:
        HubUnreachableError: the classifier is not cached and the Hub cannot be reached.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import HubUnreachableError, _hub_reachable

    try:
        tok = AutoTokenizer.from_pretrained(model_id, local_files_only=True)
        clf = AutoModelForSequenceClassification.from_pretrained(model_id, local_files_only=True)
    except OSError:
        if not _hub_reachable():
            raise HubUnreachableError(
                f"cannot download the classifier {model_id!r}: the Hub is unreachable. "
                "Offline, use reward='vader' (ppo_lib.rewards.vader_sentiment)."
            ) from None
        tok = AutoTokenizer.from_pretrained(model_id)
        clf = AutoModelForSequenceClassification.from_pretrained(model_id)
    clf.eval().to(device or "cpu")
    labels = {v.lower(): int(k) for k, v in clf.config.id2label.items()}
    if isinstance(positive_label, int):
        index = positive_label
    elif isinstance(positive_label, str):
        index = labels[positive_label.lower()]
    else:
        index = next((i for name, i in labels.items() if "pos" in name), 1)

    @torch.no_grad()
    def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        out = []
        for i in range(0, len(responses), batch_size):
            enc = tok(list(responses[i : i + batch_size]), return_tensors="pt", padding=True, truncation=True)
            logits = clf(**enc.to(clf.device)).logits  # (b, n_labels)
            out += logits[:, index].float().cpu().tolist()
        return out

    reward.__name__ = f"hf_sentiment({model_id})"
    return reward


def target_token_fraction(targets: str) -> RewardFn:
    """Synthetic reward for tests and exercises: the fraction of the response's characters
    that are in ``targets`` (e.g. ``"a"`` or ``string.ascii_lowercase``), in ``[0, 1]``;
    0 for an empty response."""
    if not targets:
        raise ValueError("targets must name at least one character.")
    wanted = set(targets)

    def reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [sum(ch in wanted for ch in r) / max(len(r), 1) for r in responses]

    reward.__name__ = f"target_token_fraction({targets!r})"
    return reward


def _short(x, n: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= n else text[: n - 1] + "…"


def get_reward(name: str | RewardFn) -> RewardFn:
    """``"vader"`` → :func:`vader_sentiment`; ``"chars:abc"`` → :func:`target_token_fraction`
    of those characters (a learnable toy reward for tests and tiny models); a callable is
    returned as is; any other string is taken for a Hub classifier id (:func:`hf_sentiment`)."""
    if callable(name):
        return name
    if name == "vader":
        return vader_sentiment
    if name.startswith("chars:"):
        return target_token_fraction(name[len("chars:"):])
    return hf_sentiment(name)


def score(
    reward_fn: RewardFn,
    prompts: Sequence[str],
    responses: Sequence[str],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Call ``reward_fn`` and check its answer: one finite number per response.

    Returns:
        ``(B,)`` float32 tensor of scores on ``device``.

    Raises:
        ValueError: naming the reward function, if it raises, returns the wrong number of
            scores, a non-number, NaN or an infinity.
    """
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    try:
        raw = reward_fn(list(prompts), list(responses))
    except Exception as e:
        raise ValueError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().flatten().tolist()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        # A dict would be scored by its keys, a generator consumed unseen: ask for a list.
        raise ValueError(f"reward function {name!r} returned {type(raw).__name__} {_short(raw)}; it must return a "
                         f"list (or 1-D tensor) of {len(responses)} numbers, one per response.")
    raw = list(raw)
    if len(raw) != len(responses):
        raise ValueError(f"reward function {name!r} returned {len(raw)} scores for {len(responses)} responses.")
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise ValueError(f"reward function {name!r} returned {x!r} (a {type(x).__name__}) at index {i}; it must return numbers.")
        if not math.isfinite(float(x)):
            raise ValueError(f"reward function {name!r} returned {x} at index {i}; scores must be finite.")
    scores = torch.tensor([float(x) for x in raw], dtype=torch.float32, device=device)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"reward function {name!r} returned a score too large for float32 (|x| > 3.4e38).")
    return scores


def review_prompts(split: str = "train") -> list[str]:
    """The project's movie-review openings: ``"train"`` (all but the last 64), ``"heldout"``
    (the last 64, never trained on) or ``"all"``."""
    from importlib.resources import files

    text = files("ppo_lib").joinpath("data/review_prompts.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    splits = {"train": lines[:-64], "heldout": lines[-64:], "all": lines}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(splits)}.")
    return splits[split]
