"""Training from scratch: the recipes, the loop, the saved files and ``nembed train``.

Everything runs on a synthetic MNIST-shaped set whose class is the position of a bright
square, small enough that a tiny MLP learns it in a few dozen steps on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic import square_dataset, write_square_mnist
from typer.testing import CliRunner

import nembed_compress.cli.experiments  # noqa: F401  (registers train)
from nembed_compress.checkpoints import load_checkpoint
from nembed_compress.cli import app
from nembed_compress.datasets import ImageDataset
from nembed_compress.errors import UsageError
from nembed_compress.fileformat import load_nembed
from nembed_compress.models import build_model
from nembed_compress.spec import ArchSpec, Normalization
from nembed_compress.training import (
    Recipe,
    TrainOptions,
    TrainResult,
    augment,
    make_optimizer,
    model_spec,
    paper_recipe,
    save_trained,
    train_model,
)

runner = CliRunner()
NORM = Normalization((0.1,), (0.3,))
TINY = ArchSpec("fc", (1, 28, 28), (16, 10))


def tiny_run(spec: ArchSpec = TINY, steps: int = 30, seed: int = 0) -> TrainResult:
    recipe = Recipe("adam", 0.01, 64, 0.0, "cos", 0.3, False)
    return train_model(
        spec,
        square_dataset(320, seed=0),
        square_dataset(100, seed=1),
        NORM,
        recipe,
        steps=steps,
        eval_every=10,
        seed=seed,
    )


@pytest.fixture(scope="module")
def direct_run() -> TrainResult:
    return tiny_run()


# ---------------------------------------------------------------------------
# Recipes


def test_the_paper_recipe_is_adam_at_0_01_on_mnist_and_dawnbench_sgd_on_cifar10():
    mnist, cifar = paper_recipe("mnist"), paper_recipe("cifar10")
    assert (mnist.optimizer, mnist.lr, mnist.batch_size, mnist.anneal) == (
        "adam",
        0.01,
        1000,
        "cos",
    )
    assert (cifar.optimizer, cifar.lr, cifar.batch_size, cifar.anneal) == (
        "sgd",
        0.4,
        512,
        "linear",
    )
    assert cifar.weight_decay == 5e-4 and cifar.augment and not mnist.augment


def test_every_recipe_setting_can_be_overridden():
    options = TrainOptions(dataset="cifar10", lr=2e-4, batch_size=64, optimizer="adam")
    recipe = options.recipe()
    assert (recipe.lr, recipe.batch_size, recipe.optimizer) == (2e-4, 64, "adam")
    assert recipe.weight_decay == 5e-4, "settings not overridden keep the recipe's value"


def test_the_one_cycle_schedule_peaks_at_the_given_learning_rate():
    model = build_model(TINY)
    opt, schedule = make_optimizer(model, paper_recipe("cifar10"), steps=100)
    rates = []
    for _ in range(99):
        opt.step()
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    assert max(rates) == pytest.approx(0.4, rel=1e-2), f"peak {max(rates)}"
    assert rates[-1] < 0.01, f"the run ends near zero, got {rates[-1]}"


def test_model_spec_uses_paper_dims_and_dawnbench_logit_scale():
    emb = model_spec(TrainOptions(model="convnet", repr="emb"), (1, 28, 28))
    resnet = model_spec(TrainOptions(model="resnet9", dataset="cifar10"), (3, 32, 32))
    assert emb.dim == 48 and emb.widths == (16, 40, 1000, 100, 10)
    assert resnet.output_scale == 0.125
    with pytest.raises(UsageError, match="--model must be one of"):
        model_spec(TrainOptions(model="vgg"), (1, 28, 28))


def test_augmentation_keeps_shapes_and_only_moves_pixels():
    x = torch.rand(8, 3, 16, 16)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert y.min() >= x.min() and y.max() <= x.max()


# ---------------------------------------------------------------------------
# The training loop


def test_training_a_tiny_mlp_lowers_the_loss_and_learns_the_task(direct_run):
    history = direct_run.figures["history"]
    first, best = history[0], direct_run.figures["best"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], f"history {history}"
    assert best["accuracy"] >= 0.9, f"holdout accuracy {best['accuracy']:.3f} below 0.9"
    assert best["accuracy"] >= first["accuracy"]


def test_the_best_holdout_step_is_the_model_returned(direct_run):
    best = direct_run.figures["best"]
    assert best["step"] in [h["step"] for h in direct_run.figures["history"]]
    assert max(h["accuracy"] for h in direct_run.figures["history"]) == best["accuracy"]
    assert not direct_run.model.training


def test_the_same_seed_gives_the_same_model():
    a, b = tiny_run(steps=10, seed=3), tiny_run(steps=10, seed=3)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_an_embedding_model_trains_with_the_same_recipe():
    result = tiny_run(spec=TINY.replace(repr="emb", dim=8), steps=40)
    assert result.figures["best"]["accuracy"] >= 0.7, f"{result.figures['best']}"


# ---------------------------------------------------------------------------
# Saving


def test_a_direct_model_is_saved_as_a_state_dict_that_compress_reads(direct_run, tmp_path):
    written = save_trained(direct_run, tmp_path / "mlp.pt")
    ckpt = load_checkpoint(written[0])
    assert ckpt.spec.widths == TINY.widths and ckpt.spec.in_shape == TINY.in_shape
    model = build_model(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), direct_run.model(x))
    record = json.loads(written[1].read_text())
    assert record["normalization"] == NORM.to_dict()


def test_a_safetensors_name_gives_a_safetensors_state_dict_with_metadata(direct_run, tmp_path):
    from safetensors import safe_open

    (path,) = save_trained(direct_run, tmp_path / "mlp.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["normalization"]) == NORM.to_dict()
    assert load_checkpoint(path).spec.widths == TINY.widths


def test_an_embedding_model_is_saved_as_a_nembed_file_with_its_normalisation(tmp_path):
    result = tiny_run(spec=TINY.replace(repr="emb", dim=8), steps=10)
    (path,) = save_trained(result, tmp_path / "emb.safetensors")
    nf = load_nembed(path)
    assert nf.normalization == NORM and nf.spec.dim == 8
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(nf.model(x), result.model(x))


def test_saving_refuses_to_overwrite_without_force(direct_run, tmp_path):
    save_trained(direct_run, tmp_path / "mlp.pt")
    with pytest.raises(UsageError, match="file exists; pass --force"):
        save_trained(direct_run, tmp_path / "mlp.pt")
    save_trained(direct_run, tmp_path / "mlp.pt", force=True)


# ---------------------------------------------------------------------------
# nembed train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_square_mnist(tmp_path_factory.mktemp("data"), n_train=400, n_test=100)


def train_args(data_dir: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train",
        "-o",
        str(output),
        "--data-dir",
        str(data_dir),
        "--widths",
        "16,10",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--holdout",
        "100",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        *extra,
    ]


class TestTrainCommand:
    def test_train_writes_a_checkpoint_and_reports_json(self, data_dir, tmp_path):
        result = runner.invoke(app, train_args(data_dir, tmp_path / "m.pt", "--json"))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["test"]["samples"] == 100 and report["train_examples"] == 300
        assert report["params"]["all"] == 784 * 16 + 16 + 16 * 10 + 10
        assert report["test"]["accuracy"] >= 0.5, f"test accuracy {report['test']['accuracy']}"
        assert (tmp_path / "m.pt").exists() and (tmp_path / "m.pt.json").exists()

    def test_train_with_emb_writes_a_nembed_file(self, data_dir, tmp_path):
        out = tmp_path / "m.safetensors"
        result = runner.invoke(app, train_args(data_dir, out, "--repr", "emb", "--dim", "8"))
        assert result.exit_code == 0, result.output
        assert "test accuracy" in result.stdout
        assert load_nembed(out).spec.dim == 8

    def test_train_refuses_an_existing_output_with_exit_2(self, data_dir, tmp_path):
        (tmp_path / "m.pt").write_bytes(b"keep")
        result = runner.invoke(app, train_args(data_dir, tmp_path / "m.pt"))
        assert result.exit_code == 2
        assert "pass --force" in result.output
        assert (tmp_path / "m.pt").read_bytes() == b"keep"

    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("--repr", "dense", "--repr must be one of"),
            ("--optimizer", "lbfgs", "--optimizer must be one of"),
            ("--model", "vgg", "--model must be one of"),
            ("--widths", "16,x", "--widths takes comma-separated integers"),
        ],
    )
    def test_bad_options_are_usage_errors(self, data_dir, tmp_path, option, value, message):
        result = runner.invoke(app, train_args(data_dir, tmp_path / "m.pt", option, value))
        assert result.exit_code == 2, result.output
        assert message in result.output


@pytest.mark.parametrize(
    "spec",
    [
        ArchSpec("convnet", (3, 16, 16), (4, 6, 8, 10), repr="sep"),
        ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10), repr="emb", dim=4),
    ],
    ids=["convnet-sep", "resnet9-emb"],
)
def test_convolutional_models_train_with_the_cifar_recipe(spec):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=generator)
    data = ImageDataset(images, torch.randint(0, 10, (64,), generator=generator), "x", "train")
    recipe = Recipe("sgd", 0.05, 16, 5e-4, "linear", 0.2, True)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    result = train_model(spec, data, data, norm, recipe, steps=4, eval_every=2)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    for bn in result.model.norms.values():
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)), "BN scales stay frozen at 1"


# ---------------------------------------------------------------------------
# The training record fills in what a state dict cannot show


RESNET9_TINY = ArchSpec(
    "resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10), pool="avg", output_scale=0.125
)


def _resnet9_result() -> TrainResult:
    torch.manual_seed(0)
    return TrainResult(build_model(RESNET9_TINY).eval(), Normalization((0.4,) * 3, (0.2,) * 3))


@pytest.mark.parametrize("name", ["r9.safetensors", "r9.pt"])
def test_a_trained_state_dict_brings_back_its_pool_logit_scale_and_normalisation(tmp_path, name):
    result = _resnet9_result()
    (path, *_) = save_trained(result, tmp_path / name)
    ckpt = load_checkpoint(path)
    assert (ckpt.spec.pool, ckpt.spec.output_scale) == ("avg", 0.125)
    assert ckpt.spec.in_shape == (3, 16, 16)
    assert ckpt.normalization == result.normalization
    model = build_model(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model.eval()(x), result.model(x), atol=1e-6)


def test_options_given_by_the_caller_win_over_the_training_record(tmp_path):
    (path,) = save_trained(_resnet9_result(), tmp_path / "r9.safetensors")
    ckpt = load_checkpoint(path, pool="max", output_scale=1.0)
    assert (ckpt.spec.pool, ckpt.spec.output_scale) == ("max", 1.0)


def test_a_record_that_does_not_parse_is_ignored_with_a_warning(tmp_path, caplog):
    (path, record) = save_trained(_resnet9_result(), tmp_path / "r9.pt")
    record.write_text('{"arch": {"family": "mlp"}}')
    ckpt = load_checkpoint(path)
    assert (ckpt.spec.pool, ckpt.spec.output_scale, ckpt.normalization) == ("max", 1.0, None)
    assert "ignoring its training record" in caplog.text


def test_compress_and_eval_use_the_recorded_normalisation(tmp_path, data_dir):
    norm = Normalization((0.2,), (0.4,))
    result = TrainResult(tiny_run(steps=10).model, norm)
    (path,) = save_trained(result, tmp_path / "mlp.safetensors")
    out = tmp_path / "c.safetensors"
    compressed = runner.invoke(app, ["compress", str(path), "--dim", "4", "-o", str(out)])
    assert compressed.exit_code == 0, compressed.output
    assert load_nembed(out).normalization == norm
    scored = runner.invoke(app, ["eval", str(path), "--data-dir", str(data_dir), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["normalization"]["source"] == "file"


# ---------------------------------------------------------------------------
# Precision


def test_bfloat16_training_keeps_float32_weights_and_contiguous_layout():
    spec = ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=generator)
    data = ImageDataset(images, torch.randint(0, 10, (32,), generator=generator), "x", "train")
    recipe = Recipe("sgd", 0.05, 16, 5e-4, "linear", 0.2, True)
    norm = Normalization((0.5,) * 3, (0.25,) * 3)
    result = train_model(
        spec, data, data, norm, recipe, steps=3, eval_every=3, precision="bfloat16"
    )
    assert result.figures["precision"] == "bfloat16"
    for name, p in result.model.state_dict().items():
        assert p.is_contiguous(), f"{name} left in channels-last"
        if p.is_floating_point():
            assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    untrained = build_model(spec).state_dict()
    assert any(not torch.equal(untrained[k], v) for k, v in result.model.state_dict().items())


def test_an_unknown_precision_is_a_usage_error(data_dir, tmp_path):
    result = runner.invoke(app, train_args(data_dir, tmp_path / "m.pt", "--precision", "fp8"))
    assert result.exit_code == 2, result.output
    assert "--precision must be one of float32, bfloat16" in result.output
