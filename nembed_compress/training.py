"""Training models of the zoo from random initialisation (the paper, section 4.1).

The recipes are the paper's, chosen for the direct models and used unchanged for
the separable and embedding ones:

- MNIST and Fashion-MNIST: Adam with a one-cycle schedule and cosine annealing
  (``torch.optim.lr_scheduler.OneCycleLR``), peak learning rate 0.01, batch 1000.
- CIFAR-10: SGD with Nesterov momentum 0.9, linear warm-up then linear decay,
  batch 512. The paper gives a peak learning rate of 2e-4 "obtained by
  hyperparameter search"; with SGD that is far too low to train ResNet9 in 2000
  steps, so the default here is DAWNBench's (Page, 2018): peak 0.4 at 5/24 of the
  run, weight decay 5e-4, batch-norm scales frozen at 1, logits scaled by 0.125,
  random crops and flips. Pass ``--lr 2e-4`` for the paper's figure.

Every run takes 2000 steps and keeps the model that scores best on a holdout of
10,000 training examples, evaluated every 100 steps. Inputs are normalised with
the dataset's mean and std, which are stored with the model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import atomic_path, check_output_path
from .errors import NembedError, UsageError
from .models import NeuronNet, build_model, count_parameters
from .precision import as_layout, autocast, check_precision, fast_layout
from .spec import PAPER_DIMS, ArchSpec, Normalization, default_spec

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
MODELS = ("fc", "fc-deep", "convnet", "resnet9")
# The holdout is split off with a fixed seed, so that models trained with different
# seeds are selected on the same examples.
HOLDOUT_SEED = 0
CROP_PADDING = 4

Track = Callable[[str, int], Callable]


def _no_track(description: str, total: int) -> Callable:
    return lambda step, total_, loss=None: None


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule of one training run.

    Attributes:
        optimizer: ``adam`` or ``sgd`` (Nesterov momentum 0.9).
        lr: peak learning rate of the one-cycle schedule.
        batch_size: training batch size.
        weight_decay: L2 penalty coupled into the gradient (torch's ``weight_decay``).
        anneal: ``cos`` or ``linear``: the shape of the rise and the fall.
        warmup: fraction of the steps spent rising to the peak.
        augment: random 4-pixel crops and horizontal flips (CIFAR-10).
    """

    optimizer: str
    lr: float
    batch_size: int
    weight_decay: float
    anneal: str
    warmup: float
    augment: bool


def paper_recipe(dataset: str) -> Recipe:
    """The paper's recipe for ``dataset``; see the module docstring for CIFAR-10's peak."""
    if dataset == "cifar10":
        return Recipe("sgd", 0.4, 512, 5e-4, "linear", 5 / 24, True)
    # OneCycleLR's default warm-up of 30 % with cosine annealing (Smith & Topin).
    return Recipe("adam", 0.01, 1000, 0.0, "cos", 0.3, False)


@dataclass
class TrainOptions:
    """What ``nembed train`` does; ``None`` means the recipe's or the paper's default."""

    model: str = "fc"
    repr: str = "direct"
    dataset: str = "mnist"
    data_dir: str | None = None
    steps: int = 2000
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    augment: bool | None = None
    dim: int | None = None
    kernel: str = "dot"
    input_embedding: str = "learned"
    widths: tuple[int, ...] | None = None
    output_scale: float | None = None
    holdout: int = 10_000
    eval_every: int = 100
    seed: int = 0
    device: str | torch.device = "cpu"
    precision: str = "float32"
    limit_train: int | None = None
    limit_test: int | None = None

    def recipe(self) -> Recipe:
        base = paper_recipe(self.dataset)
        chosen = {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "augment": self.augment,
        }
        return replace(base, **{k: v for k, v in chosen.items() if v is not None})


@dataclass
class TrainResult:
    """The best model of a run (on the CPU, in eval mode) and the run's figures."""

    model: NeuronNet
    normalization: Normalization
    figures: dict = field(default_factory=dict)


# -- building ---------------------------------------------------------------------------


