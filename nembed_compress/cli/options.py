"""Options shared between commands, so each means one thing everywhere."""

from __future__ import annotations

from pathlib import Path

import typer

from ..pipeline import CalibrateOptions
from ..spec import INPUT_EMBEDDINGS, KERNELS

_CAL = CalibrateOptions(dataset="")

Device = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda.")
Precision = typer.Option(
    "float32",
    "--precision",
    help="Arithmetic of training and distillation steps: float32, or bfloat16 (autocast; "
    "several times faster on CPUs with AVX-512 BF16/AMX and on recent GPUs).",
)
Json = typer.Option(False, "--json", help="Print the results as one JSON object.")
Force = typer.Option(False, "--force", help="Overwrite an existing output.")
DataDir = typer.Option(
    None,
    "--data-dir",
    help="Folder with offline dataset copies (else $NEMBED_DATA_DIR or ~/.cache/nembed/data, "
    "downloading when online).",
)
Dataset = typer.Option(
    None, "--dataset", help="mnist, fashion-mnist or cifar10 (default: from the input shape)."
)
Arch = typer.Option(
    None, "--arch", help="fc, convnet or resnet9, where the checkpoint alone is ambiguous."
)
Pool = typer.Option(
    None,
    "--pool",
    help="ResNet9 global pooling: max or avg (default: the file's training record, else max).",
)
OutputScale = typer.Option(
    None,
    "--output-scale",
    help="Constant factor on the logits, e.g. 0.125 for DAWNBench's ResNet9 (default: the "
    "file's training record, else 1).",
)
AllowPickle = typer.Option(
    False,
    "--allow-pickle",
    help="Allow unpickling a whole saved module. Runs code from the file: only for files you "
    "trust.",
)
Mean = typer.Option(
    None,
    "--mean",
    help="Input normalisation mean per channel, comma-separated, e.g. 0.1307 (default: the "
    "file's training record, else the dataset's).",
)
Std = typer.Option(None, "--std", help="Input normalisation std per channel, comma-separated.")
Limit = typer.Option(None, "--limit", help="Evaluate only the first N test samples.", min=1)
BatchSize = typer.Option(1000, "--batch-size", help="Evaluation batch size.", min=1)


def existing_file(path: Path, what: str = "input") -> Path:
    from ..errors import NembedError

    if not path.exists():
        raise NembedError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise NembedError(f"{path}: is a directory; expected a file ({what})")
    return path


Calibrate = typer.Option(
    False,
    "--calibrate",
    help="Distil the original model into the fit on training data (needs the dataset).",
)
CalibrateSteps = typer.Option(_CAL.steps, "--calibrate-steps", min=1, help="Distillation steps.")
CalibrateBatchSize = typer.Option(_CAL.batch_size, "--calibrate-batch-size", min=1)
CalibrateLr = typer.Option(_CAL.lr, "--calibrate-lr", help="Distillation learning rate.")
CalibrateBn = typer.Option(
    _CAL.bn_mode,
    "--calibrate-bn",
    help="Batch norms while distilling: batch (normalise by batch statistics, measure them "
    "again at the end) or fixed (keep the statistics measured first).",
)
CalibrateLayers = typer.Option(
    _CAL.layer_weight,
    "--calibrate-layers",
    min=0.0,
    help="Weight of matching every layer's outputs to the original's while distilling "
    "(0: match the final outputs only).",
)
CalibrateAugment = typer.Option(
    None,
    "--calibrate-augment/--no-calibrate-augment",
    help="Random crops and flips of the distillation batches (default: on for CIFAR-10, as "
    "in its training recipe; off for MNIST and Fashion-MNIST).",
    show_default=False,
)

# How embeddings are fitted (compress, sweep-dims).
Kernel = typer.Option("dot", "--kernel", help=f"Kernel: {', '.join(KERNELS)}.")
InputEmbedding = typer.Option(
    "learned", "--input-embedding", help=f"Input embeddings: {', '.join(INPUT_EMBEDDINGS)}."
)
Solver = typer.Option(
    "als",
    "--solver",
    help="als: exact alternating least squares (fast); adam: the paper's recipe "
    "(Adam, lr 0.002, 2000 steps from N(0, 1/d)).",
)
Steps = typer.Option(None, "--steps", help="ALS sweeps (200) or Adam steps (2000).", min=1)
Lr = typer.Option(0.002, "--lr", help="Adam learning rate (adam solver, polishing).")
PolishSteps = typer.Option(0, "--polish-steps", help="Adam steps after ALS.", min=0)
Seed = typer.Option(0, "--seed", help="Random seed.")
