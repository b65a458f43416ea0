"""How ALS fit time and memory grow with layer width and embedding dimension.

The problem is an MLP 784-W-W-10 with seeded synthetic weights: every neuron set s has
a random basis U_s (n_s, 32), and the matrix from set a to set b is U_b C U_a^T plus
noise, so neighbouring matrices share the subspace of the neuron set between them, as
embeddings assume (trained weights of every width would cost far more than the fits).
Points are measured in single-threaded worker subprocesses, and each reports:

- ``fit seconds``: :attr:`FitResult.seconds`, the solver alone (spectral start and a
  fixed number of sweeps: the early stop is disabled, so every point does the same work);
- ``call seconds``: the whole ``fit_embeddings`` call, which also computes the
  Eckart-Young bound (one SVD per matrix) and the per-matrix report;
- ``peak memory``: how far the process's resident set size rose above its level just
  before the ``fit_embeddings`` call, at its peak during the call (Linux: the peak is
  reset through ``/proc/self/clear_refs`` and read as ``VmHWM``; elsewhere the rise of
  ``ru_maxrss``, which misses memory below an earlier peak, such as a wider point's).
  It counts every allocation torch makes on the CPU (tracemalloc sees none of them),
  and includes the bound's SVDs. A small fit runs first in every worker, so one-time
  buffers of the linear algebra libraries are not charged to the first point.
  The worker runs with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB so large tensors are
  mapped and unmapped one by one, and a tensor freed before the call cannot hide a new
  one inside memory that is already resident.

The points of a sweep are measured in three interleaved rounds (one worker process per
round; points wider than 1024 only in the first round, as they take minutes) and each
time is the median over rounds, so a burst of load hits every point alike; memory comes
from the first round. The
report gives times as ratios to the smallest point of each sweep and the exponent
k of time ~ width^k (least squares on log-log); absolute figures go to the JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

from .common import (
    REPO_ROOT,
    BenchContext,
    BenchResult,
    Table,
    loglog_slope,
    python_module_command,
)

RANK = 32
SWEEPS = 20
FULL = {"widths": (256, 512, 1024, 2048, 4096), "dims": (16, 32, 64, 128, 256), "dim_width": 1024}
# Quick: d stops at 128, half the width (at d = W an embedding is as wide as its layer).
QUICK = {"widths": (256, 512, 1024), "dims": (16, 64, 128), "dim_width": 256}
WIDTH_SWEEP_DIM = 64
ROUNDS = 3
REPEAT_MAX_WIDTH = 1024  # wider points take minutes: measured in the first round only
WORKER_TIMEOUT_S = 3600


# -- one point, in its own process ----------------------------------------------------------


def chain_problem(width: int, dim: int, seed: int = 0):
    """The fit problem of an MLP 784-W-W-10 with shared-subspace low-rank-plus-noise weights."""
    import torch

    from nembed_compress.fit import FitProblem, Target

    generator = torch.Generator().manual_seed(seed)
    sizes = {"input": 784, "fc1": width, "fc2": width, "fc3": 10}
    basis = {s: torch.randn(n, RANK, generator=generator) for s, n in sizes.items()}
    targets = []
    for a, b in itertools.pairwise(sizes):
        mixing = torch.randn(RANK, RANK, generator=generator) / RANK  # (r, r)
        noise = 0.1 * torch.randn(sizes[b], sizes[a], generator=generator)
        weight = (basis[b] @ mixing @ basis[a].T + noise) / math.sqrt(sizes[a])  # (n_b, n_a)
        targets.append(Target(b, a, b, weight))
    return FitProblem(sizes, targets, dim)


def max_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the value is in kB
    raise OSError(f"/proc/self/status has no {field}")


def peak_rss_rise(fn):
    """Run ``fn()``; returns (its result, peak RSS rise in bytes, how it was measured)."""
    try:
        before = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM, the peak RSS, to the current RSS
    except OSError:
        before = max_rss_bytes()
        return fn(), max_rss_bytes() - before, "ru_maxrss rise"
    result = fn()
    return result, _proc_status_bytes("VmHWM") - before, "VmHWM after clear_refs, minus VmRSS"


def measure_point(width: int, dim: int, sweeps: int) -> dict:
    import torch

    from nembed_compress.fit import fit_embeddings

    torch.set_num_threads(1)
    problem = chain_problem(width, dim)
    target_bytes = sum(t.weight.numel() * t.weight.element_size() for t in problem.targets)
    start = time.perf_counter()
    # A negative tolerance never stops early: every point runs exactly `sweeps` sweeps.
    result, rise, method = peak_rss_rise(
        lambda: fit_embeddings(problem, "als", steps=sweeps, tol=-1.0)
    )
    call_seconds = time.perf_counter() - start
    return {
        "width": width,
        "dim": dim,
        "sweeps": result.steps,
        "fit_seconds": result.seconds,
        "call_seconds": call_seconds,
        "peak_rss_rise_bytes": rise,
        "memory_method": method,
        "target_bytes": target_bytes,
        "loss": result.loss,
        "bound": result.bound,
    }


def run_points(points: list[tuple[int, int]], sweeps: int) -> list[dict]:
    """Measure (width, d) points in order, in one fresh single-threaded Python process."""
    # One thread, and large allocations always mapped on their own (see the module docstring).
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_MMAP_THRESHOLD_": "131072",
    }
    spec = ",".join(f"{width}:{dim}" for width, dim in points)
    command = python_module_command("benchmarks.scaling", "--points", spec, "--sweeps", str(sweeps))
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scaling worker for points {spec} failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark ----------------------------------------------------------------------------


def run(ctx: BenchContext) -> BenchResult:
    plan = QUICK if ctx.quick else FULL
    by_width = sweep(ctx, [(w, WIDTH_SWEEP_DIM) for w in plan["widths"]])
    by_dim = sweep(ctx, [(plan["dim_width"], d) for d in plan["dims"]])

    exponents = {
        "fit_seconds_vs_width": _slope(by_width, "width", "fit_seconds"),
        "call_seconds_vs_width": _slope(by_width, "width", "call_seconds"),
        "peak_rss_rise_vs_width": _slope(by_width, "width", "peak_rss_rise_bytes"),
        "fit_seconds_vs_dim": _slope(by_dim, "dim", "fit_seconds"),
    }
    tables = [
        _table(f"ALS fit against width (MLP 784-W-W-10, d={WIDTH_SWEEP_DIM})", by_width, "width"),
        _table(
            f"ALS fit against d (MLP 784-{plan['dim_width']}-{plan['dim_width']}-10)", by_dim, "dim"
        ),
    ]
    notes = [
        f"Exponent of fit time against width: {exponents['fit_seconds_vs_width']:.2f} "
        f"(whole call with the bound: {exponents['call_seconds_vs_width']:.2f}); against d: "
        f"{exponents['fit_seconds_vs_dim']:.2f}. Peak memory rise against width: "
        f"{exponents['peak_rss_rise_vs_width']:.2f}.",
        f"Each point: a single-threaded worker process, {SWEEPS} ALS sweeps, rank-{RANK} plus "
        "noise weights sharing each neuron set's subspace; times: medians over interleaved "
        "rounds; peak memory: the peak rise of resident memory during fit_embeddings.",
    ]
    figures = {
        "plan": {
            **plan,
            "width_sweep_dim": WIDTH_SWEEP_DIM,
            "sweeps": SWEEPS,
            "rank": RANK,
            "rounds": ROUNDS,
            "repeat_max_width": REPEAT_MAX_WIDTH,
        },
        "by_width": by_width,
        "by_dim": by_dim,
        "exponents": exponents,
    }
    return BenchResult(figures=figures, tables=tables, notes=notes)


def sweep(ctx: BenchContext, points: list[tuple[int, int]]) -> list[dict]:
    """Measure (width, d) points in interleaved rounds; times are medians over rounds."""
    samples: dict[tuple[int, int], list[dict]] = {p: [] for p in points}
    for round_ in range(ROUNDS):
        chosen = [p for p in points if round_ == 0 or p[0] <= REPEAT_MAX_WIDTH]
        ctx.note(f"scaling: round {round_ + 1} of {ROUNDS}, points {chosen}")
        for point, result in zip(chosen, run_points(chosen, SWEEPS), strict=True):
            samples[point].append(result)
    merged = []
    for runs in samples.values():
        fit_times = [r["fit_seconds"] for r in runs]
        call_times = [r["call_seconds"] for r in runs]
        merged.append(
            {
                **runs[0],  # memory, loss and bound: the same in every round
                "rounds": len(runs),
                "fit_seconds": statistics.median(fit_times),
                "call_seconds": statistics.median(call_times),
                "fit_seconds_all": fit_times,
                "call_seconds_all": call_times,
            }
        )
    return merged


def _slope(rows: list[dict], x: str, y: str) -> float:
    usable = [r for r in rows if r[y] > 0]
    if len({r[x] for r in usable}) < 2:
        return math.nan
    return loglog_slope([r[x] for r in usable], [r[y] for r in usable])


def _table(title: str, rows: list[dict], x: str) -> Table:
    first = rows[0]
    return Table(
        title + f"; times relative to {x} = {first[x]}",
        [x, "fit time x", "call time x", "peak memory rise (MiB)", "targets (MiB)", "loss / bound"],
        [
            [
                r[x],
                r["fit_seconds"] / first["fit_seconds"],
                r["call_seconds"] / first["call_seconds"],
                r["peak_rss_rise_bytes"] / 2**20,
                r["target_bytes"] / 2**20,
                r["loss"] / r["bound"] if r["bound"] > 0 else None,
            ]
            for r in rows
        ],
    )


def _main() -> None:
    parser = argparse.ArgumentParser(description="The scaling worker (internal).")
    parser.add_argument("--points", required=True, help="WIDTH:DIM,WIDTH:DIM,...")
    parser.add_argument("--sweeps", type=int, default=SWEEPS)
    args = parser.parse_args()
    points = [tuple(int(v) for v in p.split(":")) for p in args.points.split(",")]
    measure_point(64, 8, 2)  # warm-up: one-time library buffers before the first real point
    print(json.dumps([measure_point(width, dim, args.sweeps) for width, dim in points]))


if __name__ == "__main__":
    _main()
