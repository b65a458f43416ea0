"""Forward throughput on CPU: factored embedding layers against dense weights.

Three variants of one model are timed in interleaved rounds under
``torch.inference_mode`` after a warmup, and compared as medians of per-round ratios:

- ``direct``: the direct model (``nn.Linear`` / ``nn.Conv2d`` with explicit weights);
- ``emb dense``: the embedding model generating its dense weights on every forward;
- ``emb factored``: the embedding model with ``set_factored(True)``: every fully
  connected or pointwise layer runs as two thin products through the d-dimensional
  embedding space.

Models: the 784-400-10 MLP at d=64 (batch 1024) and ResNet9 at d=48 (batch 64, or 16
in quick mode). Weights are seeded random ones: speed does not depend on their values.
Each is measured single-threaded and with torch's default thread count.
"""

from __future__ import annotations

import copy
import itertools

import torch

from nembed_compress.convert import to_embedding
from nembed_compress.models import build_model
from nembed_compress.spec import default_spec

from .common import (
    BenchContext,
    BenchResult,
    Table,
    medians,
    paired_ratio,
    time_interleaved,
    torch_threads,
)

VARIANTS = ("direct", "emb_dense", "emb_factored")


def mlp_macs(widths: list[int], dim: int | None) -> int:
    """Multiply-accumulates per sample of an MLP's linear layers, dense or factored."""
    pairs = list(itertools.pairwise(widths))
    if dim is None:
        return sum(n_in * n_out for n_in, n_out in pairs)
    return sum(dim * (n_in + n_out) for n_in, n_out in pairs)


def compare(models: dict, x: torch.Tensor, threads: int, rounds: int, calls: int) -> dict:
    """Time the variants on input ``x`` with ``threads`` threads; ratios and medians."""
    with torch_threads(threads), torch.inference_mode():
        variants = {name: (lambda m=m: m(x)) for name, m in models.items()}
        samples = time_interleaved(variants, rounds=rounds, warmup=2, calls=calls)
    return {
        "threads": threads,
        "rounds": rounds,
        "calls_per_round": calls,
        "factored_speedup_vs_direct": paired_ratio(samples, "direct", "emb_factored"),
        "factored_speedup_vs_emb_dense": paired_ratio(samples, "emb_dense", "emb_factored"),
        "emb_dense_speedup_vs_direct": paired_ratio(samples, "direct", "emb_dense"),
        "median_seconds": medians(samples),
    }


def variants_of(direct, emb) -> dict:
    dense = copy.deepcopy(emb).set_factored(False).eval()
    factored = copy.deepcopy(emb).set_factored(True).eval()
    return {"direct": direct.eval(), "emb_dense": dense, "emb_factored": factored}


@torch.inference_mode()
def factored_error(models: dict, x: torch.Tensor) -> float:
    """Largest difference between dense and factored outputs, relative to the output scale."""
    dense, factored = models["emb_dense"](x), models["emb_factored"](x)
    return float((dense - factored).abs().max() / dense.abs().max().clamp_min(1e-30))


def thread_counts(ctx: BenchContext) -> list[int]:
    return sorted({1, ctx.default_threads})


def bench_mlp(ctx: BenchContext) -> dict:
    torch.manual_seed(0)
    direct = build_model(default_spec("fc")).eval()
    emb = to_embedding(direct, 64).model
    models = variants_of(direct, emb)
    x = torch.randn(1024, 784, generator=torch.Generator().manual_seed(0))
    rounds = 10 if ctx.quick else 30
    runs = []
    for threads in thread_counts(ctx):
        ctx.note(f"inference: MLP, {threads} thread(s)")
        runs.append(compare(models, x, threads, rounds, calls=5))
    widths = [784, 400, 10]
    return {
        "model": emb.spec.describe(),
        "batch": x.shape[0],
        "ideal_speedup_vs_direct_macs": mlp_macs(widths, None) / mlp_macs(widths, 64),
        "factored_relative_error": factored_error(models, x),
        "runs": runs,
    }


def bench_resnet9(ctx: BenchContext) -> dict:
    spec = default_spec("resnet9", (3, 32, 32))
    torch.manual_seed(0)
    direct = build_model(spec).eval()
    emb = build_model(spec.replace(repr="emb", dim=48))
    models = variants_of(direct, emb)
    batch = 16 if ctx.quick else 64
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rounds = 3 if ctx.quick else 7
    runs = []
    for threads in [1] if ctx.quick else thread_counts(ctx):
        ctx.note(f"inference: ResNet9 batch {batch}, {threads} thread(s)")
        runs.append(compare(models, x, threads, rounds, calls=1))
    return {
        "model": emb.spec.describe(),
        "batch": batch,
        "factored_relative_error": factored_error(models, x),
        "runs": runs,
    }


def run(ctx: BenchContext) -> BenchResult:
    mlp, resnet9 = bench_mlp(ctx), bench_resnet9(ctx)
    rows = []
    for name, bench in (("fc 784-400-10, d=64", mlp), ("resnet9, d=48", resnet9)):
        for r in bench["runs"]:
            rows.append(
                [
                    name,
                    bench["batch"],
                    r["threads"],
                    r["factored_speedup_vs_direct"],
                    r["factored_speedup_vs_emb_dense"],
                    r["emb_dense_speedup_vs_direct"],
                ]
            )
    table = Table(
        "Forward speed-up on CPU (median of per-round time ratios; > 1: the first is faster)",
        [
            "model",
            "batch",
            "threads",
            "factored vs direct",
            "factored vs emb dense",
            "emb dense vs direct",
        ],
        rows,
    )
    single = next(r for r in mlp["runs"] if r["threads"] == 1)
    met = single["factored_speedup_vs_direct"] >= 2.0
    notes = [
        f"Target factored >= 2x dense direct (MLP, 1 thread): "
        f"{'met' if met else 'NOT met'} ({single['factored_speedup_vs_direct']:.2f}x; the "
        f"multiply-accumulate count allows {mlp['ideal_speedup_vs_direct_macs']:.2f}x).",
        f"Factored and dense outputs agree to {mlp['factored_relative_error']:.1e} (MLP) and "
        f"{resnet9['factored_relative_error']:.1e} (ResNet9) relative error.",
    ]
    if ctx.quick:
        notes.append(f"Quick mode: ResNet9 at batch {resnet9['batch']}, single-threaded only.")
    figures = {"mlp": mlp, "resnet9": resnet9}
    return BenchResult(figures=figures, tables=[table], notes=notes)
