"""Figures: the seed's Figure-5 panels (metrics vs number of labels) for one run."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

FIGURE5_PANELS = (
    ("train_loss", "training loss (NLL, labelled set)"),
    ("test_loss", "test loss (NLL)"),
    ("val_accuracy", "validation accuracy"),
    ("test_accuracy", "test accuracy"),
    ("test_entropy", "test average predictive entropy (nats)"),
)


def figure5(rows: Sequence[dict], path: str | os.PathLike, title: str,
            queried_labels: Sequence[int] = (), num_classes: int | None = None) -> None:
    """Save the Figure-5 panels vs number of labels, plus the class histogram of queries.

    Args:
      rows: per-round metric records (``jaxal.results.metrics_row``).
      path: output file; the format follows the suffix (.png, .pdf).
      title: names dataset, acquisition, posterior and seed.
      queried_labels: oracle labels of every queried point (all rounds).
      num_classes: number of bars in the histogram.
    """
    labels = np.array([r["num_labels"] for r in rows])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, (key, name) in zip(axes.flat, FIGURE5_PANELS, strict=False):
        ax.plot(labels, [r[key] for r in rows], marker="o", markersize=3)
        ax.set_xlabel("number of labels")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax = axes.flat[-1]
    counts = np.bincount(np.asarray(queried_labels, int), minlength=num_classes or 0)
    ax.bar(np.arange(counts.size), counts)
    ax.set_xticks(np.arange(counts.size))
    ax.set_xlabel("class")
    ax.set_ylabel("queried points")
    ax.set_title("classes of queried points", fontsize=10)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
