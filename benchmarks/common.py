"""What the benchmark scripts share: result files, the learning-curves driver on
``jaxal.apps.comparison.run_comparison``, and the curves' statistics (the library's).

A curves result file is ``{"setting": ..., "runs": {"<variant>-seed<k>": record}, ...}``;
a record holds per round the labels, test metrics and seconds (``curve_record``).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from jaxal.apps.comparison import Run, aubc, labels_to_reach, median_labels, run_comparison, run_dir
from jaxal.apps.results import read_metrics
from jaxal.errors import RunDirError

RESULTS = Path(__file__).parent / "results"
# What every figure measured on the CIFAR-10 stand-in says (../shared/README.md).
STAND_IN = "CIFAR-10 stand-in (lossy JPEG copy; not CIFAR-10 results)"

# A record's key -> the metrics.jsonl column it is read from.
RECORD_COLUMNS = {"labels": "num_labels", "test_accuracy": "test_accuracy",
                  "test_nll": "test_loss", "test_ece": "test_ece",
                  "test_entropy": "test_entropy", "prior_precision": "prior_precision",
                  "query_s": "score_s", "train_s": "train_s", "posterior_s": "posterior_s"}


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (a temp file per process, then a rename), so
    concurrent benchmark processes never leave a half-written result file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def read_result(path: Path, setting: dict) -> dict:
    """The result file at ``path`` if it was made with ``setting``, else an empty one."""
    if path.exists() and (old := json.loads(path.read_text()))["setting"] == setting:
        return old
    return {"setting": setting, "runs": {}}


def curve_record(rows: Sequence[dict]) -> dict:
    """What a curves benchmark keeps of one run, per round, from its metrics rows
    (``jaxal.apps.results.read_metrics``); seconds: the run's score, train, posterior and
    evaluation time."""
    record = {key: [row[column] for row in rows] for key, column in RECORD_COLUMNS.items()}
    record["seconds"] = sum(row["score_s"] + row["train_s"] + row["posterior_s"]
                            + row["eval_s"] for row in rows)
    return record


def finished_record(path: Path, rounds: int) -> dict | None:
    """The ``curve_record`` of the run dir at ``path`` once all ``rounds`` are written."""
    try:
        rows = {row["round"]: row for row in read_metrics(path)}   # a resumed round: the last
    except RunDirError:
        return None
    if len(rows) < rounds + 1:
        return None
    return curve_record([rows[r] for r in sorted(rows)])


def run_curves(out: Path, setting: dict, runs: Sequence[Run], comparison_dir: Path,
               extra: dict | None = None) -> dict:
    """Variants x seeds -> ``run_comparison`` -> the result file ``out``.

    Runs already in ``out`` (same ``setting``) are kept; the others run (or resume) as one
    comparison in ``comparison_dir`` (run dirs ``runs/<variant>-seed<k>``), then each
    finished run's record joins ``out``, with ``extra`` (e.g. the machine). Another
    process may run other variants into the same file: its runs are merged, ours win.
    """
    result = read_result(out, setting)
    todo = [r for r in runs if f"{r.strategy}-seed{r.seed}" not in result["runs"]]
    if not todo:
        return result
    run_comparison(todo, comparison_dir, progress=lambda line: print(line, flush=True))
    for r in todo:
        if (record := finished_record(run_dir(comparison_dir, r), r.config.al.rounds)):
            result["runs"][f"{r.strategy}-seed{r.seed}"] = {**record, **(extra or {})}
    result["runs"] = {**read_result(out, setting)["runs"], **result["runs"]}
    write_json(out, result)
    return result


def runs_of(result: dict, name: str, seeds: Sequence[int]) -> list[dict]:
    """The records of ``name`` for those of ``seeds`` it has, in seed order."""
    return [r for seed in seeds if (r := result["runs"].get(f"{name}-seed{seed}"))]


def area(record: dict) -> float:
    """The record's AUBC (``jaxal.apps.comparison.aubc``)."""
    return aubc(record["labels"], record["test_accuracy"])


def labels_to(records: Sequence[dict], target: float) -> int | float | str:
    """Labels to reach ``target`` test accuracy, median over the records' seeds
    (``jaxal.apps.comparison.median_labels``: "not reached" counts above every budget)."""
    return median_labels([labels_to_reach(r["labels"], r["test_accuracy"], target)
                          for r in records])


def mean_std(values, spread_of_one: bool = False) -> str:
    """'0.858 ± 0.018' (sample std); one value: '0.811', or '0.811 ± 0.000' with
    ``spread_of_one``."""
    values = list(values)
    if len(values) == 1 and not spread_of_one:
        return f"{values[0]:.3f}"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def per_round(records: Sequence[dict], key: str, over=statistics.mean) -> float:
    """Seconds ``key`` a round: ``over`` rounds 1 on (round 0 compiles), mean over the
    records' seeds."""
    return statistics.mean(over(r[key][1:]) for r in records)


def mnist_pool(data_dir: str | None, test_size: int):
    """(``ALData`` of the MNIST protocol's pool of 10,000, its first ``test_size`` test
    images and labels): the data the evidence benchmarks fit on and evaluate."""
    from jaxal.apps.experiment import ExperimentConfig, load_split, to_device

    data = to_device(load_split(ExperimentConfig(dataset="mnist", pool_size=10000,
                                                 data_dir=data_dir)))
    return data, data.test_x[:test_size], data.test_y[:test_size]


def result_header(script: str, argv: Sequence[str], test_size: int) -> dict:
    """The head of an evidence benchmark's result: machine, command, test size, no rows."""
    from machine import cpu_info, describe

    return {"machine": describe(cpu_info()), "cpu": cpu_info(),
            "command": f"python benchmarks/{script} " + " ".join(argv),
            "test_size": test_size, "rows": []}

