"""``nembed eval`` and ``nembed inspect``: what a user runs after compressing.

``eval`` scores a compressed file or an original checkpoint on a test split;
``inspect`` shows what a compressed file holds without running it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from ..errors import NembedError, UsageError
from . import options as opt
from .app import command, err, out, print_json, print_table, progress_display, resolve_device
from .compress import check_dataset, normalization_from


@dataclass
class LoadedModel:
    """A model read from a compressed file or a checkpoint, and what the file says about it."""

    model: object  # NeuronNet
    kind: str  # "nembed" or "checkpoint"
    normalization: object | None = None  # stored in a compressed file or a training record
    dataset: str | None = None  # dataset named in a compressed file's metadata


def load_model_file(path: Path, **checkpoint_options) -> LoadedModel:
    """A nembed file as it is; anything else through ``load_checkpoint`` with the options."""
    from ..checkpoints import load_checkpoint
    from ..fileformat import is_nembed_file, load_nembed
    from ..models import build_model

    opt.existing_file(path, "model")
    if is_nembed_file(path):
        nf = load_nembed(path)
        return LoadedModel(nf.model, "nembed", nf.normalization, nf.extra.get("dataset"))
    ckpt = load_checkpoint(path, **checkpoint_options)
    model = build_model(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    return LoadedModel(model.eval(), "checkpoint", ckpt.normalization)


def check_data_fits(spec, dataset: str) -> None:
    """The dataset's images must fit the model's input and its classes the model's outputs."""
    from ..datasets import DATASETS

    info = DATASETS[dataset]
    channels_differ = spec.family != "fc" and spec.in_shape[0] != info.shape[0]
    if channels_differ or (spec.family == "fc" and spec.in_features != math.prod(info.shape)):
        raise UsageError(
            f"--dataset {dataset}: its images are {'x'.join(map(str, info.shape))}, but the "
            f"model {spec.describe()} takes inputs of shape {'x'.join(map(str, spec.in_shape))}; "
            "choose the dataset the model was trained on"
        )
    if spec.num_classes != info.classes:
        raise UsageError(
            f"--dataset {dataset}: it has {info.classes} classes, but the model has "
            f"{spec.num_classes} outputs; choose the dataset the model was trained on"
        )


def pick_dataset(given: str | None, loaded: LoadedModel) -> str:
    """--dataset, else the one a compressed file names, else the one its input shape suggests."""
    from ..pipeline import default_dataset

    check_dataset(given)
    dataset = given or loaded.dataset or default_dataset(loaded.model.spec)
    if dataset is None:
        shape = "x".join(map(str, loaded.model.spec.in_shape))
        raise UsageError(
            f"--dataset: no default for inputs of shape {shape}; give --dataset "
            "mnist, fashion-mnist or cifar10"
        )
    check_dataset(dataset)
    return dataset


def pick_normalization(mean, std, dataset: str, loaded: LoadedModel) -> tuple[object, str]:
    """--mean/--std, else what the file stores, else the dataset's defaults."""
    if mean is not None or std is not None:
        return normalization_from(mean, std, dataset), "options"
    if loaded.normalization is not None:
        return loaded.normalization, "file"
    return normalization_from(None, None, dataset), "dataset"


# -- eval -----------------------------------------------------------------------------------


