"""Learning-rate schedules (chapter 07): hand-computed factors, the KL-driven rate's direction
and bounds, and the trainer's use of both, through a checkpoint taken mid-warm-up."""

import math

import pytest

from ppo_lib.schedules import adaptive_lr_scale, lr_factor
from ppo_lib.trainer import PPOConfig
from tiny import PROMPTS, tiny_trainer



@pytest.mark.parametrize("schedule, expected", [
    # W = 4, U = 12: warm-up (u+1)/4 for u = 0..3, then p = (u - 4) / 8
    ("constant", {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 8: 1.0, 12: 1.0, 20: 1.0}),
    ("linear", {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 8: 0.5, 12: 0.0, 20: 0.0}),
    ("cosine", {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 8: 0.5, 10: 0.5 * (1 + math.cos(math.pi * 0.75)), 12: 0.0}),
])
def test_each_schedule_gives_the_expected_factor_at_the_start_the_warmup_and_the_end(schedule, expected):
    for update, factor in expected.items():
        assert lr_factor(update, schedule, lr_warmup_updates=4, total_updates=12) == pytest.approx(factor, abs=1e-12), update


def test_no_warmup_starts_at_the_full_rate():
    assert lr_factor(0) == 1.0 and lr_factor(0, "linear", 0, 10) == 1.0 and lr_factor(5, "linear", 0, 10) == 0.5


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="step"), "unknown lr_schedule"),
    (dict(schedule="linear", total_updates=None), "must be set and larger"),
    (dict(schedule="cosine", lr_warmup_updates=5, total_updates=5), "must be set and larger"),
    (dict(lr_warmup_updates=-1), "lr_warmup_updates must be an integer ≥ 0"),
])
def test_bad_schedules_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_factor(0, **kwargs)


def test_the_kl_driven_rate_moves_the_right_way_and_stays_bounded():
    assert adaptive_lr_scale(1.0, approx_kl=0.05, kl_target=0.01) == pytest.approx(1 / 1.5)  # too far: slower
    assert adaptive_lr_scale(1.0, approx_kl=0.001, kl_target=0.01) == pytest.approx(1.5)     # too timid: faster
    assert adaptive_lr_scale(1.0, approx_kl=0.01, kl_target=0.01) == 1.0                     # in the band: kept
    assert adaptive_lr_scale(1.0, approx_kl=0.02, kl_target=0.01) == 1.0                     # the band's edges
    assert adaptive_lr_scale(1.0, approx_kl=0.005, kl_target=0.01) == 1.0
    scale = 1.0
    for _ in range(100):
        scale = adaptive_lr_scale(scale, approx_kl=1.0, kl_target=0.01)
    assert scale == 0.01
    for _ in range(100):
        scale = adaptive_lr_scale(scale, approx_kl=0.0, kl_target=0.01)
    assert scale == 10.0
    with pytest.raises(ValueError, match="finite"):
        adaptive_lr_scale(1.0, approx_kl=float("nan"), kl_target=0.01)


@pytest.mark.parametrize("fields, message", [
    (dict(lr_schedule="exp"), "lr_schedule must be one of"),
    (dict(lr_schedule="linear"), "lr_decay_updates, which must be set"),
    (dict(lr_schedule="cosine", lr_warmup_updates=10, lr_decay_updates=10), "must be set and larger than lr_warmup_updates=10"),
    (dict(lr_warmup_updates=-2), "lr_warmup_updates must be ≥ 0"),
    (dict(lr_warmup_updates=1.5), "lr_warmup_updates must be an integer"),
    (dict(adaptive_lr_kl_target=0.0), "adaptive_lr_kl_target must be > 0"),
])
def test_bad_values_of_the_new_options_are_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**fields)


def tiny(**overrides):
    return tiny_trainer(**{"max_new_tokens": 8, "lr_schedule": "cosine", "lr_warmup_updates": 3, "lr_decay_updates": 6,
                           **overrides})


