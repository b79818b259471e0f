"""What every jaxal command line shares; imports no JAX.

A command (1) parses its arguments, with types that check ranges (a negative seed, an
infinite learning rate), (2) takes its out dir's lock (``jaxal.apps.rundir``), both in well
under a second, and only then (3) imports JAX, checks the choices that come from
jaxal's registries and runs. Every error a user can fix is one line ``error: ...`` on
stderr and exit code 2, without a traceback; Ctrl-C says where the run stopped and
exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from jaxal.errors import JaxalError
from jaxal.files import loads_json, read_bytes

# jax.random.key takes a uint32 seed without 64-bit mode (larger ones overflow).
SEED_MAX = 2**32 - 1
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def fail(message: str) -> None:
    """Report a user's error the one way: ``error: ...`` on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and choices from jaxal's registries checked after
    parsing (``check_registry_choices``), so that parsing never imports JAX."""

    def add_argument(self, *args, **kwargs):
        # argparse formats the choices of a new option at once (a metavar check), which
        # would read the registry now; set them after.
        choices = kwargs.get("choices")
        if not isinstance(choices, RegistryChoices):
            return super().add_argument(*args, **kwargs)
        del kwargs["choices"]
        action = super().add_argument(*args, **kwargs)
        action.choices = choices
        return action

    def error(self, message: str) -> None:  # argparse prints the whole usage otherwise
        fail(f"{message} (see {self.prog} --help)")

    def _check_value(self, action, value):
        if not isinstance(action.choices, RegistryChoices):
            super()._check_value(action, value)


class RegistryChoices(Sequence[str]):
    """The names of a registry, read from ``module.attribute`` only when first needed
    (``--help``, or ``check_registry_choices`` after the fast checks)."""

    def __init__(self, *registries: str):
        # "module:attribute", e.g. "acquisition:ACQUISITIONS" (its keys) or
        # "selection:strategies" (a function returning the names).
        self._registries = registries
        self._names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = []
            for spec in self._registries:
                module, attribute = spec.split(":")
                names = getattr(importlib.import_module(f"jaxal.{module}"), attribute)
                self._names += list(names() if callable(names) else names)
        return self._names

    def __getitem__(self, i):
        return self.names[i]

    def __len__(self) -> int:
        return len(self.names)


def check_registry_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse's invalid-choice error for the options whose choices come from a registry."""
    for action in parser._actions:
        if isinstance(action.choices, RegistryChoices):
            values = getattr(args, action.dest, None)   # a component flag not given
            for value in values if isinstance(values, list) else [values]:
                if value is not None and value not in action.choices:
                    parser.error(f"argument {'/'.join(action.option_strings)}: invalid "
                                 f"choice: {value!r} (choose from {', '.join(action.choices)})")


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a plain decimal whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        value = int(text) if _DECIMAL.fullmatch(text.strip()) else None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {text!r}")
        return value
    return parse


def number(minimum: float | None = None, *, exclusive: bool = False,
           maximum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (exclusive or not) and at most
    ``maximum``. inf and nan are refused: ``inf`` passes a ``> 0`` check."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (
            minimum is None or (value > minimum if exclusive else value >= minimum)) and (
            maximum is None or value <= maximum)
        if not ok:
            bounds = [f"{'>' if exclusive else '>='} {minimum:g}"] if minimum is not None else []
            bounds += [f"<= {maximum:g}"] if maximum is not None else []
            raise argparse.ArgumentTypeError(
                f"expected a finite number {' and '.join(bounds)}, got {text!r}")
        return value
    return parse


def last_finished_round(out_dir: str | Path) -> int | None:
    """The last round in ``out_dir``'s metrics.jsonl (written after every round), if any
    (read as ``jaxal.files`` reads: a FIFO there is not waited on)."""
    try:
        lines = read_bytes(Path(out_dir, "metrics.jsonl"), "", max_bytes=256 << 20
                           ).decode().splitlines()
        return int(loads_json(lines[-1])["round"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError, TypeError, JaxalError):
        return None


@contextlib.contextmanager
def interrupts_delivered() -> Iterator[None]:
    """Ctrl-C stops the command even where it lands in a callback.

    Python cannot raise from a garbage-collector callback (JAX's ``_xla_gc_callback``
    runs on every collection while JAX is imported and starts up) or a ``__del__``: the
    KeyboardInterrupt raised there goes to ``sys.unraisablehook``, which prints
    "Exception ignored ... KeyboardInterrupt", and the command runs on to its end. Here
    that hook sends SIGINT again from a helper thread, so that it is raised in the main
    thread's own code a moment later (again, should it land in a callback again).
    """
    previous, timers = sys.unraisablehook, []

    def hook(unraisable) -> None:
        if not (issubclass(unraisable.exc_type, KeyboardInterrupt)
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            previous(unraisable)
            return
        timers.append(threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)))
        timers[-1].daemon = True
        timers[-1].start()

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in timers:
            timer.cancel()


def run_command(name: str) -> None:
    """``python -m jaxal.<name>``: import the command line ``jaxal.cli.<name>`` and run it.

    A Ctrl-C before the command's own handling starts (while Python imports it, or parses
    the arguments) ends as one during the run does: one line and exit code 130, never a
    traceback."""
    try:
        importlib.import_module(f"jaxal.cli.{name}").main()
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)


@contextlib.contextmanager
def user_errors(out_dir: str | Path | None = None) -> Iterator[None]:
    """Turn a user's error into one line and exit code 2, Ctrl-C into where to resume
    and exit code 130 (``interrupts_delivered``: also a Ctrl-C that lands in a
    callback). Anything else is a bug and keeps its traceback."""
    try:
        with interrupts_delivered():
            yield
    except JaxalError as e:
        fail(str(e))
    except KeyboardInterrupt:
        # A comparison (no single out dir) keeps every finished round of every run.
        done = last_finished_round(out_dir) if out_dir is not None else None
        where = ("interrupted" if out_dir is None
                 else f"interrupted after round {done}" if done is not None
                 else "interrupted before the first round finished")
        print(f"\n{where}; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)
