"""``nembed export``: a compressed model as an ONNX graph, checked against PyTorch."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from ..errors import DatasetError
from . import options as opt
from .app import command, err, print_json, print_table

log = logging.getLogger(__name__)


@command("export")
def export(
    file: Path = typer.Argument(..., help="A compressed .safetensors file."),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    form: str = typer.Option(
        "dense",
        "--form",
        help="dense: generated weights as constants; factored: embeddings, two matrix "
        "products per layer (fewer stored numbers).",
    ),
    bake_normalization: bool = typer.Option(
        False,
        "--bake-normalization",
        help="Apply the stored input normalisation inside the graph (it then takes [0, 1] inputs).",
    ),
    dataset: str = opt.Dataset,
    data_dir: Path = opt.DataDir,
    check_samples: int = typer.Option(
        16, "--check-samples", min=1, help="Test images the graph is checked on."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (14 or newer)."),
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Export a compressed model to ONNX and check it reproduces PyTorch's outputs."""
    from ..export import export_onnx
    from ..fileformat import load_nembed

    nf = load_nembed(opt.existing_file(file, "compressed model"))
    inputs, source = _check_inputs(nf, dataset, data_dir, check_samples, bake_normalization)
    result = export_onnx(
        nf.model,
        output,
        form=form,
        normalization=nf.normalization,
        bake_normalization=bake_normalization,
        opset=opset,
        check_inputs=inputs,
        force=force,
    )
    result["checked_on"] = source
    if json_out:
        print_json(result)
        return
    print_table(
        "nembed export",
        [
            ("output", result["path"]),
            ("form", result["form"]),
            ("stored numbers", result["initializer_params"]),
            ("file bytes", result["bytes"]),
            ("normalisation baked in", result["normalization_baked"]),
            (f"max |onnx - torch| on {source}", result["max_abs_diff"]),
        ],
    )


def _check_inputs(nf, dataset, data_dir, samples, bake):
    """Real test images in the graph's input space when the dataset is at hand; else None."""
    from ..datasets import load_dataset
    from ..pipeline import default_dataset

    name = dataset or nf.extra.get("dataset") or default_dataset(nf.spec)
    if name is None:
        return None, "random inputs"
    try:
        data = load_dataset(name, "test", data_dir, download=False if data_dir else None)
    except DatasetError as exc:
        err.print(f"[yellow]Warning:[/] checking on random inputs: {exc}", highlight=False)
        return None, "random inputs"
    x, _ = next(data.batches(samples))
    if not bake and nf.normalization is not None:
        x = nf.normalization.apply(x)
    return x, f"{len(x)} {name} test images"
