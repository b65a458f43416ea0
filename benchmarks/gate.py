"""The CI gate: compare gated figures with a committed baseline.

A baseline file (``benchmarks/baseline.json``) holds, for every gated figure, its value
and which direction is better, plus one relative tolerance::

    {"format": "nembed-bench-baseline", "version": 1, "tolerance": 0.01,
     "figures": {"fit/als_loss/d=16": {"value": 9.1e-4, "better": "lower"}, ...}}

A figure regresses when it moves in the worse direction by more than the tolerance,
relative to the baseline value (a figure may carry its own ``tolerance``). Figure keys
start with the benchmark's name, so figures of benchmarks that did not run are reported
as not checked instead of missing. Timings are never gated: they depend on the machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nembed_compress.atomic import write_text_atomic
from nembed_compress.errors import UsageError

from .common import Gated

FORMAT = "nembed-bench-baseline"
VERSION = 1
DEFAULT_TOLERANCE = 0.01
DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Finding:
    """One gated figure compared with its baseline value."""

    key: str
    baseline: float
    current: float | None  # None: the benchmark ran but did not produce this figure
    better: str
    tolerance: float

    @property
    def change(self) -> float:
        """Relative change from the baseline, signed so that positive is an improvement."""
        if self.current is None or math.isnan(self.current):
            return -math.inf
        if self.baseline == 0:
            diff = self.current - self.baseline
            return 0.0 if diff == 0 else math.copysign(math.inf, diff if self._up else -diff)
        rel = (self.current - self.baseline) / abs(self.baseline)
        return rel if self._up else -rel

    @property
    def _up(self) -> bool:
        return self.better == "higher"

    @property
    def regressed(self) -> bool:
        return self.change < -self.tolerance

    @property
    def improved(self) -> bool:
        return self.change > self.tolerance

    def describe(self) -> str:
        if self.current is None:
            return f"{self.key}: missing from this run (baseline {self.baseline:.6g})"
        raw = (self.current - self.baseline) / abs(self.baseline) if self.baseline else math.nan
        return (
            f"{self.key}: {self.baseline:.6g} -> {self.current:.6g} ({raw:+.2%}; "
            f"{self.better} is better, tolerance {self.tolerance:.2%})"
        )


@dataclass
class CheckReport:
    """The outcome of a check: what regressed, what improved, what was not compared."""

    findings: list[Finding] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # baseline figures of benchmarks not run
    new: list[str] = field(default_factory=list)  # gated figures the baseline lacks

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regressed]

    @property
    def improvements(self) -> list[Finding]:
        return [f for f in self.findings if f.improved]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def message(self, baseline_path: str | Path) -> str:
        """A readable summary naming every regression, for stderr."""
        lines = []
        checked = len(self.findings)
        if self.regressions:
            lines.append(
                f"{len(self.regressions)} of {checked} gated figures regressed against "
                f"{baseline_path}:"
            )
            lines += [f"  REGRESSION {f.describe()}" for f in self.regressions]
        else:
            lines.append(f"all {checked} gated figures within tolerance of {baseline_path}")
        if self.improvements:
            lines.append(
                f"{len(self.improvements)} improved beyond tolerance (refresh the baseline "
                "on purpose with --update-baseline to lock the gain in):"
            )
            lines += [f"  improved {f.describe()}" for f in self.improvements]
        if self.not_run:
            lines.append(f"not checked (benchmark not run): {', '.join(sorted(self.not_run))}")
        if self.new:
            lines.append(f"not in the baseline (not gated yet): {', '.join(sorted(self.new))}")
        return "\n".join(lines)


def benchmark_of(key: str) -> str:
    return key.split("/", 1)[0]


# -- reading and writing -----------------------------------------------------------------


def load_baseline(path: str | Path) -> dict:
    """Read and validate a baseline file; errors name the file and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"--check {path}: no such baseline file; create one on purpose with "
            f"`python -m benchmarks.run --quick --update-baseline --check {path}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--check {path}: not a readable JSON baseline ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"--check {path}: expected a JSON object with format={FORMAT!r}")
    if data.get("version") != VERSION:
        raise UsageError(
            f"--check {path}: baseline version {data.get('version')!r}, this runner reads "
            f"version {VERSION}; regenerate it with --update-baseline"
        )
    tolerance = data.get("tolerance", DEFAULT_TOLERANCE)
    if not _is_tolerance(tolerance):
        raise UsageError(f"--check {path}: tolerance must be a number >= 0, got {tolerance!r}")
    figures = data.get("figures")
    if not isinstance(figures, dict):
        raise UsageError(f"--check {path}: 'figures' must be an object of gated figures")
    for key, entry in figures.items():
        _check_entry(path, key, entry)
    return data


def _is_tolerance(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, key: str, entry) -> None:
    if not isinstance(entry, dict):
        raise UsageError(f"--check {path}: figure {key!r} must be an object, got {entry!r}")
    value = entry.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise UsageError(f"--check {path}: figure {key!r} needs a numeric 'value', got {value!r}")
    if entry.get("better") not in DIRECTIONS:
        raise UsageError(
            f"--check {path}: figure {key!r} needs 'better' = higher or lower, got "
            f"{entry.get('better')!r}"
        )
    if "tolerance" in entry and not _is_tolerance(entry["tolerance"]):
        raise UsageError(
            f"--check {path}: figure {key!r} has tolerance {entry['tolerance']!r}; "
            "expected a number >= 0"
        )


def check(baseline: dict, current: dict[str, Gated], ran: set[str]) -> CheckReport:
    """Compare the gated figures of the benchmarks in ``ran`` with ``baseline``."""
    tolerance = baseline.get("tolerance", DEFAULT_TOLERANCE)
    report = CheckReport()
    for key, entry in baseline["figures"].items():
        if benchmark_of(key) not in ran:
            report.not_run.append(key)
            continue
        now = current.get(key)
        report.findings.append(
            Finding(
                key=key,
                baseline=float(entry["value"]),
                current=None if now is None else float(now.value),
                better=entry["better"],
                tolerance=float(entry.get("tolerance", tolerance)),
            )
        )
    report.new = [k for k in current if k not in baseline["figures"]]
    return report


def updated_baseline(
    old: dict | None, current: dict[str, Gated], ran: set[str], generated: dict
) -> dict:
    """A baseline holding this run's gated figures for the benchmarks that ran.

    Figures of benchmarks that did not run are kept from ``old``, and so are the
    tolerance and any per-figure tolerance, so a partial refresh changes only what ran.
    """
    old = old or {}
    old_figures = old.get("figures", {})
    figures = {k: v for k, v in old_figures.items() if benchmark_of(k) not in ran}
    for key, gated in current.items():
        entry = {"value": gated.value, "better": gated.better}
        if "tolerance" in old_figures.get(key, {}):
            entry["tolerance"] = old_figures[key]["tolerance"]
        figures[key] = entry
    return {
        "format": FORMAT,
        "version": VERSION,
        "about": (
            "Gated figures of `python -m benchmarks.run --check`. Refresh on purpose with "
            "`python -m benchmarks.run --quick --only compression,fit --update-baseline`; "
            "see benchmarks/README.md."
        ),
        "tolerance": old.get("tolerance", DEFAULT_TOLERANCE),
        "generated": generated,
        "figures": dict(sorted(figures.items())),
    }


def save_baseline(path: str | Path, baseline: dict) -> None:
    write_text_atomic(path, json.dumps(baseline, indent=2) + "\n")
