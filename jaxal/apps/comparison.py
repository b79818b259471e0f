"""Comparisons: several strategies x posteriors x seeds, aggregated, plotted, resumable.

    runs = [Run("entropy/laplace", 0, config), ...]
    run_comparison(runs, "runs/cmp")      # runs/cmp/runs/<strategy>-seed<k>/ per run
    plot_comparison("runs/cmp")           # redraw from the files alone

All runs of one seed share the initial labelled set, the validation split, the pool subset
and the initial weights (they depend on the seed alone: ``jaxal.loop.run_rounds``), so
their differences come from the strategy. Each run is an ordinary resumable out dir, so a
killed comparison loses at most one round of one run. The comparison dir holds

    comparison.json   the strategies, seeds and run dirs
    summary.csv/json  per strategy: labels to reach each target test accuracy (the
                      dataset's protocol's ``targets``: MNIST 90% / 95%; median over
                      seeds, "not reached" within the budget), AUBC, final accuracy, wall
                      time per round (mean ± std over seeds)
    summary.md        the same as a markdown table (``summary_table``)
    curves.csv        per strategy and label count: mean and std over seeds of every
                      Figure-5 metric
    figure5.png/pdf   the Figure-5 panels, one line and a ± std band per strategy
    learning_curve.png/pdf  test accuracy vs labels, the protocol in the title (the
                      literature's figure; ``jaxal.plot --log-labels``: log axis)
    query_classes.png/pdf  queried points per class and strategy
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxal.apps.experiment import ExperimentConfig, check_config, run_experiment
from jaxal.apps.plots import (
    FIGURE5_PANELS,
    class_histograms,
    figure5_bands,
    learning_curves,
    protocol_line,
)
from jaxal.apps.results import (
    read_json,
    read_metrics,
    read_queries,
    read_run_config,
    write_json_atomic,
    write_text_atomic,
)
from jaxal.config import protocol_of
from jaxal.errors import RunDirError

METRICS = tuple(key for key, _ in FIGURE5_PANELS)
NOT_REACHED = "not reached"


class Run(NamedTuple):
    strategy: str                 # e.g. "entropy/laplace"
    seed: int
    config: ExperimentConfig


def run_dir(out_dir: str | os.PathLike, run: Run) -> Path:
    return Path(out_dir) / "runs" / f"{run.strategy.replace('/', '-')}-seed{run.seed}"


def run_comparison(runs: Sequence[Run], out_dir: str | os.PathLike,
                   progress: Callable[[str], None] | None = print,
                   seeds_form: str | None = None) -> dict:
    """Run (or resume) every run, then aggregate and plot; returns the summary.

    Every config is checked before the first run starts. Aggregates and figures are
    rewritten after each finished run, so they are usable while the comparison goes on.
    ``seeds_form``: "sequential" runs one run after another; "vmapped" runs the seeds of
    each strategy as one program (``jaxal.apps.seeds``; where they cannot, one after another);
    None: ``jaxal.batching.default_seeds_form()``.
    """
    for run in runs:
        check_config(run.config)
    seeds = {r.seed for r in runs}
    for strategy in {r.strategy for r in runs}:
        mine = sorted(r.seed for r in runs if r.strategy == strategy)
        if set(mine) != seeds or len(mine) != len(seeds):
            raise ValueError(f"strategy {strategy} runs seeds {mine}, others {sorted(seeds)}"
                             "; every strategy needs each seed once")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "comparison.json", {
        "strategies": list(dict.fromkeys(r.strategy for r in runs)),
        "seeds": sorted(seeds),
        "dataset": runs[0].config.dataset,
        "runs": [{"strategy": r.strategy, "seed": r.seed,
                  "dir": str(run_dir(out_dir, r).relative_to(out_dir))} for r in runs]})
    from jaxal.batching import default_seeds_form

    summary = {}
    if (seeds_form or default_seeds_form()) == "vmapped":
        from jaxal.apps.seeds import run_seeds, stackable

        for strategy in dict.fromkeys(r.strategy for r in runs):
            mine = [r for r in runs if r.strategy == strategy]
            if len(mine) > 1 and stackable([r.config for r in mine]) is None:
                if progress is not None:
                    progress(f"== {strategy}")
                if run_seeds([r.config for r in mine], [run_dir(out_dir, r) for r in mine],
                             progress) is not None:
                    summary = plot_comparison(out_dir)
                    runs = [r for r in runs if r.strategy != strategy]
    for i, run in enumerate(runs):
        if progress is not None:
            progress(f"== run {i + 1}/{len(runs)}: {run.strategy}, seed {run.seed}")
        run_experiment(run.config, run_dir(out_dir, run), progress=progress)
        summary = plot_comparison(out_dir)
    return summary


def labels_to_reach(num_labels: Sequence[int], accuracy: Sequence[float], target: float
                    ) -> int | None:
    """The first label count whose test accuracy is >= target, or None."""
    for n, a in zip(num_labels, accuracy, strict=True):
        if a >= target:
            return int(n)
    return None


def median_labels(values: Sequence[int | None]) -> int | float | str:
    """Median over seeds, "not reached" counted above every budget (so a median is
    "not reached" when half or more of the seeds never got there)."""
    keyed = sorted(values, key=lambda v: np.inf if v is None else v)
    n = len(keyed)
    lo, hi = keyed[(n - 1) // 2], keyed[n // 2]
    if lo is None or hi is None:
        return NOT_REACHED
    return lo if lo == hi else (lo + hi) / 2


def aubc(num_labels: Sequence[int], accuracy: Sequence[float]) -> float:
    """Area under the budget curve: trapezoid of accuracy over labels, divided by the
    label range, so 1.0 means perfect accuracy from the first label on."""
    x = np.asarray(num_labels, float)
    if x[-1] == x[0]:
        return float(accuracy[0])
    return float(np.trapezoid(np.asarray(accuracy, float), x) / (x[-1] - x[0]))


def targets_of(dataset: str) -> tuple[float, ...]:
    """The test accuracies whose labels to reach a comparison on ``dataset`` reports: its
    protocol's (``jaxal.config.PROTOCOLS``; MNIST's and unknown datasets' 90% / 95%)."""
    return protocol_of(dataset).targets


