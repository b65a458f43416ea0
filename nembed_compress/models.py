"""The model zoo: MLPs, the MNIST ConvNet and ResNet9, each in three representations.

Every model is described by its *layout*: the neuron sets (input, hidden and
output neurons, with their sizes) and the layers, each reading one neuron set
and writing another. The layout is the same in every representation:

- ``direct``: ``nn.Linear`` and ``nn.Conv2d`` with explicit weights;
- ``sep``: convolutions become blueprint-separable (explicit pointwise, then depthwise);
- ``emb``: every fully connected and pointwise weight is generated from the
  embeddings of the two neuron sets it joins.

A residual addition makes two layers write into the same channels; those
channels are one neuron set with one embedding per neuron (ResNet9's
``layer1``/``res1b`` and ``layer3``/``res3b``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import init_embeddings, sinusoidal_1d, sinusoidal_2d
from .layers import BlueprintConv2d, EmbeddingLinear
from .spec import CONVNET_CONVS, RESNET9_LAYERS, ArchSpec

INPUT_SET = "input"


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a layout: which neuron set it reads, which it writes, and its shape."""

    name: str
    kind: str  # "linear" or "conv"
    in_set: str
    out_set: str
    n_in: int
    n_out: int
    kernel_size: int = 1
    padding: int = 0
    bias: bool = True
    norm: bool = False


def layout(spec: ArchSpec) -> tuple[dict[str, int], list[LayerSpec]]:
    """The neuron sets (name -> size, in forward order) and the layers of a model."""
    if spec.family == "fc":
        return _fc_layout(spec)
    if spec.family == "convnet":
        return _convnet_layout(spec)
    return _resnet9_layout(spec)


def _chain(names, kinds, sizes, **conv) -> list[LayerSpec]:
    layers, prev = [], INPUT_SET
    for name, kind, n_in, n_out in zip(names, kinds, sizes, sizes[1:], strict=False):
        extra = conv if kind == "conv" else {}
        layers.append(LayerSpec(name, kind, prev, name, n_in, n_out, **extra))
        prev = name
    return layers


def _sets_from(n_input: int, layers: list[LayerSpec]) -> dict[str, int]:
    sets = {INPUT_SET: n_input}
    for layer in layers:
        sets.setdefault(layer.out_set, layer.n_out)
    return sets


def _fc_layout(spec: ArchSpec):
    names = [f"fc{i + 1}" for i in range(len(spec.widths))]
    layers = _chain(names, ["linear"] * len(names), (spec.in_features, *spec.widths))
    return _sets_from(spec.in_features, layers), layers


def _convnet_layout(spec: ArchSpec):
    # conv5x5 -> ReLU -> maxpool2, twice; global average pool; fully connected layers.
    n_fc = len(spec.widths) - CONVNET_CONVS
    names = [f"conv{i + 1}" for i in range(CONVNET_CONVS)] + [f"fc{i + 1}" for i in range(n_fc)]
    kinds = ["conv"] * CONVNET_CONVS + ["linear"] * n_fc
    layers = _chain(names, kinds, (spec.in_shape[0], *spec.widths), kernel_size=5, padding=2)
    return _sets_from(spec.in_shape[0], layers), layers


def _resnet9_layout(spec: ArchSpec):
    w = spec.widths
    # (name, input set, output set): res1b and res3b add into layer1 and layer3.
    wiring = [
        ("prep", INPUT_SET, "prep"),
        ("layer1", "prep", "layer1"),
        ("res1a", "layer1", "res1a"),
        ("res1b", "res1a", "layer1"),
        ("layer2", "layer1", "layer2"),
        ("layer3", "layer2", "layer3"),
        ("res3a", "layer3", "res3a"),
        ("res3b", "res3a", "layer3"),
    ]
    assert [name for name, _, _ in wiring] == list(RESNET9_LAYERS)
    n_in = (spec.in_shape[0], *w[:7])
    layers = [
        LayerSpec(name, "conv", src, dst, n_in[i], w[i], 3, 1, bias=False, norm=True)
        for i, (name, src, dst) in enumerate(wiring)
    ]
    layers.append(LayerSpec("fc", "linear", "layer3", "fc", w[7], w[8]))
    return _sets_from(spec.in_shape[0], layers), layers


