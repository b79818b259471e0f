"""Command-line support shared by ``python -m jaxal.run``, ``jaxal.compare``, ``jaxal.label``
and ``jaxal.plot``: argument types and path checks that need no JAX, and one way to
report a user's error (``jaxal.cli.common``)."""
