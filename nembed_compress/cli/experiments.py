"""``nembed train``, ``nembed crossover`` and ``nembed interpolate``: the paper's experiments.

``train`` trains a model of the zoo from scratch with the paper's recipes
(section 4.1). ``crossover`` transplants neurons of a hidden set from one model to
another and ``interpolate`` mixes two models linearly (section 4.3); both take two
compressed files, or two original checkpoints (with ``--dim`` they are first fitted
on one input basis, as the paper does, and compared with the direct transplant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.table import Table

from ..errors import UsageError
from ..precision import check_precision
from ..spec import INPUT_EMBEDDINGS, KERNELS, REPRS
from . import options as opt
from .app import (
    command,
    out,
    parse_float_list,
    print_json,
    print_table,
    progress_display,
    resolve_device,
)

# -- train ----------------------------------------------------------------------------------


@command("train")
def train_command(
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Output: .pt (state dict) or .safetensors for direct/sep models; a nembed "
        ".safetensors file for emb models.",
    ),
    model: str = typer.Option("fc", "--model", help="fc, fc-deep, convnet or resnet9."),
    repr_: str = typer.Option("direct", "--repr", help="direct, sep or emb."),
    dataset: str = typer.Option("mnist", "--dataset", help="mnist, fashion-mnist or cifar10."),
    data_dir: Path = opt.DataDir,
    steps: int = typer.Option(2000, "--steps", help="Training steps (the paper: 2000).", min=1),
    lr: float = typer.Option(
        None, "--lr", help="Peak learning rate (MNIST: 0.01 with Adam; CIFAR-10: 0.4 with SGD)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Batch size (MNIST: 1000; CIFAR-10: 512).", min=1
    ),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="Weight decay (MNIST: 0; CIFAR-10: 5e-4)."
    ),
    optimizer: str = typer.Option(
        None, "--optimizer", help="adam or sgd (MNIST: adam; CIFAR-10: sgd, Nesterov 0.9)."
    ),
    augment: bool = typer.Option(
        None, "--augment/--no-augment", help="Random crops and flips (default: CIFAR-10 only)."
    ),
    dim: int = typer.Option(
        None, "--dim", "-d", help="Embedding dimension d (emb; default 64 fc, 48 conv).", min=1
    ),
    kernel: str = typer.Option("dot", "--kernel", help=f"Kernel: {', '.join(KERNELS)}."),
    input_embedding: str = typer.Option(
        "learned", "--input-embedding", help=f"Input embeddings: {', '.join(INPUT_EMBEDDINGS)}."
    ),
    widths: str = typer.Option(
        None, "--widths", help="Layer widths, comma-separated, the last being the classes."
    ),
    output_scale: float = typer.Option(
        None, "--output-scale", help="Factor on the logits (default: 0.125 resnet9, else 1)."
    ),
    holdout: int = typer.Option(
        10_000, "--holdout", help="Training examples held out to pick the best step.", min=1
    ),
    eval_every: int = typer.Option(
        100, "--eval-every", help="Score the holdout every N steps.", min=1
    ),
    limit_train: int = typer.Option(
        None, "--limit-train", help="Train on the first N examples only (tiny runs).", min=1
    ),
    limit: int = opt.Limit,
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the batches."),
    device: str = opt.Device,
    precision: str = opt.Precision,
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Train a model from scratch with the paper's recipe (section 4.1)."""
    from ..atomic import check_output_path
    from ..training import MODELS, TrainOptions, output_paths, run_training, save_trained

    _check_choice("--model", model, MODELS)
    _check_choice("--repr", repr_, REPRS)
    _check_choice("--kernel", kernel, KERNELS)
    _check_choice("--input-embedding", input_embedding, INPUT_EMBEDDINGS)
    for path in output_paths(output, repr_):
        check_output_path(path, force=force)
    options = TrainOptions(
        model=model,
        repr=repr_,
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        optimizer=optimizer,
        augment=augment,
        dim=dim,
        kernel=kernel,
        input_embedding=input_embedding,
        widths=tuple(_parse_widths(widths)) if widths else None,
        output_scale=output_scale,
        holdout=holdout,
        eval_every=eval_every,
        seed=seed,
        device=resolve_device(device),
        precision=check_precision(precision),
        limit_train=limit_train,
        limit_test=limit,
    )
    with progress_display(not json_out) as track:
        result = run_training(options, track)
    written = save_trained(result, output, force=force)
    report = {"output": [str(p) for p in written], **result.figures}
    if json_out:
        print_json(report)
        return
    _print_training(report)


