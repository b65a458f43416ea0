"""Reading users' checkpoints and mapping them onto our direct model layout.

A checkpoint from someone's own training code has their key names, their module
nesting and, in a safetensors file, keys sorted by name instead of in forward
order. This module reads the file safely (``weights_only`` unless the user opts
in to unpickling code), finds from the tensor shapes which supported family the
network belongs to, and renames its tensors to the keys of our direct models:

- ``fc``: ``layers.fc1.weight``, ``layers.fc1.bias`` ... ``layers.fcN.bias``;
- ``convnet``: ``layers.conv1``, ``layers.conv2`` (5x5), then ``layers.fc1`` ...;
- ``resnet9``: ``layers.<name>.weight`` for the eight 3x3 convolutions named in
  :data:`~nembed_compress.spec.RESNET9_LAYERS`, their batch norms
  ``norms.<name>.*`` and the classifier ``layers.fc.weight`` / ``layers.fc.bias``.

What a state dict cannot show comes from the caller: the ResNet9 global pool,
the logit scale and, for image models, the input size (28x28 for one channel,
else 32x32, unless ``in_shape`` is given). A state dict written by ``nembed
train`` also carries a training record (safetensors metadata, or ``<name>.json``
beside a ``.pt`` file) with its architecture and input normalisation; what the
caller leaves unset is taken from there. Padding, strides and where pooling
happens are assumed to be those of our models: a network that differs there
loads, but computes something else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError, UsageError
from .spec import CONVNET_CONVS, FAMILIES, POOLS, RESNET9_LAYERS, ArchSpec, Normalization

log = logging.getLogger(__name__)

# Where training code commonly keeps the state dict inside a checkpoint dict.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
# nn.DataParallel / DistributedDataParallel and torch.compile wrap every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CONVNET_KERNEL = 5
RESNET9_KERNEL = 3
# In the chain prep, layer1, res1a, res1b, layer2, layer3, res3a, res3b the residual
# convolutions keep their width.
RESNET9_SQUARE = (2, 3, 6, 7)

_NORM_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_FLOAT_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var"})
# Counters that carry no weights: torch.optim.swa_utils.AveragedModel adds n_averaged.
_IGNORED_KEYS = frozenset({"n_averaged"})
_SEARCH_BUDGET = 20_000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Checkpoint:
    """A user's checkpoint, read and mapped onto our direct model.

    Attributes:
        path: the file it was read from (never modified).
        spec: the detected architecture, ``repr="direct"``.
        state_dict: float32 tensors under our direct model's key names.
        sha256: hex digest of the file's bytes.
        normalization: the input normalisation from the file's training record, if any.
    """

    path: Path
    spec: ArchSpec
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    sha256: str
    normalization: Normalization | None = None


@dataclass(frozen=True)
class TrainingRecord:
    """What ``nembed train`` stores beside a direct or separable state dict."""

    spec: ArchSpec | None = None
    normalization: Normalization | None = None


def record_path(path: str | os.PathLike) -> Path:
    """Where ``nembed train`` puts the record of a ``.pt`` state dict: ``<name>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_training_record(path: str | os.PathLike) -> TrainingRecord:
    """The training record of a checkpoint; empty when it has none or it cannot be read.

    A record that does not parse is ignored with a warning: the weights are still
    usable, and the options it would have filled in can be given by hand.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw = dict(f.metadata() or {})
        elif record_path(path).is_file():
            raw = json.loads(record_path(path).read_text(encoding="utf-8"))
        else:
            return TrainingRecord()
    except Exception as err:  # an unreadable file is reported by the weight reader
        log.debug("%s: no training record (%s)", path, err)
        return TrainingRecord()
    try:
        arch = raw.get("arch")
        norm = raw.get("normalization")
        arch = json.loads(arch) if isinstance(arch, str) else arch
        norm = json.loads(norm) if isinstance(norm, str) else norm
        spec = ArchSpec.from_json(json.dumps(arch)) if isinstance(arch, dict) else None
        normalization = Normalization(norm["mean"], norm["std"]) if norm else None
    except (ValueError, KeyError, TypeError) as err:
        log.warning("%s: ignoring its training record, which does not parse (%s)", path, err)
        return TrainingRecord()
    return TrainingRecord(spec, normalization)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    allow_pickle: bool = False,
    pool: str | None = None,
    output_scale: float | None = None,
    in_shape: Sequence[int] | None = None,
) -> Checkpoint:
    """Read a checkpoint, detect its architecture and map it onto our key names.

    Args:
        path: a ``.pt``/``.pth``/``.bin`` (torch.save) or ``.safetensors`` file.
        arch: force ``fc``, ``convnet`` or ``resnet9`` instead of detecting it.
        allow_pickle: also load files holding pickled code (only for trusted files).
        pool, output_scale, in_shape: what the state dict cannot show; see
            :func:`detect_architecture`. ``None`` takes the value from the file's
            training record (:func:`read_training_record`), else the default.

    Raises:
        CheckpointError: the file cannot be read or matches no supported family.
    """
    path = Path(path)
    state = read_state_dict(path, allow_pickle=allow_pickle)
    record = read_training_record(path)
    if record.spec is not None:
        pool = record.spec.pool if pool is None else pool
        output_scale = record.spec.output_scale if output_scale is None else output_scale
        in_shape = record.spec.in_shape if in_shape is None else in_shape
    spec, mapped = detect_architecture(
        state,
        arch=arch,
        in_shape=in_shape,
        pool="max" if pool is None else pool,
        output_scale=1.0 if output_scale is None else output_scale,
        source=str(path),
    )
    return Checkpoint(
        path=path,
        spec=spec,
        state_dict=mapped,
        sha256=sha256_of(path),
        normalization=record.normalization,
    )


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- reading ------------------------------------------------------------------------------


def read_state_dict(
    path: str | os.PathLike, *, allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read the model weights from a checkpoint file onto the CPU.

    Accepts a plain state dict, a checkpoint dict holding one under one of
    :data:`STATE_DICT_KEYS`, or (with ``allow_pickle``) a whole pickled
    ``nn.Module``. ``module.`` and ``_orig_mod.`` wrapper prefixes are removed.

    Raises:
        CheckpointError: missing, empty, truncated or foreign file; pickled code
            without ``allow_pickle``; no tensors; non-floating weights; NaN or Inf.
    """
    path = Path(path)
    if _sniff_format(path) == "safetensors":
        obj = _load_safetensors(path)
    else:
        obj = _torch_load(path, allow_pickle=allow_pickle)
    state = _strip_wrapper_prefixes(_find_state_dict(obj, path), path)
    _check_tensors(state, path)
    return state


