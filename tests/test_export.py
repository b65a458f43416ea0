"""ONNX export: both graph forms reproduce PyTorch, and bad requests are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from nembed_compress import export
from nembed_compress.errors import NembedError, UsageError
from nembed_compress.export import export_onnx
from nembed_compress.models import NeuronNet, build_model
from nembed_compress.spec import ArchSpec, Normalization

TINY_RESNET9 = (8, 16, 16, 16, 32, 32, 32, 32, 10)
MNIST_NORM = Normalization((0.1307,), (0.3081,))
CIFAR_NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


@torch.no_grad()
def randomised(model: NeuronNet, seed: int = 0) -> NeuronNet:
    """Random embeddings, biases and batch-norm statistics, so no tensor is trivial."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=gen)
        if name.endswith("running_var") or (name.startswith("norms.") and name.endswith("weight")):
            tensor.copy_(0.5 + noise.abs())  # positive variances and scales
        elif name.startswith("embeddings."):
            tensor.copy_(noise / tensor.shape[1] ** 0.5)
        else:
            tensor.copy_(0.1 * noise)
    return model.eval()


def fc_model(kernel: str = "dot", widths=(32, 10), dim: int = 8) -> NeuronNet:
    spec = ArchSpec("fc", (1, 28, 28), widths, repr="emb", dim=dim, kernel=kernel)
    return randomised(build_model(spec))


def resnet9_model(kernel: str = "dot") -> NeuronNet:
    spec = ArchSpec("resnet9", (3, 16, 16), TINY_RESNET9, repr="emb", dim=8, kernel=kernel)
    return randomised(build_model(spec))


def run_graph(path, x: torch.Tensor) -> np.ndarray:
    return ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})[0]


def assert_matches(got: np.ndarray, want: torch.Tensor, tol: float = 1e-4) -> None:
    diff = float(np.abs(got - want.numpy()).max())
    assert diff < tol, f"graph differs from PyTorch by {diff:.3g} (allowed {tol:g})"


def initializer_count(path) -> int:
    return export.stored_numbers(onnx.load(str(path)))


@pytest.mark.parametrize("form", ["dense", "factored"])
@pytest.mark.parametrize("kernel", ["dot", "scaled-dot"])
def test_fc_embedding_model_exports_in_both_forms_and_runs_any_batch_size(tmp_path, form, kernel):
    model = fc_model(kernel)
    result = export_onnx(model, tmp_path / "fc.onnx", form=form)

    x = torch.randn(7, 1, 28, 28)  # not the batch size the graph was traced with
    with torch.no_grad():
        want = model(x)
    assert_matches(run_graph(tmp_path / "fc.onnx", x), want)
    assert result["form"] == form and result["opset"] == 17
    assert result["bytes"] == (tmp_path / "fc.onnx").stat().st_size
    assert result["max_abs_diff"] < 1e-4, result


@pytest.mark.parametrize("form", ["dense", "factored"])
def test_resnet9_embedding_model_with_batch_norm_statistics_exports_in_both_forms(tmp_path, form):
    model = resnet9_model("scaled-dot" if form == "factored" else "dot")
    export_onnx(model, tmp_path / "r9.onnx", form=form)

    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    assert_matches(run_graph(tmp_path / "r9.onnx", x), want)


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = resnet9_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "r9.onnx", form="factored")

    assert model.training and not model.factored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dense_graph_stores_generated_weights_and_no_embeddings(tmp_path):
    model = fc_model()
    export_onnx(model, tmp_path / "fc.onnx", form="dense")

    graph = onnx.load(str(tmp_path / "fc.onnx")).graph
    shapes = {tuple(t.dims) for t in graph.initializer}
    assert (32, 784) in shapes and (10, 32) in shapes, shapes
    assert not any(t.name.startswith("embeddings.") for t in graph.initializer)


def test_factored_graph_stores_fewer_numbers_than_dense_for_a_wide_layer(tmp_path):
    model = fc_model(widths=(400, 10), dim=64)
    dense = export_onnx(model, tmp_path / "dense.onnx", form="dense")
    factored = export_onnx(model, tmp_path / "factored.onnx", form="factored")

    # Dense: 784*400 + 400*10 weights and 410 biases. Factored: one 64-d embedding per
    # neuron of each set (784 + 400 + 10) and the same biases.
    assert dense["initializer_params"] == 784 * 400 + 400 * 10 + 410, dense
    assert factored["initializer_params"] == 64 * (784 + 400 + 10) + 410, factored
    assert initializer_count(tmp_path / "factored.onnx") == factored["initializer_params"]
    assert factored["bytes"] < dense["bytes"] / 3, (factored["bytes"], dense["bytes"])


@pytest.mark.parametrize(
    ("make_model", "norm"), [(fc_model, MNIST_NORM), (resnet9_model, CIFAR_NORM)]
)
def test_baked_normalisation_gives_the_same_outputs_as_normalising_first(
    tmp_path, make_model, norm
):
    model = make_model()
    result = export_onnx(model, tmp_path / "m.onnx", normalization=norm, bake_normalization=True)

    raw = torch.rand(5, *model.spec.in_shape)
    with torch.no_grad():
        want = model(norm.apply(raw))
    assert_matches(run_graph(tmp_path / "m.onnx", raw), want)
    assert result["normalization_baked"]
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["nembed.input"] == "raw [0, 1]"


