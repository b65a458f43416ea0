"""Model surgery: direct -> blueprint-separable -> neuron embeddings, and calibration.

The math lives in :mod:`nembed_compress.fit`; this module only moves tensors
between representations of one layout (:mod:`nembed_compress.models`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UsageError
from .fit import FitProblem, FitResult, Target, fit_embeddings
from .models import INPUT_SET, NeuronNet, build_model
from .precision import as_layout, autocast, check_precision, fast_layout

# How batch norms behave while calibration distils (see ``calibrate``).
BN_MODES = ("fixed", "batch")

log = logging.getLogger(__name__)


# -- direct -> separable ----------------------------------------------------------------


def rank1_separable(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-1 split of every output filter into a pointwise row and a depthwise kernel.

    Each filter, as an (n_in, k*k) matrix, is approximated by s u v^T (its top
    singular triple). The pointwise row is s u and the depthwise kernel v, of unit
    norm, so an error in the pointwise row costs exactly as much as the same error
    in the full filter, and fitting pointwise matrices fits the convolution.

    Returns (pointwise (n_out, n_in), depthwise (n_out, k, k), relative Frobenius error).
    """
    n_out, n_in, k, _ = weight.shape
    filters = weight.reshape(n_out, n_in, k * k).double()  # (n_out, n_in, k^2)
    u, s, vh = torch.linalg.svd(filters, full_matrices=False)
    pointwise = u[:, :, 0] * s[:, :1]  # (n_out, n_in)
    depthwise = vh[:, 0, :]  # (n_out, k^2), unit norm
    # Fix the sign so that each depthwise kernel sums to a non-negative value.
    sign = torch.where(depthwise.sum(dim=1) < 0, -1.0, 1.0).to(depthwise.dtype)
    pointwise, depthwise = pointwise * sign[:, None], depthwise * sign[:, None]
    approx = pointwise[:, :, None] * depthwise[:, None, :]
    error = float((filters - approx).norm() / filters.norm().clamp_min(1e-30))
    return pointwise.float(), depthwise.reshape(n_out, k, k).float(), error


def to_separable(model: NeuronNet) -> tuple[NeuronNet, dict[str, float]]:
    """The blueprint-separable version of a direct model, with each conv layer's relative error."""
    spec = model.spec
    if spec.repr == "sep":
        return model, {}
    if spec.repr != "direct":
        raise ValueError(f"to_separable takes a direct model, got repr={spec.repr}")
    sep = build_model(spec.replace(repr="sep"))
    source = model.state_dict()
    state = sep.state_dict()
    errors = {}
    for name, ls in model.layout.items():
        prefix = f"layers.{name}"
        if ls.kind == "conv":
            pw, dw, errors[name] = rank1_separable(source[f"{prefix}.weight"])
            state[f"{prefix}.pointwise"], state[f"{prefix}.depthwise"] = pw, dw
        else:
            state[f"{prefix}.weight"] = source[f"{prefix}.weight"]
        if ls.bias:
            state[f"{prefix}.bias"] = source[f"{prefix}.bias"]
    _copy_norms(source, state)
    sep.load_state_dict(state)
    return sep.train(model.training), errors


def _copy_norms(source: dict, state: dict) -> None:
    for key, value in source.items():
        if key.startswith("norms."):
            state[key] = value


# -- separable -> embeddings ------------------------------------------------------------


def fit_problem(
    model: NeuronNet, dim: int, kernel: str = "dot", fixed: dict | None = None
) -> FitProblem:
    """The embedding-fit problem of a direct or separable model: every generated matrix."""
    if model.spec.family != "fc" and model.spec.repr == "direct":
        model, _ = to_separable(model)
    weights = model.generated_weights()
    targets = [
        Target(name, ls.in_set, ls.out_set, weights[name].detach().float())
        for name, ls in model.layout.items()
    ]
    return FitProblem(dict(model.sets), targets, dim, kernel, dict(fixed or {}))