def _sniff_format(path: Path) -> str:
    """``torch`` or ``safetensors``, from the first bytes rather than the suffix."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; check the checkpoint path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path}: file is empty (0 bytes); the save was probably interrupted, save it again"
        )
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"  # zip archive (torch.save since 1.6) or the legacy pickle format
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    if path.suffix == ".safetensors":
        return "safetensors"  # let the reader say what is wrong with it
    raise CheckpointError(
        f"{path}: not a PyTorch (.pt, .pth, .bin) or safetensors file: it starts with bytes "
        f"{head[:4].hex()}, expected a zip archive, a pickle or a safetensors header; "
        "check that the file was fully downloaded"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error type and OSError
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(err)}); "
            "it may be truncated or corrupt: save or download it again"
        ) from err


def _torch_load(path: Path, *, allow_pickle: bool) -> object:
    try:
        return _quiet_torch_load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise _refused(path, err) from err
    except Exception as err:
        raise _unreadable(path, err) from err
    log.warning("%s: unpickling with code execution because allow_pickle is set", path)
    return _unsafe_torch_load(path)


def _refused(path: Path, err: pickle.UnpicklingError) -> CheckpointError:
    """Why the safe (weights_only) loader refused a file."""
    text = _ANSI.sub("", str(err))
    code = re.search(r"GLOBAL (\S+)", text)
    if code is not None:
        return CheckpointError(
            f"{path}: holds pickled Python code ({code.group(1)}), which is not loaded by "
            "default because unpickling can run arbitrary code; pass --allow-pickle only if "
            "you trust the file, or re-save it with torch.save(model.state_dict(), path)"
        )
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return CheckpointError(
        f"{path}: could not be read by the safe loader "
        f"({reason.group(1).strip() if reason else _first_line(err)}); the file may be "
        "truncated or corrupt, or a plain pickle: pass --allow-pickle only if you trust it"
    )


def _unsafe_torch_load(path: Path) -> object:
    try:
        return _quiet_torch_load(path, weights_only=False)
    except (AttributeError, ImportError) as err:
        raise CheckpointError(
            f"{path}: holds a pickled object whose class cannot be imported here "
            f"({_first_line(err)}); load it where its code is importable and save "
            "model.state_dict() instead"
        ) from err
    except Exception as err:
        raise _unreadable(path, err) from err


def _quiet_torch_load(path: Path, *, weights_only: bool) -> object:
    with warnings.catch_warnings():
        # torch warns about pickle protocols its safe unpickler does not expect; whether
        # the file then loads or is refused is what the caller hears about.
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: could not be read as a PyTorch checkpoint ({_first_line(err)}); "
        "it may be truncated or corrupt: save or download it again"
    )


def _first_line(err: BaseException) -> str:
    lines = _ANSI.sub("", str(err)).strip().splitlines()
    text = lines[0].strip().split(". ")[0] if lines else ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The dict of tensors in what torch.load returned, searching one level down."""
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}; expected a state dict (a dict of tensors) "
            f"or a checkpoint dict holding one under {', '.join(STATE_DICT_KEYS)}"
        )
    if _is_tensor_dict(obj):
        return dict(obj)
    candidates = [k for k in STATE_DICT_KEYS if k in obj] + [
        k for k in obj if k not in STATE_DICT_KEYS
    ]
    for key in candidates:
        value = obj[key]
        if isinstance(value, torch.nn.Module):
            value = value.state_dict()
        if _is_tensor_dict(value):
            log.info("%s: reading the state dict under key %r", path, key)
            return dict(value)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors:
        log.info(
            "%s: ignoring non-tensor entries %s", path, sorted(map(str, set(obj) - set(tensors)))
        )
        return tensors
    keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise CheckpointError(
        f"{path}: holds no tensors (top-level keys: {keys}); expected a model's state dict, "
        f"or a checkpoint dict holding one under {', '.join(STATE_DICT_KEYS)}"
    )


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _strip_wrapper_prefixes(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        name = str(key)
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        # torch.compile on a submodule leaves _orig_mod in the middle of the path.
        name = ".".join(part for part in name.split(".") if part != "_orig_mod")
        if name in out:
            raise CheckpointError(
                f"{path}: keys {origin[name]!r} and {key!r} both become {name!r} without the "
                "module./_orig_mod. wrapper prefixes; expected the weights of one model"
            )
        out[name], origin[name] = tensor, str(key)
    return out


def _check_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    if not state:
        raise CheckpointError(f"{path}: holds no tensors; expected a model's state dict")
    for key, tensor in state.items():
        leaf = key.rpartition(".")[2]
        if leaf in _FLOAT_LEAVES and not tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: key {key!r} has dtype {tensor.dtype}, expected floating point; "
                "quantized or integer weights are not supported: save float weights"
            )
    bad = [(key, t) for key, t in state.items() if t.is_floating_point() and not _all_finite(t)]
    if bad:
        key, tensor = bad[0]
        n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        more = f" (and {len(bad) - 1} more keys)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{path}: key {key!r} holds {n_nan} NaN and {n_inf} Inf values of "
            f"{tensor.numel()}{more}; expected finite weights: training probably diverged, "
            "use an earlier checkpoint"
        )


