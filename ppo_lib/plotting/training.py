"""Training curves of a PPO run (chapter 06 and ``python -m ppo_lib train``)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

__all__ = ["plot_history", "LivePlot"]

PANELS = (
    ("env/score_mean", "reward (score)"),
    ("objective/kl", "KL to reference (nats / sequence)"),
    ("policy/clipfrac", "clip fraction"),
    ("policy/entropy", "entropy (nats / token)"),
)


def plot_history(histories: dict[str, Sequence[dict]] | Sequence[dict], fig=None):
    """Reward, KL, clip fraction and entropy against the update number.

    Args:
        histories: one run's list of stats dicts, or ``{label: history}`` for several runs.
        fig: a figure to draw into (for live updating); a new one by default.
    """
    if not isinstance(histories, dict):
        histories = {"": histories}
    fig = fig or plt.figure(figsize=(10, 5.5))
    fig.clear()
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for (key, title), ax in zip(PANELS, axes):
        for label, history in histories.items():
            xs = [h.get("update", i + 1) for i, h in enumerate(history)]
            ax.plot(xs, [h[key] for h in history], label=label or None)
        ax.set_title(title)
    for ax in axes[2:]:
        ax.set_xlabel("PPO update")
    if any(histories):
        axes[0].legend()
    fig.tight_layout()
    return fig


class LivePlot:
    """A callback for :meth:`PPOTrainer.train` that redraws the curves in a notebook cell.

    ``trainer.train(prompts, n, callback=LivePlot(every=2))``
    """

    def __init__(self, every: int = 1):
        self.every, self.history, self.fig, self.handle = every, [], None, None

    def __call__(self, update: int, stats: dict) -> None:
        from IPython.display import display

        self.history.append(stats)
        if update % self.every:
            return
        self.fig = plot_history(self.history, self.fig)
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
            plt.close(self.fig)  # shown through the display handle only
        else:
            self.handle.update(self.fig)
