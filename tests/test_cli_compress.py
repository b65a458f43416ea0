"""``nembed compress`` through the command line: results, outputs and every kind of bad input."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from nembed_compress.cli import app
from nembed_compress.fileformat import load_nembed, read_metadata
from nembed_compress.models import build_model
from nembed_compress.spec import ArchSpec

runner = CliRunner()
MLP = ArchSpec("fc", (1, 28, 28), (32, 10))


@pytest.fixture()
def mlp_file(tmp_path):
    torch.manual_seed(0)
    model = build_model(MLP)
    path = tmp_path / "mlp.pt"
    torch.save(
        {
            "fc1.weight": model.layers.fc1.weight,
            "fc1.bias": model.layers.fc1.bias,
            "fc2.weight": model.layers.fc2.weight,
            "fc2.bias": model.layers.fc2.bias,
        },
        path,
    )
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_compress_writes_a_self_describing_file_and_reports_json(mlp_file, tmp_path):
    out = tmp_path / "small.safetensors"
    result = invoke("compress", mlp_file, "--dim", 8, "-o", out, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["param_ratio"] > 1
    assert report["fit"]["loss"] >= report["fit"]["bound"] >= 0
    meta = read_metadata(out)
    assert json.loads(meta["arch"])["repr"] == "emb" and meta["dim"] == "8"
    assert json.loads(meta["normalization"])["mean"] == [0.1307]
    assert len(meta["source_sha256"]) == 64
    nf = load_nembed(out)
    assert nf.model.spec.dim == 8


def test_default_output_sits_next_to_the_input(mlp_file):
    result = invoke("compress", mlp_file, "--dim", 4)
    assert result.exit_code == 0, result.output
    assert (mlp_file.parent / "mlp-d4.safetensors").exists()


def test_user_normalisation_is_stored(mlp_file, tmp_path):
    out = tmp_path / "n.safetensors"
    result = invoke("compress", mlp_file, "-d", 4, "-o", out, "--mean", "0.5", "--std", "0.25")
    assert result.exit_code == 0, result.output
    assert json.loads(read_metadata(out)["normalization"]) == {"mean": [0.5], "std": [0.25]}


def test_float16_output_is_smaller(mlp_file, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert invoke("compress", mlp_file, "-d", 8, "-o", a).exit_code == 0
    assert invoke("compress", mlp_file, "-d", 8, "-o", b, "--dtype", "float16").exit_code == 0
    assert b.stat().st_size < 0.6 * a.stat().st_size


def test_an_existing_output_is_kept_without_force(mlp_file, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    result = invoke("compress", mlp_file, "-d", 4, "-o", out)
    assert result.exit_code == 2
    assert "--force" in result.output
    assert out.read_bytes() == b"precious"
    assert invoke("compress", mlp_file, "-d", 4, "-o", out, "--force").exit_code == 0


def test_the_input_file_is_never_modified(mlp_file, tmp_path):
    before = mlp_file.read_bytes()
    invoke("compress", mlp_file, "-d", 4, "-o", tmp_path / "x.safetensors")
    assert mlp_file.read_bytes() == before


def _write_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        torch.save(build_model(MLP).state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "nan":
        state = build_model(MLP).state_dict()
        state["layers.fc1.weight"][0, 0] = float("nan")
        torch.save(state, path)
    elif kind == "transformer":
        path = tmp_path / "t.safetensors"
        save_file(
            {
                "embed.weight": torch.randn(100, 16),
                "attn.in_proj_weight": torch.randn(48, 16),
                "ln.weight": torch.ones(16),
                "ln.bias": torch.zeros(16),
            },
            str(path),
        )
    elif kind == "vgg":
        state, c = {}, 3
        for i, w in enumerate([8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]):
            state[f"features.{i}.weight"] = torch.randn(w, c, 3, 3)
            state[f"features.{i}.bias"] = torch.zeros(w)
            c = w
        state["classifier.weight"] = torch.randn(10, 64)
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "nan", "transformer", "vgg"])
def test_bad_checkpoints_get_one_clear_line_and_no_output(tmp_path, kind):
    path = _write_bad(tmp_path, kind)
    out = tmp_path / "out.safetensors"
    result = invoke("compress", path, "-d", 4, "-o", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("Error:")
    assert path.name in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_missing_file_is_named(tmp_path):
    result = invoke("compress", tmp_path / "nope.pt", "-d", 4)
    assert result.exit_code == 1
    assert "nope.pt" in result.output and "no such file" in result.output


@pytest.mark.parametrize(("dim", "message"), [(0, "positive"), (-3, "positive"), (500, "larger")])
def test_bad_dimensions_are_usage_errors(mlp_file, tmp_path, dim, message):
    out = tmp_path / "o.safetensors"
    result = invoke("compress", mlp_file, "--dim", dim, "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_an_unwritable_output_folder_is_an_error(mlp_file, tmp_path):
    result = invoke("compress", mlp_file, "-d", 4, "-o", tmp_path / "missing" / "o.safetensors")
    assert result.exit_code == 1
    assert "does not exist" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--kernel", "rbf"),
        ("--solver", "sgd"),
        ("--dtype", "int8"),
        ("--dataset", "imagenet"),
        ("--precision", "float16"),
        ("--calibrate-bn", "train"),
    ],
)
def test_bad_choices_are_usage_errors(mlp_file, option, value):
    result = invoke("compress", mlp_file, "-d", 4, option, value)
    assert result.exit_code == 2
    assert option in result.output


def test_help_lists_the_commands():
    import typer

    result = invoke("--help")
    assert result.exit_code == 0
    commands = set(typer.main.get_command(app).commands)
    expected = {"compress", "eval", "sweep-dims", "inspect", "export", "train", "crossover"}
    assert expected <= commands, expected - commands
    for name in expected:
        assert name in result.output


def test_compressing_a_compressed_file_is_refused_by_name(mlp_file, tmp_path):
    first = tmp_path / "first.safetensors"
    assert invoke("compress", mlp_file, "-d", 4, "-o", first).exit_code == 0
    result = invoke("compress", first, "-d", 4, "-o", tmp_path / "second.safetensors")
    assert result.exit_code == 2
    assert "already a compressed nembed file" in result.output


@pytest.mark.parametrize(
    ("flags", "augmented"),
    [((), False), (("--calibrate-augment",), True), (("--no-calibrate-augment",), False)],
    ids=["mnist-default", "on", "off"],
)
def test_calibration_records_its_augmentation_and_precision(mlp_file, tmp_path, flags, augmented):
    from synthetic import write_square_mnist

    data_dir = write_square_mnist(tmp_path / "data", n_train=128, n_test=32)
    out = tmp_path / "c.safetensors"
    result = invoke(
        "compress", mlp_file, "--dim", 4, "-o", out, "--json", "--calibrate",
        "--calibrate-steps", 2, "--calibrate-batch-size", 64, "--data-dir", data_dir,
        "--precision", "bfloat16", *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)["calibration"]
    assert calibration["augment"] is augmented
    assert (calibration["precision"], calibration["steps"]) == ("bfloat16", 2)
    assert calibration["bn_mode"] == "batch"


def test_layer_matching_is_recorded_with_its_error(mlp_file, tmp_path):
    from synthetic import write_square_mnist

    data_dir = write_square_mnist(tmp_path / "data", n_train=128, n_test=32)
    result = invoke(
        "compress", mlp_file, "--dim", 4, "-o", tmp_path / "c.safetensors", "--json",
        "--calibrate", "--calibrate-steps", 3, "--calibrate-batch-size", 64,
        "--data-dir", data_dir, "--calibrate-layers", 0.5,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)["calibration"]
    assert calibration["layer_weight"] == 0.5
    assert calibration["layer_start"] > 0


def test_a_negative_layer_weight_is_a_usage_error(mlp_file):
    result = invoke("compress", mlp_file, "-d", 4, "--calibrate-layers", -1)
    assert result.exit_code == 2
    assert "--calibrate-layers" in result.output
