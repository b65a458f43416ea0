"""ResNet9 on CIFAR-10: a pretrained direct model converted at d=48, data-free and calibrated.

Not part of ``benchmarks.run``: it needs a trained reference, which takes tens of
minutes on a CPU. Give one with ``--reference`` (any checkpoint ``nembed compress``
reads, e.g. from ``nembed train --model resnet9 --dataset cifar10``), or let the
benchmark train one with the same recipe (DAWNBench's, see
:mod:`nembed_compress.training`) and cache it in the output folder.

    python -m benchmarks.resnet9_cifar --data-dir ../shared/data --out bench-out \\
        --pretrain-steps 1000 --precision bfloat16

Writes ``resnet9_cifar.json`` and ``resnet9_cifar.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nembed_compress.checkpoints import load_checkpoint
from nembed_compress.datasets import load_dataset
from nembed_compress.models import build_model, count_parameters
from nembed_compress.pipeline import (
    CalibrateOptions,
    CompressOptions,
    compress_model,
    default_normalization,
    evaluate,
    size_figures,
)
from nembed_compress.report import markdown_table
from nembed_compress.training import TrainOptions, run_training, save_trained

TARGET_POINTS = 5.0  # calibrated accuracy within this many points of the reference


def reference_model(args) -> tuple[torch.nn.Module, object, dict]:
    """The direct model to convert, its normalisation and how it was obtained."""
    path = Path(args.reference) if args.reference else None
    info: dict = {}
    if path is None:
        path = Path(args.out) / (
            f"resnet9-cifar10-{args.pretrain_steps}steps-{args.precision}-seed{args.seed}"
            ".safetensors"
        )
        if not path.exists():
            options = TrainOptions(
                model="resnet9",
                dataset="cifar10",
                data_dir=args.data_dir,
                steps=args.pretrain_steps,
                eval_every=max(1, args.pretrain_steps // 4),
                seed=args.seed,
                device=args.device,
                precision=args.precision,
            )
            result = run_training(options)
            save_trained(result, path)
            info["train_seconds"] = result.figures["train_seconds"]
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    norm = ckpt.normalization or default_normalization("cifar10")
    info.update({"path": str(path), "sha256": ckpt.sha256, "arch": ckpt.spec.describe()})
    return model.eval(), norm, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--reference", default=None, help="a trained direct ResNet9 checkpoint")
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--calibrate-steps", type=int, default=CalibrateOptions("").steps)
    parser.add_argument("--calibrate-batch-size", type=int, default=CalibrateOptions("").batch_size)
    parser.add_argument(
        "--calibrate-layers",
        type=float,
        default=CalibrateOptions("").layer_weight,
        help="weight of matching every layer's outputs while calibrating",
    )
    parser.add_argument("--precision", default="float32", help="of pretraining and calibration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=None, help="test samples to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reference, norm, ref_info = reference_model(args)
    test = load_dataset("cifar10", "test", args.data_dir)

    def score(model) -> dict:
        return evaluate(model, test, norm, batch_size=500, limit=args.limit, device=args.device)

    ref_eval = score(reference)
    results = {"reference": {**ref_info, **ref_eval, "params": count_parameters(reference)}}
    rows = [
        [
            "Reference (direct)",
            count_parameters(reference)["paper"],
            100 * ref_eval["accuracy"],
            ref_eval["cross_entropy"],
            "-",
            "-",
        ]
    ]
    print(f"reference: accuracy {ref_eval['accuracy']:.4f}", flush=True)
    for label, calibrated in (("data-free", False), ("calibrated", True)):
        options = CompressOptions(
            dim=args.dim,
            normalization=norm,
            seed=args.seed,
            device=torch.device(args.device),
        )
        if calibrated:
            options.calibrate = CalibrateOptions(
                "cifar10",
                args.data_dir,
                args.calibrate_steps,
                args.calibrate_batch_size,
                seed=args.seed,
                precision=args.precision,
                layer_weight=args.calibrate_layers,
            )
        start = time.perf_counter()
        nf, figures = compress_model(reference, options)
        seconds = time.perf_counter() - start
        ev = score(nf.model)
        results[label] = {
            **ev,
            "compress_seconds": seconds,
            "fit": figures["fit"],
            "conv_rank1_relative_error": figures["conv_rank1_relative_error"],
            "calibration": figures.get("calibration"),
            **size_figures(reference, nf.model, "float32"),
        }
        rows.append(
            [
                f"Neuron embedding d={args.dim} ({label})",
                count_parameters(nf.model)["paper"],
                100 * ev["accuracy"],
                ev["cross_entropy"],
                figures["fit"]["loss"],
                seconds,
            ]
        )
        print(f"{label}: accuracy {ev['accuracy']:.4f} in {seconds:.1f} s", flush=True)

    drops = {
        k: 100 * (ref_eval["accuracy"] - results[k]["accuracy"])
        for k in ("data-free", "calibrated")
    }
    results.update(
        {
            "args": vars(args),
            "accuracy_drop_points": drops,
            "target_points": TARGET_POINTS,
            "calibrated_within_target": drops["calibrated"] <= TARGET_POINTS,
        }
    )
    (out / "resnet9_cifar.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown_table(
        ["Model", "Free parameters", "Accuracy (%)", "Cross-entropy", "Fit loss", "Convert (s)"],
        rows,
    )
    verdict = (
        f"Calibrated accuracy is {drops['calibrated']:.2f} points below the reference "
        f"(target: within {TARGET_POINTS:g})."
    )
    (out / "resnet9_cifar.md").write_text(table + "\n\n" + verdict + "\n")
    print(table + "\n\n" + verdict)


if __name__ == "__main__":
    main()
