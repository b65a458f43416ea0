"""Crossover and interpolation: which tensors move, what stays invariant, and the commands.

Models are tiny and random: a 784-12-10 MLP (MNIST-shaped, so the commands can score
it on a synthetic MNIST folder) and a narrow ResNet9 on 3x16x16 inputs.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from synthetic import write_square_mnist
from typer.testing import CliRunner

import nembed_compress.cli.experiments  # noqa: F401  (registers crossover, interpolate)
from nembed_compress.cli import app
from nembed_compress.convert import reestimate_batch_norm
from nembed_compress.errors import NembedError, UsageError
from nembed_compress.fileformat import NembedFile, load_nembed, save_nembed
from nembed_compress.models import build_model
from nembed_compress.spec import ArchSpec, Normalization
from nembed_compress.training import save_state_dict
from nembed_compress.transfer import (
    check_shared_input_embeddings,
    choose_neurons,
    crossover,
    fit_pair,
    hidden_sets,
    interpolate,
)

runner = CliRunner()
FC = ArchSpec("fc", (1, 28, 28), (12, 10))
FC_EMB = FC.replace(repr="emb", dim=6)
RESNET = ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10), repr="emb", dim=5)
NORM = Normalization((0.1307,), (0.3081,))


def random_model(spec: ArchSpec, seed: int):
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # give biases and norms non-trivial values
    return model


def emb_pair(spec: ArchSpec = FC_EMB):
    """Two random embedding models that share their input embeddings."""
    target, source = random_model(spec, 0), random_model(spec, 1)
    with torch.no_grad():
        source.embeddings["input"].copy_(target.embeddings["input"])
    return target, source


def outputs(model, shape=(1, 28, 28), n=16):
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.eval()(x)


def same_state(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


# ---------------------------------------------------------------------------
# Crossover


def test_crossover_at_fraction_zero_returns_the_target_unchanged():
    target, source = emb_pair()
    child, moved = crossover(target, source, 0.0)
    assert len(moved) == 0 and same_state(child, target)


def test_crossover_of_a_model_with_itself_at_fraction_one_keeps_its_outputs():
    target, _ = emb_pair()
    child, moved = crossover(target, target, 1.0)
    assert len(moved) == 12
    assert torch.equal(outputs(child), outputs(target))


def test_crossover_moves_the_rows_of_every_tensor_of_the_set_and_nothing_else():
    target, source = emb_pair()
    child, moved = crossover(target, source, 0.5, seed=7)
    kept = torch.tensor([i for i in range(12) if i not in set(moved.tolist())])
    assert len(moved) == 6
    for key in ("embeddings.fc1", "layers.fc1.bias"):
        c, t, s = child.state_dict()[key], target.state_dict()[key], source.state_dict()[key]
        assert torch.equal(c[moved], s[moved]) and torch.equal(c[kept], t[kept]), key
    for key in ("embeddings.input", "embeddings.fc2", "layers.fc2.bias"):
        assert torch.equal(child.state_dict()[key], target.state_dict()[key]), key


def test_larger_fractions_with_one_seed_move_a_superset_of_neurons():
    small, large = choose_neurons(400, 0.25, seed=3), choose_neurons(400, 0.5, seed=3)
    assert set(small.tolist()) <= set(large.tolist()) and len(large) == 200


def test_an_embedding_transplant_ignores_the_order_of_the_source_neurons():
    target, source = emb_pair()
    shuffled = random_model(FC_EMB, 1)
    shuffled.load_state_dict(source.state_dict())
    shuffled.permute_set("fc1", torch.randperm(12, generator=torch.Generator().manual_seed(1)))
    a, _ = crossover(target, source, 1.0)
    b, _ = crossover(target, shuffled, 1.0)
    assert torch.allclose(outputs(a), outputs(b), atol=1e-5)


def test_a_direct_transplant_of_incoming_weights_depends_on_the_order():
    target, source = random_model(FC, 0), random_model(FC, 1)
    shuffled = random_model(FC, 1)
    shuffled.load_state_dict(source.state_dict())
    shuffled.permute_set("fc1", torch.randperm(12, generator=torch.Generator().manual_seed(1)))
    a, _ = crossover(target, source, 1.0)
    b, _ = crossover(target, shuffled, 1.0)
    assert not torch.allclose(outputs(a), outputs(b), atol=1e-3)


def test_direct_incoming_moves_rows_and_whole_also_moves_outgoing_columns():
    target, source = random_model(FC, 0), random_model(FC, 1)
    incoming, moved = crossover(target, source, 0.5, seed=2)
    whole, _ = crossover(target, source, 0.5, seed=2, direct_mode="whole")
    s, i, w = source.state_dict(), incoming.state_dict(), whole.state_dict()
    assert torch.equal(i["layers.fc1.weight"][moved], s["layers.fc1.weight"][moved])
    assert torch.equal(i["layers.fc2.weight"], target.state_dict()["layers.fc2.weight"])
    assert torch.equal(w["layers.fc2.weight"][:, moved], s["layers.fc2.weight"][:, moved])
    everything, _ = crossover(target, source, 1.0, direct_mode="whole")
    bias_gap = source.layers["fc2"].bias - target.layers["fc2"].bias
    assert torch.allclose(outputs(everything) + bias_gap, outputs(source), atol=1e-5)


def test_a_resnet9_crossover_moves_depthwise_kernels_and_batch_norms():
    target, source = emb_pair(RESNET)
    child, moved = crossover(target, source, 0.5, set_name="layer1")
    for key in ("layers.layer1.depthwise", "layers.res1b.depthwise", "norms.res1b.running_var"):
        assert torch.equal(child.state_dict()[key][moved], source.state_dict()[key][moved]), key
    assert hidden_sets(target) == ["prep", "layer1", "res1a", "layer2", "layer3", "res3a"]


def test_batch_norm_statistics_are_reestimated_on_the_given_batches():
    target, source = emb_pair(RESNET)
    child, _ = crossover(target, source, 1.0, set_name="prep")
    batches = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    assert reestimate_batch_norm(child, batches) == 3
    assert not child.training and child.norms["prep"].momentum == 0.1
    assert not torch.equal(child.norms["prep"].running_mean, source.norms["prep"].running_mean)


# ---------------------------------------------------------------------------
# Interpolation


def test_interpolation_at_alpha_zero_and_one_gives_a_and_b_exactly():
    a, b = emb_pair()
    assert same_state(interpolate(a, b, 0.0), a)
    assert same_state(interpolate(a, b, 1.0), b)
    direct_a, direct_b = random_model(FC, 0), random_model(FC, 1)
    assert same_state(interpolate(direct_a, direct_b, 1.0), direct_b)


def test_interpolation_at_one_half_averages_every_tensor():
    a, b = emb_pair()
    mid = interpolate(a, b, 0.5).state_dict()
    for key, value in a.state_dict().items():
        assert torch.allclose(mid[key], (value + b.state_dict()[key]) / 2), key


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (FC_EMB.replace(widths=(13, 10)), "widths"),
        (FC_EMB.replace(dim=7), "dim"),
        (FC_EMB.replace(kernel="tanh"), "kernel"),
        (FC, "repr"),
    ],
)
def test_models_of_different_architecture_d_or_kernel_are_refused(other, field):
    with pytest.raises(NembedError, match=f"differ in {field}"):
        crossover(random_model(FC_EMB, 0), random_model(other, 1), 0.5)


def test_different_input_embeddings_are_refused_with_the_fix():
    with pytest.raises(NembedError, match="Fit the source with the target's input embeddings"):
        check_shared_input_embeddings(random_model(FC_EMB, 0), random_model(FC_EMB, 1), "ab")


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_fractions_outside_zero_to_one_are_usage_errors(fraction):
    target, source = emb_pair()
    with pytest.raises(UsageError, match=r"must lie in \[0, 1\]"):
        crossover(target, source, fraction)


def test_alphas_outside_minus_one_to_two_are_usage_errors():
    a, b = emb_pair()
    with pytest.raises(UsageError, match=r"must lie in \[-1, 2\]"):
        interpolate(a, b, 2.5)
    interpolate(a, b, -1.0)  # extrapolation within the range is allowed


def test_an_unknown_or_output_layer_is_a_usage_error_naming_the_hidden_sets():
    target, source = emb_pair()
    with pytest.raises(UsageError, match="choose one of fc1"):
        crossover(target, source, 0.5, set_name="fc2")


# ---------------------------------------------------------------------------
# Fitting a pair on one input basis


def test_fit_pair_gives_the_source_the_target_input_embeddings():
    pair = fit_pair(random_model(FC, 0), random_model(FC, 1), 6, solver="als", steps=20)
    check_shared_input_embeddings(pair.target, pair.source, ("target", "source"))


def test_share_output_also_fixes_the_output_embeddings():
    pair = fit_pair(
        random_model(FC, 0), random_model(FC, 1), 6, solver="als", share_output=True, steps=20
    )
    assert torch.equal(pair.target.embeddings["fc2"], pair.source.embeddings["fc2"])


# ---------------------------------------------------------------------------
# The file format: neurons are rows


@pytest.mark.parametrize("spec", [FC_EMB, RESNET], ids=["fc", "resnet9"])
def test_shuffling_the_rows_of_every_hidden_set_in_a_file_changes_no_output(spec, tmp_path):
    model = random_model(spec, 0)
    path = save_nembed(tmp_path / "m.safetensors", NembedFile(model))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(0)
    for name in hidden_sets(model):
        perm = torch.randperm(model.sets[name], generator=generator)
        for key in [k for k in tensors if k.startswith(f"{name}/")]:
            tensors[key] = tensors[key][perm].contiguous()
    save_file(tensors, str(tmp_path / "shuffled.safetensors"), metadata=metadata)
    shuffled = load_nembed(tmp_path / "shuffled.safetensors").model
    assert not same_state(shuffled, model), "the shuffle must change the stored order"
    assert torch.allclose(
        outputs(shuffled, spec.in_shape), outputs(model, spec.in_shape), atol=1e-5
    )


# ---------------------------------------------------------------------------
# nembed crossover and nembed interpolate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_square_mnist(tmp_path_factory.mktemp("data"), n_train=300, n_test=60)


@pytest.fixture()
def emb_files(tmp_path):
    target, source = emb_pair()
    paths = [tmp_path / "target.safetensors", tmp_path / "source.safetensors"]
    for path, model in zip(paths, (target, source), strict=True):
        save_nembed(path, NembedFile(model, normalization=NORM, extra={"dataset": "mnist"}))
    return [str(p) for p in paths]


@pytest.fixture()
def direct_files(tmp_path):
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for seed, path in enumerate(paths):
        save_state_dict(random_model(FC, seed), path)
    return [str(p) for p in paths]


class TestCrossoverCommand:
    def test_crossover_writes_a_nembed_file_with_half_the_neurons_moved(self, emb_files, tmp_path):
        out = tmp_path / "child.safetensors"
        result = runner.invoke(app, ["crossover", *emb_files, "--fraction", "0.5", "-o", str(out)])
        assert result.exit_code == 0, result.output
        child = load_nembed(out)
        assert child.extra["crossover"]["moved"] == 6 and child.normalization == NORM

    def test_a_sweep_from_checkpoints_reports_direct_and_embedding(
        self, direct_files, data_dir, tmp_path
    ):
        args = ["crossover", *direct_files, "--dim", "6", "--solver", "als", "--fractions", "0,1"]
        args += ["--fit-steps", "20"]
        args += ["--data-dir", str(data_dir), "--report", str(tmp_path / "r"), "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "r" / "report.json").read_text())
        assert set(report["series"]) == {"neuron embedding", "direct (incoming)"}
        assert report["series"]["neuron embedding"][1]["moved"] == 12
        assert (tmp_path / "r" / "crossover.png").stat().st_size > 0
        assert "| fraction |" in (tmp_path / "r" / "report.md").read_text()

    @pytest.mark.parametrize("fractions", ["0,1.5", "-0.5"])
    def test_fractions_outside_zero_to_one_exit_2(self, emb_files, fractions):
        result = runner.invoke(app, ["crossover", *emb_files, "--fractions", fractions])
        assert result.exit_code == 2, result.output
        assert "must lie in [0, 1]" in result.output

    def test_files_of_different_dims_exit_1_with_one_message(self, emb_files, tmp_path):
        other = tmp_path / "other.safetensors"
        save_nembed(other, NembedFile(random_model(FC_EMB.replace(dim=7), 2)))
        result = runner.invoke(app, ["crossover", emb_files[0], str(other), "--evaluate"])
        assert result.exit_code == 1, result.output
        assert "differ in dim 6 vs 7" in result.output

    def test_files_with_different_input_embeddings_exit_1_naming_the_fix(self, tmp_path):
        paths = [tmp_path / "t.safetensors", tmp_path / "s.safetensors"]
        for seed, path in enumerate(paths):
            save_nembed(path, NembedFile(random_model(FC_EMB, seed)))
        result = runner.invoke(app, ["crossover", *map(str, paths), "--evaluate"])
        assert result.exit_code == 1, result.output
        assert "--dim D" in result.output

    def test_a_file_and_a_checkpoint_together_exit_2(self, emb_files, direct_files):
        result = runner.invoke(app, ["crossover", emb_files[0], direct_files[0], "--evaluate"])
        assert result.exit_code == 2, result.output
        assert "give two compressed files or two original checkpoints" in result.output

    def test_nothing_to_do_is_a_usage_error(self, emb_files):
        result = runner.invoke(app, ["crossover", *emb_files])
        assert result.exit_code == 2 and "nothing to do" in result.output


class TestInterpolateCommand:
    def test_interpolate_at_alpha_one_writes_b(self, emb_files, tmp_path):
        out = tmp_path / "mid.safetensors"
        result = runner.invoke(app, ["interpolate", *emb_files, "--alpha", "1", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert same_state(load_nembed(out).model, load_nembed(emb_files[1]).model)

    def test_an_alpha_sweep_writes_the_report(self, emb_files, data_dir, tmp_path):
        args = ["interpolate", *emb_files, "--alphas", "0,0.5,1", "--data-dir", str(data_dir)]
        result = runner.invoke(app, [*args, "--report", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "r" / "interpolation.png").exists()
        again = runner.invoke(app, [*args, "--report", str(tmp_path / "r")])
        assert again.exit_code == 2 and "--force" in again.output

    @pytest.mark.parametrize("alpha", ["2.5", "-1.5"])
    def test_alphas_outside_minus_one_to_two_exit_2(self, emb_files, alpha):
        result = runner.invoke(app, ["interpolate", *emb_files, "--alpha", alpha, "--evaluate"])
        assert result.exit_code == 2, result.output
        assert "must lie in [-1, 2]" in result.output
