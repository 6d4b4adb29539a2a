"""Every figure the book shows, and the one command that regenerates them (``python -m ppo_lib figures``).

Each chapter has a module here (``ch02.py``, ``ch03.py``, ...). A figure is a function
that takes only keyword arguments with defaults, computes what it plots deterministically
(seeded, on the CPU), and returns a matplotlib ``Figure``. It is registered under the name
of its file in ``figures/``:

    @figure("04_gae_bias_variance")
    def gae_bias_variance(gamma=0.9, seed=0):
        ...
        return fig

A chapter shows a figure with ``render("04_gae_bias_variance")``, which returns the figure
and writes no file (pass keyword arguments to explore other settings). Only
``python -m ppo_lib figures`` (``render_all()``) writes ``figures/NAME.png``: running or testing
a chapter never changes a committed file, and some figures come from a forward pass of a
real model, whose last digits (and so the PNG's bytes) depend on the CPU.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

import matplotlib

__all__ = ["figure", "render", "render_all", "figures_dir", "style", "REGISTRY"]

REGISTRY: dict[str, Callable] = {}


def figure(name: str):
    """Register a figure-making function under ``name`` (the PNG's file name, no suffix)."""

    def decorate(fn: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"two figures are registered as {name!r}.")
        REGISTRY[name] = fn
        fn.figure_name = name
        return fn

    return decorate


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def figures_dir() -> Path:
    """The repository's ``figures/`` folder (next to the ``ppo_lib`` package), else ``./figures``."""
    repo = Path(__file__).resolve().parents[2] / "figures"
    return repo if repo.is_dir() else Path.cwd() / "figures"


def style() -> None:
    """The book's plot style: readable on a laptop screen and in a PDF."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 120, "figure.figsize": (7.0, 4.0),
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.alpha": 0.3, "font.size": 10, "legend.frameon": False,
        "svg.hashsalt": "ppo_lib",  # deterministic output
    })


def render(name: str, save: bool = False, out: Path | None = None, **kwargs):
    """Make figure ``name``; write it to ``figures/NAME.png`` only when ``save`` is True.

    Args:
        name: a registered figure name, e.g. ``"04_gae_bias_variance"``.
        save: write the PNG to :func:`figures_dir` (what ``python -m ppo_lib figures`` does).
            The chapters leave it False, so running or testing them writes no tracked file.
        out: with ``save``, write it into this folder instead. Figures that read committed
            runs still read them from :func:`figures_dir`.
        **kwargs: passed to the figure function.

    Returns:
        The matplotlib ``Figure``.
    """
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"no figure named {name!r}; known: {sorted(REGISTRY)}")
    if save and kwargs:
        raise ValueError(f"figures/{name}.png shows the default settings; render({name!r}, save=True) "
                         f"takes no keyword arguments (got {sorted(kwargs)}).")
    style()
    fig = REGISTRY[name](**kwargs)
    if save:
        out = Path(out) if out is not None else figures_dir()
        out.mkdir(parents=True, exist_ok=True)
        # Fixed metadata so the PNG bytes depend only on the pixels.
        fig.savefig(out / f"{name}.png", bbox_inches="tight", metadata={"Software": None})
    return fig


def render_all(names: list[str] | None = None, out: Path | None = None) -> list[Path]:
    """Regenerate every registered figure (or ``names``) in ``figures/`` (or ``out``); returns the paths."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _load_all()
    folder = Path(out) if out is not None else figures_dir()
    paths = []
    for name in sorted(names or REGISTRY):
        fig = render(name, save=True, out=folder)
        plt.close(fig)
        paths.append(folder / f"{name}.png")
    return paths