def max_useful_dim(model: NeuronNet) -> int:
    """Beyond this d every generated matrix is already reproducible exactly (its full rank)."""
    return max(min(ls.n_in, ls.n_out) for ls in model.layout.values())


@dataclass
class Conversion:
    """An embedding model fitted to a direct or separable one, and how the fit went."""

    model: NeuronNet
    fit: FitResult
    conv_errors: dict[str, float]


def to_embedding(
    model: NeuronNet,
    dim: int,
    *,
    kernel: str = "dot",
    input_embedding: str = "learned",
    input_embeddings: torch.Tensor | None = None,
    solver: str = "als",
    progress: Callable[[int, int, float], None] | None = None,
    **fit_options,
) -> Conversion:
    """Fit neuron embeddings of dimension ``dim`` to ``model`` and carry over per-neuron state.

    Args:
        input_embeddings: fixed input embeddings (n_inputs, dim), e.g. another model's,
            so that two models share a basis (the paper's crossover protocol).
        fit_options: passed to :func:`nembed_compress.fit.fit_embeddings`.
    """
    conv_errors = {}
    if model.spec.repr == "direct":
        model, conv_errors = to_separable(model)
    emb_spec = model.spec.replace(
        repr="emb", dim=dim, kernel=kernel, input_embedding=input_embedding
    )
    emb = build_model(emb_spec)
    fixed = {}
    if input_embeddings is not None:
        fixed[INPUT_SET] = input_embeddings.detach().float()
    elif input_embedding != "learned":
        fixed[INPUT_SET] = emb.embeddings[INPUT_SET].detach().clone()
    problem = fit_problem(model, dim, kernel, fixed)
    result = fit_embeddings(problem, solver, progress=progress, **fit_options)
    state = emb.state_dict()
    for name, z in result.embeddings.items():
        state[f"embeddings.{name}"] = z
    source = model.state_dict()
    for key in state:
        if key.startswith("layers.") and not key.endswith(".pointwise") and key in source:
            state[key] = source[key]
    _copy_norms(source, state)
    emb.load_state_dict(state)
    if INPUT_SET in fixed and input_embedding == "learned":
        emb.embeddings[INPUT_SET].requires_grad_(False)
    return Conversion(emb.train(model.training), result, conv_errors)


# -- calibration (data-aware, beyond the paper) -----------------------------------------


