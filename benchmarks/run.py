"""The benchmark runner: ``python -m benchmarks.run [--quick] [--only NAME,...] ...``.

Runs the chosen benchmarks, writes ``results.json`` (every figure, the machine, the
torch version and the mode) and ``results.md`` (short tables) into ``--out``, prints the
tables, and with ``--check`` compares the gated figures with a baseline file.

Exit codes: 0 success, 1 a benchmark failed or a gated figure regressed, 2 usage error.
"""

from __future__ import annotations

import datetime
import importlib
import os
import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.text import Text

from nembed_compress.atomic import write_text_atomic
from nembed_compress.errors import NembedError, UsageError
from nembed_compress.report import markdown_table, write_json

from . import gate
from .common import (
    REPO_ROOT,
    BenchContext,
    BenchResult,
    machine_info,
    resolve_data_dir,
    torch_threads,
)

BENCHMARKS = ("compression", "fit", "inference", "scaling", "accuracy")
DEFAULT_BASELINE = REPO_ROOT / "benchmarks" / "baseline.json"

err = Console(stderr=True, soft_wrap=True, highlight=False)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def error(message: str) -> None:
    """``Error: message`` on stderr; the message is printed as is, never as markup."""
    err.print(Text("Error: ", style="bold red") + Text(message))


def parse_only(text: str | None) -> list[str]:
    """The benchmarks to run, in the canonical order; all when ``text`` is None."""
    if text is None:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise UsageError(
            f"--only {text!r}: unknown benchmark {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    return [n for n in BENCHMARKS if n in names]


def load_benchmark(name: str):
    """The module of benchmark ``name``: anything with ``run(ctx) -> BenchResult``."""
    return importlib.import_module(f"benchmarks.{name}")


def run_benchmarks(ctx: BenchContext, names: list[str], debug: bool) -> tuple[dict, dict]:
    """Run each benchmark; returns (results by name, errors by name)."""
    results, errors = {}, {}
    for name in names:
        module = load_benchmark(name)
        start = time.perf_counter()
        try:
            result: BenchResult = module.run(ctx)
        except Exception as exc:  # noqa: BLE001 - one failed benchmark must not hide the others
            if debug:
                raise
            errors[name] = f"{type(exc).__name__}: {exc}"
            error(f"{name} failed: {errors[name]} (--debug for a traceback)")
            continue
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "result": result}
        err.print(f"{name}: done in {seconds:.1f} s")
    return results, errors


def to_json(ctx: BenchContext, info: dict, started: str, results: dict, errors: dict) -> dict:
    return {
        "mode": ctx.mode,
        "started": started,
        "machine": info,
        "torch": info["torch"],
        "threads": {"benchmarks": 1, "default": ctx.default_threads},
        "benchmarks": {
            name: {
                "seconds": r["seconds"],
                "notes": r["result"].notes,
                "gated": {k: g.value for k, g in r["result"].gated.items()},
                **r["result"].figures,
            }
            for name, r in results.items()
        },
        "errors": errors,
    }


def to_markdown(ctx: BenchContext, info: dict, started: str, results: dict, errors: dict) -> str:
    lines = [
        "# nembed-compress benchmarks",
        "",
        f"Mode **{ctx.mode}**, {started}, torch {info['torch']}, {info['processor']} "
        f"({info['cpu_count']} cores; benchmarks single-threaded unless a table says "
        f"otherwise, default {ctx.default_threads} threads), commit {info.get('git_commit')}.",
        "",
    ]
    for name, r in results.items():
        lines += [f"## {name} ({r['seconds']:.1f} s)", ""]
        for table in r["result"].tables:
            lines += [f"{table.title}", "", markdown_table(table.headers, table.rows)]
        lines += [f"- {note}" for note in r["result"].notes] + [""]
    for name, message in errors.items():
        lines += [f"## {name}: FAILED", "", message, ""]
    return "\n".join(lines)


def gated_figures(results: dict) -> dict[str, gate.Gated]:
    return {k: g for r in results.values() for k, g in r["result"].gated.items()}


def check_baseline(baseline: dict, path: Path, results: dict) -> gate.CheckReport:
    report = gate.check(baseline, gated_figures(results), set(results))
    made_with = baseline.get("generated", {}).get("torch")
    if made_with and made_with != torch.__version__:
        err.print(
            f"Warning: {path} was generated with torch {made_with}, this run uses "
            f"{torch.__version__}; the trained reference MLP, and so the fit losses, may "
            "move slightly. Refresh the baseline on purpose if the change is expected.",
            markup=False,
        )
    return report


def require_gated(baseline: dict, path: Path, names: list[str]) -> None:
    """A check must compare something: some benchmark to run has to be gated."""
    gated = sorted({gate.benchmark_of(k) for k in baseline["figures"]})
    if not set(gated) & set(names):
        raise UsageError(
            f"--check {path}: none of the benchmarks to run has gated figures in the "
            f"baseline; the gated benchmarks are {', '.join(gated)} "
            f"(e.g. --only {','.join(gated)})"
        )