def _all_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


# -- modules: the checkpoint's tensors grouped by module path --------------------------------


@dataclass
class _Module:
    """The tensors of one module of the user's network, e.g. ``layer1.conv``."""

    path: str
    index: int  # position in the state dict's insertion order
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def key(self, leaf: str = "weight") -> str:
        return f"{self.path}.{leaf}" if self.path else leaf

    def describe(self, leaf: str | None = None) -> str:
        leaf = leaf or ("weight" if "weight" in self.tensors else next(iter(self.tensors)))
        return f"{self.key(leaf)!r} {_shape(self.tensors[leaf])}"

    @property
    def weight(self) -> torch.Tensor:
        return self.tensors["weight"]

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def length(self) -> int:
        """The channel count of a batch-norm-like module."""
        return next(int(t.shape[0]) for t in self.tensors.values() if t.dim() == 1)

    @property
    def kind(self) -> str:
        """``conv``, ``linear``, ``norm`` (1-D per-channel tensors) or ``unknown``."""
        weight = self.tensors.get("weight")
        if weight is not None and weight.dim() in (2, 4):
            bias = self.tensors.get("bias")
            extra = set(self.tensors) - {"weight", "bias"}
            if extra or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
                return "unknown"
            return "linear" if weight.dim() == 2 else "conv"
        if set(self.tensors) <= _NORM_LEAVES and self._is_per_channel():
            return "norm"
        return "unknown"

    def _is_per_channel(self) -> bool:
        counter = self.tensors.get("num_batches_tracked")
        vectors = [t for leaf, t in self.tensors.items() if leaf != "num_batches_tracked"]
        lengths = {tuple(t.shape) for t in vectors}
        return (
            bool(vectors)
            and len(lengths) == 1
            and len(next(iter(lengths))) == 1
            and (counter is None or counter.numel() == 1)
        )


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _group_modules(state: Mapping[str, torch.Tensor]) -> list[_Module]:
    modules: dict[str, _Module] = {}
    for key, tensor in state.items():
        if key in _IGNORED_KEYS:
            continue
        path, _, leaf = key.rpartition(".")
        module = modules.setdefault(path, _Module(path, len(modules)))
        module.tensors[leaf] = tensor
    return list(modules.values())


