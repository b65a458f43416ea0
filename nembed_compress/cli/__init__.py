"""The ``nembed`` command line: a thin layer over the library, one module per command."""

from . import compress, evaluate, experiments, export, sweep  # noqa: F401  (register commands)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
