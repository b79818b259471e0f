"""Shim for ``python -m jaxal.plot``; the command line lives in ``jaxal.cli.plot``."""

if __name__ == "__main__":
    from jaxal.cli.common import run_command

    run_command("plot")
