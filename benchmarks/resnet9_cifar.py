"""ResNet9 on CIFAR-10: pretrain, compress at d=48 data-free, then calibrate; accuracy of each.

CPU training is slow (about 3 s per batch of 128 on two cores), so the reference
is trained briefly with a DAWNBench-style recipe (SGD with Nesterov momentum, a
linear warm-up and decay of the learning rate, label smoothing, random crops and
flips). The trained checkpoint is cached in the output folder and reused.

    python -m benchmarks.resnet9_cifar --data-dir ../shared/data --out bench-out

Writes ``resnet9_cifar.json`` and ``resnet9_cifar.md`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nembed_compress.datasets import DATASETS, load_dataset
from nembed_compress.models import build_model, count_parameters
from nembed_compress.pipeline import (
    CalibrateOptions,
    CompressOptions,
    compress_model,
    evaluate,
    size_figures,
)
from nembed_compress.report import markdown_table
from nembed_compress.spec import Normalization, default_spec


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of 4-pixel reflection-padded images, and horizontal flips."""
    b = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,), generator=generator).tolist()
    x = padded[:, :, i : i + 32, j : j + 32]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def pretrain(data, norm, steps: int, batch_size: int, lr: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(default_spec("resnet9", (3, 32, 32)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    warm = max(1, steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    while step < steps:
        for x, y in data.batches(batch_size, shuffle=True, generator=generator):
            loss = F.cross_entropy(model(norm.apply(augment(x, generator))), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(f"pretrain step {step}/{steps} loss {float(loss.detach()):.3f}", flush=True)
            if step >= steps:
                break
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--calibrate-steps", type=int, default=300)
    parser.add_argument("--calibrate-batch-size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="test samples to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = DATASETS["cifar10"]
    norm = Normalization(info.mean, info.std)
    train = load_dataset("cifar10", "train", args.data_dir)
    test = load_dataset("cifar10", "test", args.data_dir)

    cache = out / f"resnet9-cifar10-{args.pretrain_steps}steps-seed{args.seed}.safetensors"
    start = time.perf_counter()
    if cache.exists():
        reference = build_model(default_spec("resnet9", (3, 32, 32)))
        reference.load_state_dict(load_file(str(cache)))
        reference.eval()
        pretrain_seconds = None
    else:
        reference = pretrain(train, norm, args.pretrain_steps, args.batch_size, args.lr, args.seed)
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(cache))
        pretrain_seconds = time.perf_counter() - start

    ref_eval = evaluate(reference, test, norm, batch_size=500, limit=args.limit)
    rows, results = [], {"reference": {**ref_eval, "params": count_parameters(reference)}}
    rows.append(
        [
            "Reference (direct)",
            count_parameters(reference)["paper"],
            100 * ref_eval["accuracy"],
            ref_eval["cross_entropy"],
            "-",
            "-",
        ]
    )
    for label, calibrate in (("data-free", None), ("calibrated", True)):
        options = CompressOptions(dim=args.dim, normalization=norm, seed=args.seed)
        if calibrate:
            options.calibrate = CalibrateOptions(
                "cifar10", args.data_dir, args.calibrate_steps, args.calibrate_batch_size
            )
        t0 = time.perf_counter()
        nf, figures = compress_model(reference, options)
        seconds = time.perf_counter() - t0
        ev = evaluate(nf.model, test, norm, batch_size=500, limit=args.limit)
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

    results["args"] = vars(args)
    results["pretrain_seconds"] = pretrain_seconds
    results["accuracy_drop_points"] = {
        k: 100 * (ref_eval["accuracy"] - results[k]["accuracy"])
        for k in ("data-free", "calibrated")
    }
    (out / "resnet9_cifar.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown_table(
        ["Model", "Free parameters", "Accuracy (%)", "Cross-entropy", "Fit loss", "Convert (s)"],
        rows,
    )
    (out / "resnet9_cifar.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
