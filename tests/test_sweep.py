"""The dimension sweep: the library function, its report files and ``nembed sweep-dims``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from synthetic import save_as_user_checkpoint, square_detector, write_square_mnist
from typer.testing import CliRunner

import nembed_compress.cli.sweep  # noqa: F401  (registers sweep-dims)
from nembed_compress.cli import app
from nembed_compress.datasets import load_dataset
from nembed_compress.errors import UsageError
from nembed_compress.fileformat import load_nembed
from nembed_compress.pipeline import CompressOptions
from nembed_compress.spec import Normalization
from nembed_compress.sweep import REPORT_FILES, check_dims, sweep_dims, weight_mse

runner = CliRunner()
# 784-32-10: no matrix has rank above 32, so d = 32 reproduces the model exactly.
FULL_RANK = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_square_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_as_user_checkpoint(square_detector(), tmp_path_factory.mktemp("m") / "mlp.pt")


def sweep(checkpoint, data_dir, out, *args):
    argv = ["sweep-dims", checkpoint, "--data-dir", data_dir, "-o", out, "--device", "cpu", *args]
    return runner.invoke(app, [str(a) for a in argv])


# ---------------------------------------------------------------------------
# The library


def test_weight_mse_counts_every_weight_once():
    per_matrix = [{"shape": [10, 10], "mse": 1.0}, {"shape": [1, 100], "mse": 3.0}]
    assert weight_mse(per_matrix) == pytest.approx(2.0)
    # The fit loss would sum the two means instead: 4.0.


def test_check_dims_sorts_and_drops_repeats_and_refuses_useless_dims():
    model = square_detector()
    assert check_dims(model, [16, 4, 16, 8]) == [4, 8, 16]
    with pytest.raises(UsageError, match="positive"):
        check_dims(model, [4, 0])
    with pytest.raises(UsageError, match=f"keep every d <= {FULL_RANK}"):
        check_dims(model, [4, FULL_RANK + 1])


def test_the_sweep_returns_the_reference_and_one_row_per_dim(data_dir):
    data = load_dataset("mnist", "test", data_dir)
    options = CompressOptions(dim=1, normalization=Normalization((0.1307,), (0.3081,)))
    tasks = []

    def track(description, total):
        tasks.append(description)
        return lambda step, total_, loss=None: None

    result = sweep_dims(square_detector(), [FULL_RANK, 2, 8], data, options, track=track)

    ref, rows = result["reference"], result["rows"]
    assert [r["dim"] for r in rows] == [2, 8, FULL_RANK]
    assert tasks[0] == "sweep over 3 dims" and "evaluate reference" in tasks
    assert ref["accuracy"] > 0.95, f"reference accuracy {ref['accuracy']:.3f}"
    params = [r["params"]["paper"] for r in rows]
    assert params == sorted(params) and params[0] < ref["params"]["paper"] / 10
    errors = [r["weight_mse"] for r in rows]
    assert errors == sorted(errors, reverse=True), f"weight MSE does not fall with d: {errors}"
    assert errors[-1] < 1e-8, f"d = {FULL_RANK} should reproduce every weight, MSE {errors[-1]}"
    assert rows[-1]["accuracy"] == pytest.approx(ref["accuracy"], abs=1 / 300)
    assert rows[-1]["accuracy"] >= rows[0]["accuracy"] - 0.02


# ---------------------------------------------------------------------------
# The command


def test_sweep_writes_the_table_the_json_and_the_plot(checkpoint, data_dir, tmp_path):
    out = tmp_path / "new" / "report"
    result = sweep(checkpoint, data_dir, out, "--dims", "2,4,32")
    assert result.exit_code == 0, result.output

    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    table = (out / "report.md").read_text()
    assert "| Reference " in table and "| Neuron embedding (32 dims) |" in table
    for header in ("Free parameters", "Accuracy (%)", "Weight MSE", "Fit loss", "Fit time (s)"):
        assert header in table
    report = json.loads((out / "report.json").read_text())
    accuracy = {r["dim"]: r["accuracy"] for r in report["rows"]}
    assert accuracy[32] >= accuracy[2] - 0.02, f"accuracy fell with d: {accuracy}"
    assert report["options"]["solver"] == "als" and report["samples"] == 300
    with Image.open(out / "accuracy_vs_dim.png") as image:
        assert image.size == (900, 560)
    assert "d = 32" in result.stdout and "Reference" in result.stdout


def test_json_output_holds_the_rows_and_the_files(checkpoint, data_dir, tmp_path):
    result = sweep(checkpoint, data_dir, tmp_path / "r", "--dims", "4", "--json", "--limit", 100)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 100 and report["rows"][0]["dim"] == 4
    assert {Path(f).name for f in report["files"]} == set(REPORT_FILES)


def test_an_existing_report_is_kept_without_force(checkpoint, data_dir, tmp_path):
    assert sweep(checkpoint, data_dir, tmp_path, "--dims", "4").exit_code == 0
    (tmp_path / "report.md").write_text("precious")

    result = sweep(checkpoint, data_dir, tmp_path, "--dims", "4")
    assert result.exit_code == 2
    assert "report.md" in result.output and "--force" in result.output
    assert (tmp_path / "report.md").read_text() == "precious"

    assert sweep(checkpoint, data_dir, tmp_path, "--dims", "4", "--force").exit_code == 0
    assert (tmp_path / "report.md").read_text() != "precious"


def test_save_models_writes_one_loadable_file_per_dim(checkpoint, data_dir, tmp_path):
    result = sweep(checkpoint, data_dir, tmp_path, "--dims", "8,4", "--save-models")
    assert result.exit_code == 0, result.output
    for dim in (4, 8):
        nf = load_nembed(tmp_path / f"d{dim}.safetensors")
        assert nf.spec.dim == dim and nf.extra["dataset"] == "mnist"
        assert len(nf.source_sha256) == 64


def test_calibration_is_run_and_recorded_for_every_dim(checkpoint, data_dir, tmp_path):
    args = ("--dims", "2,4", "--calibrate", "--calibrate-steps", 3, "--calibrate-batch-size", 64)
    result = sweep(checkpoint, data_dir, tmp_path, *args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["calibration"]["steps"] for r in report["rows"]] == [3, 3]
    assert report["options"]["calibrate"]["steps"] == 3
    assert "calibrated for 3 steps" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ("4,x", "comma-separated integers"),
        ("0,4", "positive integer"),
        ("4,33", "larger than useful"),
        (",", "is empty"),
    ],
)
def test_bad_dims_are_usage_errors_and_write_nothing(checkpoint, data_dir, tmp_path, dims, message):
    out = tmp_path / "report"
    result = sweep(checkpoint, data_dir, out, "--dims", dims)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_compressed_file_is_refused(checkpoint, data_dir, tmp_path):
    assert sweep(checkpoint, data_dir, tmp_path, "--dims", "4", "--save-models").exit_code == 0
    result = sweep(tmp_path / "d4.safetensors", data_dir, tmp_path / "again", "--dims", "4")
    assert result.exit_code == 2
    assert "original checkpoint" in result.output


def test_a_dataset_folder_without_the_data_fails_with_exit_code_1(checkpoint, tmp_path):
    out = tmp_path / "report"
    result = sweep(checkpoint, tmp_path, out, "--dims", "4")
    assert result.exit_code == 1
    assert "not found" in result.output
    assert not out.exists()


def test_an_unknown_dataset_is_a_usage_error(checkpoint, data_dir, tmp_path):
    result = sweep(checkpoint, data_dir, tmp_path, "--dataset", "svhn")
    assert result.exit_code == 2
    assert "--dataset must be one of" in result.output


def test_a_missing_checkpoint_fails_with_exit_code_1(data_dir, tmp_path):
    result = sweep(tmp_path / "gone.pt", data_dir, tmp_path / "r")
    assert result.exit_code == 1
    assert "gone.pt: no such file" in result.output
