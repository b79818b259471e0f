"""Command line: ``python -m jaxal.compare --acq random entropy --posterior plugin laplace
--seeds 0 1 2 --out runs/cmp``. Parses; no logic (see ``jaxal.apps.comparison``).

Every option of ``python -m jaxal.run`` applies to all runs; ``--acq``, ``--posterior``
and ``--seeds`` take lists, and each (acquisition, posterior) pair is one strategy run
with every seed. Pairs that cannot work (e.g. BALD with the plugin posterior) are
skipped with the reason, before anything runs. Rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence

from jaxal.apps.rundir import lock_out_dir
from jaxal.cli.common import check_registry_choices, fail, user_errors
from jaxal.cli.run import config_from_args
from jaxal.cli.run import parser as run_parser
from jaxal.errors import ConfigError

LISTS = {"acq": "--acq", "posterior": "--posterior", "seed": "--seeds"}


def parser() -> argparse.ArgumentParser:
    p = run_parser()
    p.prog = "python -m jaxal.compare"
    p.description = __doc__.split("\n\n")[1].replace("\n", " ")
    for action in p._actions:
        if action.dest in LISTS:
            action.nargs, action.default = "+", [action.default]
            action.option_strings = [LISTS[action.dest]]
            p._option_string_actions[LISTS[action.dest]] = action
        if action.dest == "out":
            action.required, action.help = True, "comparison dir (one run dir per run)"
    p._option_string_actions.pop("--seed", None)
    p.add_argument("--seeds-form", default=None, choices=("sequential", "vmapped"),
                   help="run the seeds of each strategy one after another, or as one "
                        "vmapped program split over the devices (default: sequential on "
                        "CPU, where it measured faster; vmapped on GPU and TPU)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    from jaxal.cli.run import distributed

    if distributed(args):
        fail("python -m jaxal.compare runs in one process (its devices: --devices); for a "
             "run over several processes use python -m jaxal.run --distributed per seed")
    with user_errors(), lock_out_dir(args.out):
        from jaxal.runtime import configure_cpu

        configure_cpu()   # before JAX's first computation
        check_registry_choices(p, args)
        from jaxal.apps.comparison import Run, run_comparison, summary_table
        from jaxal.apps.experiment import check_config
        from jaxal.sharding import devices_line

        print(devices_line(args.devices), flush=True)   # a bad --devices: one fix, no skips
        runs, skipped = [], []
        for acq in dict.fromkeys(args.acq):
            for posterior in dict.fromkeys(args.posterior):
                strategy = f"{acq}/{posterior}"
                try:
                    for seed in dict.fromkeys(args.seed):
                        one = copy.copy(args)
                        one.acq, one.posterior, one.seed = acq, posterior, seed
                        config = config_from_args(one)
                        check_config(config)
                        runs.append(Run(strategy, seed, config))
                except ConfigError as e:
                    runs = [r for r in runs if r.strategy != strategy]
                    skipped.append(f"skipping {strategy}: {e}")
        for line in skipped:
            print(line, flush=True)
        if not runs:
            fail("no runnable (acquisition, posterior) pair; see the reasons above")
        summary = run_comparison(runs, args.out, progress=lambda s: print(s, flush=True),
                                 seeds_form=args.seeds_form)
        print(summary_table(summary, args.dataset))
    print(f"outputs in {args.out}/ (summary.csv, curves.csv, figure5.png, query_classes.png;"
          " runs/ holds every run)")


if __name__ == "__main__":
    main()
