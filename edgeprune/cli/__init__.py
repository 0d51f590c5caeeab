"""The ``edgeprune`` command line: ``app`` (the Typer app, its callback and ``main``), option
types in ``options``, and one module per command group, each command thin."""

from edgeprune.cli.app import app, main

__all__ = ["app", "main"]
