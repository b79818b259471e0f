"""Command line: ``python -m jaxal.data prepare|info``. Parses; no logic (see ``jaxal.data``).

``prepare`` prepares a dataset offline from its original files (``prepare_dataset``);
``info`` loads one, printing its counts and shapes, and so warms the decoded-array cache
(``load_dataset``). Neither imports JAX.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from jaxal.cli.common import Parser, fail
from jaxal.data import DATASETS, load_dataset, prepare_dataset
from jaxal.errors import JaxalError


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: `prepare` a dataset offline, or print `info` (and warm the cache)."""
    parser = Parser(prog="python -m jaxal.data", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="prepare a dataset from its original files")
    prepare.add_argument("name", choices=sorted(DATASETS))
    prepare.add_argument("--manual-dir", required=True, help="directory of the original files")
    prepare.add_argument("--data-dir", required=True, help="TFDS data dir to prepare into")
    info = commands.add_parser("info", help="load a dataset and print its counts and shapes")
    info.add_argument("name", help=f"{', '.join(sorted(DATASETS))} or any TFDS "
                      "image-classification dataset prepared in --data-dir")
    info.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR, TFDS's)")
    info.add_argument("--cache-dir", help="decoded-array cache (default: $JAXAL_CACHE_DIR)")
    info.add_argument("--download", action="store_true", help="download if not prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("jaxal.data").setLevel(logging.INFO)   # its download/decode progress

    start = time.perf_counter()
    try:
        if args.command == "prepare":
            version_dir = prepare_dataset(args.name, args.data_dir, args.manual_dir)
            print(f"Prepared {args.name} in {version_dir}")
            return
        ds = load_dataset(
            args.name, args.data_dir, download=args.download, cache_dir=args.cache_dir
        )
    # Errors on user input name their fix in one line; a traceback would bury it.
    except (JaxalError, FileNotFoundError) as err:
        fail(str(err))
    print(f"{ds.name} {ds.version}: loaded in {time.perf_counter() - start:.1f} s")
    for split, images, labels in [
        ("train", ds.train_images, ds.train_labels),
        ("test", ds.test_images, ds.test_labels),
    ]:
        counts = np.bincount(labels, minlength=ds.num_classes).tolist()
        print(f"  {split}: images {images.dtype}{list(images.shape)}, labels per class {counts}")


if __name__ == "__main__":
    main()
