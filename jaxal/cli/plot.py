"""Command line: ``python -m jaxal.plot OUT_DIR [--round R]``: redraw the figures of a
finished run or comparison from its files, recomputing nothing.

Parses; no logic (the figures are drawn by ``jaxal.apps.plots`` and ``jaxal.apps.comparison``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxal.cli.common import Parser, fail, user_errors, whole


def main(argv: Sequence[str] | None = None) -> None:
    p = Parser(prog="python -m jaxal.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="a run's out dir (python -m jaxal.run) or a comparison "
                                   "dir (python -m jaxal.compare)")
    p.add_argument("--round", type=whole(1), default=None,
                   help="the AL round of Figure 4 (default: round 1); for a comparison, "
                        "applied to every run")
    p.add_argument("--log-labels", action="store_true",
                   help="a comparison's learning curve with the labels on a log axis")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    with user_errors():
        from jaxal.apps.comparison import plot_comparison
        from jaxal.apps.plots import plot_run

        if (out / "comparison.json").exists():
            plot_comparison(out, args.log_labels)
            for run in sorted((out / "runs").iterdir()):
                if (run / "metrics.jsonl").exists():
                    plot_run(run, args.round)
        elif (out / "metrics.jsonl").exists():
            plot_run(out, args.round)
        else:
            fail(f"{out} holds neither a run (metrics.jsonl) nor a comparison "
                 "(comparison.json); pass the --out dir of jaxal.run or jaxal.compare")
    print(f"figures redrawn in {out}/")


if __name__ == "__main__":
    main()
