"""Shim for ``python -m jaxal.compare``; the command line lives in ``jaxal.cli.compare``."""

from jaxal.cli.compare import main

if __name__ == "__main__":
    main()
