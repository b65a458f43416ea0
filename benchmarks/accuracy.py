"""MNIST accuracy against d, data-free and calibrated, through the compression pipeline.

The 784-400-10 reference MLP (:func:`benchmarks.common.reference_mlp`) is compressed
with :func:`nembed_compress.pipeline.compress_model` at every d, once data-free (the
ALS fit alone) and once calibrated (the fit, then distillation from the reference on
MNIST training batches, :class:`~nembed_compress.pipeline.CalibrateOptions`). Both are
evaluated on the MNIST test split next to the reference and the paper's Table 2.

Quick mode: d in 8, 16, 64, 50 calibration steps, the first 2000 test images.
"""

from __future__ import annotations

from nembed_compress.pipeline import CalibrateOptions, CompressOptions, compress_model

from .common import (
    BenchContext,
    BenchResult,
    Table,
    mnist,
    mnist_accuracy,
    mnist_normalization,
    reference_mlp,
)
from .fit import PAPER_ACCURACY, PAPER_REFERENCE_ACCURACY

FULL = {"dims": (4, 8, 16, 32, 64), "steps": CalibrateOptions.steps, "limit": None}
QUICK = {"dims": (8, 16, 64), "steps": 50, "limit": 2000}
# Target (full mode): calibrated d=16 within this many points of the reference.
TARGET_DIM, TARGET_GAP = 16, 1.5


def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    reference = reference_mlp(ctx)
    test_set = mnist(ctx, "test")
    limit = plan["limit"]
    reference_accuracy = mnist_accuracy(ctx, reference, test_set, limit)
    norm = mnist_normalization()

    rows = []
    for dim in plan["dims"]:
        ctx.note(f"accuracy d={dim}: data-free")
        free, _ = compress_model(reference, CompressOptions(dim=dim, normalization=norm))
        ctx.note(f"accuracy d={dim}: calibrated, {plan['steps']} steps")
        calibration = CalibrateOptions("mnist", ctx.data_dir, steps=plan["steps"])
        options = CompressOptions(dim=dim, normalization=norm, calibrate=calibration)
        calibrated, figures = compress_model(reference, options)
        rows.append(
            {
                "dim": dim,
                "data_free_accuracy": mnist_accuracy(ctx, free.model, test_set, limit),
                "calibrated_accuracy": mnist_accuracy(ctx, calibrated.model, test_set, limit),
                "calibration": figures["calibration"],
                "paper_accuracy": PAPER_ACCURACY[dim],
            }
        )
    for r in rows:
        r["data_free_gap"] = reference_accuracy - r["data_free_accuracy"]
        r["calibrated_gap"] = reference_accuracy - r["calibrated_accuracy"]

    samples = limit or len(test_set)
    table = Table.of_records(
        f"MNIST test accuracy (%) against d, {samples} test images; reference "
        f"{reference_accuracy:.2f} % (paper's reference {PAPER_REFERENCE_ACCURACY} %)",
        {
            "d": "dim",
            "data-free": "data_free_accuracy",
            "calibrated": "calibrated_accuracy",
            "gap data-free": "data_free_gap",
            "gap calibrated": "calibrated_gap",
            "paper Table 2": "paper_accuracy",
        },
        rows,
    )
    notes = [
        _target_note(rows, ctx.quick),
        f"Calibration: {plan['steps']} distillation steps of batch "
        f"{CalibrateOptions.batch_size}, lr {CalibrateOptions.lr}, on the MNIST training split.",
    ]
    figures = {
        "reference_accuracy": reference_accuracy,
        "test_samples": samples,
        "calibration_steps": plan["steps"],
        "by_dim": rows,
    }
    return BenchResult(figures=figures, tables=[table], notes=notes)


def _target_note(rows: list[dict], quick: bool) -> str:
    row = next((r for r in rows if r["dim"] == TARGET_DIM), None)
    if row is None:
        return f"Target (calibrated d={TARGET_DIM} within {TARGET_GAP} points): d not run."
    gap = row["calibrated_gap"]
    if quick:
        return (
            f"Calibrated d={TARGET_DIM} is {gap:.2f} points below the reference; the target "
            f"(within {TARGET_GAP} points) is assessed in full mode only."
        )
    verdict = "met" if gap <= TARGET_GAP else "NOT met"
    return f"Target calibrated d={TARGET_DIM} within {TARGET_GAP} points: {verdict} ({gap:.2f})."
