"""Figures: the seed's Figure-5 panels (metrics vs number of labels) for one run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxal.atomic import write_atomic
from jaxal.errors import ConfigError, RunDirError


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], squeeze: bool = True):
    """(figure, axes) for a file, without pyplot: nothing registers with pyplot's figure
    manager or selects a backend, so ``plt.show()`` in a notebook keeps working and no
    figure stays open. ``Figure.savefig`` renders with Agg (png) or the pdf backend."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


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
      rows: per-round metric records (``jaxal.apps.results.metrics_row``).
      path: output file; the format follows the suffix (.png, .pdf).
      title: names dataset, acquisition, posterior and seed.
      queried_labels: oracle labels of every queried point (all rounds).
      num_classes: number of bars in the histogram.
    """
    labels = np.array([r["num_labels"] for r in rows])
    fig, axes = subplots(2, 3, figsize=(13, 7))
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
    save_figure(fig, path)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save ``fig`` to ``path`` atomically (``jaxal.atomic.write_atomic``), in the format
    its suffix names (.png, .pdf): a killed run leaves the old figure, not half a new one."""
    fmt = Path(path).suffix.lstrip(".").lower() or None   # None: savefig.format (png)
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi),
                 full_disk_fix="rerun the same command")


def _save(fig, path: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")) -> None:
    """Save ``fig`` as path.<format> for every format."""
    path = str(path)
    stem = path.rsplit(".", 1)[0] if path.endswith((".png", ".pdf")) else path
    for fmt in formats:
        save_figure(fig, f"{stem}.{fmt}")


def figure5_bands(curves: dict[str, dict], path: str | os.PathLike, title: str) -> None:
    """Figure-5 panels with one line per strategy and a mean ± std band over seeds.

    Args:
      curves: strategy -> {"num_labels": [L], "<metric>_mean": [L], "<metric>_std": [L],
        "seeds": int} for every metric of ``FIGURE5_PANELS``.
      path: output stem; writes .png and .pdf.
      title: names dataset, posteriors and seeds.
    """
    fig, axes = subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, name) in zip(axes.flat, FIGURE5_PANELS, strict=False):
        for strategy, c in curves.items():
            x = np.asarray(c["num_labels"])
            mean, std = np.asarray(c[f"{key}_mean"]), np.asarray(c[f"{key}_std"])
            (line,) = ax.plot(x, mean, marker="o", markersize=2.5,
                              label=f"{strategy} ({c['seeds']} seeds)")
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            linewidth=0)
        ax.set_xlabel("number of labels")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, names, loc="center", title="strategy (mean ± std)")
    fig.suptitle(title)
    _save(fig, path)


def class_histograms(counts: dict[str, np.ndarray], path: str | os.PathLike,
                     title: str) -> None:
    """Grouped bars: mean number of queried points per class, one colour per strategy."""
    fig, ax = subplots(1, 1, figsize=(11, 4.5))
    num_classes = max(len(c) for c in counts.values())
    width = 0.8 / max(len(counts), 1)
    for i, (strategy, c) in enumerate(counts.items()):
        ax.bar(np.arange(num_classes) + (i - (len(counts) - 1) / 2) * width, c, width,
               label=strategy)
    ax.set_xticks(np.arange(num_classes))
    ax.set_xlabel("class of the queried point (oracle label)")
    ax.set_ylabel("queried points (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    _save(fig, path)


def figure4(extremes: dict, round_: int, path: str | os.PathLike, title: str) -> None:
    """The seed's Figure 4: the 5 highest (top row) and 5 lowest (bottom row) scored
    unlabelled pool images of one round, with their scores and oracle labels.

    Args:
      extremes: the arrays of a run's ``extremes.npz`` (``jaxal.apps.results.write_extremes``).
      round_: the AL round whose scoring is shown (>= 1).
    """
    rounds = list(np.asarray(extremes["round"]))
    if round_ not in rounds:
        raise ConfigError(f"round {round_} has no recorded scores; choose --round from "
                          f"{[int(r) for r in rounds]}")
    r = rounds.index(round_)
    num = extremes["top_index"].shape[1]
    fig, axes = subplots(2, num, figsize=(2.1 * num, 5.0), squeeze=False)
    for row, side, name in ((0, "top", "highest"), (1, "bottom", "lowest")):
        for j in range(num):
            ax = axes[row, j]
            image = np.asarray(extremes[f"{side}_image"][r, j], np.float32)
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            if image.ndim >= 2:
                ax.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"score {float(extremes[f'{side}_score'][r, j]):.3g}\n"
                         f"label {int(extremes[f'{side}_label'][r, j])}", fontsize=9)
        axes[row, 0].set_ylabel(f"{name} {num}")
    fig.suptitle(f"{title}\nround {round_}: the {num} highest (top) and lowest (bottom) "
                 "scored unlabelled pool points")
    _save(fig, path)


