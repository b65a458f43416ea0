"""Moving neurons between networks: crossover (neuron transplant) and interpolation.

The paper's section 4.3 compares two ways to hand part of one network (the
source) to another (the target):

- *direct* weights: a transplanted neuron brings its incoming weights and its bias
  (``incoming``, the paper's comparison); ``whole`` also brings its outgoing weights,
  which makes the neuron self-contained at the price of overwriting the target's
  next layer.
- *neuron embeddings*: a transplanted neuron brings its embedding and every
  per-neuron tensor (bias, depthwise kernel, batch norm): the rows of the tensors
  stored under ``<set>/`` in a nembed file. Its weights to both neighbouring sets
  are then generated from the target's embeddings of those sets. This only means
  something when both models share one input basis: the paper fits the source
  with the target's input embeddings held fixed (:func:`fit_pair`).

Interpolation mixes two models linearly: every embedding and per-neuron tensor of
an embedding model, every weight of a direct model, neurons paired in stored order.

Neurons to transplant are drawn at random with a seed; a larger fraction with the
same seed moves a superset of the neurons of a smaller one, so sweeps are nested.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .convert import Conversion, fit_problem, to_embedding, to_separable
from .errors import NembedError, UsageError
from .fit import fit_embeddings
from .layers import BlueprintConv2d
from .models import INPUT_SET, NeuronNet, build_model

log = logging.getLogger(__name__)

DIRECT_MODES = ("incoming", "whole")
ALPHA_RANGE = (-1.0, 2.0)
REPORT_FILES = {"crossover": "crossover.png", "interpolation": "interpolation.png"}

Evaluate = Callable[[NeuronNet], dict]


# -- checks -----------------------------------------------------------------------------


def check_same_architecture(a: NeuronNet, b: NeuronNet, names: Sequence[str]) -> None:
    """Both models must have one architecture, representation, d and kernel."""
    differ = [
        f"{f.name} {getattr(a.spec, f.name)!r} vs {getattr(b.spec, f.name)!r}"
        for f in dataclasses.fields(a.spec)
        if f.compare and getattr(a.spec, f.name) != getattr(b.spec, f.name)
    ]
    if differ:
        raise NembedError(
            f"{names[0]} ({a.spec.describe()}) and {names[1]} ({b.spec.describe()}) differ in "
            f"{'; '.join(differ)}; neurons move only between models of one architecture, "
            "representation, embedding dimension and kernel"
        )


def check_shared_input_embeddings(target: NeuronNet, source: NeuronNet, names) -> None:
    """The paper's protocol: the source was fitted with the target's input embeddings."""
    a, b = target.embeddings[INPUT_SET].detach(), source.embeddings[INPUT_SET].detach()
    if not torch.equal(a, b):
        diff = float((a - b).abs().max())
        raise NembedError(
            f"{names[0]} and {names[1]} have different input embeddings (largest difference "
            f"{diff:.3g}); transplanted neurons would read their inputs in another basis. "
            "Fit the source with the target's input embeddings: pass the two original "
            "checkpoints with --dim D and crossover fits both that way"
        )


def check_fraction(fraction: float, option: str = "--fraction") -> None:
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(
            f"{option} must lie in [0, 1] (the share of the set's neurons to move); got {fraction}"
        )


def check_alpha(alpha: float, option: str = "--alpha") -> None:
    lo, hi = ALPHA_RANGE
    if not lo <= alpha <= hi:
        raise UsageError(
            f"{option} must lie in [{lo:g}, {hi:g}] (0 gives A, 1 gives B; beyond that "
            f"extrapolates); got {alpha}"
        )


def hidden_sets(model: NeuronNet) -> list[str]:
    """Neuron sets other than the inputs and the output (class) neurons, in forward order."""
    return list(model.sets)[1:-1]


def output_set(model: NeuronNet) -> str:
    return list(model.sets)[-1]


def resolve_set(model: NeuronNet, set_name: str | None) -> str:
    """``set_name``, or the first hidden set; an error names the sets there are."""
    hidden = hidden_sets(model)
    if not hidden:
        raise NembedError(f"{model.spec.describe()} has no hidden neuron set to transplant")
    if set_name is None:
        return hidden[0]
    if set_name not in hidden:
        raise UsageError(
            f"--layer {set_name!r} is not a hidden neuron set of {model.spec.describe()}; "
            f"choose one of {', '.join(hidden)}"
        )
    return set_name


# -- crossover --------------------------------------------------------------------------


def choose_neurons(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """round(fraction * n) neuron indices drawn at random, sorted; nested across fractions."""
    check_fraction(fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: round(fraction * n)].sort().values


def moved_tensors(model: NeuronNet, set_name: str, direct_mode: str) -> list[tuple[str, int]]:
    """(state-dict key, axis) of every slice a neuron of ``set_name`` takes with it."""
    if direct_mode not in DIRECT_MODES:
        raise UsageError(
            f"--direct-mode must be one of {', '.join(DIRECT_MODES)}; got {direct_mode!r}"
        )
    moved = [(k, 0) for k, owner in model.neuron_tensors().items() if owner == set_name]
    if model.spec.repr == "emb":
        # Weights are generated from embeddings: the rows above are the whole neuron.
        return moved
    for name, ls in model.layout.items():
        module = model.layers[name]
        key = f"layers.{name}.{'pointwise' if isinstance(module, BlueprintConv2d) else 'weight'}"
        if ls.out_set == set_name:
            moved.append((key, 0))  # incoming weights: rows of (n_out, n_in[, k, k])
        if ls.in_set == set_name and direct_mode == "whole":
            moved.append((key, 1))  # outgoing weights: columns of the next layer
    return moved


@torch.no_grad()
def crossover(
    target: NeuronNet,
    source: NeuronNet,
    fraction: float,
    *,
    set_name: str | None = None,
    seed: int = 0,
    direct_mode: str = "incoming",
) -> tuple[NeuronNet, torch.Tensor]:
    """A copy of ``target`` whose neurons at random positions in ``set_name`` come from ``source``.

    Returns the child and the indices of the transplanted neurons. Neuron i of the
    source replaces neuron i of the target: the order within a set is arbitrary, so
    this is as good as any other pairing.
    """
    check_same_architecture(target, source, ("target", "source"))
    set_name = resolve_set(target, set_name)
    neurons = choose_neurons(target.sets[set_name], fraction, seed)
    child = copy.deepcopy(target)
    state, donor = child.state_dict(), source.state_dict()
    for key, axis in moved_tensors(target, set_name, direct_mode):
        state[key] = state[key].index_copy(axis, neurons, donor[key].index_select(axis, neurons))
    child.load_state_dict(state)
    return child, neurons


# -- interpolation ----------------------------------------------------------------------


@torch.no_grad()
def interpolate(a: NeuronNet, b: NeuronNet, alpha: float) -> NeuronNet:
    """(1 - alpha) A + alpha B for every stored float tensor; counters are A's."""
    check_same_architecture(a, b, ("A", "B"))
    check_alpha(alpha)
    child = copy.deepcopy(a)
    sa, sb = a.state_dict(), b.state_dict()
    state = {
        k: (1.0 - alpha) * v + alpha * sb[k] if v.is_floating_point() else v.clone()
        for k, v in sa.items()
    }
    child.load_state_dict(state)
    return child


