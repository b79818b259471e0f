"""Shim for ``python -m jaxal.compare``; the command line lives in ``jaxal.cli.compare``."""

if __name__ == "__main__":
    from jaxal.cli.common import run_command

    run_command("compare")