def protocol_line(experiment: dict, initial_labels: int) -> str:
    """The protocol of a run in the literature's words, from its config.json
    ``experiment``: 'cifar10: 1,000 initial labels, 1,000 a round, 10 rounds; 30 epochs
    a fit (500-3000 steps of 128), augmented'."""
    al, train = experiment["al"], experiment["al"]["train"]
    fit = (f"{train['steps']} steps of {train['batch_size']} a fit"
           if train.get("epochs") is None else
           f"{train['epochs']:g} epochs a fit ({train['min_steps']}-{train['max_steps']} "
           f"steps of {train['batch_size']})")
    return (f"{experiment['dataset']}: {initial_labels:,} initial labels, "
            f"{al['query_size']:,} a round, {al['rounds']} rounds; {fit}"
            + (", augmented" if train.get("augment") else ""))


def learning_curves(curves: dict[str, dict], path: str | os.PathLike, title: str,
                    log_labels: bool = False) -> None:
    """The literature's figure: test accuracy against labels up to the budget, one line
    per strategy, mean ± std over seeds shaded; labels on a log axis with ``log_labels``.

    Args:
      curves: strategy -> {"num_labels", "test_accuracy_mean", "test_accuracy_std",
        "seeds"} (``jaxal.apps.comparison.aggregate``).
      path: output stem; writes .png and .pdf.
      title: the protocol (``protocol_line``) and what was compared.
    """
    fig, ax = subplots(1, 1, figsize=(7.5, 5))
    for strategy, c in curves.items():
        x = np.asarray(c["num_labels"])
        mean, std = np.asarray(c["test_accuracy_mean"]), np.asarray(c["test_accuracy_std"])
        (line,) = ax.plot(x, mean, marker="o", markersize=2.5,
                          label=f"{strategy} ({c['seeds']} seed{'s' * (c['seeds'] > 1)})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                        linewidth=0)
    if log_labels:
        ax.set_xscale("log")
    ax.set_xlabel("number of labels" + (" (log scale)" if log_labels else ""))
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def _check_rows(rows: Sequence[dict], path: Path) -> None:
    """Refuse metric rows without the numbers Figure 5 plots (a hand-edited file)."""
    for n, row in enumerate(rows, 1):
        for key in ("num_labels", *(key for key, _ in FIGURE5_PANELS)):
            value = row.get(key)
            if key not in row or (value is not None and type(value) not in (int, float)):
                what = f"{key} {value!r:.40}, not a number" if key in row else f"no {key}"
                raise RunDirError(f"{path} record {n} has {what}; rerun the run's command, "
                                  "which rewrites it from the checkpoint")


def plot_run(out_dir: str | os.PathLike, round_: int | None = None) -> None:
    """(Re)draw a run's figure5.png/pdf and figure4.png/pdf from its files alone.

    Args:
      out_dir: a run's out dir (``jaxal.apps.experiment.run_experiment``).
      round_: the round of Figure 4 (default: the first AL round).
    """
    from jaxal.apps.results import read_extremes, read_metrics, read_queries, read_run_config

    out_dir = Path(out_dir)
    # Every file is read (a damaged one refused, RunDirError) before any figure is drawn.
    config = read_run_config(out_dir)
    rows = read_metrics(out_dir)
    _check_rows(rows, out_dir / "metrics.jsonl")
    queried = [y for q in read_queries(out_dir) for y in q["label"]]
    extremes = read_extremes(out_dir)
    try:
        al = config["al"]
        batch = "" if al.get("batch", "topk") == "topk" else f" ({al['batch']} batch)"
        title = (f"{config['dataset']}: acquisition {al['acquisition']}{batch}, posterior "
                 f"{al['posterior']} ({al['predictive']} predictive), seed {config['seed']}")
    except (KeyError, TypeError, AttributeError) as e:
        path = out_dir / "config.json"
        raise RunDirError(f"{path} is not a jaxal run config (no {e}); delete it and rerun "
                          "the run's command, which rewrites it") from e
    figure5(rows, out_dir / "figure5.png", title, queried)
    figure5(rows, out_dir / "figure5.pdf", title, queried)
    if extremes is not None:
        figure4(extremes, round_ or int(extremes["round"][0]), out_dir / "figure4",
                f"{title}: acquisition scores")
