"""Every figure a chapter shows is in ``figures/`` and is what ``python -m ppo_lib figures`` makes.

A chapter shows a figure with ``render("NN_name")`` (see ``ppo_lib/plotting/__init__.py``) and
writes no file; ``python -m ppo_lib figures`` renders every registered figure into ``figures/``.
These tests read the chapters' ``render("...")`` calls and check the registry, the committed
PNGs, that rendering is deterministic (identical PNG bytes) and that showing a figure the way a
chapter does leaves ``figures/`` alone (a test run must not rewrite a tracked file). Rendering every figure takes long
(some load a model), so by default one cheap figure is re-rendered and compared with its
committed file; set ``PPO_LIB_ALL_FIGURES=1`` to compare all of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ppo_lib import __main__ as cli  # noqa: E402
from ppo_lib import plotting  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
RENDER_CALL = re.compile(r"""\brender\(\s*["']([^"']+)["']""")
CHEAP = ["04_gae_weights", "05_value_clip", "05_clip_cases"]  # each renders in about a second


def shown_by_chapters() -> dict[str, list[str]]:
    """figure name -> the chapters (.py, py:percent) that call ``render("name")``."""
    shown: dict[str, list[str]] = {}
    for chapter in sorted((ROOT / "chapters").glob("*.py")):
        for name in RENDER_CALL.findall(chapter.read_text(encoding="utf-8")):
            shown.setdefault(name, [])
            if chapter.name not in shown[name]:
                shown[name].append(chapter.name)
    return shown


def registry() -> dict:
    plotting._load_all()
    return plotting.REGISTRY


def same_image(a: Path, b: Path) -> bool:
    """Identical bytes, or (another matplotlib/libpng build) the same pixels up to anti-aliasing."""
    if a.read_bytes() == b.read_bytes():
        return True
    x, y = matplotlib.image.imread(a), matplotlib.image.imread(b)
    return x.shape == y.shape and float(np.abs(x - y).mean()) < 2e-3


@pytest.fixture()
def render_to(tmp_path, monkeypatch) -> Path:
    """Make ``render``/``python -m ppo_lib figures`` write into a temporary folder."""
    monkeypatch.setattr(plotting, "figures_dir", lambda: tmp_path)
    return tmp_path


def test_every_figure_a_chapter_shows_is_registered_and_committed():
    shown = shown_by_chapters()
    if not shown:
        pytest.skip("no chapter calls render(...) yet")
    known = registry()
    unregistered = {n: c for n, c in shown.items() if n not in known}
    assert not unregistered, f"render() names with no @figure in ppo_lib/plotting: {unregistered}"
    missing = {n: c for n, c in shown.items() if not (FIGURES / f"{n}.png").exists()}
    assert not missing, f"figures/ lacks these (run `python -m ppo_lib figures`): {missing}"


def test_every_committed_figure_is_made_by_the_command():
    stale = sorted(p.name for p in FIGURES.glob("*.png") if p.stem not in registry())
    assert not stale, f"figures/ holds PNGs that `python -m ppo_lib figures` does not make: {stale}"


def test_figures_command_is_deterministic_and_reproduces_the_committed_file(render_to, capsys):
    names = [n for n in CHEAP if n in registry()] or sorted(registry())[:1]
    if not names:
        pytest.skip("no figure registered yet")
    name = names[0]
    assert cli.main(["figures", name]) == 0
    first = (render_to / f"{name}.png").read_bytes()
    assert str(render_to / f"{name}.png") in capsys.readouterr().out
    assert cli.main(["figures", name]) == 0
    assert (render_to / f"{name}.png").read_bytes() == first, f"{name}: two renders gave different PNG bytes"
    committed = FIGURES / f"{name}.png"
    assert committed.exists(), f"figures/{name}.png is missing: run `python -m ppo_lib figures`"
    assert same_image(render_to / f"{name}.png", committed), (
        f"figures/{name}.png is out of date: run `python -m ppo_lib figures {name}` and commit it")


def test_a_chapter_showing_a_figure_writes_no_file(render_to):
    import matplotlib.pyplot as plt

    name = next((n for n in CHEAP if n in registry()), None) or pytest.skip("no figure registered yet")
    fig = plotting.render(name)  # what a chapter cell does
    plt.close(fig)
    assert list(render_to.iterdir()) == [], "render() without save=True must not write figures/"
    with pytest.raises(ValueError, match="default settings"):
        plotting.render(name, save=True, not_a_default=1)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PPO_LIB_ALL_FIGURES"),
                    reason="re-renders every figure (about a minute); set PPO_LIB_ALL_FIGURES=1")
def test_all_chapter_figures_are_up_to_date(tmp_path):
    names = sorted(n for n in shown_by_chapters() if n in registry())
    assert cli.main(["figures", "--out", str(tmp_path), *names]) == 0  # figures made from committed runs read them
    stale = [n for n in names if not same_image(tmp_path / f"{n}.png", FIGURES / f"{n}.png")]
    assert not stale, f"out of date: run `python -m ppo_lib figures {' '.join(stale)}`"


def test_sqrt_kl_fit_recovers_a_hand_made_frontier():
    from ppo_lib.plotting.ch07 import sqrt_kl_fit

    exact = [{"kl": kl, "gain": 0.2 * kl**0.5} for kl in (1.0, 4.0, 9.0)]
    fit = sqrt_kl_fit(exact, kl=16.0)
    assert fit["alpha"] == pytest.approx(0.2) and fit["n"] == 3
    assert fit["low"] == pytest.approx(0.8) == fit["high"] and fit["gain_at"] == pytest.approx(0.8)  # no scatter
    noisy = [{"kl": 1.0, "gain": 0.1}, {"kl": 4.0, "gain": 0.5}, {"kl": 9.0, "gain": 0.5}]
    fit = sqrt_kl_fit(noisy, kl=4.0)
    assert fit["alpha"] == pytest.approx((1 * 0.1 + 2 * 0.5 + 3 * 0.5) / (1 + 4 + 9))  # Σ d g / Σ d²
    assert fit["low"] < fit["gain_at"] < fit["high"]
    with pytest.raises(ValueError, match="at least 3 runs"):
        sqrt_kl_fit(noisy[:2])