def test_the_trainer_follows_the_schedule_and_resumes_mid_warmup_exactly(tmp_path):
    straight = tiny().train(PROMPTS, 5, progress=False)
    assert [h["optimizer/lr"] for h in straight] == pytest.approx(
        [3e-3 * lr_factor(u, "cosine", 3, 6) for u in range(5)], rel=1e-12)
    first = tiny()
    got = first.train(PROMPTS, 2, progress=False)  # stopped in the middle of the warm-up
    first.save_checkpoint(tmp_path / "ckpt")
    second = tiny()
    second.load_checkpoint(tmp_path / "ckpt")
    got += second.train(PROMPTS, 3, progress=False)
    for g, w in zip(got, straight, strict=True):
        g = {k: v for k, v in g.items() if not k.startswith(("time/", "throughput/"))}
        assert g == pytest.approx({k: w[k] for k in g}, rel=1e-6, abs=1e-7, nan_ok=True)


def test_the_kl_driven_rate_acts_in_the_trainer_and_survives_a_checkpoint(tmp_path):
    """A target far below what lr 3e-3 produces: η falls by 1.5 after every update."""
    t = tiny(lr_schedule="constant", lr_warmup_updates=0, lr_decay_updates=None, adaptive_lr_kl_target=1e-6)
    history = t.train(PROMPTS, 3, progress=False)
    assert [h["optimizer/lr"] for h in history] == pytest.approx([3e-3, 2e-3, 3e-3 / 1.5**2])
    t.save_checkpoint(tmp_path / "ckpt")
    u = tiny(lr_schedule="constant", lr_warmup_updates=0, lr_decay_updates=None, adaptive_lr_kl_target=1e-6)
    u.load_checkpoint(tmp_path / "ckpt")
    assert u.lr_scale == pytest.approx(1 / 1.5**3) and u.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 / 1.5**3)
    assert u.lr_scheduler.last_epoch == u.step_count == 3


@pytest.mark.parametrize("fields, message", [
    (dict(sampler="graph"), "sampler must be one of \\('eager', 'static'\\), got 'graph'"),
    (dict(cpu_products="fast"), "cpu_products must be one of \\('plain', 'packed', 'transposed', 'auto'\\), got 'fast'"),
    (dict(compile="yes"), "compile must be true or false, got 'yes'"),
    (dict(compile=1), "compile must be true or false"),
])
def test_bad_values_of_the_engineering_options_are_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**fields)


@pytest.mark.parametrize("products", ["plain", "transposed", "auto"])
def test_the_form_of_the_sampling_products_changes_nothing_but_rounding_in_the_trainer(products):
    """``cpu_products`` reaches the sampler, and every form samples the same tokens as the
    default (packed) one: the same statistics, update after update."""
    t = tiny(cpu_products=products)
    assert t.sample.keywords["products"] == products
    default = tiny().train(PROMPTS, 2, progress=False)
    for d, h in zip(default, t.train(PROMPTS, 2, progress=False), strict=True):
        h = {k: v for k, v in h.items() if not k.startswith(("time/", "throughput/"))}
        assert h == pytest.approx({k: d[k] for k in h}, rel=1e-4, abs=1e-5, nan_ok=True)


def test_the_static_sampler_is_a_drop_in_replacement_in_the_trainer():
    """Same seed, same statistics, update after update: the tokens and the generator's state
    are the same (tests/test_sampling.py), so everything downstream is too."""
    eager = tiny(sampler="eager").train(PROMPTS, 2, progress=False)
    static = tiny(sampler="static").train(PROMPTS, 2, progress=False)
    for e, s in zip(eager, static, strict=True):
        s = {k: v for k, v in s.items() if not k.startswith(("time/", "throughput/"))}
        assert s == pytest.approx({k: e[k] for k in s}, rel=1e-4, abs=1e-5, nan_ok=True)
