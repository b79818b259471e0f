"""Shim for ``python -m jaxal.run``; the command line lives in ``jaxal.cli.run``."""

from jaxal.cli.run import main

if __name__ == "__main__":
    main()
