"""The nembed file: a model stored as neuron sets in one self-describing safetensors file.

Layout (format version 1):

- Tensors that hold one row per neuron are stored under ``<set>/<key>``, where
  ``<set>`` is the neuron set and ``<key>`` the model's state-dict key, e.g.
  ``fc1/embeddings.fc1`` (the embeddings, (n, d)), ``fc1/layers.fc1.bias`` (n,) or
  ``layer1/layers.res1b.depthwise`` (n, k, k). Row i of every tensor of a set is
  neuron i, so neurons move between files by moving rows.
- Everything else (explicit weights of a direct or separable model, batch-norm
  counters) is stored under ``_model/<key>``.
- Metadata (all strings): ``format`` = ``nembed``, ``format_version``, ``arch``
  (the ArchSpec as JSON), ``dim``, ``kernel``, ``neuron_sets`` (JSON name -> size),
  ``normalization`` (JSON mean/std or ``null``), ``source_sha256``, ``fit`` (JSON
  figures of the fit) and free-form entries under ``extra``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_path, check_output_path
from .errors import NembedError
from .models import NeuronNet, build_model
from .spec import ArchSpec, Normalization

FORMAT = "nembed"
FORMAT_VERSION = "1"
SHARED = "_model"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class NembedFile:
    """A model read from (or to be written to) a nembed file, with its metadata."""

    model: NeuronNet
    normalization: Normalization | None = None
    source_sha256: str | None = None
    fit: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> ArchSpec:
        return self.model.spec


def file_tensors(model: NeuronNet, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's state as file keys -> tensors, grouped by neuron set."""
    owners = model.neuron_tensors()
    out = {}
    for key, value in model.state_dict().items():
        prefix = owners.get(key, SHARED)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(dtype)
        out[f"{prefix}/{key}"] = value.contiguous()
    return out


def save_nembed(
    path: str | os.PathLike, nf: NembedFile, *, dtype: str = "float32", force: bool = False
) -> Path:
    """Write ``nf`` atomically; refuses to overwrite an existing file unless ``force``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    path = check_output_path(path, force=force)
    spec = nf.spec
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"nembed-compress {__version__}",
        "arch": spec.to_json(),
        "dim": str(spec.dim) if spec.dim is not None else "",
        "kernel": spec.kernel,
        "dtype": dtype,
        "neuron_sets": json.dumps(nf.model.sets),
        "normalization": json.dumps(nf.normalization.to_dict() if nf.normalization else None),
        "source_sha256": nf.source_sha256 or "",
        "fit": json.dumps(nf.fit),
        "extra": json.dumps(nf.extra),
    }
    tensors = file_tensors(nf.model, DTYPES[dtype])
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The raw metadata of a nembed file, checking that it is one."""
    from safetensors import safe_open

    path = Path(path)
    _check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise NembedError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise NembedError(
            f"{path}: a safetensors file without nembed metadata (format="
            f"{metadata.get('format')!r}); it is not a compressed model. For an original "
            "checkpoint use the checkpoint options of the command"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise NembedError(
            f"{path}: nembed format version {metadata.get('format_version')!r}; this release "
            f"reads version {FORMAT_VERSION}: upgrade nembed-compress"
        )
    return metadata


def is_nembed_file(path: str | os.PathLike) -> bool:
    try:
        read_metadata(path)
    except NembedError:
        return False
    return True


def load_nembed(path: str | os.PathLike, device: str | torch.device = "cpu") -> NembedFile:
    """Read a nembed file and rebuild its model in float32."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        spec = ArchSpec.from_json(metadata["arch"])
    except (KeyError, ValueError, TypeError) as exc:
        raise NembedError(f"{path}: metadata 'arch' is not a valid architecture ({exc})") from None
    model = build_model(spec)
    state = _state_from_tensors(path, load_file(str(path)), model)
    model.load_state_dict(state)
    norm = json.loads(metadata.get("normalization") or "null")
    return NembedFile(
        model=model.to(device).eval(),
        normalization=Normalization(norm["mean"], norm["std"]) if norm else None,
        source_sha256=metadata.get("source_sha256") or None,
        fit=json.loads(metadata.get("fit") or "{}"),
        extra=json.loads(metadata.get("extra") or "{}"),
    )


def _state_from_tensors(path: Path, tensors: dict, model: NeuronNet) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    owners = model.neuron_tensors()
    state = {}
    for file_key, value in tensors.items():
        _, _, key = file_key.partition("/")
        if key not in expected:
            raise NembedError(f"{path}: unexpected tensor {file_key!r} for this architecture")
        want = f"{owners.get(key, SHARED)}/{key}"
        if file_key != want:
            raise NembedError(f"{path}: tensor {file_key!r} should be stored as {want!r}")
        if value.shape != expected[key].shape:
            raise NembedError(
                f"{path}: tensor {file_key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)}"
            )
        state[key] = value.to(expected[key].dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise NembedError(f"{path}: missing tensors {missing[:4]}; the file is incomplete")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NembedError(f"{path}: tensor {bad[0]!r} holds NaN or Inf values")
    return state


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise NembedError(f"{path}: no such file")
    if path.is_dir():
        raise NembedError(f"{path}: is a directory, expected a .safetensors file")