class NeuronNet(nn.Module):
    """A model of the zoo in any representation; see the module docstring.

    Inputs are images (B, C, H, W) or flat vectors, already normalised.
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.sets, layer_list = layout(spec)
        self.layout = {layer.name: layer for layer in layer_list}
        self.factored = False
        self.layers = nn.ModuleDict({ls.name: self._make_layer(ls) for ls in layer_list})
        self.norms = nn.ModuleDict(
            {
                ls.name: nn.BatchNorm2d(ls.n_out, affine=spec.bn_affine)
                for ls in layer_list
                if ls.norm
            }
        )
        if spec.repr == "emb":
            self.embeddings = nn.ParameterDict(
                {name: self._make_embedding(name, n) for name, n in self.sets.items()}
            )

    # -- construction -----------------------------------------------------------------

    def _make_layer(self, ls: LayerSpec) -> nn.Module:
        spec = self.spec
        if ls.kind == "linear":
            if spec.repr == "emb":
                return EmbeddingLinear(ls.n_in, ls.n_out, spec.kernel, bias=ls.bias)
            return nn.Linear(ls.n_in, ls.n_out, bias=ls.bias)
        if spec.repr == "direct":
            return nn.Conv2d(ls.n_in, ls.n_out, ls.kernel_size, padding=ls.padding, bias=ls.bias)
        return BlueprintConv2d(
            ls.n_in,
            ls.n_out,
            ls.kernel_size,
            padding=ls.padding,
            bias=ls.bias,
            embedded=spec.repr == "emb",
            kernel=spec.kernel,
        )

    def _make_embedding(self, name: str, n: int) -> nn.Parameter:
        spec, dim = self.spec, self.spec.dim
        if name != INPUT_SET or spec.input_embedding == "learned":
            return nn.Parameter(init_embeddings(n, dim))
        if spec.input_embedding == "sinusoidal-2d":
            if spec.family != "fc":
                raise ValueError(
                    "sinusoidal-2d input embeddings encode pixel positions and need an fc "
                    "model; a convolutional model's inputs are channels: use sinusoidal-1d"
                )
            return nn.Parameter(sinusoidal_2d(spec.in_shape, dim), requires_grad=False)
        return nn.Parameter(sinusoidal_1d(n, dim), requires_grad=False)

    # -- forward ----------------------------------------------------------------------

    def embedding(self, set_name: str) -> torch.Tensor:
        return self.embeddings[set_name]

    def apply_layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        ls, module = self.layout[name], self.layers[name]
        if self.spec.repr == "emb":
            y = module(x, self.embeddings[ls.in_set], self.embeddings[ls.out_set], self.factored)
        else:
            y = module(x)
        return self.norms[name](y) if ls.norm else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        family = self.spec.family
        if family == "fc":
            y = self._forward_mlp(x.flatten(1), list(self.layout))
        elif family == "convnet":
            y = self._forward_convnet(x)
        else:
            y = self._forward_resnet9(x)
        scale = self.spec.output_scale
        return y * scale if scale != 1.0 else y

    def _forward_mlp(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        for i, name in enumerate(names):
            x = self.apply_layer(name, x)
            if i < len(names) - 1:
                x = F.relu(x)
        return x

    def _forward_convnet(self, x: torch.Tensor) -> torch.Tensor:
        names = list(self.layout)
        for name in names[:CONVNET_CONVS]:
            x = F.max_pool2d(F.relu(self.apply_layer(name, x)), 2)
        x = x.mean(dim=(2, 3))  # global average pool: (B, C)
        return self._forward_mlp(x, names[CONVNET_CONVS:])

    def _forward_resnet9(self, x: torch.Tensor) -> torch.Tensor:
        def block(name, h):
            return F.relu(self.apply_layer(name, h))

        x = block("prep", x)
        x = F.max_pool2d(block("layer1", x), 2)
        x = x + block("res1b", block("res1a", x))
        x = F.max_pool2d(block("layer2", x), 2)
        x = F.max_pool2d(block("layer3", x), 2)
        x = x + block("res3b", block("res3a", x))
        x = torch.amax(x, dim=(2, 3)) if self.spec.pool == "max" else x.mean(dim=(2, 3))
        return self.apply_layer("fc", x)

    # -- the neuron-set view ----------------------------------------------------------

    def neuron_tensors(self) -> dict[str, str]:
        """State-dict keys that hold one row per neuron, mapped to their neuron set.

        In an embedding model these tensors are the whole network apart from
        per-layer counters: moving a row of each moves a neuron.
        """
        owner = {}
        if self.spec.repr == "emb":
            owner.update({f"embeddings.{name}": name for name in self.sets})
        for name, ls in self.layout.items():
            module = self.layers[name]
            for attr in ("bias", "depthwise"):
                if getattr(module, attr, None) is not None:
                    owner[f"layers.{name}.{attr}"] = ls.out_set
            if ls.norm:
                for key in self.norms[name].state_dict():
                    if key != "num_batches_tracked":
                        owner[f"norms.{name}.{key}"] = ls.out_set
        return owner

    @torch.no_grad()
    def permute_set(self, set_name: str, perm: torch.Tensor) -> None:
        """Reorder the neurons of a hidden neuron set in place; the function is unchanged."""
        if set_name not in self.sets or set_name == INPUT_SET:
            raise ValueError(f"no hidden neuron set {set_name!r}; sets: {list(self.sets)[1:]}")
        state = self.state_dict()
        for key, owner in self.neuron_tensors().items():
            if owner == set_name:
                state[key] = state[key][perm]
        if self.spec.repr != "emb":
            for name, ls in self.layout.items():
                dense = self._explicit_weight_key(name)
                if ls.out_set == set_name:
                    state[dense] = state[dense][perm]
                if ls.in_set == set_name:
                    state[dense] = state[dense][:, perm]
        self.load_state_dict(state)

    def _explicit_weight_key(self, name: str) -> str:
        module = self.layers[name]
        return (
            f"layers.{name}.pointwise"
            if isinstance(module, BlueprintConv2d)
            else (f"layers.{name}.weight")
        )

    def generated_weights(self) -> dict[str, torch.Tensor]:
        """Every fully connected or pointwise (n_out, n_in) matrix, by layer name."""
        out = {}
        for name, ls in self.layout.items():
            module = self.layers[name]
            if self.spec.repr == "emb":
                z_in, z_out = self.embeddings[ls.in_set], self.embeddings[ls.out_set]
                out[name] = (
                    module.weight(z_in, z_out)
                    if ls.kind == "linear"
                    else module.pointwise_weight(z_in, z_out)
                )
            elif isinstance(module, BlueprintConv2d):
                out[name] = module.pointwise
            else:
                out[name] = module.weight.reshape(ls.n_out, -1)
        return out

    def set_factored(self, factored: bool = True) -> NeuronNet:
        """Run embedding layers as two thin matrix products instead of a dense weight."""
        self.factored = factored
        return self


def build_model(spec: ArchSpec) -> NeuronNet:
    """Build a freshly initialised model for ``spec``."""
    return NeuronNet(spec)


def count_parameters(model: NeuronNet) -> dict[str, int]:
    """Parameter counts in two conventions.

    ``all``: every stored parameter tensor (batch-norm running statistics excluded).
    ``paper``: the paper's Table 1 convention: only free (trainable) parameters,
    no batch-norm scales (ResNet9 is trained with them frozen at 1), and for
    embedding models no layer biases (the paper counts embeddings alone).
    """
    total = sum(p.numel() for p in model.parameters())
    paper = 0
    for key, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if key.startswith("norms.") and key.endswith(".weight"):
            continue
        if model.spec.repr == "emb" and key.startswith("layers.") and key.endswith(".bias"):
            continue
        paper += p.numel()
    return {"all": total, "paper": paper}
