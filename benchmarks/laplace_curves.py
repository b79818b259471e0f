"""MNIST learning curves of posterior/predictive choices, to pick jaxal's Laplace defaults.

    python benchmarks/laplace_curves.py [--data-dir ../shared/data/tfds] [--seeds 0]
        [--pool-size 10000] [--rounds 10] [--variants plugin ll_probit ...]

Every variant runs under ``jaxal.apps.comparison.run_comparison`` with entropy acquisition, the same
seeds, pool subset, initial labels and MAP training; only the posterior, predictive and
prior precision differ. Reported per variant: test accuracy and NLL at the first and last
round, their mean over rounds (area under the learning curve / rounds), the mean
predictive entropy on the test set, the prior precision used, and the seconds of the
rounds. Run outputs go to ``benchmarks/results/curves/laplace_curves/runs/``; the summary to
``benchmarks/results/laplace_curves.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import RESULTS, run_curves, runs_of

from jaxal.apps.comparison import Run, markdown_table
from jaxal.apps.experiment import ExperimentConfig
from jaxal.loop import ALConfig
from jaxal.posteriors.laplace import LaplaceOptions
from jaxal.runtime import configure_cpu


def laplace(predictive: str, **kw) -> dict:
    return {"posterior": "laplace", "predictive": predictive,
            "posterior_options": LaplaceOptions(**kw)}


VARIANTS = {
    "plugin": {},
    "ll_full_probit": laplace("probit", structure="full", subset="last-layer",
                              prior_fit="none"),
    "ll_full_probit_evidence": laplace("probit", structure="full", subset="last-layer",
                                       prior_fit="evidence"),
    "ll_full_probit_valnll": laplace("probit", structure="full", subset="last-layer",
                                     prior_fit="val-nll"),
    "ll_full_mc_valnll": laplace("mc", structure="full", subset="last-layer",
                                 prior_fit="val-nll"),
    "all_kfac_probit_valnll": laplace("probit", structure="kfac", subset="all",
                                      prior_fit="val-nll"),
    "all_diag_probit_valnll": laplace("probit", structure="diag", subset="all",
                                      prior_fit="val-nll"),
}


def table(result: dict) -> str:
    s = result["setting"]
    rows = []
    for name in VARIANTS:
        if not (runs := runs_of(result, name, s["seeds"])):
            continue
        mean = lambda f, runs=runs: statistics.mean(f(r) for r in runs)
        rows.append([
            name, f"{mean(lambda r: r['test_accuracy'][0]):.3f} -> "
                  f"{mean(lambda r: r['test_accuracy'][-1]):.3f}",
            f"{mean(lambda r: statistics.mean(r['test_accuracy'])):.3f}",
            f"{mean(lambda r: r['test_nll'][-1]):.3f}",
            f"{mean(lambda r: statistics.mean(r['test_nll'])):.3f}",
            f"{mean(lambda r: r['test_entropy'][-1]):.3f}",
            f"{mean(lambda r: r['prior_precision'][-1]):.3g}",
            f"{mean(lambda r: r['seconds']):.0f}"])
    return (f"MNIST, entropy acquisition, pool {s['pool_size']}, {s['rounds']} rounds x "
            f"{s['query_size']} queries from {s['init_per_class']} per class, seeds "
            f"{s['seeds']}; means over seeds.\n\n") + markdown_table(
        ["variant", "acc first -> last", "mean acc over rounds", "NLL last", "mean NLL",
         "entropy last", "prior precision (last)", "round s"], rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--pool-size", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--query-size", type=int, default=10)
    p.add_argument("--init-per-class", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=str(RESULTS / "laplace_curves.json"))
    args = p.parse_args()
    configure_cpu()   # as jaxal's CLIs run; before JAX's first computation
    out = Path(args.out)
    setting = {k: getattr(args, k) for k in
               ("seeds", "pool_size", "rounds", "query_size", "init_per_class")}
    al = ALConfig(acquisition="entropy", rounds=args.rounds, query_size=args.query_size,
                  init_per_class=args.init_per_class)
    runs = [Run(name, seed, ExperimentConfig(dataset="mnist", seed=seed,
                                             pool_size=args.pool_size, data_dir=args.data_dir,
                                             al=al._replace(**VARIANTS[name])))
            for name in args.variants for seed in args.seeds]
    result = run_curves(out, setting, runs, RESULTS / "curves" / out.stem)
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
