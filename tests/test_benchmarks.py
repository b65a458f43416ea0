"""The benchmark gate and runner, with fake benchmarks: no real benchmark runs here."""

from __future__ import annotations

import json
import math
import types

import pytest
from typer.testing import CliRunner

from benchmarks import gate, run
from benchmarks.common import BenchResult, Gated, Table, loglog_slope, paired_ratio
from nembed_compress.errors import UsageError


def baseline_with(figures: dict, tolerance: float = 0.01) -> dict:
    return {
        "format": gate.FORMAT,
        "version": gate.VERSION,
        "tolerance": tolerance,
        "figures": {k: {"value": v, "better": b} for k, (v, b) in figures.items()},
    }


BASE = baseline_with(
    {
        "compression/fc/param_ratio_all": (4.0, "higher"),
        "fit/als_loss/d=16": (1.0e-3, "lower"),
    }
)


def current(ratio: float, loss: float) -> dict[str, Gated]:
    return {
        "compression/fc/param_ratio_all": Gated(ratio, "higher"),
        "fit/als_loss/d=16": Gated(loss, "lower"),
    }


# ---------------------------------------------------------------------------
# The comparison


def test_a_compression_ratio_below_the_baseline_is_a_regression():
    report = gate.check(BASE, current(3.9, 1.0e-3), {"compression", "fit"})

    assert not report.ok
    assert [f.key for f in report.regressions] == ["compression/fc/param_ratio_all"]


def test_a_fit_loss_above_the_baseline_is_a_regression():
    report = gate.check(BASE, current(4.0, 1.05e-3), {"compression", "fit"})

    assert [f.key for f in report.regressions] == ["fit/als_loss/d=16"]


def test_improvements_pass_and_are_listed():
    report = gate.check(BASE, current(4.5, 0.5e-3), {"compression", "fit"})

    assert report.ok, report.message("baseline.json")
    assert len(report.improvements) == 2
    assert "--update-baseline" in report.message("baseline.json")


@pytest.mark.parametrize(
    ("ratio", "loss", "ok"),
    [
        (4.0 * 0.991, 1.0e-3 * 1.009, True),  # 0.9 % worse: inside the 1 % tolerance
        (4.0 * 0.989, 1.0e-3, False),  # 1.1 % lower ratio
        (4.0, 1.0e-3 * 1.011, False),  # 1.1 % higher loss
    ],
)
def test_the_default_tolerance_of_one_percent_is_respected(ratio, loss, ok):
    report = gate.check(BASE, current(ratio, loss), {"compression", "fit"})

    assert report.ok is ok, report.message("baseline.json")


def test_the_tolerance_stored_in_the_baseline_file_is_used():
    loose = {**BASE, "tolerance": 0.10}
    report = gate.check(loose, current(4.0 * 0.95, 1.0e-3 * 1.05), {"compression", "fit"})

    assert report.ok, report.message("baseline.json")


def test_a_per_figure_tolerance_overrides_the_file_tolerance():
    strict = json.loads(json.dumps(BASE))
    strict["figures"]["fit/als_loss/d=16"]["tolerance"] = 0.0
    report = gate.check(strict, current(4.0, 1.0e-3 * 1.001), {"compression", "fit"})

    assert [f.key for f in report.regressions] == ["fit/als_loss/d=16"]


def test_the_message_names_each_regressed_figure_with_both_values():
    report = gate.check(BASE, current(3.0, 2.0e-3), {"compression", "fit"})
    message = report.message("benchmarks/baseline.json")

    assert "2 of 2 gated figures regressed against benchmarks/baseline.json" in message
    assert "REGRESSION compression/fc/param_ratio_all: 4 -> 3 (-25.00%" in message
    assert "REGRESSION fit/als_loss/d=16: 0.001 -> 0.002 (+100.00%; lower is better" in message


def test_a_figure_missing_from_a_benchmark_that_ran_is_a_regression():
    report = gate.check(BASE, {"compression/fc/param_ratio_all": Gated(4.0, "higher")}, {"fit"})

    assert [f.key for f in report.regressions] == ["fit/als_loss/d=16"]
    assert "fit/als_loss/d=16: missing from this run" in report.message("b.json")


def test_figures_of_benchmarks_not_run_are_reported_as_not_checked():
    report = gate.check(BASE, {"fit/als_loss/d=16": Gated(1.0e-3, "lower")}, {"fit"})

    assert report.ok
    assert report.not_run == ["compression/fc/param_ratio_all"]
    assert "not checked (benchmark not run): compression/fc/param_ratio_all" in report.message(
        "b.json"
    )


def test_a_nan_figure_is_a_regression():
    report = gate.check(BASE, current(4.0, math.nan), {"compression", "fit"})

    assert [f.key for f in report.regressions] == ["fit/als_loss/d=16"]


# ---------------------------------------------------------------------------
# Baseline files


def test_load_baseline_names_the_file_and_how_to_create_it(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(UsageError, match="no such baseline file; create one on purpose"):
        gate.load_baseline(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format='nembed-bench-baseline'"),
        ({"version": 99}, "baseline version 99"),
        ({"tolerance": -0.1}, "tolerance must be a number >= 0"),
        ({"figures": {"fit/x": {"value": "1", "better": "lower"}}}, "figure 'fit/x' needs"),
        ({"figures": {"fit/x": {"value": 1.0, "better": "up"}}}, "'better' = higher or lower"),
    ],
)
def test_load_baseline_refuses_malformed_files_naming_the_entry(tmp_path, change, message):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({**BASE, **change}))

    with pytest.raises(UsageError, match=message):
        gate.load_baseline(path)