@torch.no_grad()
def reestimate_batch_norm(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    max_batches: int | None = 20,
    device: str | torch.device = "cpu",
) -> int:
    """Recompute batch-norm statistics from data; returns how many batches were used.

    A converted or transplanted network's activations no longer have the statistics
    its batch norms stored, so they are measured again: a cumulative average over up
    to ``max_batches`` normalised input batches (all of them with ``None``). Only the
    forward pass runs; the model is left in eval mode on ``device``.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    model.to(device).train()
    used = 0
    for x in batches:
        model(x.to(device))
        used += 1
        if max_batches is not None and used >= max_batches:
            break
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    model.eval()
    return used


def calibrate(
    student: NeuronNet,
    teacher: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    temperature: float = 1.0,
    bn_batches: int = 20,
    bn_mode: str = "batch",
    device: str | torch.device = "cpu",
    precision: str = "float32",
    layer_weight: float = 0.0,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Distil ``teacher`` into ``student`` on normalised input batches, in place.

    A student with batch norms first has their statistics measured again on up to
    ``bn_batches`` batches (:func:`reestimate_batch_norm`). Then every trainable tensor
    of the student moves (embeddings, biases, depthwise kernels, batch-norm shifts).
    With ``bn_mode="batch"`` (the default) the batch norms normalise by each batch's
    statistics while the student learns, as in training, and the statistics are
    measured again at the end; with ``"fixed"`` they stay as first measured. Batch
    statistics make a deep student far easier to move.

    The loss is the KL divergence of the student's softened outputs from the
    teacher's. With ``layer_weight > 0`` it also matches every layer's outputs to the
    teacher's, neuron for neuron (the student keeps its teacher's neuron order), which
    gives each layer its own signal instead of one that must pass through the layers
    above it. The learning rate decays with a cosine schedule; ``batches`` is cycled
    until ``steps`` updates are made. ``precision`` is that of the distillation steps
    (see :mod:`nembed_compress.precision`); batch-norm statistics are measured in
    float32.
    """
    check_precision(precision)
    if bn_mode not in BN_MODES:
        raise UsageError(f"batch-norm mode must be one of {', '.join(BN_MODES)}; got {bn_mode!r}")
    taps = _LayerTaps(student, teacher) if layer_weight > 0 else contextlib.nullcontext()
    bn_used = reestimate_batch_norm(student, batches, max_batches=bn_batches, device=device)
    student.to(device).train(bn_mode == "batch")
    teacher.to(device).eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
    )
    losses, layer_losses, step = [], [], 0
    with fast_layout(student, teacher) as fmt, taps:
        while step < steps:
            seen = False
            for x in batches:
                seen = True
                x = as_layout(x.to(device), fmt)
                with autocast(device, precision):
                    with torch.no_grad():
                        target = F.softmax(teacher(x).float() / temperature, dim=1)
                    logits = student(x).float() / temperature
                    loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
                total = loss * temperature**2
                if layer_weight > 0:
                    layer_loss = taps.loss()
                    layer_losses.append(float(layer_loss.detach()))
                    total = total + layer_weight * layer_loss
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                step += 1
                if progress is not None:
                    progress(step, steps, losses[-1])
                if step >= steps:
                    break
            if not seen:
                raise ValueError("calibration got no batches")
    if bn_mode == "batch":
        reestimate_batch_norm(student, batches, max_batches=bn_batches, device=device)
    student.cpu().eval()
    teacher.cpu()
    stats = {
        "steps": step,
        "bn_batches": bn_used,
        "bn_mode": bn_mode,
        "lr": lr,
        "layer_weight": layer_weight,
    }
    stats["kl_start"], stats["kl_end"] = _start_and_end(losses)
    if layer_losses:
        stats["layer_start"], stats["layer_end"] = _start_and_end(layer_losses)
    return stats


def _start_and_end(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last tenth of a run's per-step values."""
    n = max(1, len(values) // 10)
    return sum(values[:n]) / n, sum(values[-n:]) / n


class _LayerTaps:
    """Records every layer's output in a student and its teacher, neuron for neuron.

    A converted student keeps its teacher's neurons in their order, so each layer's
    outputs (after its batch norm, where it has one) can be compared channel by
    channel. ``loss`` is the mean over layers of the squared error relative to the
    teacher output's variance, which gives every layer the same weight whatever its
    scale.
    """

    def __init__(self, student: NeuronNet, teacher: torch.nn.Module) -> None:
        self.pairs = []
        teacher_layout = getattr(teacher, "layout", {})
        for name, ls in student.layout.items():
            if name not in teacher_layout:
                continue
            s = student.norms[name] if ls.norm else student.layers[name]
            t = teacher.norms[name] if teacher_layout[name].norm else teacher.layers[name]
            self.pairs.append((s, t))
        if not self.pairs:
            raise ValueError("layer matching needs a teacher with the student's layer layout")
        self.outputs: dict[torch.nn.Module, torch.Tensor] = {}
        self.handles = []

    def _record(self, module, args, output) -> None:
        self.outputs[module] = output

    def __enter__(self) -> _LayerTaps:
        for pair in self.pairs:
            self.handles += [m.register_forward_hook(self._record) for m in pair]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.outputs = [], {}

    def loss(self) -> torch.Tensor:
        terms = []
        for s, t in self.pairs:
            target = self.outputs[t].detach().float()
            error = (self.outputs[s].float() - target).pow(2).mean()
            terms.append(error / target.var().clamp_min(1e-12))
        return torch.stack(terms).mean()