def model_spec(options: TrainOptions, in_shape: tuple[int, ...]) -> ArchSpec:
    """The architecture ``options`` ask for, on inputs of ``in_shape``."""
    if options.model not in MODELS:
        raise UsageError(f"--model must be one of {', '.join(MODELS)}; got {options.model!r}")
    extra = {"widths": tuple(options.widths)} if options.widths else {}
    family = "fc" if options.model.startswith("fc") else options.model
    scale = options.output_scale
    if scale is None:
        # DAWNBench scales ResNet9's logits by 1/8 so that high learning rates stay stable.
        scale = 0.125 if family == "resnet9" else 1.0
    emb = {}
    if options.repr == "emb":
        emb = {
            "dim": options.dim or PAPER_DIMS[family],
            "kernel": options.kernel,
            "input_embedding": options.input_embedding,
        }
    spec = default_spec(options.model, in_shape, repr=options.repr, output_scale=scale, **emb)
    return spec.replace(**extra) if extra else spec


def make_optimizer(
    model: NeuronNet, recipe: Recipe, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimiser over the trainable parameters and its one-cycle schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        cycle_momentum, div, final_div = True, 25.0, 1e4  # OneCycleLR's defaults
    elif recipe.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
        )
        # DAWNBench: from (almost) zero up to the peak and back down to (almost) zero.
        cycle_momentum, div, final_div = False, 1e4, 1.0
    else:
        raise UsageError(
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {recipe.optimizer!r}"
        )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=max(steps, 2),
        pct_start=recipe.warmup,
        anneal_strategy=recipe.anneal,
        cycle_momentum=cycle_momentum,
        div_factor=div,
        final_div_factor=final_div,
    )
    return opt, schedule


def freeze_batch_norm_scales(model: NeuronNet) -> None:
    """Keep every batch-norm scale at 1 (DAWNBench; the paper counts no BN scales)."""
    for norm in model.norms.values():
        if norm.weight is not None:
            norm.weight.requires_grad_(False)


# -- data -------------------------------------------------------------------------------


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random crops from 4-pixel reflect padding, per sample."""
    b, c, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (CROP_PADDING,) * 4, mode="reflect")  # (B, C, H + 8, W + 8)
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (B, C, H, W)


def endless_batches(
    data, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of ``data``, epoch after epoch."""
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator, device=device)


# -- training ---------------------------------------------------------------------------


def train_model(
    spec: ArchSpec,
    train_set,
    holdout,
    normalization: Normalization,
    recipe: Recipe,
    *,
    steps: int,
    eval_every: int = 100,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "float32",
    track: Track = _no_track,
) -> TrainResult:
    """Train a fresh model for ``steps`` steps; keep the one best on ``holdout``.

    ``train_set`` and ``holdout`` are :class:`~nembed_compress.datasets.ImageDataset`
    objects (pixels in [0, 1] before ``normalization``). ``precision`` is that of the
    training steps (see :mod:`nembed_compress.precision`); evaluation is in float32.
    """
    from .pipeline import evaluate

    if steps < 1 or eval_every < 1:
        raise UsageError(f"--steps and --eval-every must be positive; got {steps}, {eval_every}")
    check_precision(precision)
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec)
    if spec.family == "resnet9":
        freeze_batch_norm_scales(model)
    model.to(device).train()
    opt, schedule = make_optimizer(model, recipe, steps)
    update = track("train", steps)
    start = time.perf_counter()
    history, best = [], {"accuracy": -1.0}
    batches = endless_batches(train_set, recipe.batch_size, generator, device)
    with fast_layout(model) as fmt:
        for step in range(1, steps + 1):
            x, y = next(batches)
            x = augment(x, generator) if recipe.augment else x
            with autocast(device, precision):
                value = _step(model, opt, as_layout(normalization.apply(x), fmt), y)
            schedule.step()
            if not math.isfinite(value):
                raise NembedError(
                    f"training diverged at step {step} (loss {value}); lower --lr "
                    f"(now {recipe.lr:g}) or raise --batch-size"
                )
            update(step, steps, value)
            if step % eval_every == 0 or step == steps:
                scores = evaluate(model, holdout, normalization, device=device)
                model.to(device).train()
                history.append({"step": step, "train_loss": value, **_short(scores)})
                if _better(scores, best):
                    best = {**_short(scores), "step": step, "state": _snapshot(model)}
    seconds = time.perf_counter() - start
    model.load_state_dict(best.pop("state"))
    model.cpu().eval()
    figures = {
        "train_seconds": round(seconds, 3),
        "precision": precision,
        "best": best,
        "history": history,
    }
    return TrainResult(model, normalization, figures)


