"""Shim for ``python -m jaxal.run``; the command line lives in ``jaxal.cli.run``."""

if __name__ == "__main__":
    from jaxal.cli.common import run_command

    run_command("run")