def target_key(target: float) -> str:
    """The summary's key of a target: 0.9 -> 'labels_to_90'."""
    return f"labels_to_{round(100 * target)}"


def target_header(target: float, dataset: str) -> str:
    """A table's column for a target, naming where it comes from where that is not the
    literature's MNIST one: 'labels to 90%', 'labels to 60% (cifar10 protocol)'."""
    source = protocol_of(dataset).targets_source
    return f"labels to {100 * target:g}%" + (f" ({source})" if source else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The one markdown table writer (the summary's and the benchmarks'): a header row, a
    rule, one row per sequence of cells (``str()`` of each)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column of {header}")
    row = lambda cells: "| " + " | ".join(map(str, cells)) + " |"
    return "\n".join([row(header), "|" + "---|" * len(header), *map(row, rows)])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def read_comparison(out_dir: str | os.PathLike) -> dict:
    """The strategies, seeds, dataset and run dirs in ``out_dir``'s comparison.json."""
    path = Path(out_dir) / "comparison.json"
    fix = "rerun the comparison's command, which rewrites it"
    meta = read_json(path, fix)
    try:
        ok = (isinstance(meta["strategies"], list) and isinstance(meta["dataset"], str)
              and all(isinstance(r["dir"], str) and r["strategy"] in meta["strategies"]
                      and isinstance(r["seed"], int) for r in meta["runs"]))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise RunDirError(f"{path} is not a jaxal comparison file; {fix}")
    return meta


def _finished_runs(out_dir: Path) -> dict[str, list[tuple[int, Path]]]:
    meta = read_comparison(out_dir)
    by_strategy: dict[str, list[tuple[int, Path]]] = {s: [] for s in meta["strategies"]}
    for r in meta["runs"]:
        path = out_dir / r["dir"]
        if (path / "metrics.jsonl").exists():
            by_strategy[r["strategy"]].append((r["seed"], path))
    return by_strategy


def aggregate(out_dir: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(summary, curves, class counts) per strategy from the run dirs' files.

    Only the rounds every seed of a strategy has finished are aggregated, so a partly
    finished comparison still gives a consistent picture. Labels to reach: at the
    dataset's targets (``targets_of``).
    """
    out_dir = Path(out_dir)
    targets = targets_of(read_comparison(out_dir)["dataset"])
    summary, curves, classes = {}, {}, {}
    for strategy, runs in _finished_runs(out_dir).items():
        if not runs:
            continue
        rows = [read_metrics(path) for _, path in runs]
        length = min(len(r) for r in rows)
        rows = [r[:length] for r in rows]
        labels = [row["num_labels"] for row in rows[0]]
        curve = {"num_labels": labels, "seeds": len(rows)}
        for key in METRICS:
            per_round = np.array([[row[key] for row in r] for r in rows], float)
            curve[f"{key}_mean"] = per_round.mean(0).tolist()
            curve[f"{key}_std"] = (per_round.std(0, ddof=1) if len(rows) > 1
                                   else np.zeros(length)).tolist()
        curves[strategy] = curve
        accuracy = [[row["test_accuracy"] for row in r] for r in rows]
        entry = {"seeds": [seed for seed, _ in runs], "rounds": length - 1,
                 "final_labels": labels[-1]}
        for t in targets:
            per_seed = [labels_to_reach(labels, a, t) for a in accuracy]
            entry[target_key(t)] = median_labels(per_seed)
            entry[f"{target_key(t)}_per_seed"] = [
                NOT_REACHED if v is None else v for v in per_seed]
        entry["aubc_mean"], entry["aubc_std"] = _mean_std([aubc(labels, a) for a in accuracy])
        entry["final_accuracy_mean"], entry["final_accuracy_std"] = _mean_std(
            [a[-1] for a in accuracy])
        seconds = [statistics.mean(row["score_s"] + row["train_s"] + row["posterior_s"]
                                   + row["eval_s"] for row in r[1:]) if length > 1 else 0.0
                   for r in rows]
        entry["seconds_per_round_mean"], entry["seconds_per_round_std"] = _mean_std(seconds)
        summary[strategy] = entry
        counts = []
        for _, path in runs:
            labels_queried = [y for q in read_queries(path) if q["round"] < length
                              for y in q["label"]]
            counts.append(np.bincount(np.asarray(labels_queried, int), minlength=1))
        width = max(len(c) for c in counts)
        classes[strategy] = np.mean([np.pad(c, (0, width - len(c))) for c in counts], 0)
    width = max((len(c) for c in classes.values()), default=0)
    classes = {s: np.pad(c, (0, width - len(c))) for s, c in classes.items()}
    return summary, curves, classes


def summary_columns(targets: Sequence[float]) -> tuple[str, ...]:
    """summary.csv's columns: one labels-to-reach column per target."""
    return ("strategy", "seeds", "rounds", "final_labels", *map(target_key, targets),
            "aubc_mean", "aubc_std", "final_accuracy_mean", "final_accuracy_std",
            "seconds_per_round_mean", "seconds_per_round_std")


def _csv(rows: list[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def summary_table(summary: dict, dataset: str) -> str:
    """A markdown table of the summary (the comparison's closing-note view); its
    labels-to-reach columns are the dataset's targets, named with their source."""
    targets = targets_of(dataset)
    return markdown_table(
        ["strategy", "seeds", *(target_header(t, dataset) for t in targets), "AUBC",
         "final accuracy", "s / round"],
        [[s, len(e["seeds"]), *(e[target_key(t)] for t in targets),
          f"{e['aubc_mean']:.3f} ± {e['aubc_std']:.3f}",
          f"{e['final_accuracy_mean']:.3f} ± {e['final_accuracy_std']:.3f}",
          f"{e['seconds_per_round_mean']:.1f}"] for s, e in summary.items()])


def plot_comparison(out_dir: str | os.PathLike, log_labels: bool = False) -> dict:
    """(Re)write summary.csv/json, curves.csv and the figures from the run dirs alone:
    Figure-5 panels, the learning curve in the literature's form (test accuracy vs
    labels, the protocol in its title; ``log_labels``: a log axis) and query classes."""
    out_dir = Path(out_dir)
    summary, curves, classes = aggregate(out_dir)
    if not summary:
        return summary
    dataset = read_comparison(out_dir)["dataset"]
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(out_dir / "summary.csv", _csv(
        [{"strategy": s, **e, "seeds": " ".join(map(str, e["seeds"]))}
         for s, e in summary.items()], summary_columns(targets_of(dataset))))
    write_text_atomic(out_dir / "summary.md", summary_table(summary, dataset) + "\n")
    curve_rows = [{"strategy": s, "num_labels": n,
                   **{f"{k}_{stat}": c[f"{k}_{stat}"][i] for k in METRICS
                      for stat in ("mean", "std")}}
                  for s, c in curves.items() for i, n in enumerate(c["num_labels"])]
    write_text_atomic(out_dir / "curves.csv", _csv(
        curve_rows, ["strategy", "num_labels", *(f"{k}_{stat}" for k in METRICS
                                                 for stat in ("mean", "std"))]))
    meta = read_comparison(out_dir)
    seeds = sorted({seed for e in summary.values() for seed in e["seeds"]})
    title = f"{meta['dataset']}: {', '.join(summary)}; seeds {seeds}"
    figure5_bands(curves, out_dir / "figure5", title)
    first = next(path for runs in _finished_runs(out_dir).values() for _, path in runs)
    protocol = protocol_line(read_run_config(first),
                             next(iter(curves.values()))["num_labels"][0])
    learning_curves(curves, out_dir / "learning_curve",
                    f"{protocol}\n{', '.join(summary)}; seeds {seeds}", log_labels)
    class_histograms(classes, out_dir / "query_classes",
                     f"Classes of the queried points. {title}")
    return summary
