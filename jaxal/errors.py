"""The errors jaxal raises for input a user can fix. Imports nothing (no JAX), so the
command-line tools can check arguments and paths before the slow imports.

Every message is one line that names the fix; the CLIs print ``error: <message>`` and
exit with code 2, without a traceback (``jaxal.cli_errors``). Anything else that escapes
is a bug in jaxal and keeps its traceback.
"""

from __future__ import annotations


class JaxalError(Exception):
    """Input that cannot work, reported in one line that names the fix."""


class ConfigError(JaxalError, ValueError):
    """A run configuration that cannot work; raised before any training."""


class RunDirError(JaxalError):
    """An out dir (or a file in it) that cannot be used: held by another writer, corrupt,
    foreign, or written by another configuration. Nothing in it is changed."""


class DivergedError(JaxalError):
    """Training, the posterior or the acquisition scores became non-finite; the run stops
    and keeps the checkpoint of the last good round."""
