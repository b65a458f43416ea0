"""Reproduce the paper's Table 2: fitting neuron embeddings to a trained 784-400-10 MLP.

Protocol (paper, section 4.2): train the MLP on MNIST with the paper's recipe, then fit
embeddings of dimension d = 4, 8, 16, 32, 64 so that the generated weights reproduce
the trained ones (equation 4), and score each on the MNIST test split. Each d is
fitted four ways: with the paper's solver (Adam, lr 0.002, 2000 steps from N(0, 1/d))
and with this package's default (exact alternating least squares), each data-free
and then calibrated (distilled from the MLP on training batches with the package's
default calibration, ``nembed_compress.pipeline.CalibrateOptions``).

The trained MLP is kept in ``--out`` and reused (also by ``reproduce_table3.py``
with the same ``--out``).

    python examples/reproduce_table2.py --out results/table2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from nembed_compress.checkpoints import load_checkpoint
from nembed_compress.datasets import load_dataset
from nembed_compress.models import build_model
from nembed_compress.pipeline import CalibrateOptions, CompressOptions, default_normalization
from nembed_compress.report import markdown_table, write_json
from nembed_compress.sweep import sweep_dims
from nembed_compress.training import TrainOptions, run_training, save_trained

REPO = Path(__file__).resolve().parents[1]
DIMS = (4, 8, 16, 32, 64)
PAPER = {  # Table 2: d -> (free parameters, accuracy %, weight MSE); reference 97.48 %
    64: (76416, 97.48, 0.00036),
    32: (38208, 97.15, 0.00053),
    16: (19104, 75.08, 0.00095),
    8: (9552, 65.61, 0.00177),
    4: (4776, 20.72, 0.00414),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("table2-out"))
    parser.add_argument("--quick", action="store_true", help="300 training steps, 2000 test images")
    parser.add_argument("--no-calibrate", action="store_true", help="data-free fits only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def trained_mlp(args: argparse.Namespace, steps: int) -> tuple[Path, dict]:
    """Train the MLP with the paper's recipe, or reuse an identical earlier run."""
    path = args.out / f"mlp-seed{args.seed}-{steps}steps.pt"
    record = path.with_name(path.name + ".json")
    if path.exists() and record.exists():
        return path, json.loads(record.read_text())["training"]
    options = TrainOptions(model="fc", seed=args.seed, steps=steps, data_dir=str(args.data_dir))
    result = run_training(options)
    save_trained(result, path, force=True)
    return path, result.figures


def configurations(args: argparse.Namespace) -> dict[str, CompressOptions]:
    norm = default_normalization("mnist")
    base = CompressOptions(dim=DIMS[-1], normalization=norm, seed=args.seed)
    configs = {
        "Adam": dataclasses.replace(base, solver="adam", steps=500 if args.quick else None),
        "ALS": dataclasses.replace(base, solver="als"),
    }
    if not args.no_calibrate:
        calibrate = CalibrateOptions("mnist", str(args.data_dir), seed=args.seed)
        for name in list(configs):
            configs[f"{name} + calibration"] = dataclasses.replace(
                configs[name], calibrate=calibrate
            )
    return configs


def table(results: dict[str, dict]) -> str:
    names = list(results)
    first = results[names[0]]
    headers = ["d", "Free parameters", *(f"{n} acc. (%)" for n in names)]
    headers += ["Adam weight MSE", "ALS weight MSE", "Paper acc. (%)", "Paper MSE"]
    ref = first["reference"]
    rows = [["reference", ref["params"]["paper"], 100 * ref["accuracy"]]]
    rows[0] += [None] * (len(names) - 1) + [None, None, 97.48, None]
    for i, row in enumerate(first["rows"]):
        d = row["dim"]
        rows.append(
            [str(d), row["params"]["paper"]]
            + [100 * results[n]["rows"][i]["accuracy"] for n in names]
            + [results[n]["rows"][i]["weight_mse"] for n in ("Adam", "ALS")]
            + [PAPER[d][1], PAPER[d][2]]
        )
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    steps, limit = (300, 2000) if args.quick else (2000, None)
    start = time.perf_counter()

    path, run = trained_mlp(args, steps)
    ckpt = load_checkpoint(path)
    direct = build_model(ckpt.spec)
    direct.load_state_dict(ckpt.state_dict)
    test = load_dataset("mnist", "test", args.data_dir)

    results = {}
    for name, options in configurations(args).items():
        results[name] = sweep_dims(direct, DIMS, test, options, limit=limit)
        print(f"{name}: done after {time.perf_counter() - start:.0f} s", file=sys.stderr)

    text = table(results)
    print(text)
    summary = {
        "command": "python examples/reproduce_table2.py " + " ".join(argv or sys.argv[1:]),
        "steps": steps,
        "test_limit": limit,
        "trained": run,
        "sweeps": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(args.out / "table2.json", summary)
    (args.out / "table2.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
