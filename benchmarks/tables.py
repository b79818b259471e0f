"""The result tables, from the result files alone: ``python benchmarks/tables.py`` rewrites
``benchmarks/results/<name>.md`` and every region of README.md and docs/*.md between

    <!-- table: <name> -->
    ...
    <!-- /table -->

with the table of ``benchmarks/results/<name>.json`` (``--check``: change nothing, list
what differs; exit 1 if anything does). Each table opens with the command that made its
result file. ``tests/test_tables.py`` checks that the committed docs match. Every table is
written by ``jaxal.comparison.markdown_table``; its statistics are the library's.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common import RESULTS, area, labels_to, mean_std, per_round, runs_of

from jaxal.comparison import markdown_table, target_header, targets_of

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
REGION = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
TARGETS = targets_of("mnist")     # the protocol's: 90% / 95%


def _seeds(result: dict) -> list[int]:
    return sorted({int(k.rsplit("-seed", 1)[1]) for k in result["runs"]})


def posterior_curves(result: dict) -> str:
    """``benchmarks/posterior_curves.py``: per variant, labels to 90% / 95% (median over
    seeds), AUBC and its difference from random seed by seed, last-round test metrics,
    seconds per round and the last prior precision."""
    s, about, seeds = result["setting"], result["table"], _seeds(result)
    subset = about["subset_size"]
    head = (f"MNIST, pool {s['pool_size']}, {s['init_per_class']} labels per class to start + "
            f"{s['rounds']} rounds x {s['query_size']}, seed CNN 500 steps a fit (MC dropout: "
            f"{about['mc_dropout_steps']:,}; mc-dropout-500: 500); seeds {seeds}. Labels to "
            "reach: median over seeds. NLL, ECE: test set, last round. s/round: mean over "
            "rounds 1-20 (indicative: other jobs shared the 2 cores). `subset`: the query "
            f"scores {subset:,} random unlabelled pool points a round (--pool-subset), not all "
            "10,000. AUBC - random: the difference seed by seed (same initial labels, pool and "
            "weights), mean ± std over the seeds both have; the seeds differ more from each "
            "other than the methods within a seed.")
    random = {seed: area(r) for seed in seeds if (r := result["runs"].get(f"random-seed{seed}"))}
    rows = []
    for name, variant in about["variants"].items():
        runs = runs_of(result, name, seeds)
        if not runs:
            continue
        gains = [area(r) - random[seed] for seed in seeds
                 if (r := result["runs"].get(f"{name}-seed{seed}")) and seed in random]
        gain = ("—" if name == "random" or not gains else f"{statistics.mean(gains):+.3f}"
                + (f" ± {statistics.stdev(gains):.3f}" if len(gains) > 1 else ""))
        last = lambda key, runs=runs: statistics.mean(r[key][-1] for r in runs)
        per_round_s = partial(per_round, runs)
        rows.append([
            f"{name}{' (subset)' if variant['pool_subset'] else ''} ({len(runs)} seeds)",
            *(labels_to(runs, t) for t in TARGETS),
            mean_std(map(area, runs), True), gain, f"{last('test_accuracy'):.3f}",
            f"{last('test_nll'):.3f}", f"{last('test_ece'):.3f}", f"{per_round_s('query_s'):.1f}",
            f"{per_round_s('train_s'):.1f}", f"{per_round_s('posterior_s'):.1f}",
            f"{last('prior_precision'):.3g}"])
    return head + "\n\n" + markdown_table(
        ["variant", *(target_header(t, "mnist") for t in TARGETS), "AUBC (mean ± std)",
         "AUBC - random",
         "final acc", "NLL", "ECE", "query s", "train s", "posterior s", "λ (last)"], rows)


def cifar10_curves(result: dict) -> str:
    """``benchmarks/cifar10_curves.py curves``: accuracy at fixed budgets, AUBC and
    seconds per round per method; then each method against random budget by budget."""
    about, seeds = result["table"], _seeds(result)
    budgets, methods = about["budgets"], about["methods"]
    head = (f"{result['setting']['data']}. Protocol: {result['setting']['protocol']}; pool "
            "49,000, test 10,000. Accuracy: test set, mean ± std over the seeds run (one seed: "
            "no spread). AUBC: trapezoid over 1,000-11,000 labels / range. s/round: median "
            "over rounds 1-10 (indicative: two runs shared the 2 cores, one core each; the "
            "quiet figures are in cifar10_timing.md).")
    at = lambda r, b: r["test_accuracy"][r["labels"].index(b)]
    rows = []
    for method in methods:
        if not (runs := runs_of(result, method, seeds)):
            continue
        # Median over rounds: a round paused for a quiet timing does not count.
        per_round_s = partial(per_round, runs, over=statistics.median)
        rows.append([method, len(runs),
                     *(mean_std((at(r, b) for r in runs), False) for b in budgets),
                     mean_std((r["test_accuracy"][-1] for r in runs), False),
                     mean_std(map(area, runs), False), f"{per_round_s('train_s'):.0f}",
                     f"{per_round_s('query_s'):.1f}", f"{per_round_s('posterior_s'):.1f}"])
    table = markdown_table(["method", "seeds", *(f"acc @ {b:,}" for b in budgets),
                            "final acc (11k)", "AUBC", "train s", "query s", "posterior s"],
                           rows)
    # The target, budget by budget: accuracy minus random's (mean over the seeds
    # both ran) against the spread over seeds (the larger std); 'above' only past it.
    final = (*budgets, 11000)
    against = []
    for method in methods:
        shared = [s for s in seeds if f"{method}-seed{s}" in result["runs"]
                  and f"random-seed{s}" in result["runs"]]
        if method == "random" or not shared:
            continue
        cells = []
        for b in final:
            acc = {m: [at(result["runs"][f"{m}-seed{s}"], b) for s in shared]
                   for m in (method, "random")}
            diff = statistics.mean(acc[method]) - statistics.mean(acc["random"])
            if len(shared) < 2:
                cells.append(f"{diff:+.3f} (1 seed: no spread)")
                continue
            spread = max(statistics.stdev(acc[method]), statistics.stdev(acc["random"]))
            verdict = "above" if diff > spread else "below" if diff < -spread else "within"
            cells.append(f"{diff:+.3f} vs {spread:.3f}: {verdict}")
        against.append([method, len(shared), *cells])
    return "\n\n".join([
        head, table, "Against random (seeds both ran): accuracy difference, mean over seeds, "
        "and the spread over seeds (the larger of the two std); 'above' only where the "
        "difference exceeds the spread.",
        markdown_table(["method", "seeds", *(f"@ {b:,}" for b in final)], against)])


# name -> (its table, the command that writes benchmarks/results/<name>.json)
TABLES: dict[str, tuple[Callable[[dict], str], str]] = {
    "posterior_curves": (posterior_curves, "python benchmarks/posterior_curves.py "
                                           "--data-dir ../shared/data/tfds [--stage 1|2]"),
    "cifar10_curves": (cifar10_curves, "python benchmarks/cifar10_curves.py curves "
                                       "--data-dir ../shared/data/cifar10-standin/tfds"),
}


def table_of(name: str, results: Path = RESULTS) -> str:
    """The table ``name`` from ``results/<name>.json``, as ``results/<name>.md`` holds it."""
    if name not in TABLES:
        raise ValueError(f"no table {name!r}; the tables are {', '.join(TABLES)} "
                         "(benchmarks/tables.py TABLES)")
    return TABLES[name][0](json.loads((results / f"{name}.json").read_text()))


def region_of(name: str, results: Path = RESULTS) -> str:
    """A docs region's body: the command that made the result, then its table."""
    return (f"Made by `{TABLES[name][1]}` (result: `benchmarks/results/{name}.json`); "
            f"table by `python benchmarks/tables.py`.\n\n{table_of(name, results)}\n")


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked region's body replaced by its table."""
    return REGION.sub(lambda m: m.group(1) + region_of(m.group("name"), results) + m.group(4),
                      text)


def expected_files(results: Path = RESULTS, docs=DOCS) -> dict[Path, str]:
    """Every file the tables make, with the text it should hold."""
    files = {results / f"{name}.md": table_of(name, results) + "\n" for name in TABLES}
    files.update({path: rewrite(path.read_text(), results) for path in docs})
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; list the files whose tables differ (exit 1 if any)")
    args = p.parse_args(argv)
    expected = expected_files()
    stale = [path for path, text in expected.items()
             if not path.exists() or path.read_text() != text]
    for path in stale:
        if args.check:
            print(f"{path.relative_to(ROOT)}: differs from its result file", file=sys.stderr)
        else:
            path.write_text(expected[path])
            print(f"rewrote {path.relative_to(ROOT)}")
    return int(args.check and bool(stale))


if __name__ == "__main__":
    sys.exit(main())
