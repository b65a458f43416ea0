"""Reproduce the paper's Table 3 (and Figures 3 and 4): neuron transplant between two MLPs.

Protocol (paper, section 4.3): train two 784-400-10 MLPs on MNIST from different seeds
(the target and the source); fit neuron embeddings (d = 64) to the target, then to the
source with the target's input embeddings held fixed; replace 50 % and 100 % of the
hidden neurons of the target by the source's, once as direct weights (a neuron brings
its incoming weights and bias) and once as neuron embeddings (a neuron brings its
embedding and bias). Neurons are drawn at random; the 50 % column averages five draws.

Besides the paper's Adam fit this runs the ALS solver, Adam from independent random starts, and
two rows beyond the paper (a direct transplant with outgoing weights, and a source fitted
on the target's output embeddings as well). Trained MLPs are kept in ``--out`` and reused
by later runs with the same settings (also by ``reproduce_table2.py`` with the same
``--out``).

    python examples/reproduce_table3.py --out results/table3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nembed_compress.checkpoints import load_checkpoint
from nembed_compress.datasets import load_dataset
from nembed_compress.models import build_model
from nembed_compress.pipeline import default_normalization, evaluate
from nembed_compress.report import markdown_table, write_json
from nembed_compress.training import TrainOptions, run_training, save_trained
from nembed_compress.transfer import (
    Pair,
    crossover,
    crossover_sweep,
    fit_pair,
    interpolation_sweep,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = {  # Table 3: target, source, 50 % and 100 % crossover accuracy (%)
    "Direct encoding": (97.48, 97.66, 61.73, 9.83),
    "Neuron embedding": (97.38, 97.41, 92.83, 79.03),
}
DRAWS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("table3-out"))
    parser.add_argument("--quick", action="store_true", help="300 training steps, 2000 test images")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 1), help="target, source")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def trained_mlp(seed: int, args: argparse.Namespace, steps: int) -> tuple[Path, dict]:
    """Train the 784-400-10 MLP with the paper's recipe, or reuse an identical earlier run."""
    path = args.out / f"mlp-seed{seed}-{steps}steps.pt"
    record = path.with_name(path.name + ".json")
    if path.exists() and record.exists():
        return path, json.loads(record.read_text())["training"]
    options = TrainOptions(model="fc", seed=seed, steps=steps, data_dir=str(args.data_dir))
    result = run_training(options)
    save_trained(result, path, force=True)
    return path, result.figures


def load_direct(path: Path):
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def embedding_variants(quick: bool) -> dict[str, dict]:
    """Name -> options of :func:`fit_pair`."""
    steps = {"steps": 500} if quick else {}
    return {
        "Neuron embedding (Adam, paper)": {"solver": "adam", **steps},
        "Neuron embedding (Adam, independent starts)": {
            "solver": "adam",
            "source_seed": 1,
            **steps,
        },
        "Neuron embedding (ALS)": {"solver": "als"},
        "Neuron embedding (Adam, shared output embeddings)": {
            "solver": "adam",
            "share_output": True,
            **steps,
        },
    }


def table_row(name: str, pair: Pair, score, direct_mode: str = "incoming") -> dict:
    half = [
        score(crossover(pair.first, pair.second, 0.5, seed=s, direct_mode=direct_mode)[0])
        for s in range(DRAWS)
    ]
    full = score(crossover(pair.first, pair.second, 1.0, direct_mode=direct_mode)[0])
    return {
        "name": name,
        "target": score(pair.first),
        "source": score(pair.second),
        "crossover_50": statistics.mean(half),
        "crossover_50_draws": half,
        "crossover_100": full,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, limit = (300, 2000) if args.quick else (2000, None)
    start = time.perf_counter()

    # 1. Two MLPs trained from different seeds: the target and the source.
    (target_path, target_run), (source_path, source_run) = (
        trained_mlp(seed, args, steps) for seed in args.seeds
    )
    direct = Pair("Direct encoding", load_direct(target_path), load_direct(source_path))
    test = load_dataset("mnist", "test", args.data_dir)
    norm = default_normalization("mnist")

    def score(model) -> float:
        return 100 * evaluate(model, test, norm, limit=limit)["accuracy"]

    # 2. Table 3: direct transplants, then each way of fitting the embeddings.
    rows = [table_row("Direct encoding", direct, score)]
    rows.append(table_row("Direct encoding, with outgoing weights", direct, score, "whole"))
    pairs, fits = {}, {}
    for name, options in embedding_variants(args.quick).items():
        fitted = fit_pair(direct.first, direct.second, args.dim, **options)
        pairs[name] = Pair(name, fitted.target, fitted.source)
        fits[name] = fitted.figures
        rows.append(table_row(name, pairs[name], score))
        print(f"{name}: done after {time.perf_counter() - start:.0f} s", file=sys.stderr)

    # 3. Figures 4 and 3: accuracy along the crossover fraction and along alpha.
    def evaluate_model(model) -> dict:
        return evaluate(model, test, norm, limit=limit)

    compared = [
        Pair("direct (incoming)", direct.first, direct.second),
        pairs["Neuron embedding (Adam, paper)"],
        pairs["Neuron embedding (ALS)"],
    ]
    record = {"dim": args.dim, "classes": 10, "dataset": "mnist", "limit": limit}
    figure4 = crossover_sweep(compared, [i / 10 for i in range(11)], evaluate_model)
    compared[0] = Pair("direct", direct.first, direct.second)
    figure3 = interpolation_sweep(compared, [i / 10 for i in range(11)], evaluate_model)
    for folder, result in (("figure4", figure4), ("figure3", figure3)):
        (args.out / folder).mkdir(exist_ok=True)
        write_report(args.out / folder, result, record)

    # 4. The table, next to the paper's numbers.
    table = markdown_table(
        ["Encoding", "Target acc. (%)", "Source acc. (%)", "50 % crossover", "100 % crossover"],
        [[r["name"], r["target"], r["source"], r["crossover_50"], r["crossover_100"]] for r in rows]
        + [[f"Paper: {k}", *v] for k, v in PAPER.items()],
    )
    print(table)
    summary = {
        "command": "python examples/reproduce_table3.py " + " ".join(argv or sys.argv[1:]),
        "steps": steps,
        "test_limit": limit,
        "trained": {"target": target_run, "source": source_run},
        "rows": rows,
        "fits": fits,
        "figure4": figure4,
        "figure3": figure3,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out / "table3.json", summary)
    (args.out / "table3.md").write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