def _by_kind(modules: list[_Module]) -> dict[str, list[_Module]]:
    kinds: dict[str, list[_Module]] = {"conv": [], "linear": [], "norm": [], "unknown": []}
    for module in modules:
        kinds[module.kind].append(module)
    return kinds


def _natural_key(path: str) -> tuple:
    """Sort key comparing numbers numerically: ``fc2`` before ``fc10``, ``3`` before ``12``."""
    return tuple(
        tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", part) if p)
        for part in path.split(".")
    )


# -- detection -----------------------------------------------------------------------------


class _NoMatch(Exception):
    """A family's matcher rejected the state dict; the message says why."""


@dataclass(frozen=True)
class _Options:
    in_shape: tuple[int, ...] | None
    pool: str
    output_scale: float


def detect_architecture(
    state: Mapping[str, torch.Tensor],
    *,
    arch: str | None = None,
    in_shape: Sequence[int] | None = None,
    pool: str = "max",
    output_scale: float = 1.0,
    source: str = "state dict",
) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    """Find the family and widths of a state dict and rename it to our direct keys.

    Layers are recognised by shape (4-D convolution, 2-D linear, 1-D batch norm),
    whatever their names; their forward order comes from a natural sort of the
    module paths, else insertion order, else a search for the order whose shapes
    chain. Convolution biases before a batch norm are folded into its running mean.

    Args:
        state: a state dict as returned by :func:`read_state_dict`.
        arch: force ``fc``, ``convnet`` or ``resnet9`` instead of detecting it.
        in_shape: one input sample's shape; by default ``(1, 28, 28)`` for 784 inputs,
            ``(3, 32, 32)`` for 3072, ``(C, 28, 28)`` for one-channel images and
            ``(C, 32, 32)`` for other images.
        pool: ResNet9 global pool, ``max`` or ``avg``.
        output_scale: constant factor on the logits (DAWNBench ResNet9 uses 0.125).
        source: the file name that starts every error message.

    Returns:
        The spec (``repr="direct"``) and a new dict of contiguous float32 tensors
        (``num_batches_tracked`` stays int64) under our key names.

    Raises:
        CheckpointError: no family matches, or ``arch`` does not match.
        UsageError: an invalid ``arch``, ``pool``, ``in_shape`` or ``output_scale``.
    """
    options = _check_options(arch, in_shape, pool, output_scale)
    modules = _group_modules(state)
    if arch is not None:
        try:
            spec, mapped = _MATCHERS[arch](modules, options)
        except _NoMatch as err:
            raise CheckpointError(
                f"{source}: does not match --arch {arch}: {err}; check --arch, or leave it out "
                "to detect the family"
            ) from None
    else:
        spec, mapped = _detect(modules, options, source)
    log.info("%s: detected %s", source, spec.describe())
    return spec, mapped


def _check_options(
    arch: str | None, in_shape: Sequence[int] | None, pool: str, output_scale: float
) -> _Options:
    if arch is not None and arch not in FAMILIES:
        raise UsageError(f"--arch {arch!r}: expected one of {', '.join(FAMILIES)}")
    if pool not in POOLS:
        raise UsageError(f"--pool {pool!r}: expected one of {', '.join(POOLS)}")
    if not math.isfinite(output_scale) or output_scale == 0:
        raise UsageError(f"--output-scale {output_scale}: expected a finite, non-zero number")
    if in_shape is not None:
        in_shape = tuple(int(s) for s in in_shape)
        if not in_shape or any(s <= 0 for s in in_shape):
            raise UsageError(f"--in-shape {in_shape}: expected positive sizes, e.g. 3,32,32")
    return _Options(in_shape=in_shape, pool=pool, output_scale=float(output_scale))


