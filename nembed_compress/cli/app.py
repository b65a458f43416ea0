"""The typer application and what every command shares: errors, devices, output.

Results go to stdout (a table, or JSON with ``--json``); messages, progress and
errors go to stderr. Exit codes: 0 success, 1 failed operation, 2 usage error.
A traceback is shown only with ``--debug`` or ``NEMBED_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import __version__
from ..errors import NembedError, UsageError

app = typer.Typer(
    name="nembed",
    help="Compress neural networks into neuron embeddings, evaluate them and run the "
    "paper's experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": os.environ.get("NEMBED_DEBUG", "") not in ("", "0")}


def _version(value: bool) -> None:
    if value:
        out.print(f"nembed-compress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    if debug:
        _state["debug"] = True


def command(name: str | None = None, **kwargs) -> Callable:
    """Register a command whose library errors become one line and an exit code."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except KeyboardInterrupt:
                err.print("[red]Error:[/] interrupted")
                raise typer.Exit(130) from None
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                if _state["debug"]:
                    raise
                code = 2 if isinstance(exc, (UsageError, ValueError)) else 1
                if not isinstance(exc, (NembedError, ValueError)):
                    message = f"{type(exc).__name__}: {exc} (run with --debug for a traceback)"
                else:
                    message = str(exc)
                err.print(f"[red]Error:[/] {message}", highlight=False, markup=True)
                raise typer.Exit(code) from None

        return app.command(name, **kwargs)(wrapper)

    return register


def resolve_device(device: str):
    """``auto`` picks CUDA when present; asking for CUDA without one is a usage error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda; got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(device)


def parse_int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} is empty; give e.g. 4,8,16")
    return values


def parse_float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} is empty; give e.g. 0,0.5,1")
    return values


def print_json(obj) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    """A two-column summary table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, format_value(value))
    out.print(table)


def format_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@contextmanager
def progress_display(enabled: bool = True):
    """A rich progress display on a terminal; a silent stand-in when piped or quiet.

    Yields ``track(description, total) -> update(step, total, loss)``.
    """
    if not (enabled and err.is_terminal):
        yield lambda description, total: lambda step, total_, loss=None: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )

    def track(description: str, total: int):
        task = progress.add_task(description, total=total, info="")

        def update(step: int, total_: int, loss: float | None = None) -> None:
            info = f"loss {loss:.3e}" if loss is not None else ""
            progress.update(task, completed=step, total=total_, info=info)

        return update

    with progress:
        yield track