# -- fitting a pair with shared embeddings ----------------------------------------------


@dataclass
class PairFit:
    """Two embedding models fitted on one input basis, and how the fits went."""

    target: NeuronNet
    source: NeuronNet
    figures: dict = field(default_factory=dict)


def fit_pair(
    target: NeuronNet,
    source: NeuronNet,
    dim: int,
    *,
    kernel: str = "dot",
    solver: str = "als",
    share_output: bool = False,
    seed: int = 0,
    source_seed: int | None = None,
    progress: Callable[[str], Callable] | None = None,
    **fit_options,
) -> PairFit:
    """Fit the target's embeddings, then the source's with the target's input embeddings fixed.

    Args:
        target, source: direct (or separable) models of one architecture.
        share_output: also fix the source's output embeddings to the target's (beyond
            the paper): the source's hidden neurons are then fitted against the same
            embeddings on both sides, so they fit into the target's output layer.
        seed, source_seed: seeds of the two fits (the Adam solver's N(0, 1/d) start);
            the source uses ``seed`` unless ``source_seed`` is given.
        progress: ``progress(description) -> update(step, total, loss)``.
        fit_options: passed on to :func:`nembed_compress.fit.fit_embeddings`.
    """
    check_same_architecture(target, source, ("target", "source"))
    if target.spec.repr == "emb":
        raise NembedError("fit_pair takes direct or separable models, got embedding models")
    track = progress or (lambda description: None)
    fitted_target = to_embedding(
        target.eval(),
        dim,
        kernel=kernel,
        solver=solver,
        seed=seed,
        progress=track(f"fit target d={dim} ({solver})"),
        **fit_options,
    )
    fixed = {INPUT_SET: fitted_target.model.embeddings[INPUT_SET].detach().clone()}
    if share_output:
        out = output_set(target)
        fixed[out] = fitted_target.model.embeddings[out].detach().clone()
    fitted_source = fit_with_fixed_sets(
        source.eval(),
        dim,
        fixed,
        kernel=kernel,
        solver=solver,
        seed=seed if source_seed is None else source_seed,
        progress=track(f"fit source d={dim} ({solver})"),
        **fit_options,
    )
    figures = {
        "dim": dim,
        "kernel": kernel,
        "solver": solver,
        "share_output": share_output,
        "target_fit": fitted_target.fit.summary(),
        "source_fit": fitted_source.fit.summary(),
    }
    return PairFit(fitted_target.model.eval(), fitted_source.model.eval(), figures)