@command("eval")
def eval_command(
    file: Path = typer.Argument(
        ..., help="A compressed .safetensors file, or an original checkpoint."
    ),
    dataset: str = typer.Option(
        None,
        "--dataset",
        help="mnist, fashion-mnist or cifar10 (default: the one a compressed file names, "
        "else from the input shape).",
    ),
    data_dir: Path = opt.DataDir,
    limit: int = opt.Limit,
    batch_size: int = opt.BatchSize,
    device: str = opt.Device,
    mean: str = typer.Option(
        None,
        "--mean",
        help="Input normalisation mean per channel, comma-separated (default: the one a "
        "compressed file stores, else the dataset's).",
    ),
    std: str = opt.Std,
    factored: bool = typer.Option(
        False, "--factored", help="Run embedding layers as two thin products, not dense weights."
    ),
    arch: str = opt.Arch,
    pool: str = opt.Pool,
    output_scale: float = opt.OutputScale,
    allow_pickle: bool = opt.AllowPickle,
    json_out: bool = opt.Json,
) -> None:
    """Evaluate a compressed model or an original checkpoint on a test split."""
    from ..datasets import load_dataset
    from ..models import count_parameters
    from ..pipeline import evaluate

    device = resolve_device(device)
    loaded = load_model_file(
        file, arch=arch, allow_pickle=allow_pickle, pool=pool, output_scale=output_scale
    )
    spec = loaded.model.spec
    dataset = pick_dataset(dataset, loaded)
    check_data_fits(spec, dataset)
    norm, norm_source = pick_normalization(mean, std, dataset, loaded)
    _set_factored(loaded, factored)

    data = load_dataset(dataset, "test", data_dir)
    with progress_display(not json_out) as track:
        scores = evaluate(
            loaded.model, data, norm, batch_size=batch_size, limit=limit, device=device, track=track
        )
    report = {
        "file": str(file),
        "kind": loaded.kind,
        "arch": spec.describe(),
        "dim": spec.dim,
        "dataset": dataset,
        **scores,
        "params": count_parameters(loaded.model),
        "bytes": file.stat().st_size,
        "normalization": {**norm.to_dict(), "source": norm_source} if norm else None,
        "factored": loaded.model.factored,
        "device": str(device),
    }
    if json_out:
        print_json(report)
        return
    _print_eval(report)


def _set_factored(loaded: LoadedModel, factored: bool) -> None:
    from ..kernels import is_linear

    if not factored:
        return
    spec = loaded.model.spec
    if spec.repr != "emb":
        raise UsageError(
            f"--factored: {spec.describe()} has no embedding layers to factor; it applies "
            "to compressed files only"
        )
    if not is_linear(spec.kernel):
        err.print(
            f"[yellow]Warning:[/] --factored: the {spec.kernel} kernel is not linear, so its "
            "layers cannot run factored; they run with dense weights",
            highlight=False,
        )
        return
    loaded.model.set_factored(True)


def _print_eval(r: dict) -> None:
    rows = [
        ("file", r["file"]),
        ("model", r["arch"]),
        ("dataset", f"{r['dataset']} (test, {r['samples']:,} samples)"),
        ("accuracy", f"{100 * r['accuracy']:.2f} %"),
        ("cross-entropy", r["cross_entropy"]),
        ("parameters (all)", r["params"]["all"]),
        ("parameters (paper)", r["params"]["paper"]),
        ("file bytes", r["bytes"]),
        ("samples per second", f"{r['samples_per_second']:,.0f} on {r['device']}"),
    ]
    if r["normalization"]:
        n = r["normalization"]
        rows.append(("normalisation", f"mean {n['mean']} std {n['std']} ({n['source']})"))
    if r["factored"]:
        rows.append(("factored", "yes"))
    print_table("nembed eval", rows)


# -- inspect --------------------------------------------------------------------------------


@command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="A compressed .safetensors file."),
    json_out: bool = opt.Json,
) -> None:
    """Show what a compressed file holds: architecture, neuron sets, fit and sizes."""
    from ..fileformat import is_nembed_file

    opt.existing_file(file, "compressed model")
    if not is_nembed_file(file):
        raise UsageError(_not_compressed(file))
    report = describe_file(file)
    if json_out:
        print_json(report)
        return
    _print_inspect(report)


def _not_compressed(path: Path) -> str:
    """Why inspect refuses ``path``, naming the architecture when it is a checkpoint."""
    from ..checkpoints import load_checkpoint

    try:
        spec = load_checkpoint(path).spec
    except NembedError:
        return (
            f"{path}: not a compressed nembed file (no nembed metadata) and not a readable "
            "checkpoint either; give a file written by `nembed compress`"
        )
    return (
        f"{path}: an original checkpoint ({spec.describe()}), not a compressed file; "
        f"compress it with `nembed compress {path}`, or score it with `nembed eval {path}`"
    )


def describe_file(path: Path) -> dict:
    """Everything ``inspect`` shows, as plain data."""
    from safetensors.torch import load_file

    from ..fileformat import SHARED, load_nembed, read_metadata
    from ..models import count_parameters

    metadata = read_metadata(path)
    nf = load_nembed(path)
    tensors = load_file(str(path))
    spec = nf.spec
    return {
        "file": str(path),
        "format_version": metadata.get("format_version"),
        "created_by": metadata.get("created_by"),
        "arch": spec.describe(),
        "spec": json.loads(spec.to_json()),
        "dim": spec.dim,
        "kernel": spec.kernel,
        "input_embedding": spec.input_embedding,
        "neuron_sets": _neuron_sets(nf.model.sets, tensors, SHARED),
        "normalization": nf.normalization.to_dict() if nf.normalization else None,
        "fit": nf.fit,
        "params": count_parameters(nf.model),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "file_bytes": path.stat().st_size,
        "dtype": metadata.get("dtype"),
        "source_sha256": nf.source_sha256,
        "extra": nf.extra,
    }