def update_baseline(
    path: Path, old: dict | None, ctx: BenchContext, info: dict, results: dict
) -> None:
    current = gated_figures(results)
    if not current:
        err.print(f"Warning: no gated figures in this run; {path} left unchanged", markup=False)
        return
    if old is not None:
        changes = gate.check(old, current, set(results))
        changed = [f for f in changes.findings if f.change != 0]
        for finding in changed:
            err.print(f"  baseline change {finding.describe()}", markup=False)
    generated = {
        "mode": ctx.mode,
        "torch": info["torch"],
        "git_commit": info.get("git_commit"),
        "date": datetime.date.today().isoformat(),
        "benchmarks": sorted(results),
    }
    gate.save_baseline(path, gate.updated_baseline(old, current, set(results), generated))
    err.print(f"baseline written: {path} ({len(current)} figures from this run)")


@app.command()
def main(
    quick: bool = typer.Option(False, "--quick", help="Reduced sizes: about a minute each."),
    only: str | None = typer.Option(
        None, "--only", help=f"Comma-separated benchmarks to run: {', '.join(BENCHMARKS)}."
    ),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Folder for results and caches."),
    data_dir: str | None = typer.Option(
        None,
        "--data-dir",
        help="Folder holding MNIST (MNIST/raw/*.gz). Default: $NEMBED_DATA_DIR, else "
        "../shared/data next to the repository. Nothing is ever downloaded.",
    ),
    check: Path | None = typer.Option(
        None, "--check", help="Baseline JSON: exit 1 if a gated figure regressed."
    ),
    update: bool = typer.Option(
        False,
        "--update-baseline",
        help="Write this run's gated figures into the baseline (--check path, else "
        "benchmarks/baseline.json).",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Run the benchmarks and write results.json and results.md."""
    try:
        code = _main(quick, only, out, data_dir, check, update, debug)
    except NembedError as exc:
        if debug:
            raise
        error(str(exc))
        code = 2 if isinstance(exc, UsageError) else 1
    raise typer.Exit(code)


def _main(quick, only, out, data_dir, check, update, debug) -> int:
    names = parse_only(only)
    # Read the baseline before spending minutes on benchmarks: a bad path fails at once.
    target = check or DEFAULT_BASELINE
    if update:
        old_baseline = gate.load_baseline(target) if target.exists() else None
        baseline = None
    else:
        baseline = gate.load_baseline(check) if check is not None else None
        if baseline is not None:
            require_gated(baseline, check, names)
    os.environ.setdefault("NEMBED_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)

    # Fits and training run single-threaded: results are then bit-reproducible, and
    # OpenMP threads spinning on a shared machine make multi-threaded timings erratic.
    # The inference benchmark measures the default thread count as well.
    default_threads = torch.get_num_threads()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    info = machine_info(default_threads)
    with torch_threads(1), _notes() as note:
        ctx = BenchContext(quick, out, resolve_data_dir(data_dir), default_threads, note)
        results, errors = run_benchmarks(ctx, names, debug)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    report = check_baseline(baseline, check, results) if baseline is not None else None
    write_outputs(ctx, info, started, results, errors, report, check)
    if errors:
        error(f"{len(errors)} benchmark(s) failed: {', '.join(errors)}")
        return 1
    if update:
        update_baseline(target, old_baseline, ctx, info, results)
        return 0
    if report is None:
        return 0
    if report.ok:
        err.print(report.message(check), markup=False)
        return 0
    error(report.message(check))
    return 1


def write_outputs(ctx, info, started, results, errors, report, check) -> None:
    """results.json and results.md into the output folder; the Markdown also to stdout."""
    document = to_json(ctx, info, started, results, errors)
    if report is not None:
        document["check"] = {
            "baseline": str(check),
            "ok": report.ok,
            "regressions": [f.describe() for f in report.regressions],
            "improvements": [f.describe() for f in report.improvements],
        }
    markdown = to_markdown(ctx, info, started, results, errors)
    write_json(ctx.out_dir / "results.json", document)
    write_text_atomic(ctx.out_dir / "results.md", markdown)
    print(markdown)
    err.print(f"results: {ctx.out_dir / 'results.json'}, {ctx.out_dir / 'results.md'}")


class _notes:
    """A one-line status on a terminal that shows the current step; silent when piped."""

    def __enter__(self):
        if not err.is_terminal:
            return lambda message: None
        self._status = err.status("starting")
        self._status.__enter__()
        return lambda message: self._status.update(message)

    def __exit__(self, *exc):
        if hasattr(self, "_status"):
            self._status.__exit__(*exc)
        return False


if __name__ == "__main__":
    app()
