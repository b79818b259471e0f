"""Command line for real labelling (see ``jaxal.apps.labelling``):

    python -m jaxal.label query --out runs/real --dataset mnist --acq margin ...
    python -m jaxal.label label --out runs/real --csv answers.csv     # index,label rows
    python -m jaxal.label label --out runs/real --oracle --dataset mnist ...  # simulation
    python -m jaxal.label query --out runs/mine --images photos/ --image-shape 32 32 3 ...
    python -m jaxal.label serve --out runs/mine --images photos/ ...   # label in a browser
    python -m jaxal.label export --out runs/mine --format label-studio --to tasks.json
    python -m jaxal.label import --out runs/mine --from label-studio-export.json

``query`` proposes the next batch (query_<round>.csv and a contact sheet .png); ``label``
records a person's labels, and the next ``query`` trains on them; ``serve`` does both in
a local web page (``jaxal.apps.label_server``); ``export`` and ``import`` take the
pending batch to Label Studio and its labels back (``jaxal.apps.label_studio``).
``--images DIR`` takes the pool from a folder of your own images instead of a TFDS
dataset (layout in ``jaxal.data.image_folder``). Parses; no logic.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from jaxal.apps.rundir import lock_out_dir
from jaxal.cli.common import check_registry_choices, fail, user_errors, whole
from jaxal.cli.run import config_from_args
from jaxal.cli.run import parser as run_parser


def parser():
    p = run_parser()
    p.prog = "python -m jaxal.label"
    p.description = __doc__.split("\n\n")[1]
    p.add_argument("command", choices=["query", "label", "serve", "export", "import"])
    p.add_argument("--csv", default=None,
                   help="label: a CSV of 'index,label' rows, index the pool index of "
                        "query_<round>.csv (a header row is optional)")
    p.add_argument("--oracle", action="store_true",
                   help="label: take the pending query's labels from the dataset "
                        "(simulation)")
    page = p.add_argument_group("serve: the labelling page")
    page.add_argument("--host", default=None,
                      help="the address to listen on (default 127.0.0.1, this machine "
                           "only; another exposes the session to whoever can reach it "
                           "and has the URL's token)")
    page.add_argument("--port", type=whole(0, 65535), default=0,
                      help="the port to listen on (default 0: any free one)")
    studio = p.add_argument_group("export / import: Label Studio")
    studio.add_argument("--format", choices=["label-studio"], default="label-studio",
                        help="export: the format of the tasks (label-studio)")
    studio.add_argument("--to", default=None, metavar="FILE",
                        help="export: the tasks file to write (default "
                             "<out>/label-studio-tasks.json)")
    studio.add_argument("--image-prefix", default=None, metavar="URL",
                        help="export: what precedes an image's path in the folder in its "
                             "task URL (default /data/local-files/?d=)")
    studio.add_argument("--from", dest="source", default=None, metavar="FILE",
                        help="import: a Label Studio JSON export of the tasks")
    folder = p.add_argument_group("your own images (instead of --dataset)")
    folder.add_argument("--images", default=None, metavar="DIR",
                        help="a folder of images to label: unlabelled images directly in "
                             "it, already labelled ones in one subfolder per class "
                             "(named after the class)")
    folder.add_argument("--image-shape", type=whole(1), nargs=3, default=None,
                        metavar=("H", "W", "C"),
                        help="the height, width and channels (1 greyscale, 3 RGB) every "
                             "image is read at (default: 32 32 3)")
    folder.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                        help="the class names, in label order (default: the subfolders'); "
                             "name classes nobody has labelled yet here")
    folder.add_argument("--no-resize", dest="resize", action="store_false",
                        help="refuse images of another size instead of resizing them")
    for action in p._actions:
        if action.dest == "out":
            action.required, action.help = True, "the labelling session dir"
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.command == "label" and args.oracle == (args.csv is not None):
        fail("label needs exactly one of --csv FILE or --oracle")
    if args.command == "import" and args.source is None:
        fail("import needs --from FILE, the JSON file Label Studio exported")
    if args.command == "serve":
        missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            fail(f"the labelling page needs {' and '.join(missing)}: pip install "
                 "'jaxal[ui]' (in a clone: pip install -e '.[ui]')")
    if args.images is None and (args.image_shape or args.classes or not args.resize):
        fail("--image-shape, --classes and --no-resize describe an image folder; add "
             "--images DIR")
    if args.images is not None and args.data_dir is not None:
        fail("--images DIR is the data; drop --data-dir")
    if args.command == "serve":
        with user_errors():
            _serve(p, args)
        return
    if args.command in ("export", "import"):
        with user_errors(), lock_out_dir(args.out):
            _label_studio(args)
        return
    # One writer per session dir, like a run's out dir.
    with user_errors(), lock_out_dir(args.out):
        from jaxal.runtime import configure_cpu

        configure_cpu()   # before JAX's first computation
        check_registry_choices(p, args)
        from jaxal.apps.labelling import propose, record_labels, record_oracle_labels

        try:
            if args.command == "query":
                proposal = propose(args.out, _config(args))
                print(f"round {proposal.round}: label pool indices "
                      f"{proposal.pool_index.tolist()} (from {proposal.num_labels} labels"
                      + (f", validation accuracy {proposal.val_accuracy:.4f}"
                         if proposal.val_accuracy is not None else "") + ")")
                if proposal.class_names:
                    print("label each by class name or number: " + ", ".join(
                        f"{y} {name}" for y, name in enumerate(proposal.class_names)))
                print(f"see {args.out}/query_{proposal.round}.csv and .png; then "
                      f"python -m jaxal.label label --out {args.out} --csv answers.csv")
            elif args.oracle:
                new = record_oracle_labels(args.out, _config(args))
                print(f"recorded {len(new)} oracle labels in {args.out}/labels.csv")
            else:
                new = record_labels(args.out, args.csv)
                print(f"recorded {len(new)} labels in {args.out}/labels.csv")
        # A --csv path is the labeller's input, checked where it is read; these are what
        # the OS says of it. (A bad label file lists its problems, one per line.)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            fail(str(e))


def _serve(p, args) -> None:
    from jaxal.apps.label_server import run_server, url_text

    with lock_out_dir(args.out):        # the session's checks, before JAX is imported
        pass
    from jaxal.runtime import configure_cpu

    configure_cpu()
    check_registry_choices(p, args)
    host = args.host or "127.0.0.1"

    def announce(url: str, exposed: bool) -> None:
        print(url_text(url, host, exposed), flush=True)

    run_server(args.out, _config(args), host, args.port, announce,
               explicit_host=args.host is not None)


def _label_studio(args) -> None:
    from pathlib import Path

    from jaxal.apps import label_studio

    if args.command == "export":
        to = args.to or str(Path(args.out) / "label-studio-tasks.json")
        tasks = label_studio.export_tasks(args.out, to, args.image_prefix
                                          or label_studio.DEFAULT_PREFIX)
        print(f"wrote {len(tasks)} Label Studio tasks to {to} (highest score first) and "
              f"its labelling config to {Path(to).with_suffix('')}.label_config.xml")
    else:
        new = label_studio.import_labels(args.out, args.source)
        print(f"recorded {len(new)} labels from {args.source} in {args.out}/labels.csv")


def _config(args):
    """The session's config; with --images, the folder is its dataset."""
    if args.images is None:
        return config_from_args(args)
    from jaxal.config import IMAGE_FOLDER

    args.dataset, args.data_dir = IMAGE_FOLDER, args.images
    return config_from_args(args)._replace(
        image_shape=tuple(args.image_shape) if args.image_shape else None,
        classes=tuple(args.classes or ()), resize=args.resize)


if __name__ == "__main__":
    main()
