"""Fit quality and fit time: the default solver (ALS) against the paper's recipe (Adam).

On the 784-400-10 MLP trained on MNIST (:func:`benchmarks.common.reference_mlp`), for
every d: the loss of equation 4 reached by ALS and by Adam (lr 0.002, 2000 steps; 300
in quick mode), the Eckart-Young lower bound, the time of each, and the MNIST test
accuracy of each fitted model next to the reference model and the paper's Table 2.

Times are figures of one run and are compared as ratios only: ALS is timed as the
median of three fits, Adam once (it takes seconds), the bound once.
"""

from __future__ import annotations

import statistics
import time

from nembed_compress.convert import fit_problem, to_embedding
from nembed_compress.fit import eckart_young_bound, fit_embeddings

from .common import BenchContext, BenchResult, Gated, Table, mnist, mnist_accuracy, reference_mlp

DIMS = (4, 8, 16, 32, 64)
PAPER_STEPS = 2000
QUICK_STEPS = 300
PAPER_LR = 0.002
ALS_TIMINGS = 3
# Paper, Table 2 (784-400-10 MLP on MNIST, reference 97.48 %): accuracy in percent
# and the weight MSE of the fitted embedding model, by d.
PAPER_REFERENCE_ACCURACY = 97.48
PAPER_ACCURACY = {64: 97.48, 32: 97.15, 16: 75.08, 8: 65.61, 4: 20.72}
PAPER_WEIGHT_MSE = {64: 0.00036, 32: 0.00053, 16: 0.00095, 8: 0.00177, 4: 0.00414}
# Targets of this benchmark (full mode, the paper's 2000 Adam steps).
TARGET_SPEEDUP = 20.0


def weight_mse(per_matrix: list[dict]) -> float:
    """Squared error over all weights of the model, divided by their number.

    This is the paper's Table 2 "MSE"; the fit loss instead sums one mean per matrix.
    """
    total = sum(row["mse"] * row["shape"][0] * row["shape"][1] for row in per_matrix)
    return total / sum(row["shape"][0] * row["shape"][1] for row in per_matrix)


def fit_one(ctx: BenchContext, reference, test_set, dim: int, adam_steps: int) -> dict:
    """Both solvers at one d, with timings and test accuracies."""
    problem = fit_problem(reference, dim)

    ctx.note(f"fit d={dim}: als")
    als = to_embedding(reference, dim, solver="als")
    als_seconds = [als.fit.seconds]
    for _ in range(ALS_TIMINGS - 1):
        als_seconds.append(fit_embeddings(problem, "als").seconds)

    start = time.perf_counter()
    bound = eckart_young_bound(problem)
    bound_seconds = time.perf_counter() - start

    ctx.note(f"fit d={dim}: adam, {adam_steps} steps")
    adam = to_embedding(reference, dim, solver="adam", steps=adam_steps, lr=PAPER_LR, seed=0)

    als_time = statistics.median(als_seconds)
    return {
        "dim": dim,
        "als_loss": als.fit.loss,
        "adam_loss": adam.fit.loss,
        "bound": bound,
        "als_sweeps": als.fit.steps,
        "adam_steps": adam.fit.steps,
        "als_weight_mse": weight_mse(als.fit.per_matrix),
        "adam_weight_mse": weight_mse(adam.fit.per_matrix),
        "seconds": {
            "als_median": als_time,
            "als_all": als_seconds,
            "adam": adam.fit.seconds,
            "bound": bound_seconds,
        },
        "als_over_adam_loss": als.fit.loss / adam.fit.loss,
        "als_over_bound": als.fit.loss / bound if bound > 0 else float("inf"),
        "adam_over_als_seconds": adam.fit.seconds / als_time,
        "bound_over_als_seconds": bound_seconds / als_time,
        "als_accuracy": mnist_accuracy(ctx, als.model, test_set),
        "adam_accuracy": mnist_accuracy(ctx, adam.model, test_set),
        "paper_accuracy": PAPER_ACCURACY[dim],
        "paper_weight_mse": PAPER_WEIGHT_MSE[dim],
    }


def run(ctx: BenchContext) -> BenchResult:
    adam_steps = QUICK_STEPS if ctx.quick else PAPER_STEPS
    reference = reference_mlp(ctx)
    test_set = mnist(ctx, "test")
    reference_accuracy = mnist_accuracy(ctx, reference, test_set)
    rows = [fit_one(ctx, reference, test_set, d, adam_steps) for d in DIMS]

    for r in rows:
        r["target_loss_met"] = r["als_loss"] <= r["adam_loss"]
        r["target_speed_met"] = None if ctx.quick else r["adam_over_als_seconds"] >= TARGET_SPEEDUP

    adam_label = f"Adam {adam_steps} steps" + (" (quick; paper: 2000)" if ctx.quick else "")
    table_loss = Table.of_records(
        f"Fit loss (eq. 4) and time on the 784-400-10 MLP: ALS vs {adam_label}",
        {
            "d": "dim",
            "ALS loss": "als_loss",
            "Adam loss": "adam_loss",
            "EY bound": "bound",
            "ALS/Adam loss": "als_over_adam_loss",
            "ALS/bound": "als_over_bound",
            "Adam/ALS time": "adam_over_als_seconds",
            "bound/ALS time": "bound_over_als_seconds",
        },
        rows,
    )
    table_acc = Table.of_records(
        f"MNIST test accuracy (%) of the fitted models; reference {reference_accuracy:.2f} % "
        f"(paper's reference: {PAPER_REFERENCE_ACCURACY} %)",
        {
            "d": "dim",
            "ALS": "als_accuracy",
            f"Adam ({adam_steps})": "adam_accuracy",
            "paper Table 2": "paper_accuracy",
            "ALS weight MSE": "als_weight_mse",
            "paper weight MSE": "paper_weight_mse",
        },
        rows,
    )

    notes = [_target_note(rows, ctx.quick)]
    if ctx.quick:
        notes.append(
            f"Quick mode: Adam runs {QUICK_STEPS} steps instead of the paper's {PAPER_STEPS}, "
            "so its loss is higher and its time shorter than the paper's recipe."
        )
    gated = {f"fit/als_loss/d={r['dim']}": Gated(r["als_loss"], "lower") for r in rows}
    figures = {
        "mode_adam_steps": adam_steps,
        "adam_lr": PAPER_LR,
        "reference_accuracy": reference_accuracy,
        "paper_reference_accuracy": PAPER_REFERENCE_ACCURACY,
        "by_dim": rows,
    }
    return BenchResult(figures=figures, tables=[table_loss, table_acc], notes=notes, gated=gated)


def _target_note(rows: list[dict], quick: bool) -> str:
    loss_ok = [r["dim"] for r in rows if r["target_loss_met"]]
    text = f"Target ALS loss <= Adam loss: met at d in {loss_ok} of {[r['dim'] for r in rows]}."
    if quick:
        return text + " Target ALS >= 20x faster: assessed in full mode only."
    fast = [r["dim"] for r in rows if r["target_speed_met"]]
    low = min(r["adam_over_als_seconds"] for r in rows)
    return text + f" Target ALS >= 20x faster: met at d in {fast} (lowest ratio {low:.1f}x)."
