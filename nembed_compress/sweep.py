"""Sweeping the embedding dimension: one model compressed at several d, each evaluated.

This is the experiment behind the paper's Table 2: a reference model next to its
neuron-embedding versions, with free parameters, accuracy and how closely the
generated weights reproduce the original ones. :func:`sweep_dims` does the work
and returns plain figures; :func:`write_report` renders them as ``report.md``,
``report.json`` and ``accuracy_vs_dim.png``. Neither prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .atomic import write_text_atomic
from .convert import max_useful_dim
from .errors import NembedError, UsageError
from .fileformat import NembedFile, file_tensors
from .models import NeuronNet, count_parameters
from .pipeline import CompressOptions, Track, compress_model, evaluate
from .report import markdown_table, plot_accuracy_vs_dim, write_json

REPORT_FILES = ("report.md", "report.json", "accuracy_vs_dim.png")
TABLE_HEADERS = [
    "Model",
    "Free parameters",
    "Parameters (all)",
    "Accuracy (%)",
    "Cross-entropy",
    "Weight MSE",
    "Fit loss",
    "Fit time (s)",
]


def _no_track(description: str, total: int) -> Callable:
    return lambda step, total_, loss=None: None


def model_file_name(dim: int) -> str:
    """The name ``--save-models`` gives the compressed model of dimension ``dim``."""
    return f"d{dim}.safetensors"


def weight_mse(per_matrix: Sequence[dict]) -> float:
    """Mean squared deviation of all generated weights from the originals.

    The fit loss (paper, equation 4) sums per-matrix means, so a 400 x 10 output layer
    weighs as much as a 784 x 400 one; here every weight counts once:
    sum(mse * numel) / sum(numel) over the matrices.
    """
    sizes = [math.prod(m["shape"]) for m in per_matrix]
    if not sizes:
        return 0.0
    return sum(m["mse"] * n for m, n in zip(per_matrix, sizes, strict=True)) / sum(sizes)


def check_dims(model: NeuronNet, dims: Sequence[int]) -> list[int]:
    """The dims sorted without repeats; every one must be positive and useful for ``model``."""
    if not dims:
        raise UsageError("--dims is empty; give e.g. 4,8,16,32,64")
    useful = max_useful_dim(model)
    for dim in dims:
        if dim <= 0:
            raise UsageError(f"--dims: every d must be a positive integer, got {dim}")
        if dim > useful:
            raise UsageError(
                f"--dims: d = {dim} is larger than useful: no weight matrix of "
                f"{model.spec.describe()} has rank above {useful}, so d = {useful} already "
                f"reproduces every matrix; keep every d <= {useful}"
            )
    return sorted(set(dims))


# -- the sweep ------------------------------------------------------------------------------


def sweep_dims(
    direct: NeuronNet,
    dims: Sequence[int],
    data,
    options: CompressOptions,
    *,
    batch_size: int = 1000,
    limit: int | None = None,
    track: Track = _no_track,
    on_compressed: Callable[[int, NembedFile], None] | None = None,
) -> dict:
    """Evaluate ``direct``, then compress it at every d in ``dims`` and evaluate each.

    Args:
        direct: the reference model (``repr="direct"``), left unchanged.
        data: the test split (an :class:`~nembed_compress.datasets.ImageDataset`).
        options: compression options; ``options.dim`` is replaced by each d in turn,
            and ``options.normalization`` is applied to the inputs of every evaluation.
        limit: evaluate only the first ``limit`` samples.
        track: ``track(description, total) -> update(step, total, loss)`` for progress.
        on_compressed: called as ``on_compressed(dim, nembed_file)`` after each fit,
            e.g. to save the model.

    Returns:
        ``{"arch", "dataset", "samples", "dims", "reference", "rows"}``: ``reference`` and
        each row of ``rows`` hold parameters in both conventions, accuracy (a fraction)
        and cross-entropy; rows add the fit figures (loss, bound, weight MSE, time).
    """
    dims = check_dims(direct, dims)
    overall = track(f"sweep over {len(dims)} dims", len(dims))

    def run_eval(model: NeuronNet, label: str) -> dict:
        return evaluate(
            model,
            data,
            options.normalization,
            batch_size=batch_size,
            limit=limit,
            device=options.device,
            track=lambda _, total: track(f"evaluate {label}", total),
        )

    reference = {"params": count_parameters(direct), **run_eval(direct.eval(), "reference")}
    rows = []
    for i, dim in enumerate(dims):
        nf, figures = compress_model(direct, dataclasses.replace(options, dim=dim), track)
        if on_compressed is not None:
            on_compressed(dim, nf)
        rows.append(_row(dim, nf, figures, run_eval(nf.model, f"d={dim}")))
        overall(i + 1, len(dims))
    return {
        "arch": direct.spec.describe(),
        "dataset": getattr(data, "name", None),
        "samples": reference["samples"],
        "dims": dims,
        "reference": reference,
        "rows": rows,
    }


def _row(dim: int, nf: NembedFile, figures: dict, scores: dict) -> dict:
    fit = figures["fit"]
    row = {
        "dim": dim,
        "params": count_parameters(nf.model),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in file_tensors(nf.model).values()),
        **scores,
        "weight_mse": weight_mse(fit["per_matrix"]),
        "fit_loss": fit["loss"],
        "fit_bound": fit["bound"],
        "fit_seconds": fit["seconds"],
        "fit_steps": fit["steps"],
        "solver": fit["solver"],
        "compress_seconds": figures["seconds"],
        "per_matrix": fit["per_matrix"],
    }
    if figures.get("conv_rank1_relative_error"):
        row["conv_rank1_relative_error"] = figures["conv_rank1_relative_error"]
    if "calibration" in figures:
        row["calibration"] = figures["calibration"]
    return row


# -- the report -----------------------------------------------------------------------------


def report_paths(report_dir: str | os.PathLike, dims: Sequence[int], save_models: bool) -> list:
    """Every file a sweep writes into ``report_dir``."""
    folder = Path(report_dir)
    names = list(REPORT_FILES)
    if save_models:
        names += [model_file_name(d) for d in sorted(set(dims))]
    return [folder / name for name in names]


def prepare_report_dir(
    report_dir: str | os.PathLike, dims: Sequence[int], *, save_models: bool, force: bool
) -> Path:
    """Create ``report_dir`` if missing; refuse to overwrite earlier results unless ``force``.

    Called before the sweep starts, so a refusal costs no fitting.
    """
    folder = Path(report_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder}: is a file; give a folder for the report")
    existing = [p.name for p in report_paths(folder, dims, save_models) if p.exists()]
    if existing and not force:
        raise UsageError(
            f"--output {folder}: already holds {', '.join(existing)}; pass --force to "
            "overwrite, or choose another folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NembedError(f"--output {folder}: cannot create the folder ({exc})") from None
    if not os.access(folder, os.W_OK):
        raise NembedError(f"--output {folder}: the folder is not writable")
    return folder


def table_rows(result: dict) -> list[list]:
    """The rows of the report table, in the order of :data:`TABLE_HEADERS`."""
    ref = result["reference"]
    rows = [
        [
            "Reference",
            ref["params"]["paper"],
            ref["params"]["all"],
            100 * ref["accuracy"],
            ref["cross_entropy"],
            None,
            None,
            None,
        ]
    ]
    for r in result["rows"]:
        rows.append(
            [
                f"Neuron embedding ({r['dim']} dims)",
                r["params"]["paper"],
                r["params"]["all"],
                100 * r["accuracy"],
                r["cross_entropy"],
                r["weight_mse"],
                r["fit_loss"],
                r["fit_seconds"],
            ]
        )
    return rows


def write_report(report_dir: str | os.PathLike, result: dict, options: dict) -> list[Path]:
    """Write ``report.md``, ``report.json`` and ``accuracy_vs_dim.png``; returns their paths."""
    md, js, png = (Path(report_dir) / name for name in REPORT_FILES)
    write_text_atomic(md, _markdown(result, options))
    write_json(js, {**result, "options": options})
    rows = result["rows"]
    plot_accuracy_vs_dim(
        png,
        [r["dim"] for r in rows],
        {"neuron embeddings": [r["accuracy"] for r in rows]},
        reference_accuracy=result["reference"]["accuracy"],
        params=[r["params"]["paper"] for r in rows],
        title=f"{result['arch'].removesuffix(' (direct)')} on {result['dataset']}: "
        "test accuracy against d",
    )
    return [md, js, png]


def _markdown(result: dict, options: dict) -> str:
    setup = f"kernel {options.get('kernel')}, solver {options.get('solver')}"
    if options.get("calibrate"):
        setup += f", calibrated for {options['calibrate']['steps']} steps"
    return (
        f"# Embedding dimension sweep: {result['arch']}\n\n"
        f"Source: `{options.get('model', '?')}`; test split of {result['dataset']}, "
        f"{result['samples']:,} samples; {setup}.\n\n"
        + markdown_table(TABLE_HEADERS, table_rows(result))
        + "\n"
        "- Free parameters: the paper's convention (trainable parameters; an embedding "
        "model counts its embeddings only). Parameters (all): every stored parameter.\n"
        "- Weight MSE: mean squared deviation of all generated weights from the "
        "originals, each weight counted once.\n"
        "- Fit loss: the fitted objective, a sum over matrices of per-matrix mean "
        "squared errors (paper, equation 4).\n"
        "- Fit time: the embedding fit alone, without calibration or evaluation.\n"
    )
