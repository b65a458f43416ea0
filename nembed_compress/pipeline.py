"""End-to-end jobs the commands run: compress a checkpoint, evaluate a model.

Each job takes plain options, returns a dict of figures, and never prints; a
``progress`` callback (see :func:`nembed_compress.cli.app.progress_display`) is
the only way it reports while working.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .convert import calibrate, max_useful_dim, to_embedding
from .errors import UsageError
from .fileformat import NembedFile, file_tensors, save_nembed
from .models import NeuronNet, count_parameters
from .spec import ArchSpec, Normalization

Track = Callable[[str, int], Callable]


def _no_track(description: str, total: int) -> Callable:
    return lambda step, total_, loss=None: None


def default_dataset(spec: ArchSpec) -> str | None:
    """The dataset a model's input shape suggests (MNIST for 28x28x1, CIFAR-10 for 32x32x3)."""
    return {(1, 28, 28): "mnist", (3, 32, 32): "cifar10"}.get(tuple(spec.in_shape))


def default_normalization(dataset: str | None) -> Normalization | None:
    from .datasets import DATASETS

    if dataset is None:
        return None
    info = DATASETS[dataset]
    return Normalization(info.mean, info.std)


@dataclass
class CalibrateOptions:
    """Distillation on a bounded number of training batches (``--calibrate``)."""

    dataset: str
    data_dir: str | None = None
    # 1500 Adam steps at lr 3e-3 bring a 784-400-10 MLP at d=16 from 66 % to 97 %
    # (reference 98.4 %) in about 20 s on one CPU thread.
    steps: int = 1500
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0
    precision: str = "float32"
    # Random crops and flips of the batches; None: as the dataset's training recipe does
    # (on CIFAR-10, not on MNIST or Fashion-MNIST).
    augment: bool | None = None
    # Batch norms use batch statistics while distilling, then are measured again
    # ("batch"), or keep the statistics measured before ("fixed"); see ``calibrate``.
    bn_mode: str = "batch"
    # Weight of matching every layer's outputs to the original's, next to the output
    # distillation; 0 matches the outputs only. See ``calibrate``.
    layer_weight: float = 0.0


@dataclass
class CompressOptions:
    """What ``nembed compress`` does; see its ``--help`` for each option."""

    dim: int
    kernel: str = "dot"
    input_embedding: str = "learned"
    solver: str = "als"
    steps: int | None = None
    lr: float = 0.002
    polish_steps: int = 0
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    normalization: Normalization | None = None
    calibrate: CalibrateOptions | None = None


def check_dim(model: NeuronNet, dim: int) -> None:
    if dim <= 0:
        raise UsageError(f"--dim must be a positive integer, got {dim}")
    useful = max_useful_dim(model)
    if dim > useful:
        raise UsageError(
            f"--dim {dim} is larger than useful: no weight matrix of this model has rank above "
            f"{useful}, so --dim {useful} already reproduces every matrix; choose d <= {useful}"
        )


def compress_model(
    direct: NeuronNet, options: CompressOptions, track: Track = _no_track
) -> tuple[NembedFile, dict]:
    """Convert a direct model to neuron embeddings; returns the file to write and its figures."""
    check_dim(direct, options.dim)
    direct.eval()
    start = time.perf_counter()
    update = track(f"fit d={options.dim} ({options.solver})", options.steps or 200)
    conversion = to_embedding(
        direct,
        options.dim,
        kernel=options.kernel,
        input_embedding=options.input_embedding,
        solver=options.solver,
        steps=options.steps,
        lr=options.lr,
        polish_steps=options.polish_steps,
        seed=options.seed,
        device=options.device,
        progress=update,
    )
    model = conversion.model.eval()
    figures = {
        "fit": conversion.fit.summary(),
        "conv_rank1_relative_error": conversion.conv_errors,
    }
    if options.calibrate is not None:
        figures["calibration"] = _calibrate(model, direct, options, track)
    figures["seconds"] = round(time.perf_counter() - start, 3)
    nf = NembedFile(model=model, normalization=options.normalization, fit=figures)
    return nf, figures


def _calibrate(model, teacher, options: CompressOptions, track: Track) -> dict:
    from .datasets import load_dataset
    from .training import augment, paper_recipe

    cal = options.calibrate
    data = load_dataset(cal.dataset, "train", cal.data_dir)
    norm = options.normalization or default_normalization(cal.dataset)
    augmented = paper_recipe(cal.dataset).augment if cal.augment is None else cal.augment
    generator = torch.Generator().manual_seed(cal.seed)

    def batches():
        for x, _ in data.batches(cal.batch_size, shuffle=True, generator=generator):
            x = augment(x, generator) if augmented and x.dim() == 4 else x
            yield norm.apply(x) if norm else x

    class Epochs:
        def __iter__(self):
            return batches()

    update = track("calibrate", cal.steps)
    stats = calibrate(
        model,
        teacher,
        Epochs(),
        steps=cal.steps,
        lr=cal.lr,
        device=options.device,
        precision=cal.precision,
        bn_mode=cal.bn_mode,
        layer_weight=cal.layer_weight,
        progress=update,
    )
    model.eval()
    return {
        "dataset": cal.dataset,
        "batch_size": cal.batch_size,
        "augment": augmented,
        "precision": cal.precision,
        **stats,
    }


def size_figures(source: NeuronNet, compressed: NeuronNet, dtype: str) -> dict:
    """Parameters (both conventions) and tensor bytes before and after, with ratios."""
    from .fileformat import DTYPES

    before, after = count_parameters(source), count_parameters(compressed)
    bytes_before = sum(t.numel() * t.element_size() for t in file_tensors(source).values())
    bytes_after = sum(
        t.numel() * t.element_size() for t in file_tensors(compressed, DTYPES[dtype]).values()
    )
    return {
        "params_before": before,
        "params_after": after,
        "param_ratio": before["all"] / after["all"],
        "param_ratio_paper": before["paper"] / after["paper"],
        "tensor_bytes_before": bytes_before,
        "tensor_bytes_after": bytes_after,
        "byte_ratio": bytes_before / bytes_after,
    }


def write_compressed(
    nf: NembedFile, output: str | Path, *, dtype: str = "float32", force: bool = False
) -> dict:
    path = save_nembed(output, nf, dtype=dtype, force=force)
    return {"output": str(path), "file_bytes": path.stat().st_size}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data,
    normalization: Normalization | None,
    *,
    batch_size: int = 1000,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    track: Track = _no_track,
) -> dict:
    """Accuracy (a fraction), mean cross-entropy and throughput on ``data``."""
    device = torch.device(device)
    model = model.to(device).eval()
    total = min(len(data), limit) if limit else len(data)
    update = track("evaluate", total)
    correct, loss_sum, seen, seconds = 0, 0.0, 0, 0.0
    for x, y in data.batches(batch_size, limit=limit, device=device):
        x = normalization.apply(x) if normalization else x
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
        update(seen, total)
    model.cpu()
    if seen == 0:
        raise UsageError("evaluation saw no samples: --limit must be positive")
    return {
        "accuracy": correct / seen,
        "cross_entropy": loss_sum / seen,
        "samples": seen,
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds > 0 else float("inf"),
    }
