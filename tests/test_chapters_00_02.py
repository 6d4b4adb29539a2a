"""Self-checks and figures of chapters 00-02: a correct answer passes, a typical wrong one fails."""

import re

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from ppo_lib.exercises.ch00 import check_count_trainable, check_keyword_reward
from ppo_lib.exercises.ch01 import check_entropy_at_temperature, check_kl_exact, check_sequence_logprob
from ppo_lib.exercises.ch02 import check_bandit_gradient, check_reinforce_loss, check_softmax_score
from ppo_lib.plotting import REGISTRY, _load_all
from ppo_lib.plotting import ch02 as toy


# ---------------------------------------------------------------- chapter 00
def test_count_trainable():
    check_count_trainable(lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad), hidden=True)
    with pytest.raises(AssertionError, match="requires_grad"):
        check_count_trainable(lambda m: sum(p.numel() for p in m.parameters()))
    with pytest.raises(AssertionError):
        check_count_trainable(lambda m: len(list(m.parameters())))


def test_keyword_reward():
    check_keyword_reward(lambda ps, rs: [1.0 if re.search(r"\bgreat\b", r, re.I) else 0.0 for r in rs], hidden=True)
    with pytest.raises(AssertionError):  # substring match scores "grating"? no, but "GREAT" is missed
        check_keyword_reward(lambda ps, rs: [1.0 if "great" in r else 0.0 for r in rs])
    with pytest.raises(AssertionError):
        check_keyword_reward(lambda ps, rs: [1.0 if "great" in r.lower() else 0.0 for r in rs], hidden=True)


# ---------------------------------------------------------------- chapter 01
def _seq_logprob(logits, ids, P):
    return torch.log_softmax(logits[P - 1:-1].double(), -1).gather(-1, ids[P:, None]).sum()


def test_sequence_logprob():
    check_sequence_logprob(_seq_logprob, hidden=True)
    off_by_one = lambda logits, ids, P: torch.log_softmax(logits, -1)[torch.arange(P, len(ids)), ids[P:]].sum()  # noqa: E731
    with pytest.raises(AssertionError, match="off by one"):
        check_sequence_logprob(off_by_one)
    with pytest.raises(AssertionError):  # probabilities instead of log-probabilities
        check_sequence_logprob(lambda logits, ids, P: torch.softmax(logits[P - 1:-1], -1).gather(-1, ids[P:, None]).sum())


def test_entropy_at_temperature():
    def right(logits, tau):
        logp = torch.log_softmax(logits / tau, -1)
        return -(logp.exp() * logp).sum(-1)

    check_entropy_at_temperature(right, hidden=True)
    with pytest.raises(AssertionError):  # multiplies by tau instead of dividing
        check_entropy_at_temperature(lambda z, tau: right(z * tau, 1.0))


def test_kl_exact():
    def right(zp, zq):
        lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    check_kl_exact(right, hidden=True)
    with pytest.raises(AssertionError, match="KL\\(q \\|\\| p\\)"):
        check_kl_exact(lambda zp, zq: right(zq, zp))
    with pytest.raises(AssertionError):  # raw logits instead of log-probabilities
        check_kl_exact(lambda zp, zq: (torch.softmax(zp, -1) * (zp - zq)).sum(-1))


# ---------------------------------------------------------------- chapter 02
def test_softmax_score():
    right = lambda th, a: torch.nn.functional.one_hot(torch.tensor(a), th.shape[0]).to(th.dtype) - torch.softmax(th, -1)  # noqa: E731
    check_softmax_score(right, hidden=True)
    with pytest.raises(AssertionError, match="sign"):
        check_softmax_score(lambda th, a: -right(th, a))
    with pytest.raises(AssertionError):  # forgets the softmax term
        check_softmax_score(lambda th, a: torch.nn.functional.one_hot(torch.tensor(a), th.shape[0]).to(th.dtype))


def test_reinforce_loss():
    right = lambda lp, r, b=0.0: -((r - b).detach() * lp.sum(1)).mean()  # noqa: E731
    check_reinforce_loss(right, hidden=True)
    with pytest.raises(AssertionError, match="sign"):
        check_reinforce_loss(lambda lp, r, b=0.0: -right(lp, r, b))
    with pytest.raises(AssertionError, match="detach"):
        check_reinforce_loss(lambda lp, r, b=0.0: -((r - b) * lp.sum(1)).mean())
    with pytest.raises(AssertionError):  # mean over tokens instead of sum
        check_reinforce_loss(lambda lp, r, b=0.0: -((r - b).detach() * lp.mean(1)).mean())


def test_bandit_gradient():
    def right(th, r):
        p = torch.softmax(th, -1)
        return p * (r - (p * r).sum())

    check_bandit_gradient(right, hidden=True)
    with pytest.raises(AssertionError):  # forgets the baseline term J
        check_bandit_gradient(lambda th, r: torch.softmax(th, -1) * r)


# ---------------------------------------------------------------- the chapter 02 toy
def test_toy_gradient_estimators_agree_with_enumeration():
    theta = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seqs = toy.all_sequences()
    th = theta.clone().requires_grad_(True)
    for i in [0, 7, 26]:
        (auto,) = torch.autograd.grad(toy.toy_logprob(th, seqs[i:i + 1]).sum(), th)
        torch.testing.assert_close(toy.score_vectors(theta, seqs[i:i + 1])[0], auto)
    # the REINFORCE estimate with every sequence weighted by its probability is the exact gradient
    p = toy.toy_logprob(theta, seqs).exp()
    weighted = ((p * toy.toy_reward(seqs))[:, None, None] * toy.score_vectors(theta, seqs)).sum(0)
    torch.testing.assert_close(weighted, toy.exact_gradient(theta))
    # and a large sample gets close to it, with or without a baseline
    ys = toy.sample_sequences(theta, 100_000, generator=torch.Generator().manual_seed(1))
    for b in (0.0, 0.7, "loo"):
        err = (toy.reinforce_gradient(theta, ys, b) - toy.exact_gradient(theta)).norm()
        assert err < 0.02, (b, err)
    with pytest.raises(ValueError):
        toy.reinforce_gradient(theta, ys, "mean")


def test_reinforce_train_learns():
    history = toy.reinforce_train(steps=60, baseline="loo", seed=0)
    assert history[0] == pytest.approx(1.0) and history[-1] > 2.5


# ---------------------------------------------------------------- figures
@pytest.mark.parametrize("name", ["02_reinforce_vs_exact", "02_reinforce_learning"])
def test_chapter_02_figures_return_a_figure(name):
    _load_all()
    kwargs = {"n_values": (4, 16), "repeats": 5} if name == "02_reinforce_vs_exact" else {"steps": 5, "seeds": 2}
    assert isinstance(REGISTRY[name](**kwargs), Figure)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_temperature_entropy", "01_kl_estimators"])
def test_chapter_01_figures_return_a_figure(name):
    _load_all()
    assert isinstance(REGISTRY[name](), Figure)
