"""Report rendering: Markdown tables, JSON output and Pillow line plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from nembed_compress import report
from nembed_compress.report import (
    format_number,
    line_plot,
    markdown_table,
    plot_accuracy_vs_dim,
    write_json,
)

DIMS = [4, 8, 16, 32, 64]
ACCURACIES = [91.2, 95.1, 97.2, 97.9, 98.1]
PARAMS = [5_186, 10_562, 20_314, 39_818, 77_626]


# ---------------------------------------------------------------------------
# Tables and JSON


def test_markdown_table_aligns_columns_and_right_aligns_numbers():
    table = markdown_table(["model", "d", "accuracy"], [["fc", 64, 98.123], ["convnet", 48, 99.1]])
    lines = table.splitlines()

    assert len(lines) == 4 and table.endswith("\n")
    assert len({len(line) for line in lines}) == 1, f"ragged table:\n{table}"
    assert lines[1].startswith("| ---") and lines[1].endswith("---: |")
    assert "|    98.12 |" in lines[2] and "| fc      |" in lines[2]


def test_format_number_gives_short_readable_cells():
    assert format_number(61706) == "61,706"
    assert format_number(512) == "512"
    assert format_number(98.2345) == "98.23"
    assert format_number(0.04123) == "0.0412"
    assert format_number(3.1e-5) == "3.10e-05"
    assert format_number(0.0) == "0"
    assert format_number(math.nan) == "nan"
    assert format_number(None) == ""
    assert format_number(True) == "True"


def test_markdown_table_escapes_pipes_and_refuses_ragged_rows():
    assert "a\\|b" in markdown_table(["name"], [["a|b"]])
    with pytest.raises(ValueError, match="row 0 has 1 cells; expected 2"):
        markdown_table(["a", "b"], [[1]])


def test_write_json_uses_indent_two_and_a_trailing_newline(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"accuracy": 98.1, "dims": (4, 8), "file": Path("x.safetensors")})

    text = path.read_text()
    assert text.endswith("}\n") and '\n  "accuracy": 98.1,' in text
    assert json.loads(text) == {"accuracy": 98.1, "dims": [4, 8], "file": "x.safetensors"}


def test_a_failed_json_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old\n")

    with pytest.raises(TypeError, match="cannot store a object"):
        write_json(path, {"fine": list(range(1000)), "broken": object()})

    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


# ---------------------------------------------------------------------------
# Plots


def plot(path: Path, accuracies=ACCURACIES, **kwargs) -> Image.Image:
    options = {"reference_accuracy": 98.3, "params": PARAMS} | kwargs
    plot_accuracy_vs_dim(path, DIMS, accuracies, **options)
    return Image.open(path)


def non_white_fraction(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    histogram = image.convert("L").crop(box).histogram()
    return sum(histogram[:245]) / sum(histogram)


def test_a_plot_is_a_png_of_900_by_560_with_drawing_inside_the_plot_area(tmp_path):
    image = plot(tmp_path / "acc.png")

    assert image.format == "PNG" and image.size == (900, 560)
    plot_area = (100, 60, 800, 480)
    assert non_white_fraction(image, plot_area) > 0.02
    assert image.convert("RGB").getpixel((5, 5)) == (255, 255, 255)


def test_plots_of_different_data_differ(tmp_path):
    first = plot(tmp_path / "a.png")
    second = plot(tmp_path / "b.png", accuracies=[60.0, 70.0, 80.0, 85.0, 90.0])
    assert first.tobytes() != second.tobytes()


def test_the_same_data_gives_the_same_image(tmp_path):
    assert plot(tmp_path / "a.png").tobytes() == plot(tmp_path / "b.png").tobytes()


def test_the_secondary_axis_draws_tick_labels_right_of_the_plot(tmp_path):
    with_params = plot(tmp_path / "a.png")
    without = plot(tmp_path / "b.png", params=None)
    # With a right axis the plot ends near x = 808; without one it reaches x = 870.
    assert non_white_fraction(with_params, (812, 60, 900, 480)) > 0.01
    assert non_white_fraction(without, (812, 60, 868, 480)) > 0.0
    assert non_white_fraction(without, (875, 0, 900, 560)) == 0.0


def test_fractions_are_plotted_as_percent(tmp_path):
    fractions = plot(tmp_path / "a.png", [a / 100 for a in ACCURACIES], reference_accuracy=0.983)
    assert fractions.tobytes() == plot(tmp_path / "b.png").tobytes()


def test_line_plot_accepts_several_series_gaps_and_a_linear_x_axis(tmp_path):
    path = tmp_path / "loss.png"
    line_plot(
        path,
        [("train", [0, 100, 200], [2.3, 1.1, 0.7]), ("holdout", [0, 100, 200], [2.4, None, 0.9])],
        x_label="step",
        y_label="loss",
        title="Distillation",
    )
    assert Image.open(path).size == (900, 560)


def test_line_plot_refuses_mismatched_series_and_log_of_zero(tmp_path):
    with pytest.raises(ValueError, match="'a' has 2 x values but 1 y"):
        line_plot(tmp_path / "x.png", [("a", [1, 2], [3])], x_label="", y_label="", title="")
    with pytest.raises(ValueError, match="log2 axis"):
        line_plot(
            tmp_path / "x.png",
            [("a", [0, 2], [3, 4])],
            x_label="",
            y_label="",
            title="",
            x_log2=True,
        )
    assert not (tmp_path / "x.png").exists()


def test_a_failed_plot_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "acc.png"
    path.write_bytes(b"previous plot")

    def write_half_then_fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        plot_accuracy_vs_dim(path, DIMS, ACCURACIES, reference_accuracy=98.3)

    assert path.read_bytes() == b"previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png"]


def test_the_legend_avoids_the_lines_when_a_corner_is_free():
    canvas = report._Canvas(has_secondary=False)
    rising = report._Entry("rising", "#000000", "circle", False, [(200.0, 900.0), (1700.0, 150.0)])
    size = report._legend_size(canvas, [rising])
    spot, covered = report._best_legend_spot(canvas, [rising], size)
    assert covered == 0, f"legend at {spot} hides {covered} points of a diagonal line"
