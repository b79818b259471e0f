"""Comparisons: every run of a seed shares its start, aggregates match independent sums,
figures redraw from files alone."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from jaxal.apps.comparison import (
    NOT_REACHED,
    aggregate,
    aubc,
    labels_to_reach,
    markdown_table,
    median_labels,
    plot_comparison,
    summary_table,
)
from jaxal.apps.plots import protocol_line
from jaxal.apps.results import read_metrics
from jaxal.cli.compare import main as compare_main
from jaxal.cli.plot import main as plot_main

ARGS = ["--dataset", "moons", "--acq", "random", "entropy", "bald", "--posterior", "plugin",
        "laplace", "--seeds", "0", "1", "--rounds", "2", "--query-size", "4", "--steps", "30",
        "--samples", "8", "--pool-size", "120", "--val-size", "40"]
FIGURES = ["figure5.png", "figure5.pdf", "query_classes.png", "query_classes.pdf",
           "learning_curve.png", "learning_curve.pdf"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    compare_main([*ARGS, "--out", str(out)])
    return out


def test_labels_to_reach_median_and_aubc_by_hand():
    assert labels_to_reach([20, 30, 40], [0.5, 0.91, 0.8], 0.9) == 30
    assert labels_to_reach([20, 30, 40], [0.5, 0.6, 0.7], 0.9) is None
    assert median_labels([30, None, 50]) == 50
    assert median_labels([30, None, None]) == NOT_REACHED
    assert median_labels([30, 40]) == 35
    # Trapezoid: ((0.5 + 0.7) / 2 * 10 + (0.7 + 0.9) / 2 * 20) / 30.
    assert aubc([10, 20, 40], [0.5, 0.7, 0.9]) == pytest.approx((6 + 16) / 30)
    assert aubc([20], [0.7]) == 0.7          # one budget: no range to divide by


def _fake_comparison(out: Path, dataset: str, accuracy: dict[int, list[float]]) -> Path:
    """A comparison dir on ``dataset`` with one strategy, one run per seed, whose test
    accuracy per round is ``accuracy[seed]`` (1,000 labels + 1,000 a round)."""
    runs = []
    for seed, acc in accuracy.items():
        run = out / "runs" / f"margin-seed{seed}"
        run.mkdir(parents=True)
        rows = [{"round": r, "num_labels": 1000 * (r + 1), "test_accuracy": a,
                 "train_loss": 0.0, "test_loss": 0.0, "val_accuracy": a, "test_entropy": 0.0,
                 "score_s": 0.0, "train_s": 1.0, "posterior_s": 0.0, "eval_s": 0.0}
                for r, a in enumerate(acc)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "queries.jsonl").write_text("".join(
            json.dumps({"round": r, "label": [r % 10]}) + "\n" for r in range(1, len(acc))))
        runs.append({"strategy": "margin", "seed": seed, "dir": f"runs/margin-seed{seed}"})
    (out / "comparison.json").write_text(json.dumps(
        {"strategies": ["margin"], "seeds": sorted(accuracy), "dataset": dataset,
         "runs": runs}))
    return out


@pytest.mark.parametrize("dataset, targets, header", [
    ("mnist", (90, 95), "| strategy | seeds | labels to 90% | labels to 95% | AUBC |"),
    ("cifar10", (60, 65), "| strategy | seeds | labels to 60% (cifar10 protocol) | "
                          "labels to 65% (cifar10 protocol) | AUBC |"),
    ("fashion_mnist", (70, 75), "| strategy | seeds | labels to 70% (fashion_mnist "
                                "protocol) | labels to 75% (fashion_mnist protocol) |")])
def test_summary_reports_labels_to_the_dataset_s_targets(tmp_path, dataset, targets, header):
    """The labels to reach are the dataset's protocol's targets (MNIST's table as before),
    so a CIFAR-10 curve that never nears 90% still gets numbers, and the header says so."""
    accuracy = {0: [0.55, 0.61, 0.66, 0.71, 0.76, 0.91, 0.96],
                1: [0.52, 0.58, 0.64, 0.68, 0.73, 0.80, 0.95]}
    out = _fake_comparison(tmp_path / "cmp", dataset, accuracy)
    entry = aggregate(out)[0]["margin"]
    for target in targets:
        per_seed = [labels_to_reach([1000 * (r + 1) for r in range(7)], a, target / 100)
                    for a in accuracy.values()]
        assert entry[f"labels_to_{target}"] == median_labels(per_seed)
        assert entry[f"labels_to_{target}"] != NOT_REACHED
    assert not any(f"labels_to_{t}" in entry for t in {90, 95} - set(targets))
    assert summary_table({"margin": entry}, dataset).startswith(header)


def test_markdown_table_writes_header_rule_rows_and_refuses_a_short_row():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, ""]]) == (
        "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |")
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [[1]])


@pytest.mark.slow
def test_comparison_skips_impossible_pairs_and_runs_the_rest(comparison, capsys):
    meta = json.loads((comparison / "comparison.json").read_text())
    assert meta["strategies"] == ["random/plugin", "random/laplace", "entropy/plugin",
                                  "entropy/laplace", "bald/laplace"]
    assert meta["seeds"] == [0, 1]
    for name in [*FIGURES, "summary.csv", "summary.json", "curves.csv"]:
        assert (comparison / name).stat().st_size > 0, name
    for run in meta["runs"]:
        assert len(read_metrics(comparison / run["dir"])) == 3


@pytest.mark.slow
def test_runs_of_one_seed_share_their_start(comparison):
    """Round 0 (initial labels, weights, validation split) is the same for every strategy
    with the same posterior; the queries differ."""
    runs = comparison / "runs"
    for seed in (0, 1):
        first = read_metrics(runs / f"random-plugin-seed{seed}")[0]
        other = read_metrics(runs / f"entropy-plugin-seed{seed}")[0]
        for key in ("train_loss", "test_loss", "test_accuracy", "val_loss"):
            assert first[key] == other[key]
    assert read_metrics(runs / "random-plugin-seed0")[0]["test_loss"] != read_metrics(
        runs / "random-plugin-seed1")[0]["test_loss"]


@pytest.mark.slow
def test_aggregates_match_an_independent_computation(comparison):
    summary = json.loads((comparison / "summary.json").read_text())
    with open(comparison / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    for strategy in ("entropy/laplace", "bald/laplace"):
        rows = [read_metrics(comparison / "runs" / f"{strategy.replace('/', '-')}-seed{s}")
                for s in (0, 1)]
        acc = np.array([[r["test_accuracy"] for r in rs] for rs in rows])
        labels = np.array([r["num_labels"] for r in rows[0]], float)
        areas = [((a[1:] + a[:-1]) / 2 * np.diff(labels)).sum() / (labels[-1] - labels[0])
                 for a in acc]
        e = summary[strategy]
        assert e["aubc_mean"] == pytest.approx(np.mean(areas), rel=1e-9)
        assert e["aubc_std"] == pytest.approx(np.std(areas, ddof=1), rel=1e-9)
        assert e["final_accuracy_mean"] == pytest.approx(acc[:, -1].mean(), rel=1e-9)
        for target in (90, 95):
            per_seed = [next((n for n, x in zip(labels, a, strict=True)
                              if x >= target / 100), None) for a in acc]
            expected = NOT_REACHED if None in per_seed else sum(per_seed) / 2
            assert e[f"labels_to_{target}"] == expected
        mine = [c for c in curves if c["strategy"] == strategy]
        assert [float(c["num_labels"]) for c in mine] == labels.tolist()
        entropy = np.array([[r["test_entropy"] for r in rs] for rs in rows])
        np.testing.assert_allclose([float(c["test_entropy_mean"]) for c in mine],
                                   entropy.mean(0), rtol=1e-9)
        np.testing.assert_allclose([float(c["test_entropy_std"]) for c in mine],
                                   entropy.std(0, ddof=1), rtol=1e-9)


def test_protocol_line_names_the_protocol_in_the_literature_s_words():
    experiment = {"dataset": "cifar10", "al": {"query_size": 1000, "rounds": 10, "train": {
        "steps": 500, "batch_size": 128, "epochs": 30.0, "min_steps": 500,
        "max_steps": 3000, "augment": True}}}
    assert protocol_line(experiment, 1000) == (
        "cifar10: 1,000 initial labels, 1,000 a round, 10 rounds; 30 epochs a fit "
        "(500-3000 steps of 128), augmented")
    # A run dir written before epochs and augmentation existed has neither field.
    experiment["al"]["train"] = {"steps": 500, "batch_size": 32}
    assert protocol_line(experiment, 20) == (
        "cifar10: 20 initial labels, 1,000 a round, 10 rounds; 500 steps of 32 a fit")


@pytest.mark.slow
def test_learning_curve_draws_the_mean_accuracy_under_the_protocol(comparison, monkeypatch):
    import jaxal.apps.plots

    saved = {}
    monkeypatch.setattr(jaxal.apps.plots, "_save",
                        lambda fig, path: saved.__setitem__(Path(path).name, fig))
    plot_comparison(comparison, log_labels=True)
    ax = saved["learning_curve"].axes[0]
    assert ax.get_title().startswith(
        "moons: 4 initial labels, 4 a round, 2 rounds; 30 steps of 32 a fit\n")
    assert ax.get_xscale() == "log"
    with open(comparison / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
    assert set(lines) == {c["strategy"] for c in curves}
    for strategy, line in lines.items():
        mine = [c for c in curves if c["strategy"] == strategy]
        np.testing.assert_allclose(line.get_xdata(), [float(c["num_labels"]) for c in mine])
        np.testing.assert_allclose(line.get_ydata(),
                                   [float(c["test_accuracy_mean"]) for c in mine])


@pytest.mark.slow
def test_plot_redraws_every_figure_without_recomputing(comparison, monkeypatch):
    import jaxal.apps.experiment

    def no_runs(*a, **k):
        raise AssertionError("plot must not run anything")

    monkeypatch.setattr(jaxal.apps.experiment, "run_experiment", no_runs)
    monkeypatch.setattr(jaxal.apps.experiment, "run_rounds", no_runs)
    run = comparison / "runs" / "entropy-laplace-seed1"
    for path in [*(comparison / f for f in FIGURES), run / "figure4.png", run / "figure5.pdf"]:
        path.unlink()
    plot_main([str(comparison), "--round", "2"])
    for path in [*(comparison / f for f in FIGURES), run / "figure4.png", run / "figure5.pdf"]:
        assert path.stat().st_size > 5_000, path


def test_plot_refuses_a_dir_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        plot_main([str(tmp_path)])
    assert err.value.code == 2
    assert "neither a run" in capsys.readouterr().err


def test_compare_refuses_when_nothing_can_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        compare_main(["--dataset", "moons", "--acq", "bald", "--posterior", "plugin",
                      "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "error: no runnable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
