"""``nembed compress``: a pretrained checkpoint in, a compact nembed file out."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UsageError
from ..precision import check_precision
from ..spec import INPUT_EMBEDDINGS, KERNELS, PAPER_DIMS, Normalization
from . import options as opt
from .app import command, print_json, print_table, progress_display, resolve_device


def default_output(model: Path, dim: int) -> Path:
    return model.with_name(f"{model.stem}-d{dim}.safetensors")


def normalization_from(
    mean: str | None, std: str | None, dataset: str | None, recorded: Normalization | None = None
):
    """User-given normalisation wins; else the checkpoint's recorded one; else the dataset's
    defaults; else none."""
    from ..pipeline import default_normalization

    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: give both or neither")
    if mean is not None:
        try:
            return Normalization.parse(mean, std)
        except ValueError as exc:
            raise UsageError(f"--mean/--std: {exc}") from None
    if recorded is not None:
        return recorded
    return default_normalization(dataset)


def check_dataset(dataset: str | None) -> None:
    from ..datasets import DATASETS

    if dataset is not None and dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")


def load_direct(model: Path, arch, allow_pickle, pool, output_scale):
    """An original checkpoint as our direct model; a compressed file is refused by name."""
    from ..checkpoints import load_checkpoint
    from ..fileformat import is_nembed_file
    from ..models import build_model

    opt.existing_file(model, "checkpoint")
    if is_nembed_file(model):
        raise UsageError(
            f"{model}: already a compressed nembed file; give the original checkpoint it was "
            "compressed from"
        )
    ckpt = load_checkpoint(
        model, arch=arch, allow_pickle=allow_pickle, pool=pool, output_scale=output_scale
    )
    direct = build_model(ckpt.spec)
    direct.load_state_dict(ckpt.state_dict)
    return direct.eval(), ckpt


def compress_options(
    *,
    dim: int,
    kernel: str,
    input_embedding: str,
    solver: str,
    steps: int | None,
    lr: float,
    polish_steps: int,
    seed: int,
    device: str,
    mean: str | None,
    std: str | None,
    dataset: str | None,
    calibrate: bool,
    calibrate_steps: int,
    calibrate_batch_size: int,
    calibrate_lr: float,
    data_dir: Path | None,
    precision: str = "float32",
    recorded: Normalization | None = None,
    calibrate_augment: bool | None = None,
    calibrate_bn: str = "batch",
    calibrate_layers: float = 0.0,
):
    """Checked options of one fit, shared by compress and sweep-dims."""
    from ..convert import BN_MODES
    from ..fit import SOLVERS
    from ..pipeline import CalibrateOptions, CompressOptions

    for option, value, choices in (
        ("--kernel", kernel, KERNELS),
        ("--input-embedding", input_embedding, INPUT_EMBEDDINGS),
        ("--solver", solver, SOLVERS),
        ("--calibrate-bn", calibrate_bn, BN_MODES),
    ):
        if value not in choices:
            raise UsageError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    check_precision(precision)
    if calibrate and dataset is None:
        raise UsageError("--calibrate needs training data: give --dataset")
    cal = None
    if calibrate:
        data_dir_text = str(data_dir) if data_dir else None
        cal = CalibrateOptions(
            dataset,
            data_dir_text,
            calibrate_steps,
            calibrate_batch_size,
            calibrate_lr,
            seed,
            precision,
            calibrate_augment,
            calibrate_bn,
            calibrate_layers,
        )
    return CompressOptions(
        dim=dim,
        kernel=kernel,
        input_embedding=input_embedding,
        solver=solver,
        steps=steps,
        lr=lr,
        polish_steps=polish_steps,
        seed=seed,
        device=resolve_device(device),
        normalization=normalization_from(mean, std, dataset, recorded),
        calibrate=cal,
    )


@command("compress")
def compress(
    model: Path = typer.Argument(..., help="Checkpoint: .pt/.pth state dict or .safetensors."),
    dim: int = typer.Option(
        None, "--dim", "-d", help="Embedding dimension d (default: 64 for fc, 48 for conv nets)."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Output file (default: MODEL-d{dim}.safetensors)."
    ),
    kernel: str = opt.Kernel,
    input_embedding: str = opt.InputEmbedding,
    solver: str = opt.Solver,
    steps: int = opt.Steps,
    lr: float = opt.Lr,
    polish_steps: int = opt.PolishSteps,
    calibrate: bool = opt.Calibrate,
    calibrate_steps: int = opt.CalibrateSteps,
    calibrate_batch_size: int = opt.CalibrateBatchSize,
    calibrate_lr: float = opt.CalibrateLr,
    calibrate_augment: bool = opt.CalibrateAugment,
    calibrate_bn: str = opt.CalibrateBn,
    calibrate_layers: float = opt.CalibrateLayers,
    precision: str = opt.Precision,
    dataset: str = opt.Dataset,
    data_dir: Path = opt.DataDir,
    mean: str = opt.Mean,
    std: str = opt.Std,
    dtype: str = typer.Option(
        "float32", "--dtype", help="Stored dtype: float32, float16, bfloat16."
    ),
    arch: str = opt.Arch,
    pool: str = opt.Pool,
    output_scale: float = opt.OutputScale,
    allow_pickle: bool = opt.AllowPickle,
    seed: int = opt.Seed,
    device: str = opt.Device,
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Convert a pretrained FC network or ResNet9 into neuron embeddings."""
    from ..atomic import check_output_path
    from ..fileformat import DTYPES
    from ..pipeline import compress_model, default_dataset, size_figures, write_compressed

    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    check_dataset(dataset)
    direct, ckpt = load_direct(model, arch, allow_pickle, pool, output_scale)
    dim = dim if dim is not None else PAPER_DIMS[ckpt.spec.family]
    output = output or default_output(model, dim)
    check_output_path(output, force=force)
    dataset = dataset or default_dataset(ckpt.spec)
    options = compress_options(
        dim=dim,
        kernel=kernel,
        input_embedding=input_embedding,
        solver=solver,
        steps=steps,
        lr=lr,
        polish_steps=polish_steps,
        seed=seed,
        device=device,
        mean=mean,
        std=std,
        dataset=dataset,
        calibrate=calibrate,
        calibrate_steps=calibrate_steps,
        calibrate_batch_size=calibrate_batch_size,
        calibrate_lr=calibrate_lr,
        data_dir=data_dir,
        precision=precision,
        recorded=ckpt.normalization,
        calibrate_augment=calibrate_augment,
        calibrate_bn=calibrate_bn,
        calibrate_layers=calibrate_layers,
    )
    with progress_display(not json_out) as track:
        nf, figures = compress_model(direct, options, track)
    nf.source_sha256 = ckpt.sha256
    nf.extra = {"source_file": model.name, "dataset": dataset}
    written = write_compressed(nf, output, dtype=dtype, force=force)
    report = {
        "input": str(model),
        "arch": ckpt.spec.describe(),
        "dim": dim,
        **written,
        "input_file_bytes": model.stat().st_size,
        "file_ratio": model.stat().st_size / written["file_bytes"],
        **size_figures(direct, nf.model, dtype),
        **figures,
    }
    if json_out:
        print_json(report)
        return
    _print_summary(report)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_summary(r: dict) -> None:
    fit = r["fit"]
    rows = [
        ("model", r["arch"]),
        ("output", r["output"]),
        ("parameters before", r["params_before"]["all"]),
        ("parameters after", r["params_after"]["all"]),
        ("parameter ratio", r["param_ratio"]),
        ("file bytes before", r["input_file_bytes"]),
        ("file bytes after", r["file_bytes"]),
        ("file ratio", r["file_ratio"]),
        ("fit loss", fit["loss"]),
        ("Eckart-Young bound", fit["bound"]),
        (f"fit time ({fit['solver']}, {_count(fit['steps'], 'step')})", f"{fit['seconds']:.2f} s"),
    ]
    for name, error in r["conv_rank1_relative_error"].items():
        rows.append((f"rank-1 error {name}", error))
    if "calibration" in r:
        cal = r["calibration"]
        rows.append(
            ("calibration KL start -> end", f"{cal['kl_start']:.4g} -> {cal['kl_end']:.4g}")
        )
        if "layer_start" in cal:
            rows.append(
                (
                    "calibration layer error start -> end",
                    f"{cal['layer_start']:.4g} -> {cal['layer_end']:.4g}",
                )
            )
    rows.append(("total time", f"{r['seconds']:.2f} s"))
    print_table(f"nembed compress (d={r['dim']})", rows)
