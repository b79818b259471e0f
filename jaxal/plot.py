"""Shim for ``python -m jaxal.plot``; the command line lives in ``jaxal.cli.plot``."""

from jaxal.cli.plot import main

if __name__ == "__main__":
    main()
