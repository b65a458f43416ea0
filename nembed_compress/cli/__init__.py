"""The ``nembed`` command line: a thin layer over the library, one module per command."""

from . import compress  # noqa: F401  (registers the command)
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
