"""``nembed sweep-dims``: one checkpoint compressed at several d, evaluated, and reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from ..errors import UsageError
from . import options as opt
from .app import command, out, parse_int_list, print_json, progress_display
from .compress import check_dataset, compress_options, load_direct
from .evaluate import check_data_fits


@command("sweep-dims")
def sweep_dims_command(
    model: Path = typer.Argument(..., help="Checkpoint: .pt/.pth state dict or .safetensors."),
    dims: str = typer.Option(
        "4,8,16,32,64", "--dims", help="Embedding dimensions d, comma-separated."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Report folder (created if missing)."),
    dataset: str = opt.Dataset,
    data_dir: Path = opt.DataDir,
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
    mean: str = opt.Mean,
    std: str = opt.Std,
    limit: int = opt.Limit,
    batch_size: int = opt.BatchSize,
    arch: str = opt.Arch,
    pool: str = opt.Pool,
    output_scale: float = opt.OutputScale,
    allow_pickle: bool = opt.AllowPickle,
    save_models: bool = typer.Option(
        False, "--save-models", help="Also write each compressed model as d{dim}.safetensors."
    ),
    seed: int = opt.Seed,
    device: str = opt.Device,
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Compress a checkpoint at several embedding dimensions and report accuracy against d."""
    from ..datasets import load_dataset
    from ..pipeline import default_dataset
    from ..sweep import check_dims, prepare_report_dir, sweep_dims, write_report

    # Everything that can be wrong is checked before any fitting starts.
    dim_list = parse_int_list(dims, "--dims")
    check_dataset(dataset)
    direct, ckpt = load_direct(model, arch, allow_pickle, pool, output_scale)
    dim_list = check_dims(direct, dim_list)
    dataset = dataset or default_dataset(direct.spec)
    if dataset is None:
        raise UsageError("--dataset: no default for this model's input shape; give --dataset")
    check_data_fits(direct.spec, dataset)
    options = compress_options(
        dim=dim_list[0],
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
    data_dir_text = str(data_dir) if data_dir else None
    data = load_dataset(dataset, "test", data_dir)
    folder = prepare_report_dir(output, dim_list, save_models=save_models, force=force)

    save = _model_saver(folder, model.name, ckpt.sha256, dataset, force) if save_models else None
    with progress_display(not json_out) as track:
        result = sweep_dims(
            direct,
            dim_list,
            data,
            options,
            batch_size=batch_size,
            limit=limit,
            track=track,
            on_compressed=save,
        )
    record = _options_record(model, ckpt.sha256, options, limit, batch_size, data_dir_text)
    files = write_report(folder, result, record)
    if json_out:
        print_json({**result, "options": record, "files": [str(f) for f in files]})
        return
    _print_sweep(result, folder)


def _model_saver(folder: Path, source_file: str, sha256: str, dataset: str, force: bool):
    """``on_compressed`` for --save-models: each fit as ``d{dim}.safetensors`` in ``folder``."""
    from ..pipeline import write_compressed
    from ..sweep import model_file_name

    def save(dim, nf) -> None:
        nf.source_sha256 = sha256
        nf.extra = {"source_file": source_file, "dataset": dataset}
        write_compressed(nf, folder / model_file_name(dim), force=force)

    return save


def _options_record(model, sha256, options, limit, batch_size, data_dir) -> dict:
    """The command's options as report.json stores them."""
    cal = options.calibrate
    norm = options.normalization
    return {
        "model": str(model),
        "source_sha256": sha256,
        "kernel": options.kernel,
        "input_embedding": options.input_embedding,
        "solver": options.solver,
        "steps": options.steps,
        "lr": options.lr,
        "polish_steps": options.polish_steps,
        "seed": options.seed,
        "device": str(options.device),
        "normalization": norm.to_dict() if norm else None,
        "calibrate": dataclasses.asdict(cal) if cal else None,
        "limit": limit,
        "batch_size": batch_size,
        "data_dir": data_dir,
    }


# Short headers keep the table within 80 columns; report.md spells them out.
SHORT_HEADERS = [
    "Model",
    "Free params",
    "All params",
    "Acc. %",
    "CE",
    "Weight MSE",
    "Fit loss",
    "Fit s",
]


def _print_sweep(result: dict, folder: Path) -> None:
    from ..report import format_number
    from ..sweep import table_rows

    table = Table(
        title=f"nembed sweep-dims: {result['arch']} on {result['dataset']} "
        f"({result['samples']:,} test samples)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
    )
    for i, header in enumerate(SHORT_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in table_rows(result):
        label = row[0] if row[0] == "Reference" else row[0].replace("Neuron embedding (", "d = ")
        table.add_row(label.removesuffix(" dims)"), *(format_number(v) for v in row[1:]))
    out.print(table)
    out.print(f"Report written to {folder}/ (report.md, report.json, accuracy_vs_dim.png)")