def fit_with_fixed_sets(
    model: NeuronNet,
    dim: int,
    fixed: dict[str, torch.Tensor],
    *,
    kernel: str = "dot",
    solver: str = "als",
    **fit_options,
) -> Conversion:
    """Like :func:`nembed_compress.convert.to_embedding`, holding any neuron sets fixed."""
    if set(fixed) <= {INPUT_SET}:
        return to_embedding(
            model,
            dim,
            kernel=kernel,
            solver=solver,
            input_embeddings=fixed.get(INPUT_SET),
            **fit_options,
        )
    conv_errors = {}
    if model.spec.repr == "direct" and model.spec.family != "fc":
        model, conv_errors = to_separable(model)
    emb = build_model(model.spec.replace(repr="emb", dim=dim, kernel=kernel))
    progress = fit_options.pop("progress", None)
    problem = fit_problem(model, dim, kernel, {s: z.detach().float() for s, z in fixed.items()})
    result = fit_embeddings(problem, solver, progress=progress, **fit_options)
    state, original = emb.state_dict(), model.state_dict()
    for key in state:
        if key.startswith("embeddings."):
            state[key] = result.embeddings[key.removeprefix("embeddings.")]
        elif key in original:
            state[key] = original[key]  # biases, depthwise kernels, batch norms
    emb.load_state_dict(state)
    return Conversion(emb.eval(), result, conv_errors)


# -- sweeps -----------------------------------------------------------------------------


@dataclass
class Pair:
    """Two models of one representation to transplant between or interpolate."""

    label: str
    first: NeuronNet
    second: NeuronNet