def _detect(modules: list[_Module], options: _Options, source: str) -> tuple[ArchSpec, dict]:
    try:
        _reject_unknown(modules)
    except _NoMatch as err:
        raise CheckpointError(f"{source}: {err}; {_EXPECTED}. {_ARCH_HINT}") from None
    kinds = _by_kind(modules)
    plausible = _plausible_families(kinds)
    if not plausible:
        raise CheckpointError(f"{source}: found {_census(kinds)}; {_EXPECTED}. {_ARCH_HINT}")
    matches, failures = {}, {}
    for family in plausible:
        try:
            matches[family] = _MATCHERS[family](modules, options)
        except _NoMatch as err:
            failures[family] = str(err)
    if len(matches) > 1:
        raise CheckpointError(
            f"{source}: matches both {' and '.join(matches)}; pass --arch to choose one"
        )
    if matches:
        return next(iter(matches.values()))
    family, reason = next(iter(failures.items()))
    raise CheckpointError(
        f"{source}: does not match {family} (the family its {len(kinds['conv'])} convolutions "
        f"suggest): {reason}; pass --arch fc, convnet or resnet9 if it is another family"
    )


_EXPECTED = (
    "expected fc (linear layers only), convnet (2 convolutions, then linear layers) or "
    "resnet9 (8 convolutions with batch norm, then 1 linear layer)"
)
_ARCH_HINT = (
    "If it is one of these, pass --arch fc, convnet or resnet9 to see why it does not match"
)


def _plausible_families(kinds: dict[str, list[_Module]]) -> list[str]:
    n_conv, n_linear = len(kinds["conv"]), len(kinds["linear"])
    families = []
    if n_conv == 0 and n_linear:
        families.append("fc")
    if n_conv == CONVNET_CONVS and n_linear:
        families.append("convnet")
    if n_conv == len(RESNET9_LAYERS):
        families.append("resnet9")
    return families


def _census(kinds: dict[str, list[_Module]]) -> str:
    names = {
        "conv": "convolution weights (4-D)",
        "linear": "linear weights (2-D)",
        "norm": "modules of 1-D tensors only",
    }
    parts = []
    for kind, name in names.items():
        found = kinds[kind]
        example = f" (first {found[0].describe()})" if found else ""
        parts.append(f"{len(found)} {name}{example}")
    return ", ".join(parts)


def _reject_unknown(modules: list[_Module]) -> None:
    for module in modules:
        if module.kind == "unknown":
            leaf = next(iter(module.tensors))
            if "weight" in module.tensors:
                leaf = "weight"
            raise _NoMatch(
                f"key {module.describe(leaf)} is not the weight or bias of a linear layer or "
                "a 2-D convolution, nor a batch-norm tensor (attention, embedding and other "
                "layers are not supported)"
            )


def _first_weight(modules: list[_Module]) -> str:
    for module in sorted(modules, key=lambda m: m.index):
        if "weight" in module.tensors:
            return f"; the first weight is {module.describe()}"
    return ""


# -- forward order -------------------------------------------------------------------------


def _chains(order: Sequence[_Module], square_at: Sequence[int] = ()) -> bool:
    """Whether each layer takes as many inputs as the one before gives outputs."""
    for pos, module in enumerate(order):
        if pos and module.n_in != order[pos - 1].n_out:
            return False
        if pos in square_at and module.n_in != module.n_out:
            return False
    return True


def _chain_order(
    layers: list[_Module],
    *,
    square_at: Sequence[int] = (),
    preferred: Sequence[Sequence[_Module]] = (),
) -> list[_Module] | None:
    """The forward order of layers whose shapes form one chain, or None.

    Names usually give the order (natural sort, since torch.load keeps insertion
    order but safetensors sorts keys); where they do not, the shapes do.
    """
    natural = sorted(layers, key=lambda m: _natural_key(m.path))
    insertion = sorted(layers, key=lambda m: m.index)
    for order in (*preferred, natural, insertion):
        if _chains(order, square_at):
            return list(order)
    for order in (natural, insertion):
        found = _search_chain(order, square_at)
        if found is not None:
            return found
    return None


def _search_chain(preference: list[_Module], square_at: Sequence[int]) -> list[_Module] | None:
    """Depth-first search for a chaining order, trying layers in order of preference."""
    # The first layer most likely takes an input that no other layer produces.
    starts = sorted(
        preference,
        key=lambda m: any(o is not m and o.n_out == m.n_in for o in preference),
    )
    budget = [_SEARCH_BUDGET]

    def extend(order: list[_Module]) -> list[_Module] | None:
        if len(order) == len(preference):
            return order
        budget[0] -= 1
        if budget[0] < 0:
            return None
        pos = len(order)
        for module in starts if pos == 0 else preference:
            if any(module is m for m in order):
                continue
            if pos and module.n_in != order[-1].n_out:
                continue
            if pos in square_at and module.n_in != module.n_out:
                continue
            found = extend([*order, module])
            if found is not None:
                return found
        return None

    return extend([])