def _step(model: NeuronNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _short(scores: dict) -> dict:
    return {"accuracy": scores["accuracy"], "cross_entropy": scores["cross_entropy"]}


def _better(scores: dict, best: dict) -> bool:
    # Accuracy first (the paper's selection); cross-entropy breaks ties.
    if scores["accuracy"] != best["accuracy"]:
        return scores["accuracy"] > best["accuracy"]
    return scores["cross_entropy"] < best["cross_entropy"]


def _snapshot(model: NeuronNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def run_training(options: TrainOptions, track: Track = _no_track) -> TrainResult:
    """Load the dataset, train as ``options`` say, and score the best model on the test split."""
    from .datasets import DATASETS, load_dataset
    from .pipeline import default_normalization, evaluate

    if options.dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {options.dataset!r}")
    recipe = options.recipe()
    _check_recipe(recipe)
    train_split = load_dataset(options.dataset, "train", options.data_dir)
    train_set, holdout = train_split.split_holdout(options.holdout, seed=HOLDOUT_SEED)
    if options.limit_train is not None:
        train_set = train_set.subset(slice(0, options.limit_train))
    spec = model_spec(options, DATASETS[options.dataset].shape)
    normalization = default_normalization(options.dataset)
    result = train_model(
        spec,
        train_set,
        holdout,
        normalization,
        recipe,
        steps=options.steps,
        eval_every=options.eval_every,
        seed=options.seed,
        device=options.device,
        precision=options.precision,
        track=track,
    )
    test = load_dataset(options.dataset, "test", options.data_dir)
    scores = evaluate(
        result.model, test, normalization, limit=options.limit_test, device=options.device
    )
    result.figures.update(
        {
            "arch": spec.describe(),
            "spec": json.loads(spec.to_json()),
            "dataset": options.dataset,
            "recipe": recipe.__dict__,
            "steps": options.steps,
            "seed": options.seed,
            "train_examples": len(train_set),
            "holdout_examples": len(holdout),
            "test": _short(scores) | {"samples": scores["samples"]},
            "params": count_parameters(result.model),
        }
    )
    return result


def _check_recipe(recipe: Recipe) -> None:
    if recipe.optimizer not in OPTIMIZERS:
        raise UsageError(
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}; got {recipe.optimizer!r}"
        )
    if recipe.lr <= 0 or recipe.batch_size < 1 or recipe.weight_decay < 0:
        raise UsageError(
            f"--lr must be positive, --batch-size at least 1 and --weight-decay not negative; "
            f"got {recipe.lr}, {recipe.batch_size}, {recipe.weight_decay}"
        )


# -- saving -----------------------------------------------------------------------------


def output_paths(path: str | Path, repr: str) -> list[Path]:
    """The files a run writes: the model, plus a JSON record next to a ``.pt`` state dict."""
    path = Path(path)
    if repr == "emb" or path.suffix == ".safetensors":
        return [path]
    return [path, path.with_name(path.name + ".json")]


def save_trained(result: TrainResult, path: str | Path, *, force: bool = False) -> list[Path]:
    """Write the model atomically, refusing to overwrite unless ``force``.

    - ``emb`` models: a nembed file holding the normalisation and the run's figures.
    - ``direct``/``sep`` models with a ``.safetensors`` name: the state dict, with the
      architecture, normalisation and figures as safetensors metadata.
    - otherwise: ``torch.save(model.state_dict())``, which ``nembed compress`` reads, plus
      ``<name>.json`` with the architecture, normalisation and figures.
    """
    paths = output_paths(path, result.model.spec.repr)
    for p in paths:
        check_output_path(p, force=force)
    record = {
        "arch": result.model.spec.to_json(),
        "normalization": json.dumps(result.normalization.to_dict()),
        "training": json.dumps(_without_history(result.figures)),
    }
    if result.model.spec.repr == "emb":
        _save_embedding(result, paths[0], force)
        return paths
    save_state_dict(result.model, paths[0], record)
    if len(paths) > 1:
        record = {k: json.loads(v) for k, v in record.items()}
        with atomic_path(paths[1]) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return paths


def _without_history(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "history"}


def _save_embedding(result: TrainResult, path: Path, force: bool) -> None:
    from .fileformat import NembedFile, save_nembed

    nf = NembedFile(
        model=result.model,
        normalization=result.normalization,
        fit={"training": _without_history(result.figures)},
        extra={"dataset": result.figures.get("dataset"), "trained_from_scratch": True},
    )
    save_nembed(path, nf, force=force)


def save_state_dict(
    model: NeuronNet, path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """A direct or separable model's state dict, atomically: safetensors (with ``metadata``)
    when the name ends in ``.safetensors``, else ``torch.save`` (``metadata`` is dropped)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp), metadata=metadata or {})
        else:
            torch.save(state, tmp)
    return path