def crossover_sweep(
    pairs: Sequence[Pair],
    fractions: Sequence[float],
    evaluate: Evaluate,
    *,
    set_name: str | None = None,
    seed: int = 0,
    direct_mode: str = "incoming",
    after: Callable[[NeuronNet], object] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Accuracy of the target as ``fractions`` of a hidden set come from the source.

    ``after`` runs on each child before it is scored (batch-norm re-estimation).
    Returns plain figures: the endpoints (target and source alone) and one row per
    representation and fraction.
    """
    for f in fractions:
        check_fraction(f, "--fractions")
    set_name = resolve_set(pairs[0].first, set_name)
    total, done, series = len(pairs) * len(fractions), 0, {}
    for pair in pairs:
        rows = []
        for f in fractions:
            child, moved = crossover(
                pair.first, pair.second, f, set_name=set_name, seed=seed, direct_mode=direct_mode
            )
            if after is not None:
                after(child)
            rows.append({"fraction": f, "moved": len(moved), **_scores(evaluate(child))})
            done += 1
            if progress is not None:
                progress(done, total)
        series[pair.label] = rows
    return {
        "experiment": "crossover",
        "set": set_name,
        "set_size": pairs[0].first.sets[set_name],
        "seed": seed,
        "direct_mode": direct_mode,
        "x": "fraction",
        "endpoints": _endpoints(pairs, evaluate, ("target", "source")),
        "series": series,
    }


def interpolation_sweep(
    pairs: Sequence[Pair],
    alphas: Sequence[float],
    evaluate: Evaluate,
    *,
    after: Callable[[NeuronNet], object] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Accuracy along the straight line from A (alpha 0) to B (alpha 1), per representation."""
    for a in alphas:
        check_alpha(a, "--alphas")
    total, done, series = len(pairs) * len(alphas), 0, {}
    for pair in pairs:
        rows = []
        for a in alphas:
            child = interpolate(pair.first, pair.second, a)
            if after is not None:
                after(child)
            rows.append({"alpha": a, **_scores(evaluate(child))})
            done += 1
            if progress is not None:
                progress(done, total)
        series[pair.label] = rows
    return {
        "experiment": "interpolation",
        "x": "alpha",
        "endpoints": _endpoints(pairs, evaluate, ("A", "B")),
        "series": series,
    }


def _scores(scores: dict) -> dict:
    return {k: scores[k] for k in ("accuracy", "cross_entropy", "samples") if k in scores}


def _endpoints(pairs: Sequence[Pair], evaluate: Evaluate, names) -> dict:
    return {
        p.label: {names[0]: _scores(evaluate(p.first)), names[1]: _scores(evaluate(p.second))}
        for p in pairs
    }


# -- reports ----------------------------------------------------------------------------


def report_paths(report_dir: str | Path, experiment: str) -> list[Path]:
    folder = Path(report_dir)
    return [folder / "report.md", folder / "report.json", folder / REPORT_FILES[experiment]]


def write_report(report_dir: str | Path, result: dict, options: dict) -> list[Path]:
    """Write ``report.md``, ``report.json`` and a plot like the paper's Figure 3 or 4."""
    from .atomic import write_text_atomic
    from .report import line_plot, write_json

    md, js, png = report_paths(report_dir, result["experiment"])
    write_text_atomic(md, report_markdown(result, options))
    write_json(js, {**result, "options": options})
    x = result["x"]
    series = [
        (label, [r[x] for r in rows], [100 * r["accuracy"] for r in rows])
        for label, rows in result["series"].items()
    ]
    classes = options.get("classes")
    crossover_run = result["experiment"] == "crossover"
    line_plot(
        png,
        series,
        x_label="crossover fraction" if crossover_run else "alpha (0 = A, 1 = B)",
        y_label="test accuracy (%)",
        title="Accuracy under neuron transplant"
        if crossover_run
        else "Accuracy under linear interpolation",
        reference=("chance", 100 / classes) if classes else None,
    )
    return [md, js, png]


def report_markdown(result: dict, options: dict) -> str:
    """The sweep as a Markdown document: setup, endpoints and one column per representation."""
    from .report import markdown_table

    x, labels = result["x"], list(result["series"])
    values = [r[x] for r in result["series"][labels[0]]]
    rows = [
        [f"{v:g}", *(100 * result["series"][label][i]["accuracy"] for label in labels)]
        for i, v in enumerate(values)
    ]
    names = list(next(iter(result["endpoints"].values())))
    ends = [
        [label, *(100 * result["endpoints"][label][n]["accuracy"] for n in names)]
        for label in labels
    ]
    title = "Neuron transplant" if result["experiment"] == "crossover" else "Interpolation"
    setup = "".join(f"- {k}: {v}\n" for k, v in options.items() if not isinstance(v, dict | list))
    return (
        f"# {title}\n\n{setup}\n"
        + markdown_table(["representation", *(f"{n} acc. (%)" for n in names)], ends)
        + "\n"
        + markdown_table([x, *(f"{label} acc. (%)" for label in labels)], rows)
    )