def _check_choice(option: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--widths takes comma-separated integers, got {text!r}") from None
    if not widths or any(w <= 0 for w in widths):
        raise UsageError(f"--widths needs positive integers, e.g. 400,10; got {text!r}")
    return widths


def _print_training(r: dict) -> None:
    best, test = r["best"], r["test"]
    rows = [
        ("model", r["arch"]),
        ("output", ", ".join(r["output"])),
        ("recipe", _describe_recipe(r["recipe"], r["steps"])),
        ("best step (holdout)", f"{best['step']} ({100 * best['accuracy']:.2f} %)"),
        ("test accuracy", f"{100 * test['accuracy']:.2f} % ({test['samples']:,} samples)"),
        ("test cross-entropy", test["cross_entropy"]),
        ("parameters (all)", r["params"]["all"]),
        ("parameters (paper)", r["params"]["paper"]),
        ("training time", f"{r['train_seconds']:.1f} s ({r['precision']})"),
    ]
    if r["spec"]["output_scale"] != 1.0:
        # Stored in the file's training record, where compress and eval find it.
        rows.append(("logit scale", r["spec"]["output_scale"]))
    print_table(f"nembed train ({r['dataset']}, seed {r['seed']})", rows)


def _describe_recipe(recipe: dict, steps: int) -> str:
    text = (
        f"{recipe['optimizer']}, peak lr {recipe['lr']:g} ({recipe['anneal']}), batch "
        f"{recipe['batch_size']}, {steps} steps"
    )
    if recipe["weight_decay"]:
        text += f", weight decay {recipe['weight_decay']:g}"
    return text + (", augmented" if recipe["augment"] else "")


# -- loading two models ---------------------------------------------------------------------


@dataclass
class Inputs:
    """The model pairs a transfer command works on; the first pair is the one it writes."""

    pairs: list = field(default_factory=list)  # transfer.Pair
    normalization: object | None = None
    dataset: str | None = None
    fit: dict | None = None


@dataclass
class FitChoice:
    """How to fit two original checkpoints on one input basis (``--dim`` and friends)."""

    dim: int | None
    kernel: str
    solver: str
    steps: int | None
    share_output: bool
    seed: int
    device: object


def load_inputs(
    first: Path,
    second: Path,
    names: tuple[str, str],
    fit: FitChoice,
    direct: tuple[Path | None, Path | None],
    direct_label: str,
    checkpoint_options: dict,
    *,
    shared_inputs: bool,
    track,
) -> Inputs:
    """Two compressed files, or two checkpoints (fitted when ``fit.dim`` is given)."""
    from ..transfer import Pair, check_same_architecture, check_shared_input_embeddings
    from .evaluate import load_model_file

    a = load_model_file(first, **checkpoint_options)
    b = load_model_file(second, **checkpoint_options)
    if a.kind != b.kind:
        raise UsageError(
            f"{first} is {_kind(a)} but {second} is {_kind(b)}; give two compressed files or "
            "two original checkpoints"
        )
    labels = (str(first), str(second))
    check_same_architecture(a.model, b.model, labels)
    inputs = Inputs(normalization=a.normalization, dataset=a.dataset)
    if a.kind == "nembed":
        if fit.dim is not None and fit.dim != a.model.spec.dim:
            raise UsageError(
                f"--dim {fit.dim}: {first} is already fitted with d={a.model.spec.dim}; "
                "--dim applies to original checkpoints only"
            )
        if shared_inputs:
            check_shared_input_embeddings(a.model, b.model, labels)
        inputs.pairs.append(Pair("neuron embedding", a.model, b.model))
    elif fit.dim is not None:
        pair = _fit_pair(a.model, b.model, fit, track)
        inputs.pairs.append(Pair("neuron embedding", pair.target, pair.source))
        inputs.fit = pair.figures
    if a.kind == "checkpoint":
        inputs.pairs.append(Pair(direct_label, a.model, b.model))
    elif any(p is not None for p in direct):
        inputs.pairs.append(_direct_pair(direct, names, direct_label, checkpoint_options))
    return inputs


def _kind(loaded) -> str:
    return "a compressed nembed file" if loaded.kind == "nembed" else "an original checkpoint"


def _fit_pair(target, source, fit: FitChoice, track):
    from ..pipeline import check_dim
    from ..transfer import fit_pair

    check_dim(target, fit.dim)
    return fit_pair(
        target,
        source,
        fit.dim,
        kernel=fit.kernel,
        solver=fit.solver,
        share_output=fit.share_output,
        seed=fit.seed,
        steps=fit.steps,
        device=fit.device,
        progress=lambda description: track(description, fit.steps or _FIT_STEPS[fit.solver]),
    )


def _direct_pair(direct, names, label, checkpoint_options):
    from ..transfer import Pair, check_same_architecture
    from .evaluate import load_model_file

    if any(p is None for p in direct):
        raise UsageError(f"{names[0]} and {names[1]} go together: give both or neither")
    models = [load_model_file(opt.existing_file(p), **checkpoint_options) for p in direct]
    for path, loaded in zip(direct, models, strict=True):
        if loaded.kind != "checkpoint":
            raise UsageError(f"{path}: a compressed file; {names[0]}/{names[1]} take checkpoints")
    check_same_architecture(models[0].model, models[1].model, tuple(map(str, direct)))
    return Pair(label, models[0].model, models[1].model)


# -- evaluation and batch norm --------------------------------------------------------------


@dataclass
class Scoring:
    """What is needed to score models and re-estimate batch norms on a dataset."""

    dataset: str
    data_dir: Path | None
    normalization: object
    limit: int | None
    batch_size: int
    device: object
    bn_batches: int
    seed: int
    _test: object = None
    _train: object = None

    def evaluate(self, model) -> dict:
        from ..datasets import load_dataset
        from ..pipeline import evaluate

        if self._test is None:
            self._test = load_dataset(self.dataset, "test", self.data_dir)
        return evaluate(
            model,
            self._test,
            self.normalization,
            batch_size=self.batch_size,
            limit=self.limit,
            device=self.device,
        )

    def reestimate(self, model) -> int:
        """Fresh batch-norm statistics from ``bn_batches`` shuffled training batches."""
        import torch

        from ..convert import reestimate_batch_norm
        from ..datasets import load_dataset

        if self.bn_batches == 0 or not len(model.norms):
            return 0
        if self._train is None:
            self._train = load_dataset(self.dataset, "train", self.data_dir)
        generator = torch.Generator().manual_seed(self.seed)
        batches = self._train.batches(
            256, shuffle=True, generator=generator, limit=256 * self.bn_batches
        )
        normalized = (self.normalization.apply(x) if self.normalization else x for x, _ in batches)
        used = reestimate_batch_norm(model, normalized, max_batches=None, device=self.device)
        model.cpu()
        return used


def make_scoring(inputs: Inputs, dataset, data_dir, limit, batch_size, device, bn_batches, seed):
    """Pick the dataset and normalisation; models without a stored one get the dataset's."""
    from .compress import normalization_from
    from .evaluate import LoadedModel, check_data_fits, pick_dataset

    model = inputs.pairs[0].first
    dataset = pick_dataset(dataset, LoadedModel(model, "nembed", None, inputs.dataset))
    check_data_fits(model.spec, dataset)
    inputs.normalization = inputs.normalization or normalization_from(None, None, dataset)
    inputs.dataset = dataset
    return Scoring(
        dataset, data_dir, inputs.normalization, limit, batch_size, device, bn_batches, seed
    )


_FIT_STEPS = {"als": 200, "adam": 2000}

# -- shared option handling -----------------------------------------------------------------


def sweep_values(single: float | None, many: str | None, default: float, names) -> list[float]:
    if single is not None and many is not None:
        raise UsageError(f"{names[0]} and {names[1]} exclude each other: give one")
    if many is not None:
        return parse_float_list(many, names[1])
    return [default if single is None else single]


def prepare_report(report: Path | None, experiment: str, force: bool) -> None:
    from ..transfer import report_paths

    if report is None:
        return
    if report.exists() and not report.is_dir():
        raise UsageError(f"--report {report}: is a file; give a folder")
    existing = [p.name for p in report_paths(report, experiment) if p.exists()]
    if existing and not force:
        raise UsageError(
            f"--report {report}: already holds {', '.join(existing)}; pass --force to "
            "overwrite, or choose another folder"
        )
    report.mkdir(parents=True, exist_ok=True)


def save_child(child, path: Path, inputs: Inputs, record: dict, force: bool) -> None:
    """A compressed file for an embedding model, a state dict for a direct one."""
    import json

    from ..fileformat import NembedFile, save_nembed
    from ..training import save_state_dict

    if child.spec.repr == "emb":
        nf = NembedFile(
            model=child,
            normalization=inputs.normalization,
            fit=inputs.fit or {},
            extra={"dataset": inputs.dataset, **record},
        )
        save_nembed(path, nf, force=force)
        return
    save_state_dict(child, path, {k: json.dumps(v) for k, v in record.items()})


def print_sweep(result: dict, title: str) -> None:
    x, series = result["x"], result["series"]
    table = Table(title=title, title_justify="left")
    table.add_column(x, justify="right")
    for label in series:
        table.add_column(f"{label} acc. (%)", justify="right")
    values = [r[x] for r in next(iter(series.values()))]
    for i, value in enumerate(values):
        table.add_row(
            f"{value:g}", *(f"{100 * rows[i]['accuracy']:.2f}" for rows in series.values())
        )
    out.print(table)
    for label, ends in result["endpoints"].items():
        text = ", ".join(f"{name} {100 * s['accuracy']:.2f} %" for name, s in ends.items())
        out.print(f"{label}: {text}")


# Options of the pair fit that crossover and interpolate share.
PairDim = typer.Option(
    None, "--dim", "-d", help="Fit two checkpoints on one input basis at this d first."
)
PairKernel = typer.Option("dot", "--kernel", help=f"Kernel of the fit: {', '.join(KERNELS)}.")
PairSolver = typer.Option(
    "adam",
    "--solver",
    help="Fit solver: adam (the paper's; default) or als (exact and fast; transplants and "
    "interpolates about as well).",
)
Evaluate = typer.Option(
    False, "--evaluate", help="Score the result on the test split (implied by sweeps)."
)
BnBatches = typer.Option(
    10, "--bn-batches", help="Training batches to re-estimate batch norms (ResNet9).", min=0
)
PairFitSteps = typer.Option(
    None, "--fit-steps", help="ALS sweeps (200) or Adam steps (2000).", min=1
)


# -- crossover ------------------------------------------------------------------------------


@command("crossover")
def crossover_command(
    target: Path = typer.Argument(
        ..., help="Target: a compressed file, or an original checkpoint."
    ),
    source: Path = typer.Argument(..., help="Source of the transplanted neurons, same kind."),
    fraction: float = typer.Option(
        None, "--fraction", help="Share of the set's neurons to replace, 0..1 (default 0.5)."
    ),
    fractions: str = typer.Option(
        None, "--fractions", help="Sweep: comma-separated fractions, e.g. 0,0.25,0.5,0.75,1."
    ),
    layer: str = typer.Option(
        None, "--layer", help="Hidden neuron set to transplant (default: the first hidden set)."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write the crossed-over model (single --fraction)."
    ),
    dim: int = PairDim,
    kernel: str = PairKernel,
    solver: str = PairSolver,
    fit_steps: int = PairFitSteps,
    share_output: bool = typer.Option(
        False, "--share-output", help="Also fit the source with the target's output embeddings."
    ),
    direct_mode: str = typer.Option(
        "incoming",
        "--direct-mode",
        help="Direct transplant: incoming (weights into the neuron and its bias, the paper's) "
        "or whole (also its outgoing weights).",
    ),
    direct_target: Path = typer.Option(
        None, "--direct-target", help="Original target checkpoint, to compare direct transplants."
    ),
    direct_source: Path = typer.Option(
        None, "--direct-source", help="Original source checkpoint, with --direct-target."
    ),
    report: Path = typer.Option(
        None, "--report", help="Folder for report.md, report.json and crossover.png."
    ),
    evaluate: bool = Evaluate,
    bn_batches: int = BnBatches,
    dataset: str = opt.Dataset,
    data_dir: Path = opt.DataDir,
    limit: int = opt.Limit,
    batch_size: int = opt.BatchSize,
    seed: int = typer.Option(0, "--seed", help="Seed of the neuron choice (and the fit)."),
    arch: str = opt.Arch,
    pool: str = opt.Pool,
    output_scale: float = opt.OutputScale,
    allow_pickle: bool = opt.AllowPickle,
    device: str = opt.Device,
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Transplant neurons of a hidden set from SOURCE into TARGET (paper, section 4.3)."""
    from ..transfer import DIRECT_MODES, check_fraction, crossover_sweep

    values = sweep_values(fraction, fractions, 0.5, ("--fraction", "--fractions"))
    for f in values:
        check_fraction(f, "--fractions" if fractions else "--fraction")
    _check_choice("--direct-mode", direct_mode, DIRECT_MODES)
    _check_transfer_options(kernel, solver, output, fractions, report, evaluate, force)
    device = resolve_device(device)
    prepare_report(report, "crossover", force)
    with progress_display(not json_out) as track:
        inputs = load_inputs(
            opt.existing_file(target, "target"),
            opt.existing_file(source, "source"),
            ("--direct-target", "--direct-source"),
            FitChoice(dim, kernel, solver, fit_steps, share_output, seed, device),
            (direct_target, direct_source),
            f"direct ({direct_mode})",
            dict(arch=arch, allow_pickle=allow_pickle, pool=pool, output_scale=output_scale),
            shared_inputs=True,
            track=track,
        )
        scoring = make_scoring(
            inputs, dataset, data_dir, limit, batch_size, device, bn_batches, seed
        )
        if output is not None:
            where = {"target": str(target), "source": str(source), "seed": seed}
            _write_crossover(inputs, scoring, output, values[0], layer, direct_mode, where, force)
        result = None
        if fractions or report or evaluate:
            update = track("crossover", len(values) * len(inputs.pairs))
            result = crossover_sweep(
                inputs.pairs,
                values,
                scoring.evaluate,
                set_name=layer,
                seed=seed,
                direct_mode=direct_mode,
                after=scoring.reestimate,
                progress=lambda done, total: update(done, total),
            )
    options = _record(target, source, scoring, inputs, dim, solver, share_output, seed)
    _finish(result, report, options, output, json_out, "nembed crossover")


def _write_crossover(inputs, scoring, output, fraction, layer, direct_mode, where, force):
    from ..transfer import crossover, resolve_set

    main = inputs.pairs[0]
    set_name = resolve_set(main.first, layer)
    child, moved = crossover(
        main.first,
        main.second,
        fraction,
        set_name=set_name,
        seed=where["seed"],
        direct_mode=direct_mode,
    )
    scoring.reestimate(child)
    mode = "embedding" if child.spec.repr == "emb" else direct_mode
    where.update(fraction=fraction, layer=set_name, mode=mode, moved=len(moved))
    save_child(child, output, inputs, {"crossover": where}, force)


def _check_transfer_options(kernel, solver, output, sweep, report, evaluate, force) -> None:
    from ..fit import SOLVERS

    _check_choice("--kernel", kernel, KERNELS)
    _check_choice("--solver", solver, SOLVERS)
    if output is not None and sweep:
        raise UsageError("--output writes one model: use it with a single --fraction/--alpha")
    if output is None and not (sweep or report or evaluate):
        raise UsageError("nothing to do: give --output FILE, --evaluate or --report DIR")
    if output is not None:
        from ..atomic import check_output_path

        check_output_path(output, force=force)


def _record(first, second, scoring, inputs, dim, solver, share_output, seed) -> dict:
    spec = inputs.pairs[0].first.spec
    record = {
        "first": str(first),
        "second": str(second),
        "arch": spec.describe(),
        "dataset": scoring.dataset,
        "classes": spec.num_classes,
        "limit": scoring.limit,
        "seed": seed,
    }
    if dim is not None:
        record.update(dim=dim, solver=solver, share_output=share_output, fit=inputs.fit)
    return record


def _finish(result, report, options, output, json_out, title) -> None:
    from ..transfer import write_report

    written = write_report(report, result, options) if report is not None else []
    if json_out:
        print_json(
            {
                "output": str(output) if output else None,
                "report": [str(p) for p in written],
                "options": options,
                "result": result,
            }
        )
        return
    if result is not None:
        print_sweep(result, f"{title}: {options['arch']} on {options['dataset']}")
    if output is not None:
        out.print(f"wrote {output}")
    for path in written:
        out.print(f"wrote {path}")


# -- interpolate ----------------------------------------------------------------------------


@command("interpolate")
def interpolate_command(
    a: Path = typer.Argument(..., help="Model A (alpha 0): a compressed file or a checkpoint."),
    b: Path = typer.Argument(..., help="Model B (alpha 1), same kind as A."),
    alpha: float = typer.Option(
        None, "--alpha", help="Mixing weight in [-1, 2]: (1 - alpha) A + alpha B (default 0.5)."
    ),
    alphas: str = typer.Option(
        None, "--alphas", help="Sweep: comma-separated alphas, e.g. 0,0.25,0.5,0.75,1."
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="Write the interpolated model (single --alpha)."
    ),
    dim: int = PairDim,
    kernel: str = PairKernel,
    solver: str = PairSolver,
    fit_steps: int = PairFitSteps,
    direct_a: Path = typer.Option(
        None, "--direct-a", help="Original checkpoint of A, to compare direct interpolation."
    ),
    direct_b: Path = typer.Option(None, "--direct-b", help="Original checkpoint of B."),
    report: Path = typer.Option(
        None, "--report", help="Folder for report.md, report.json and interpolation.png."
    ),
    evaluate: bool = Evaluate,
    bn_batches: int = BnBatches,
    dataset: str = opt.Dataset,
    data_dir: Path = opt.DataDir,
    limit: int = opt.Limit,
    batch_size: int = opt.BatchSize,
    seed: int = typer.Option(0, "--seed", help="Seed of the fit and the batch-norm batches."),
    arch: str = opt.Arch,
    pool: str = opt.Pool,
    output_scale: float = opt.OutputScale,
    allow_pickle: bool = opt.AllowPickle,
    device: str = opt.Device,
    force: bool = opt.Force,
    json_out: bool = opt.Json,
) -> None:
    """Interpolate linearly between two models, neurons paired in stored order (Figure 3)."""
    from ..transfer import check_alpha, interpolate, interpolation_sweep

    values = sweep_values(alpha, alphas, 0.5, ("--alpha", "--alphas"))
    for v in values:
        check_alpha(v, "--alphas" if alphas else "--alpha")
    _check_transfer_options(kernel, solver, output, alphas, report, evaluate, force)
    device = resolve_device(device)
    prepare_report(report, "interpolation", force)
    with progress_display(not json_out) as track:
        inputs = load_inputs(
            opt.existing_file(a, "A"),
            opt.existing_file(b, "B"),
            ("--direct-a", "--direct-b"),
            FitChoice(dim, kernel, solver, fit_steps, False, seed, device),
            (direct_a, direct_b),
            "direct",
            dict(arch=arch, allow_pickle=allow_pickle, pool=pool, output_scale=output_scale),
            shared_inputs=False,
            track=track,
        )
        scoring = make_scoring(
            inputs, dataset, data_dir, limit, batch_size, device, bn_batches, seed
        )
        if output is not None:
            main = inputs.pairs[0]
            child = interpolate(main.first, main.second, values[0])
            scoring.reestimate(child)
            record = {"interpolation": {"a": str(a), "b": str(b), "alpha": values[0]}}
            save_child(child, output, inputs, record, force)
        result = None
        if alphas or report or evaluate:
            update = track("interpolate", len(values) * len(inputs.pairs))
            result = interpolation_sweep(
                inputs.pairs,
                values,
                scoring.evaluate,
                after=scoring.reestimate,
                progress=lambda done, total: update(done, total),
            )
    options = _record(a, b, scoring, inputs, dim, solver, False, seed)
    _finish(result, report, options, output, json_out, "nembed interpolate")
