"""ONNX export of a model, checked against PyTorch before the file is kept.

Two forms of graph:

- ``dense``: every generated weight is computed once here and stored as a constant
  initializer, weight = kernel(Z_out, Z_in) of shape (n_out, n_in); the graph is an
  ordinary network that any ONNX runtime runs at full speed.
- ``factored`` (embedding models with a dot or scaled-dot kernel): the neuron
  embeddings are the initializers, each stored once per neuron set, and every layer
  runs as two thin products, ``(x @ Z_in) @ Z_out^T`` (two 1x1 convolutions for a
  pointwise layer). A layer then stores d(m + n) numbers instead of mn.

The graph takes what the PyTorch model takes: normalised inputs (batch, *in_shape)
with a dynamic batch axis named ``batch``. With ``bake_normalization`` it takes raw
inputs in [0, 1] instead and normalises them itself (Sub and Div by per-channel
constants).

The export goes through the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``): the newer torch.export-based exporter needs the onnxscript package,
which this project does not depend on. Known shortcoming: PyTorch has deprecated the
TorchScript exporter and will remove it in a future release; export will then need
onnxscript and a port to ``dynamo=True``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.jit import TracerWarning

from .atomic import atomic_path, check_output_path
from .errors import NembedError, UsageError
from .kernels import LINEAR_KERNELS, is_linear
from .models import NeuronNet, build_model
from .spec import ArchSpec, Normalization

logger = logging.getLogger(__name__)

FORMS = ("dense", "factored")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
DEFAULT_CHECK_BATCH = 4
# Before opset 14 a batch norm is BatchNormalization-9, which onnx's reference evaluator
# (1.23) runs in training mode, so the check against PyTorch cannot pass; every current
# runtime reads opset 14 (2021) and newer.
MIN_OPSET = 14


def export_onnx(
    model: NeuronNet,
    path: str | os.PathLike,
    *,
    form: str = "dense",
    normalization: Normalization | None = None,
    bake_normalization: bool = False,
    opset: int = 17,
    check_inputs: torch.Tensor | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    force: bool = False,
) -> dict:
    """Write ``model`` as an ONNX graph at ``path`` and check it reproduces PyTorch.

    Args:
        model: any model of the zoo; ``factored`` needs ``repr="emb"`` and a linear kernel.
            The model is copied, never changed; the graph runs it in eval mode.
        path: the ``.onnx`` file to write; an existing file is kept unless ``force``.
        form: ``dense`` (generated weights as constants) or ``factored`` (embeddings as
            constants, two products per layer).
        normalization: the input normalisation the model was trained with. It is recorded
            in the graph's metadata, and applied inside the graph with ``bake_normalization``.
        bake_normalization: make the graph take raw inputs in [0, 1].
        opset: the ONNX opset to target, 14 or newer.
        check_inputs: a batch in the graph's input space (raw [0, 1] when baking,
            normalised otherwise), shape (B, *in_shape); default a small random batch.
        rtol, atol: how closely the graph's outputs must match PyTorch's on ``check_inputs``.
        force: overwrite an existing file.

    Returns:
        ``path``, ``form``, ``bytes`` (file size), ``initializer_params`` (numbers stored in
        the graph: initializers and constant nodes), ``max_abs_diff`` (against PyTorch on
        the check batch), ``opset``, ``normalization_baked`` and ``check_batch``.

    The graph is checked (``onnx.checker`` and the ONNX reference evaluator) before it is
    moved into place: if it fails, nothing is written and an existing file is untouched.
    """
    _check_form(model.spec, form)
    if opset < MIN_OPSET:
        raise UsageError(f"opset must be {MIN_OPSET} or newer, got {opset}; the default is 17")
    baked = _baked_normalization(model.spec, normalization, bake_normalization)
    path = check_output_path(path, force=force)
    x = _check_batch(model.spec, check_inputs, raw=baked is not None)

    reference = _eval_copy(model, factored=form == "factored")
    expected = _torch_outputs(reference, baked, x)
    graph_module = reference if form == "factored" else _materialised(reference)
    if baked is not None:
        graph_module = nn.Sequential(_Normalize(baked, model.spec.in_shape), graph_module)

    with atomic_path(path) as tmp:
        # Folding constants would store a transposed copy of every embedding beside the
        # original; unfolded, each neuron set's embedding is stored once.
        _torchscript_export(graph_module, x, tmp, opset, fold_constants=form == "dense")
        proto = _annotate(tmp, model.spec, form, normalization, baked is not None)
        _check_valid(path, tmp)
        max_diff = _compare(path, form, expected, _run_reference(proto, x), rtol, atol)

    result = {
        "path": str(path),
        "form": form,
        "bytes": path.stat().st_size,
        "initializer_params": stored_numbers(proto),
        "max_abs_diff": max_diff,
        "opset": opset,
        "normalization_baked": baked is not None,
        "check_batch": int(x.shape[0]),
    }
    logger.info("exported %s (%s form): %s", path, form, result)
    return result


def stored_numbers(proto: onnx.ModelProto) -> int:
    """How many numbers a graph stores: its initializers and its constant nodes' tensors."""
    total = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            total += sum(int(np.prod(a.t.dims)) for a in node.attribute if a.name == "value")
    return total


