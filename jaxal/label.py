"""Shim for ``python -m jaxal.label``; the command line lives in ``jaxal.cli.label``."""

from jaxal.cli.label import main

if __name__ == "__main__":
    main()