def test_normalisation_that_is_not_baked_is_recorded_but_not_applied(tmp_path):
    model = fc_model()
    export_onnx(model, tmp_path / "fc.onnx", normalization=MNIST_NORM)

    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    assert_matches(run_graph(tmp_path / "fc.onnx", x), want)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "fc.onnx")).metadata_props}
    assert props["nembed.input"] == "normalised"
    assert "0.1307" in props["nembed.normalization"]


def test_baking_without_a_normalisation_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no stored input normalisation"):
        export_onnx(fc_model(), tmp_path / "fc.onnx", bake_normalization=True)
    assert not (tmp_path / "fc.onnx").exists()


def test_baking_a_normalisation_with_the_wrong_channel_count_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"3 channels but the model's input has shape"):
        export_onnx(
            fc_model(), tmp_path / "fc.onnx", normalization=CIFAR_NORM, bake_normalization=True
        )


def test_factored_form_with_a_tanh_kernel_is_refused(tmp_path):
    with pytest.raises(UsageError, match="kernel is 'tanh'.*use --form dense"):
        export_onnx(fc_model("tanh"), tmp_path / "fc.onnx", form="factored")
    assert not (tmp_path / "fc.onnx").exists()


def test_dense_form_of_a_tanh_model_exports(tmp_path):
    model = fc_model("tanh")
    export_onnx(model, tmp_path / "fc.onnx", form="dense")

    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    assert_matches(run_graph(tmp_path / "fc.onnx", x), want)


def test_factored_form_of_a_model_without_embeddings_is_refused(tmp_path):
    model = build_model(ArchSpec("fc", (1, 28, 28), (32, 10)))
    with pytest.raises(UsageError, match="needs an embedding model"):
        export_onnx(model, tmp_path / "fc.onnx", form="factored")


def test_direct_model_exports_in_dense_form(tmp_path):
    model = randomised(build_model(ArchSpec("convnet", (1, 12, 12), (4, 6, 8, 10))))
    export_onnx(model, tmp_path / "cn.onnx")

    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        want = model(x)
    assert_matches(run_graph(tmp_path / "cn.onnx", x), want)


@pytest.mark.parametrize("opset", [14, 18])
def test_a_model_with_batch_norms_exports_at_other_opsets(tmp_path, opset):
    model = resnet9_model()
    result = export_onnx(model, tmp_path / "r9.onnx", opset=opset)

    assert result["opset"] == opset
    opsets = {o.domain: o.version for o in onnx.load(str(tmp_path / "r9.onnx")).opset_import}
    assert opsets[""] == opset, opsets


def test_an_opset_older_than_14_is_refused(tmp_path):
    with pytest.raises(UsageError, match="opset must be 14 or newer, got 13"):
        export_onnx(fc_model(), tmp_path / "fc.onnx", opset=13)


def test_an_unknown_form_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--form must be one of dense, factored"):
        export_onnx(fc_model(), tmp_path / "fc.onnx", form="sparse")


def test_overwriting_without_force_is_refused_and_keeps_the_file(tmp_path):
    target = tmp_path / "fc.onnx"
    target.write_bytes(b"old")
    with pytest.raises(UsageError, match="file exists; pass --force"):
        export_onnx(fc_model(), target)
    assert target.read_bytes() == b"old"

    export_onnx(fc_model(), target, force=True)
    onnx.checker.check_model(str(target))


def test_check_inputs_of_the_wrong_shape_are_refused(tmp_path):
    with pytest.raises(UsageError, match=r"check_inputs: expected .*\(batch, 1, 28, 28\)"):
        export_onnx(fc_model(), tmp_path / "fc.onnx", check_inputs=torch.randn(2, 3, 28, 28))


def test_given_check_inputs_are_the_batch_that_is_checked(tmp_path):
    result = export_onnx(fc_model(), tmp_path / "fc.onnx", check_inputs=torch.rand(9, 784))
    assert result["check_batch"] == 9


def test_a_graph_that_disagrees_with_pytorch_is_deleted_and_reported(tmp_path, monkeypatch):
    real_run = export._run_reference
    monkeypatch.setattr(export, "_run_reference", lambda proto, x: real_run(proto, x) + 0.5)
    target = tmp_path / "fc.onnx"

    with pytest.raises(NembedError, match=r"differs from PyTorch by up to 0\.5"):
        export_onnx(fc_model(), target)
    assert list(tmp_path.iterdir()) == [], "no output and no temporary file may remain"

    # With --force an existing file is only replaced by a graph that passed the check.
    target.write_bytes(b"old")
    with pytest.raises(NembedError, match="nothing was written"):
        export_onnx(fc_model(), target, force=True)
    assert target.read_bytes() == b"old"
