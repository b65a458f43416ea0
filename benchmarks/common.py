"""What every benchmark shares: the context it runs in, its result, timing and the reference MLP.

Timings on a shared machine are noisy, so no benchmark reports a bare time as its figure:
variants are timed in interleaved rounds and compared as the median of per-round ratios
(:func:`time_interleaved`, :func:`paired_ratio`); absolute seconds go to the JSON only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
# The offline copy of MNIST next to the repository (``../shared/data``).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# -- what a benchmark gets and returns --------------------------------------------------


@dataclass
class BenchContext:
    """Options of one run, shared by every benchmark.

    Attributes:
        quick: the reduced mode (about a minute per benchmark on a laptop CPU).
        out_dir: where results, caches and scratch files go.
        data_dir: folder holding MNIST (``MNIST/raw/*.gz``), or None for the library's search.
        default_threads: torch's thread count before the runner pinned it to one.
        note: reports progress (a short line); silent when the output is piped.
    """

    quick: bool
    out_dir: Path
    data_dir: str | None
    default_threads: int
    note: Callable[[str], None] = lambda message: None

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


@dataclass
class Table:
    """A Markdown table of the report: a title line, headers and rows."""

    title: str
    headers: list[str]
    rows: list[list]

    @classmethod
    def of_records(cls, title: str, columns: dict[str, str], records: list[dict]) -> Table:
        """One row per record; ``columns`` maps each header to the record key it shows."""
        return cls(title, list(columns), [[r[key] for key in columns.values()] for r in records])


@dataclass
class Gated:
    """A figure the CI gate compares with the baseline; ``better`` is ``higher`` or ``lower``."""

    value: float
    better: str


@dataclass
class BenchResult:
    """Everything one benchmark measured.

    ``figures`` go to results.json as they are, ``tables`` and ``notes`` to results.md and
    ``gated`` to the baseline check.
    """

    figures: dict
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gated: dict[str, Gated] = field(default_factory=dict)


# -- threads and timing -------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_interleaved(
    variants: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 2, calls: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every variant, one sample per round.

    Each round times every variant once (``calls`` calls averaged), starting from a
    different variant each round, so a burst of load on the machine hits all variants
    alike and the per-round ratios stay meaningful.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls)
    return samples


def paired_ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of time(numerator) / time(denominator): how many times faster
    the denominator is."""
    pairs = zip(samples[numerator], samples[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent k in y ~ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    var = sum((a - mx) ** 2 for a in lx)
    if var == 0:
        raise ValueError(f"loglog_slope needs at least two distinct x values, got {xs}")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / var


# -- machine ------------------------------------------------------------------------------


def machine_info(default_threads: int) -> dict:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_default_threads": default_threads,
        "mkl": torch.backends.mkl.is_available(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        info["git_commit"] = commit.stdout.strip() or None
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# -- the reference MLP ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """How the 784-400-10 reference MLP is trained: Adam with a one-cycle schedule."""

    steps: int = 600
    batch_size: int = 256
    lr: float = 0.003
    seed: int = 0


def resolve_data_dir(data_dir: str | None) -> str | None:
    """``--data-dir``, else ``$NEMBED_DATA_DIR``, else ``../shared/data`` if it exists."""
    if data_dir is not None:
        return data_dir
    if os.environ.get("NEMBED_DATA_DIR"):
        return os.environ["NEMBED_DATA_DIR"]
    return str(SHARED_DATA) if SHARED_DATA.is_dir() else None


def mnist(ctx: BenchContext, split: str):
    from nembed_compress.datasets import load_dataset

    # Benchmarks never download: a missing dataset is an error naming the folders searched.
    return load_dataset("mnist", split, ctx.data_dir, download=False)


def mnist_normalization():
    from nembed_compress.pipeline import default_normalization

    return default_normalization("mnist")


def reference_mlp(ctx: BenchContext, config: TrainConfig = TrainConfig()):
    """The 784-400-10 MLP trained on MNIST, cached in the output folder.

    Training is bit-reproducible on one machine: seeded initialisation and batch order,
    one thread and ``torch.use_deterministic_algorithms``. The batch order is drawn here
    rather than by the dataset's own batching, so a change there does not move the
    gated fit losses. On another CPU the float rounding may differ slightly; perturbing
    the initial weights by 1e-7 (relative) moved the fit losses by at most 0.1 %, well
    inside the gate's 1 % (see benchmarks/README.md).
    """
    from safetensors.torch import load_file, save_file

    from nembed_compress.atomic import atomic_path
    from nembed_compress.models import build_model
    from nembed_compress.spec import default_spec

    key = json.dumps({**config.__dict__, "torch": torch.__version__, "model": "fc"}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    cache = ctx.out_dir / "cache" / f"reference-mlp-{digest}.safetensors"
    torch.manual_seed(config.seed)
    model = build_model(default_spec("fc"))
    if cache.exists():
        ctx.note(f"reference MLP: cached {cache.name}")
        model.load_state_dict(load_file(str(cache)))
        return model.eval()

    ctx.note(f"reference MLP: training {config.steps} Adam steps")
    _train(model, mnist(ctx, "train"), config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(cache) as tmp:  # a concurrent run never reads half a file
        save_file(state, str(tmp), metadata={"config": key})
    return model.eval()


def _train(model, data, config: TrainConfig) -> None:
    norm = mnist_normalization()
    generator = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(1):
            model.train()
            order, pos = torch.randperm(len(data), generator=generator), 0
            for _ in range(config.steps):
                if pos + config.batch_size > len(order):
                    order, pos = torch.randperm(len(data), generator=generator), 0
                index = order[pos : pos + config.batch_size]
                pos += config.batch_size
                x = data.images[index].float().div_(255.0).flatten(1)  # (B, 784)
                loss = F.cross_entropy(model(norm.apply(x)), data.labels[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    model.eval()


def mnist_accuracy(ctx: BenchContext, model, test_set, limit: int | None = None) -> float:
    """Accuracy on the MNIST test split, in percent."""
    from nembed_compress.pipeline import evaluate

    return 100.0 * evaluate(model, test_set, mnist_normalization(), limit=limit)["accuracy"]


def python_module_command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
