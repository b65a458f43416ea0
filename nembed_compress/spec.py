"""Architecture specifications: what a model is, independent of its weights.

An :class:`ArchSpec` names the model family, its widths, the representation of
its weights and the options a state dict cannot show. It is stored as JSON in
every compressed file, so a file can be rebuilt from itself alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

FAMILIES = ("fc", "convnet", "resnet9")
REPRS = ("direct", "sep", "emb")
KERNELS = ("dot", "scaled-dot", "tanh")
INPUT_EMBEDDINGS = ("learned", "sinusoidal-1d", "sinusoidal-2d")
POOLS = ("max", "avg")

# The paper's widths: a 784-400-10 MLP, a deep MLP with four hidden layers of
# 400, the MNIST ConvNet (two convolutions, then three fully connected layers)
# and ResNet9 in the DAWNBench layout with 8 convolutions.
DEFAULT_WIDTHS = {
    "fc": (400, 10),
    "fc-deep": (400, 400, 400, 400, 10),
    "convnet": (16, 40, 1000, 100, 10),
    "resnet9": (64, 128, 128, 128, 256, 256, 256, 256, 10),
}
# Paper section 4.1: d = 64 for fully connected models, 48 for convolutional ones.
PAPER_DIMS = {"fc": 64, "convnet": 48, "resnet9": 48}
CONVNET_CONVS = 2
RESNET9_LAYERS = ("prep", "layer1", "res1a", "res1b", "layer2", "layer3", "res3a", "res3b")


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build a model, apart from its weights.

    Attributes:
        family: ``fc``, ``convnet`` or ``resnet9``.
        in_shape: shape of one input sample, ``(C, H, W)`` or ``(F,)``.
        widths: the width of every layer, the last one being the number of classes.
            For ``convnet`` the first two are convolution channels; for ``resnet9``
            the first eight are the convolutions in DAWNBench order.
        repr: ``direct`` (explicit weights), ``sep`` (blueprint-separable
            convolutions with explicit pointwise weights) or ``emb`` (neuron
            embeddings generate every fully connected and pointwise weight).
        dim: embedding dimension d (``emb`` only).
        kernel: how a weight is generated from two embeddings.
        input_embedding: ``learned`` or a fixed sinusoidal encoding.
        pool: global pooling before the ResNet9 classifier.
        bn_affine: whether ResNet9 batch norms have a scale and a shift.
        output_scale: constant factor on the logits (DAWNBench ResNet9 uses 0.125).
    """

    family: str
    in_shape: tuple[int, ...]
    widths: tuple[int, ...]
    repr: str = "direct"
    dim: int | None = None
    kernel: str = "dot"
    input_embedding: str = "learned"
    pool: str = "max"
    bn_affine: bool = True
    output_scale: float = 1.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_shape", tuple(int(s) for s in self.in_shape))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        _check_choice("family", self.family, FAMILIES)
        _check_choice("repr", self.repr, REPRS)
        _check_choice("kernel", self.kernel, KERNELS)
        _check_choice("input_embedding", self.input_embedding, INPUT_EMBEDDINGS)
        _check_choice("pool", self.pool, POOLS)
        if not self.widths:
            raise ValueError("widths is empty: give at least the number of classes")
        if any(w <= 0 for w in self.widths):
            raise ValueError(f"widths must all be positive, got {list(self.widths)}")
        if not self.in_shape or any(s <= 0 for s in self.in_shape):
            raise ValueError(f"in_shape must be non-empty and positive, got {self.in_shape}")
        if self.family in ("convnet", "resnet9") and len(self.in_shape) != 3:
            raise ValueError(
                f"{self.family} takes images: in_shape must be (C, H, W), got {self.in_shape}"
            )
        if self.family == "convnet" and len(self.widths) < CONVNET_CONVS + 1:
            raise ValueError(
                f"convnet widths need {CONVNET_CONVS} convolution widths and at least the "
                f"number of classes, got {list(self.widths)}"
            )
        if self.family == "resnet9" and len(self.widths) != len(RESNET9_LAYERS) + 1:
            raise ValueError(
                f"resnet9 widths need {len(RESNET9_LAYERS)} convolution widths and the number "
                f"of classes, got {len(self.widths)} values"
            )
        if self.family == "resnet9":
            w = self.widths
            if not (w[1] == w[2] == w[3] and w[5] == w[6] == w[7]):
                raise ValueError(
                    "resnet9 residual blocks need equal widths: widths[1:4] and widths[5:8] "
                    f"must each be equal, got {list(w)}"
                )
        if self.repr == "emb":
            if self.dim is None or self.dim <= 0:
                raise ValueError(f"an embedding model needs dim > 0, got dim={self.dim}")
        if self.input_embedding == "sinusoidal-2d" and len(self.in_shape) != 3:
            raise ValueError("sinusoidal-2d input embeddings need image inputs (C, H, W)")

    @property
    def num_classes(self) -> int:
        return self.widths[-1]

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    def replace(self, **changes) -> ArchSpec:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if not data["extra"]:
            del data["extra"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """A short human name, e.g. ``fc 784-400-10 (emb, d=64)``."""
        widths = "-".join(str(w) for w in (self.in_features, *self.widths))
        if self.family != "fc":
            widths = "x".join(str(s) for s in self.in_shape) + " " + "-".join(map(str, self.widths))
        rep = self.repr if self.repr != "emb" else f"emb, d={self.dim}, {self.kernel}"
        return f"{self.family} {widths} ({rep})"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def default_spec(model: str, dataset_shape: tuple[int, ...] = (1, 28, 28), **options) -> ArchSpec:
    """The paper's model ``fc``, ``fc-deep``, ``convnet`` or ``resnet9`` for an input shape."""
    if model not in DEFAULT_WIDTHS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(DEFAULT_WIDTHS)}")
    family = "fc" if model.startswith("fc") else model
    return ArchSpec(family=family, in_shape=dataset_shape, widths=DEFAULT_WIDTHS[model], **options)


@dataclass(frozen=True)
class Normalization:
    """The per-channel input normalisation a model was trained with: x -> (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(
                f"normalisation needs one mean and one std per channel, got {len(self.mean)} "
                f"means and {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"normalisation std must be positive, got {list(self.std)}")

    def apply(self, x):
        """Normalise a batch (B, C, H, W) or (B, C*H*W) of inputs in [0, 1]."""
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if x.dim() == 4:
            return (x - mean[:, None, None]) / std[:, None, None]
        return (x - mean.repeat_interleave(x.shape[1] // len(self.mean))) / std.repeat_interleave(
            x.shape[1] // len(self.std)
        )

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def parse(cls, mean: str, std: str) -> Normalization:
        """From comma-separated command-line values, e.g. ``0.1307`` and ``0.3081``."""
        return cls(
            tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
        )
