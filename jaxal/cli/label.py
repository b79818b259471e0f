"""Command line for real labelling (see ``jaxal.labelling``):

    python -m jaxal.label query --out runs/real --dataset mnist --acq margin ...
    python -m jaxal.label label --out runs/real --csv answers.csv     # index,label rows
    python -m jaxal.label label --out runs/real --oracle --dataset mnist ...  # simulation

``query`` proposes the next batch (query_<round>.csv and a contact sheet .png); ``label``
records a person's labels, and the next ``query`` trains on them. Parses; no logic.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxal.cli.common import check_registry_choices, fail, user_errors
from jaxal.cli.run import config_from_args
from jaxal.cli.run import parser as run_parser
from jaxal.rundir import lock_out_dir


def parser():
    p = run_parser()
    p.prog = "python -m jaxal.label"
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("command", choices=["query", "label"])
    p.add_argument("--csv", default=None,
                   help="label: a CSV of 'index,label' rows, index the pool index of "
                        "query_<round>.csv (a header row is optional)")
    p.add_argument("--oracle", action="store_true",
                   help="label: take the pending query's labels from the dataset "
                        "(simulation)")
    for action in p._actions:
        if action.dest == "out":
            action.required, action.help = True, "the labelling session dir"
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "label" and args.oracle == (args.csv is not None):
        fail("label needs exactly one of --csv FILE or --oracle")
    # One writer per session dir, like a run's out dir.
    with user_errors(), lock_out_dir(args.out):
        from jaxal.runtime import configure_cpu

        configure_cpu()   # before JAX's first computation
        check_registry_choices(p, args)
        from jaxal.labelling import propose, record_labels, record_oracle_labels

        try:
            if args.command == "query":
                proposal = propose(args.out, config_from_args(args))
                print(f"round {proposal.round}: label pool indices "
                      f"{proposal.pool_index.tolist()} (from {proposal.num_labels} labels"
                      + (f", validation accuracy {proposal.val_accuracy:.4f}"
                         if proposal.val_accuracy is not None else "") + ")")
                print(f"see {args.out}/query_{proposal.round}.csv and .png; then "
                      f"python -m jaxal.label label --out {args.out} --csv answers.csv")
            elif args.oracle:
                new = record_oracle_labels(args.out, config_from_args(args))
                print(f"recorded {len(new)} oracle labels in {args.out}/labels.csv")
            else:
                new = record_labels(args.out, args.csv)
                print(f"recorded {len(new)} labels in {args.out}/labels.csv")
        # A --csv path is the labeller's input, checked where it is read; these are what
        # the OS says of it. (A bad label file lists its problems, one per line.)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            fail(str(e))


if __name__ == "__main__":
    main()
