"""``nembed eval`` and ``nembed inspect`` through the command line.

The model is a 784-32-10 MLP built by hand for a synthetic MNIST-shaped set whose class
is the position of a bright square, so a working model scores far above chance
and a broken pipeline (wrong normalisation, wrong weights) shows in the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import save_as_user_checkpoint, square_detector, write_square_mnist
from typer.testing import CliRunner

import nembed_compress.cli.evaluate  # noqa: F401  (registers eval and inspect)
from nembed_compress.cli import app

runner = CliRunner()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_square_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return save_as_user_checkpoint(square_detector(), tmp_path_factory.mktemp("model") / "mlp.pt")


@pytest.fixture(scope="session")
def compressed(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compressed") / "mlp-d16.safetensors"
    result = invoke("compress", checkpoint, "--dim", 16, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def eval_json(*args) -> dict:
    result = invoke("eval", *args, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------
# eval


class TestEval:
    def test_a_compressed_file_is_scored_with_every_figure_in_the_json(self, compressed, data_dir):
        r = eval_json(compressed, "--data-dir", data_dir)

        keys = {"accuracy", "cross_entropy", "params", "bytes", "samples_per_second", "samples"}
        assert keys | {"dataset", "arch", "dim", "file"} <= set(r)
        assert r["dataset"] == "mnist" and r["dim"] == 16 and r["samples"] == 300
        assert r["accuracy"] > 0.8, f"compressed accuracy {r['accuracy']:.3f} is near chance"
        assert 0 < r["cross_entropy"] < 1.0, f"cross-entropy {r['cross_entropy']:.3f}"
        assert r["params"]["paper"] < r["params"]["all"] < 32 * 784
        assert r["bytes"] == compressed.stat().st_size
        assert r["samples_per_second"] > 0
        assert r["normalization"]["source"] == "file"

    def test_a_checkpoint_is_scored_with_the_dataset_normalisation(self, checkpoint, data_dir):
        r = eval_json(checkpoint, "--data-dir", data_dir)

        assert r["kind"] == "checkpoint" and r["dim"] is None
        assert r["accuracy"] > 0.9, f"reference accuracy {r['accuracy']:.3f} is too low"
        n = 784 * 32 + 32 + 32 * 10 + 10
        assert r["params"] == {"all": n, "paper": n}
        assert r["normalization"] == {"mean": [0.1307], "std": [0.3081], "source": "dataset"}

    def test_limit_caps_the_samples_and_dataset_can_be_given(self, checkpoint, data_dir):
        r = eval_json(checkpoint, "--data-dir", data_dir, "--dataset", "mnist", "--limit", 50)
        assert r["samples"] == 50

    def test_user_normalisation_overrides_the_stored_one(self, compressed, data_dir):
        r = eval_json(compressed, "--data-dir", data_dir, "--mean", "0.9", "--std", "0.1")
        assert r["normalization"]["source"] == "options"
        assert r["normalization"]["mean"] == [0.9]

    def test_factored_layers_give_the_same_scores(self, compressed, data_dir):
        dense = eval_json(compressed, "--data-dir", data_dir)
        factored = eval_json(compressed, "--data-dir", data_dir, "--factored")

        assert factored["factored"] is True
        assert factored["accuracy"] == pytest.approx(dense["accuracy"], abs=1 / 300)
        assert factored["cross_entropy"] == pytest.approx(dense["cross_entropy"], rel=1e-3)

    def test_the_table_names_accuracy_and_both_parameter_counts(self, compressed, data_dir):
        result = invoke("eval", compressed, "--data-dir", data_dir, "--device", "cpu")
        assert result.exit_code == 0, result.output
        for word in ("accuracy", "cross-entropy", "parameters (all)", "parameters (paper)"):
            assert word in result.stdout

    def test_a_missing_file_fails_with_exit_code_1(self, tmp_path):
        result = invoke("eval", tmp_path / "nope.safetensors")
        assert result.exit_code == 1
        assert "nope.safetensors: no such file" in result.output
        assert "Traceback" not in result.output

    def test_an_unreadable_file_fails_with_exit_code_1(self, tmp_path, data_dir):
        junk = tmp_path / "junk.pt"
        junk.write_bytes(b"not a checkpoint at all")
        result = invoke("eval", junk, "--data-dir", data_dir)
        assert result.exit_code == 1, result.output
        assert "junk.pt" in result.output and "Traceback" not in result.output

    def test_an_unknown_dataset_is_a_usage_error(self, compressed):
        result = invoke("eval", compressed, "--dataset", "imagenet")
        assert result.exit_code == 2
        assert "--dataset must be one of" in result.output

    def test_a_dataset_folder_without_the_data_fails_with_exit_code_1(self, compressed, tmp_path):
        result = invoke("eval", compressed, "--data-dir", tmp_path)
        assert result.exit_code == 1
        assert "not found" in result.output and "--data-dir" in result.output

    def test_a_dataset_of_another_shape_is_a_usage_error(self, checkpoint):
        result = invoke("eval", checkpoint, "--dataset", "cifar10")
        assert result.exit_code == 2
        assert "3x32x32" in result.output and "1x28x28" in result.output

    def test_factored_on_a_checkpoint_is_a_usage_error(self, checkpoint):
        result = invoke("eval", checkpoint, "--factored")
        assert result.exit_code == 2
        assert "compressed files only" in result.output

    def test_half_a_normalisation_is_a_usage_error(self, checkpoint):
        result = invoke("eval", checkpoint, "--mean", "0.1")
        assert result.exit_code == 2
        assert "--mean and --std go together" in result.output


# ---------------------------------------------------------------------------
# inspect


class TestInspect:
    def test_the_json_holds_sets_fit_sizes_and_source(self, compressed, checkpoint):
        result = invoke("inspect", compressed, "--json")
        assert result.exit_code == 0, result.output
        r = json.loads(result.stdout)

        assert r["dim"] == 16 and r["kernel"] == "dot" and r["dtype"] == "float32"
        sets = r["neuron_sets"]
        assert {name: s["neurons"] for name, s in sets.items()} == {
            "input": 784,
            "fc1": 32,
            "fc2": 10,
        }
        assert sets["fc1"]["values_per_neuron"] == 16 + 1  # embedding and bias
        assert r["params"]["all"] == (784 + 32 + 10) * 16 + 32 + 10
        assert r["tensor_bytes"] == 4 * r["params"]["all"]
        assert r["tensor_bytes"] < r["file_bytes"]
        assert r["normalization"] == {"mean": [0.1307], "std": [0.3081]}
        fit = r["fit"]["fit"]
        assert fit["loss"] >= fit["bound"] >= 0 and fit["solver"] == "als"
        assert len(r["source_sha256"]) == 64
        assert r["extra"] == {"source_file": checkpoint.name, "dataset": "mnist"}

    def test_the_tables_show_architecture_sets_and_fit(self, compressed):
        result = invoke("inspect", compressed)
        assert result.exit_code == 0, result.output
        for word in ("fc 784-32-10 (emb, d=16, dot)", "neuron sets", "fit loss", "fc1", "sha256"):
            assert word in result.stdout, f"{word!r} missing from:\n{result.stdout}"

    def test_a_checkpoint_is_refused_with_its_architecture_and_a_hint(self, checkpoint):
        result = invoke("inspect", checkpoint)
        assert result.exit_code == 2
        assert "fc 784-32-10 (direct)" in result.output
        assert "nembed compress" in result.output

    def test_a_missing_file_fails_with_exit_code_1(self, tmp_path):
        result = invoke("inspect", tmp_path / "gone.safetensors")
        assert result.exit_code == 1
        assert "no such file" in result.output