def _neuron_sets(sets: dict[str, int], tensors: dict, shared: str) -> dict[str, dict]:
    """Per neuron set: its size, the stored values per neuron and the tensors it owns."""
    grouped: dict[str, list[str]] = {}
    for key in tensors:
        owner, _, name = key.partition("/")
        grouped.setdefault(owner, []).append(name)
    described = {}
    for name, size in sets.items():
        keys = grouped.get(name, [])
        values = sum(tensors[f"{name}/{k}"].numel() for k in keys)
        described[name] = {"neurons": size, "values_per_neuron": values // size, "tensors": keys}
    if grouped.get(shared):
        keys = grouped[shared]
        values = sum(tensors[f"{shared}/{k}"].numel() for k in keys)
        described[shared] = {"neurons": 0, "values": values, "tensors": keys}
    return described


def _print_inspect(r: dict) -> None:
    norm = r["normalization"]
    rows = [
        ("file", r["file"]),
        ("model", r["arch"]),
        ("embedding dimension d", r["dim"]),
        ("kernel", r["kernel"]),
        ("input embedding", r["input_embedding"]),
        ("normalisation", f"mean {norm['mean']} std {norm['std']}" if norm else "none"),
        ("parameters (all)", r["params"]["all"]),
        ("parameters (paper)", r["params"]["paper"]),
        ("tensor bytes", r["tensor_bytes"]),
        ("file bytes", r["file_bytes"]),
        ("dtype", r["dtype"]),
        # The first 16 hex digits identify a source; --json prints all 64.
        ("source sha256", f"{r['source_sha256'][:16]}..." if r["source_sha256"] else "unknown"),
    ]
    rows += [(key.replace("_", " "), value) for key, value in r["extra"].items()]
    rows.append(("created by", f"{r['created_by']} (format {r['format_version']})"))
    print_table("nembed inspect", rows)
    _print_sets(r["neuron_sets"])
    _print_fit(r["fit"])


def _print_sets(sets: dict[str, dict]) -> None:
    table = Table(title="neuron sets", title_justify="left")
    for header in ("set", "neurons", "values per neuron", "tensors"):
        table.add_column(header, justify="left" if header in ("set", "tensors") else "right")
    for name, s in sets.items():
        per_neuron = str(s["values_per_neuron"]) if s["neurons"] else f"{s['values']:,} shared"
        table.add_row(name, f"{s['neurons']:,}", per_neuron, ", ".join(s["tensors"]))
    out.print(table)


def _print_fit(figures: dict) -> None:
    fit = figures.get("fit")
    if not fit:
        out.print("No fit figures stored in this file.")
        return
    rows = [
        ("solver", f"{fit['solver']} ({fit['steps']} step{'s' if fit['steps'] != 1 else ''})"),
        ("fit loss", fit["loss"]),
        ("Eckart-Young bound", fit["bound"]),
        ("fit time", f"{fit['seconds']:.2f} s"),
    ]
    for name, error in figures.get("conv_rank1_relative_error", {}).items():
        rows.append((f"rank-1 error {name}", error))
    cal = figures.get("calibration")
    if cal:
        rows.append(
            (
                "calibration",
                f"{cal['steps']} steps on {cal['dataset']}, KL {cal['kl_start']:.4g} -> "
                f"{cal['kl_end']:.4g}",
            )
        )
    print_table("fit", rows)
    _print_matrices(fit.get("per_matrix", []))


def _print_matrices(per_matrix: list[dict]) -> None:
    if not per_matrix:
        return
    table = Table(title="generated matrices", title_justify="left")
    for header in ("matrix", "shape", "MSE", "rank-d bound", "relative error"):
        table.add_column(header, justify="left" if header == "matrix" else "right")
    for m in per_matrix:
        shape = " x ".join(map(str, m["shape"]))
        table.add_row(
            m["name"], shape, f"{m['mse']:.3e}", f"{m['bound']:.3e}", f"{m['relative_error']:.4f}"
        )
    out.print(table)
