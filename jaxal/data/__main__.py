"""``python -m jaxal.data prepare|info``; the command line is ``jaxal.cli.data``."""

if __name__ == "__main__":
    from jaxal.cli.common import run_command

    run_command("data")