def _chain_break(layers: list[_Module], what: str) -> str:
    order = sorted(layers, key=lambda m: _natural_key(m.path))
    found = ", ".join(m.describe() for m in order)
    return (
        f"the {what} weights do not chain in any order (each layer's inputs must equal the "
        f"previous layer's outputs); found {found}"
    )


# -- fc ------------------------------------------------------------------------------------


def _match_fc(modules: list[_Module], options: _Options) -> tuple[ArchSpec, dict]:
    _reject_unknown(modules)
    kinds = _by_kind(modules)
    if kinds["conv"]:
        raise _NoMatch(
            f"expected linear layers only, found convolution {kinds['conv'][0].describe()}"
        )
    if kinds["norm"]:
        norm = kinds["norm"][0]
        raise _NoMatch(
            f"expected linear weights and biases only, found {norm.describe()}, which belongs "
            "to no linear layer (batch or layer norms are not part of an fc network)"
        )
    if not kinds["linear"]:
        raise _NoMatch(
            f"expected at least one linear weight (2-D), found none{_first_weight(modules)}"
        )
    order = _chain_order(kinds["linear"])
    if order is None:
        raise _NoMatch(_chain_break(kinds["linear"], "linear"))
    in_shape = _fc_in_shape(order[0], options.in_shape)
    mapped: dict[str, torch.Tensor] = {}
    for i, module in enumerate(order, start=1):
        mapped.update(_linear_tensors(f"layers.fc{i}", module))
    spec = ArchSpec(
        family="fc",
        in_shape=in_shape,
        widths=[m.n_out for m in order],
        output_scale=options.output_scale,
    )
    return spec, mapped


