"""The command lines, one module each: ``run``, ``compare``, ``label``, ``plot`` and ``data``
(``python -m jaxal.run`` etc.; the top-level ``jaxal.run``, ``jaxal.compare``, ``jaxal.label``
and ``jaxal.plot`` are shims). They parse and check arguments, then call library functions;
no logic lives here. ``common`` holds what they share: argument types and path checks that
need no JAX, and one way to report a user's error."""