def test_updated_baseline_replaces_only_the_benchmarks_that_ran():
    old = json.loads(json.dumps(BASE))
    old["tolerance"] = 0.02
    old["figures"]["fit/als_loss/d=16"]["tolerance"] = 0.05
    new = gate.updated_baseline(
        old, {"fit/als_loss/d=16": Gated(9.0e-4, "lower")}, {"fit"}, {"mode": "quick"}
    )

    assert new["tolerance"] == 0.02
    assert new["figures"]["compression/fc/param_ratio_all"] == {"value": 4.0, "better": "higher"}
    assert new["figures"]["fit/als_loss/d=16"] == {
        "value": 9.0e-4,
        "better": "lower",
        "tolerance": 0.05,
    }


def test_a_saved_baseline_loads_back(tmp_path):
    path = tmp_path / "baseline.json"
    gate.save_baseline(path, gate.updated_baseline(None, current(4.0, 1e-3), {"fit"}, {}))

    loaded = gate.load_baseline(path)
    assert loaded["tolerance"] == gate.DEFAULT_TOLERANCE
    assert set(loaded["figures"]) == set(current(4.0, 1e-3))


def test_the_committed_baseline_is_valid_and_gates_compression_and_fit():
    baseline = gate.load_baseline(run.DEFAULT_BASELINE)
    gated = {gate.benchmark_of(k) for k in baseline["figures"]}

    assert gated == {"compression", "fit"}
    assert baseline["tolerance"] <= 0.05, f"tolerance {baseline['tolerance']} is loose"


# ---------------------------------------------------------------------------
# Timing helpers


def test_paired_ratio_is_the_median_of_per_round_ratios():
    samples = {"slow": [2.0, 4.0, 30.0], "fast": [1.0, 1.0, 10.0]}

    assert paired_ratio(samples, "slow", "fast") == 3.0


def test_loglog_slope_recovers_a_power_law_exponent():
    widths = [256, 512, 1024, 2048]

    assert loglog_slope(widths, [w**2.5 for w in widths]) == pytest.approx(2.5)


# ---------------------------------------------------------------------------
# The runner, with fake benchmarks


def fake_benchmarks(monkeypatch, ratio: float, loss: float) -> None:
    figures = current(ratio, loss)

    def fake(name):
        def run_fake(ctx):
            gated = {k: g for k, g in figures.items() if k.startswith(name + "/")}
            table = Table(
                f"{name} figures", ["figure", "value"], [[k, g.value] for k, g in gated.items()]
            )
            return BenchResult(figures={"fake": True}, tables=[table], gated=gated)

        return types.SimpleNamespace(run=run_fake)

    monkeypatch.setattr(run, "load_benchmark", fake)
    monkeypatch.setenv("NEMBED_OFFLINE", "1")


def invoke(tmp_path, *args):
    return CliRunner().invoke(run.app, ["--out", str(tmp_path / "out"), *args])


def write_base(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(BASE))
    return path


def test_check_exits_1_and_names_the_regressed_figure(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=3.0, loss=1.0e-3)
    result = invoke(tmp_path, "--only", "compression,fit", "--check", str(write_base(tmp_path)))

    assert result.exit_code == 1, result.output
    assert "REGRESSION compression/fc/param_ratio_all" in result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["check"]["ok"] is False
    assert (tmp_path / "out" / "results.md").read_text().startswith("# nembed-compress")


def test_check_exits_0_when_every_figure_is_within_tolerance(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=4.0, loss=1.0e-3 * 1.005)
    result = invoke(tmp_path, "--only", "compression,fit", "--check", str(write_base(tmp_path)))

    assert result.exit_code == 0, result.output
    assert "all 2 gated figures within tolerance" in result.output


def test_update_baseline_writes_the_figures_of_the_run(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=5.0, loss=2.0e-3)
    path = write_base(tmp_path)
    result = invoke(tmp_path, "--only", "fit", "--check", str(path), "--update-baseline")

    assert result.exit_code == 0, result.output
    figures = gate.load_baseline(path)["figures"]
    assert figures["fit/als_loss/d=16"]["value"] == 2.0e-3
    assert figures["compression/fc/param_ratio_all"]["value"] == 4.0  # not run: kept


def test_an_unknown_benchmark_name_is_a_usage_error(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=4.0, loss=1.0e-3)
    result = invoke(tmp_path, "--only", "compresion")

    assert result.exit_code == 2
    assert "unknown benchmark compresion; choose from compression, fit" in result.output


def test_a_missing_baseline_fails_before_any_benchmark_runs(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=4.0, loss=1.0e-3)
    result = invoke(tmp_path, "--check", str(tmp_path / "nope.json"))

    assert result.exit_code == 2
    assert "no such baseline file" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_checking_only_ungated_benchmarks_is_a_usage_error(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=4.0, loss=1.0e-3)
    result = invoke(tmp_path, "--only", "inference", "--check", str(write_base(tmp_path)))

    assert result.exit_code == 2
    assert "none of the benchmarks to run has gated figures" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_failing_benchmark_exits_1_and_the_others_still_report(tmp_path, monkeypatch):
    fake_benchmarks(monkeypatch, ratio=4.0, loss=1.0e-3)
    working = run.load_benchmark

    def broken(name):
        if name == "fit":
            return types.SimpleNamespace(run=lambda ctx: 1 / 0)
        return working(name)

    monkeypatch.setattr(run, "load_benchmark", broken)
    result = invoke(tmp_path, "--only", "compression,fit", "--check", str(write_base(tmp_path)))

    assert result.exit_code == 1
    assert "fit failed: ZeroDivisionError" in result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "compression" in saved["benchmarks"] and "fit" in saved["errors"]
