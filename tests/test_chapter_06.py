"""Tests for chapter 06: the self-checks accept right answers and reject typical wrong ones; figures."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from ppo_lib.exercises import ch06
from ppo_lib.kl import kl_estimate, shape_rewards
from ppo_lib.masking import masked_var
from ppo_lib.rollout import truncate_after_eos


# ----------------------------------------------------------------------------- Eq. (6.2)
def test_check_shape_rewards_accepts_library():
    ch06.check_shape_rewards(lambda s, lp, ref, m, b: shape_rewards(s, lp, ref, m, b, "k1")[0], hidden=True)


def _score_on_last_column(s, lp, ref, m, beta):
    r = torch.where(m, -beta * (lp - ref), torch.zeros_like(lp))
    r[:, -1] += s
    return r


def _kl_on_padding(s, lp, ref, m, beta):
    r = -beta * (lp - ref)
    r[torch.arange(len(s)), m.sum(1) - 1] += s
    return r


def _wrong_sign(s, lp, ref, m, beta):
    r = torch.where(m, beta * (lp - ref), torch.zeros_like(lp))
    r[torch.arange(len(s)), m.sum(1) - 1] += s
    return r


def _k3_instead_of_k1(s, lp, ref, m, beta):
    return shape_rewards(s, lp, ref, m, beta, "k3")[0]


@pytest.mark.parametrize("bad, hint", [(_score_on_last_column, "padding"), (_kl_on_padding, "padding"),
                                       (_wrong_sign, "sign"), (_k3_instead_of_k1, None)])
def test_check_shape_rewards_rejects(bad, hint):
    with pytest.raises(AssertionError, match=hint):
        ch06.check_shape_rewards(bad)


def test_check_shape_rewards_rejects_last_column_on_ragged_batch():
    def last_column_if_padding_clean(s, lp, ref, m, beta):  # passes the hand example, fails ragged rows
        r, _ = shape_rewards(s, lp, ref, m, beta, "k1")
        if m[:, -1].all():
            return r
        r = r.clone()
        r[torch.arange(len(s)), m.sum(1) - 1] -= s.to(r.dtype)
        rows = m[:, -1]
        r[rows, -1] += s[rows].to(r.dtype)
        r[~rows, m[~rows].sum(1) - 2] += s[~rows].to(r.dtype)  # off by one on short rows
        return r

    with pytest.raises(AssertionError):
        ch06.check_shape_rewards(last_column_if_padding_clean)


# ----------------------------------------------------------------------------- the response mask
def test_check_response_mask_accepts_library():
    ch06.check_response_mask(lambda ids, eos, pad: truncate_after_eos(ids, eos, pad)[1], hidden=True)


def test_check_response_mask_rejects_pad_comparison_and_missing_eos():
    with pytest.raises(AssertionError, match="pad == EOS"):
        ch06.check_response_mask(lambda ids, eos, pad: ids != pad)
    with pytest.raises(AssertionError, match="EOS is masked out"):
        ch06.check_response_mask(lambda ids, eos, pad: (ids != pad) & (ids != eos))

    def keeps_after_eos(ids, eos, pad):  # ignores EOS, masks only explicit pad ids; fails when pad == EOS too
        return ids != pad

    with pytest.raises(AssertionError):
        ch06.check_response_mask(keeps_after_eos)


# ----------------------------------------------------------------------------- explained variance
def _ev(v, R, m):
    return 1 - masked_var(R - v, m) / masked_var(R, m)


def test_check_explained_variance():
    ch06.check_explained_variance(_ev, hidden=True)
    with pytest.raises(AssertionError, match="mean square"):
        ch06.check_explained_variance(lambda v, R, m: 1 - ((R - v) ** 2)[m].mean() / R[m].var())
    with pytest.raises(AssertionError):
        ch06.check_explained_variance(lambda v, R, m: 1 - (R - v).var() / R.var())  # padding counted
    with pytest.raises(AssertionError):
        ch06.check_explained_variance(lambda v, R, m: masked_var(v, m) / masked_var(R, m))


# ----------------------------------------------------------------------------- figures
def test_padding_contract_figure():
    import matplotlib.pyplot as plt

    from ppo_lib.plotting.ch06 import padding_contract, padding_example

    fig = padding_contract()
    assert isinstance(fig, Figure)
    plt.close(fig)
    prompt_mask, ids, mask, eos = padding_example()
    _, lib_mask = truncate_after_eos(torch.tensor(ids), eos, 0)
    assert torch.equal(lib_mask, torch.tensor(mask))  # the drawing follows the library's rule


def test_reward_hacking_figure_reads_the_committed_history():
    import matplotlib.pyplot as plt

    from ppo_lib.plotting.ch06 import load_hacking_history, reward_hacking

    data = load_hacking_history()
    assert len(data["runs"]) == 2 and "python -m ppo_lib.plotting.ch06" in data["command"]
    fig = reward_hacking()
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_reward_hacking_figure_names_the_command_when_the_history_is_missing(tmp_path):
    from ppo_lib.plotting.ch06 import reward_hacking

    with pytest.raises(FileNotFoundError, match="python -m ppo_lib.plotting.ch06"):
        reward_hacking(path=str(tmp_path / "none.json"))