# -- checking the request ---------------------------------------------------------------


def _check_form(spec: ArchSpec, form: str) -> None:
    if form not in FORMS:
        raise UsageError(f"--form must be one of {', '.join(FORMS)}; got {form!r}")
    if form != "factored":
        return
    if spec.repr != "emb":
        raise UsageError(
            f"--form factored needs an embedding model (repr emb); this one is "
            f"{spec.describe()}: use --form dense"
        )
    if not is_linear(spec.kernel):
        raise UsageError(
            f"--form factored needs a linear kernel ({' or '.join(LINEAR_KERNELS)}); this "
            f"model's kernel is {spec.kernel!r}, whose weights cannot be split into two "
            "products of embeddings: use --form dense"
        )


def _baked_normalization(
    spec: ArchSpec, normalization: Normalization | None, bake: bool
) -> Normalization | None:
    """The normalisation to put inside the graph, or None; checks it fits the input."""
    if not bake:
        return None
    if normalization is None:
        raise UsageError(
            "--bake-normalization: the model has no stored input normalisation (mean and "
            "std) to bake in; export without --bake-normalization and normalise inputs "
            "before running the graph"
        )
    channels = len(normalization.mean)
    fits = (
        channels in (1, spec.in_shape[0])
        if len(spec.in_shape) == 3
        else spec.in_features % channels == 0
    )
    if not fits:
        raise UsageError(
            f"--bake-normalization: the normalisation has {channels} channels but the model's "
            f"input has shape {spec.in_shape}; expected one mean and std per input channel"
        )
    return normalization


def _check_batch(spec: ArchSpec, inputs: torch.Tensor | None, *, raw: bool) -> torch.Tensor:
    """The batch the graph is checked on, in the graph's input shape (B, *in_shape)."""
    if inputs is None:
        gen = torch.Generator().manual_seed(0)
        shape = (DEFAULT_CHECK_BATCH, *spec.in_shape)
        # Raw inputs are pixels in [0, 1]; normalised ones are roughly standard normal.
        return torch.rand(shape, generator=gen) if raw else torch.randn(shape, generator=gen)
    inputs = inputs.detach().to("cpu", torch.float32)
    if inputs.dim() < 1 or inputs.shape[0] == 0 or inputs[0].numel() != spec.in_features:
        raise UsageError(
            f"check_inputs: expected a non-empty batch of shape (batch, "
            f"{', '.join(map(str, spec.in_shape))}), got {tuple(inputs.shape)}"
        )
    return inputs.reshape(inputs.shape[0], *spec.in_shape)


# -- the modules that are exported ------------------------------------------------------


def _eval_copy(model: NeuronNet, *, factored: bool) -> NeuronNet:
    """A float32 CPU copy in eval mode, so exporting changes nothing in the caller's model."""
    clone = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return clone.set_factored(factored)