def _fc_in_shape(first: _Module, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is not None:
        if math.prod(given) != first.n_in:
            raise _NoMatch(
                f"the first layer {first.describe()} takes {first.n_in} inputs, but in_shape "
                f"{given} has {math.prod(given)}"
            )
        return given
    # MNIST and CIFAR-10 images are flattened into the first layer.
    return {784: (1, 28, 28), 3072: (3, 32, 32)}.get(first.n_in, (first.n_in,))


def _linear_tensors(name: str, module: _Module) -> dict[str, torch.Tensor]:
    bias = module.tensors.get("bias")
    return {
        f"{name}.weight": _f32(module.weight),  # (n_out, n_in)
        f"{name}.bias": _f32(bias) if bias is not None else torch.zeros(module.n_out),
    }


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous float32 copy, never a view of the caller's tensor."""
    return tensor.detach().to(dtype=torch.float32, copy=True).contiguous()


# -- convnet -------------------------------------------------------------------------------


def _match_convnet(modules: list[_Module], options: _Options) -> tuple[ArchSpec, dict]:
    _reject_unknown(modules)
    kinds = _by_kind(modules)
    convs = kinds["conv"]
    if len(convs) != CONVNET_CONVS:
        raise _NoMatch(
            f"expected {CONVNET_CONVS} convolution weights (4-D), found {len(convs)}"
            f"{_first_weight(convs or modules)}"
        )
    if kinds["norm"]:
        raise _NoMatch(f"found {kinds['norm'][0].describe()}, but our convnet has no batch norm")
    _check_kernels(convs, CONVNET_KERNEL)
    conv_order = _chain_order(convs)
    if conv_order is None:
        raise _NoMatch(_chain_break(convs, "convolution"))
    fc_order = _convnet_fc_order(kinds["linear"], conv_order[-1])
    mapped: dict[str, torch.Tensor] = {}
    for i, module in enumerate(conv_order, start=1):
        mapped.update(_linear_tensors(f"layers.conv{i}", module))
    for i, module in enumerate(fc_order, start=1):
        mapped.update(_linear_tensors(f"layers.fc{i}", module))
    spec = ArchSpec(
        family="convnet",
        in_shape=_image_in_shape(conv_order[0], options.in_shape),
        widths=[m.n_out for m in (*conv_order, *fc_order)],
        output_scale=options.output_scale,
    )
    return spec, mapped


def _convnet_fc_order(linears: list[_Module], last_conv: _Module) -> list[_Module]:
    if not linears:
        raise _NoMatch("expected linear layers after the convolutions, found none")
    order = _chain_order(linears)
    if order is None:
        raise _NoMatch(_chain_break(linears, "linear"))
    if order[0].n_in != last_conv.n_out:
        raise _NoMatch(
            f"the first linear layer {order[0].describe()} takes {order[0].n_in} inputs; "
            f"expected {last_conv.n_out}, the channels of {last_conv.describe()}, because our "
            "convnet pools globally before its linear layers (a convnet that flattens its "
            "feature map is not supported)"
        )
    return order


def _check_kernels(convs: list[_Module], size: int) -> None:
    for conv in convs:
        if tuple(conv.weight.shape[2:]) != (size, size):
            raise _NoMatch(
                f"convolution {conv.describe()} has a {conv.weight.shape[2]}x"
                f"{conv.weight.shape[3]} kernel; expected {size}x{size}"
            )


def _image_in_shape(first: _Module, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is None:
        side = 28 if first.n_in == 1 else 32
        return (first.n_in, side, side)
    if len(given) != 3 or given[0] != first.n_in:
        raise _NoMatch(
            f"the first convolution {first.describe()} takes {first.n_in} channels; expected "
            f"in_shape (C, H, W) with C = {first.n_in}, got {given}"
        )
    return given


# -- resnet9 -------------------------------------------------------------------------------


def _match_resnet9(modules: list[_Module], options: _Options) -> tuple[ArchSpec, dict]:
    _reject_unknown(modules)
    kinds = _by_kind(modules)
    convs, linears = kinds["conv"], kinds["linear"]
    if len(convs) != len(RESNET9_LAYERS):
        raise _NoMatch(
            f"expected {len(RESNET9_LAYERS)} convolution weights (4-D), found {len(convs)}"
            f"{_first_weight(convs or modules)}"
        )
    if len(linears) != 1:
        raise _NoMatch(
            f"expected 1 linear classifier weight (2-D), found {len(linears)}"
            f"{_first_weight(linears)}"
        )
    _check_kernels(convs, RESNET9_KERNEL)
    order = _resnet9_order(convs)
    norms = _pair_norms(order, kinds["norm"])
    classifier = linears[0]
    if classifier.n_in != order[-1].n_out:
        raise _NoMatch(
            f"the classifier {classifier.describe()} takes {classifier.n_in} inputs; expected "
            f"{order[-1].n_out}, the channels of the last convolution {order[-1].describe()}"
        )
    bn_affine = any({"weight", "bias"} & set(norm.tensors) for norm in norms)
    mapped = _resnet9_tensors(order, norms, classifier, bn_affine)
    spec = ArchSpec(
        family="resnet9",
        in_shape=_image_in_shape(order[0], options.in_shape),
        widths=[m.n_out for m in (*order, classifier)],
        pool=options.pool,
        bn_affine=bn_affine,
        output_scale=options.output_scale,
    )
    return spec, mapped


def _resnet9_order(convs: list[_Module]) -> list[_Module]:
    named = _resnet9_named_order(convs)
    order = _chain_order(convs, square_at=RESNET9_SQUARE, preferred=[named] if named else [])
    if order is None:
        found = ", ".join(
            f"{m.key()!r} {m.n_in}->{m.n_out}"
            for m in sorted(convs, key=lambda m: _natural_key(m.path))
        )
        raise _NoMatch(
            "the convolutions do not form the resnet9 chain prep C->w0, layer1 w0->w1, "
            "res1a and res1b w1->w1, layer2 w1->w4, layer3 w4->w5, res3a and res3b w5->w5; "
            f"found {found}"
        )
    return order


def _resnet9_named_order(convs: list[_Module]) -> list[_Module] | None:
    """The order the names give, when every convolution has a distinct DAWNBench role."""
    roles = {}
    for conv in convs:
        role = _resnet9_role(conv.path)
        if role is None or role in roles:
            return None
        roles[role] = conv
    return [roles[name] for name in RESNET9_LAYERS]


def _resnet9_role(path: str) -> str | None:
    """``prep`` .. ``res3b`` from a DAWNBench-style or our own module path, else None.

    DAWNBench names its blocks ``prep``, ``layer1`` .. ``layer3`` and the two
    convolutions of a residual branch ``res1``/``res2`` inside ``layer1`` and
    ``layer3`` (``layer1.residual.res1.conv``); ours are ``res1a`` .. ``res3b``.
    """
    parts = path.lower().split(".")
    if "prep" in parts:
        return "prep"
    for i, part in enumerate(parts):
        if part in ("res1a", "res1b", "res3a", "res3b"):
            return part
        layer = re.fullmatch(r"layer([123])", part)
        if layer is None:
            continue
        for inner in parts[i + 1 :]:
            branch = re.fullmatch(r"res_?([12ab])", inner)
            if branch is not None:
                if layer.group(1) == "2":
                    return None
                return f"res{layer.group(1)}{'a' if branch.group(1) in '1a' else 'b'}"
        return f"layer{layer.group(1)}"
    return None


def _pair_norms(convs: list[_Module], norms: list[_Module]) -> list[_Module]:
    """The batch norm following each convolution, by channel count and module path."""
    pairs = [
        (_pair_score(conv, norm), -ci, -ni)
        for ci, conv in enumerate(convs)
        for ni, norm in enumerate(norms)
        if norm.length == conv.n_out
    ]
    chosen: dict[int, int] = {}
    for _, ci, ni in sorted(pairs, reverse=True):
        if -ci not in chosen and -ni not in chosen.values():
            chosen[-ci] = -ni
    for ci, conv in enumerate(convs):
        if ci not in chosen:
            raise _NoMatch(
                f"no batch norm found for convolution {conv.describe()}: expected a module "
                f"with 1-D weight, bias, running_mean and running_var of length {conv.n_out}"
            )
    for ni, norm in enumerate(norms):
        if ni not in chosen.values():
            raise _NoMatch(f"{norm.describe()} is not the batch norm of any convolution")
    paired = [norms[chosen[ci]] for ci in range(len(convs))]
    for norm in paired:
        _check_running_stats(norm)
    return paired


def _pair_score(conv: _Module, norm: _Module) -> tuple[int, int]:
    """Higher for a norm that shares more of the convolution's path and sits next to it.

    ``layer1.conv`` pairs with ``layer1.bn``, ``conv1.0`` with ``conv1.1`` and our
    ``layers.prep`` with ``norms.prep``.
    """
    a, b = conv.path.split("."), norm.path.split(".")
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    return prefix + suffix, -abs(norm.index - conv.index - 1)


def _check_running_stats(norm: _Module) -> None:
    missing = [leaf for leaf in ("running_mean", "running_var") if leaf not in norm.tensors]
    if missing:
        raise _NoMatch(
            f"{norm.describe()} has no {' or '.join(missing)}: expected BatchNorm2d with "
            "running statistics (track_running_stats=True); layer and group norms are not "
            "supported"
        )


def _resnet9_tensors(
    convs: list[_Module], norms: list[_Module], classifier: _Module, bn_affine: bool
) -> dict[str, torch.Tensor]:
    mapped: dict[str, torch.Tensor] = {}
    for name, conv, norm in zip(RESNET9_LAYERS, convs, norms, strict=True):
        mapped[f"layers.{name}.weight"] = _f32(conv.weight)  # (n_out, n_in, 3, 3)
        mapped.update(_norm_tensors(f"norms.{name}", conv, norm, bn_affine))
    mapped.update(_linear_tensors("layers.fc", classifier))
    return mapped


def _norm_tensors(
    name: str, conv: _Module, norm: _Module, bn_affine: bool
) -> dict[str, torch.Tensor]:
    t = norm.tensors
    mean = _f32(t["running_mean"])
    if "bias" in conv.tensors:
        # Our convolutions before a batch norm have no bias; in eval mode
        # BN(conv(x) + b) equals BN(conv(x)) with running mean mean - b.
        mean = mean - _f32(conv.tensors["bias"])
    out = {f"{name}.running_mean": mean, f"{name}.running_var": _f32(t["running_var"])}
    if bn_affine:
        # A frozen scale may be left out of the state dict: it is then 1.
        n = conv.n_out
        out[f"{name}.weight"] = _f32(t["weight"]) if "weight" in t else torch.ones(n)
        out[f"{name}.bias"] = _f32(t["bias"]) if "bias" in t else torch.zeros(n)
    counter = t.get("num_batches_tracked")
    tracked = counter.detach().reshape(()).to(torch.int64) if counter is not None else None
    out[f"{name}.num_batches_tracked"] = (
        tracked.clone() if tracked is not None else torch.zeros((), dtype=torch.int64)
    )
    return out


_MATCHERS = {"fc": _match_fc, "convnet": _match_convnet, "resnet9": _match_resnet9}
