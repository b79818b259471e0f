"""Shim for ``python -m jaxal.label``; the command line lives in ``jaxal.cli.label``."""

if __name__ == "__main__":
    from jaxal.cli.common import run_command

    run_command("label")