@torch.no_grad()
def _materialised(model: NeuronNet) -> NeuronNet:
    """The same function with every generated weight stored explicitly (a ``sep`` model).

    A ``sep`` model has the layout of the ``emb`` one, with explicit fully connected and
    pointwise matrices; depthwise kernels, biases and batch norms carry over as they are.
    """
    if model.spec.repr != "emb":
        return model
    dense = build_model(model.spec.replace(repr="sep"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("embeddings.")}
    for name, weight in model.generated_weights().items():  # (n_out, n_in) each
        key = "pointwise" if model.layout[name].kind == "conv" else "weight"
        state[f"layers.{name}.{key}"] = weight.detach().clone()
    dense.load_state_dict(state)
    return dense.eval()


class _Normalize(nn.Module):
    """x -> (x - mean) / std with per-channel constants broadcast over the input shape."""

    def __init__(self, normalization: Normalization, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        mean = torch.tensor(normalization.mean)
        std = torch.tensor(normalization.std)
        if len(in_shape) == 3:
            shape = (1, len(mean), 1, 1)  # one value per channel of (B, C, H, W)
            mean, std = mean.reshape(shape), std.reshape(shape)
        else:
            # Flat inputs are channel-major, as Normalization.apply lays them out.
            repeat = in_shape[0] // len(mean)
            mean, std = mean.repeat_interleave(repeat)[None], std.repeat_interleave(repeat)[None]
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def _torch_outputs(
    model: NeuronNet, normalization: Normalization | None, x: torch.Tensor
) -> np.ndarray:
    """What the graph must reproduce: the PyTorch model on (normalised) check inputs."""
    inputs = normalization.apply(x) if normalization is not None else x
    return model(inputs).numpy()


# -- writing and checking the graph -----------------------------------------------------


def _torchscript_export(
    module: nn.Module, x: torch.Tensor, path: Path, opset: int, *, fold_constants: bool
) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen deliberately (see the module docstring);
        # its deprecation notices would only repeat that on every export.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # The scaled-dot factor 1/sqrt(d) is read from a traced shape; d is fixed per model,
        # so the tracer's warning that it becomes a constant is exactly what is wanted.
        warnings.filterwarnings(
            "ignore", message=".*Converting a tensor to a Python float.*", category=TracerWarning
        )
        try:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                do_constant_folding=fold_constants,
            )
        except Exception as exc:  # torch raises several unrelated types here
            raise NembedError(
                f"torch.onnx could not export the model at opset {opset} ({exc}); "
                "try the default opset 17"
            ) from exc


def _annotate(
    path: Path, spec: ArchSpec, form: str, normalization: Normalization | None, baked: bool
) -> onnx.ModelProto:
    """Record what the graph is and what input it expects in its metadata; rewrite it."""
    proto = onnx.load(str(path))
    props = {
        "nembed.arch": spec.to_json(),
        "nembed.form": form,
        "nembed.normalization": json.dumps(normalization.to_dict() if normalization else None),
        "nembed.input": "raw [0, 1]" if baked else "normalised",
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{spec.describe()}, {form} form, input {props['nembed.input']}"
    onnx.save(proto, str(path))
    return proto


def _check_valid(path: Path, tmp: Path) -> None:
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NembedError(
            f"{path}: the exported graph is not valid ONNX ({exc}); nothing was written. "
            "This is a bug in the export: please report it"
        ) from exc


def _run_reference(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    """The graph's outputs from the ONNX reference evaluator (pure numpy, no runtime)."""
    return ReferenceEvaluator(proto).run(None, {INPUT_NAME: x.numpy()})[0]


def _compare(
    path: Path, form: str, expected: np.ndarray, got: np.ndarray, rtol: float, atol: float
) -> float:
    """The largest absolute difference; raises if any output is outside the tolerance."""
    if got.shape != expected.shape:
        raise NembedError(
            f"{path}: the ONNX graph ({form} form) gives outputs of shape {got.shape}, "
            f"PyTorch {expected.shape}; nothing was written. This is a bug in the export"
        )
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_diff = float(np.max(diff))
    if not np.allclose(got, expected, rtol=rtol, atol=atol):
        raise NembedError(
            f"{path}: the ONNX graph ({form} form) differs from PyTorch by up to "
            f"{max_diff:.3g} on {len(expected)} check inputs (allowed: {atol:g} + "
            f"{rtol:g} x |output|); nothing was written. Try the other --form, or report "
            "this as a bug"
        )
    return max_diff
