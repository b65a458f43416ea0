"""Reading users' checkpoints and mapping them onto our direct model keys.

Every test builds a small network in a layout someone's own training code might
use, saves it the way they would, and checks what :mod:`nembed_compress.checkpoints`
makes of it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nembed_compress.checkpoints import (
    STATE_DICT_KEYS,
    detect_architecture,
    load_checkpoint,
    read_state_dict,
    sha256_of,
)
from nembed_compress.errors import CheckpointError, UsageError
from nembed_compress.spec import RESNET9_LAYERS

RESNET9_WIDTHS = (8, 16, 16, 16, 32, 32, 32, 32, 10)
HAVE_MODELS = importlib.util.find_spec("nembed_compress.models") is not None


# -- user-style networks ---------------------------------------------------------------------


class Mul(nn.Module):
    """DAWNBench scales the logits by a constant."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class TwoLayerMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class ListMLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.linears):
            x = layer(x)
            x = torch.relu(x) if i < len(self.linears) - 1 else x
        return x


class ClassifierFirstMLP(nn.Module):
    """Registers the classifier before the hidden layer, so no name order is forward."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(24, 10)
        self.hidden = nn.Linear(784, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.hidden(x.flatten(1))))


class NumberedMLP(nn.Module):
    """fc1 .. fc11 of equal width: only a numeric sort puts fc10 after fc9."""

    def __init__(self) -> None:
        super().__init__()
        sizes = (784, *[12] * 10, 10)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            self.add_module(f"fc{i}", nn.Linear(a, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, 12):
            x = getattr(self, f"fc{i}")(x)
            x = torch.relu(x) if i < 11 else x
        return x


class NestedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.layers = nn.Sequential(
            nn.Linear(784, 20), nn.ReLU(), nn.Dropout(0.1), nn.Linear(20, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.layers(x.flatten(1))


def sequential_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def linears_in_forward_order(net: nn.Module) -> list[nn.Linear]:
    if isinstance(net, ClassifierFirstMLP):
        return [net.hidden, net.classifier]
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


MLPS = {
    "sequential": sequential_mlp,
    "fc1-fc2": TwoLayerMLP,
    "module-list": lambda: ListMLP((784, 16, 16, 10)),
    "classifier-first": ClassifierFirstMLP,
    "fc1-to-fc11": NumberedMLP,
    "nested": NestedMLP,
}


class SmallConvNet(nn.Module):
    """The MNIST ConvNet: conv5x5, ReLU, maxpool, twice; global average pool; three fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5, padding=2)
        self.conv2 = nn.Conv2d(4, 6, 5, padding=2)
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 8)
        self.fc3 = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.mean(dim=(2, 3))
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ConvBN(nn.Module):
    """DAWNBench's conv_bn: 3x3 convolution without bias, batch norm, ReLU."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c: int, affine: bool = True) -> None:
        super().__init__()
        self.res1 = ConvBN(c, c, affine)
        self.res2 = ConvBN(c, c, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class DawnLayer(nn.Module):
    """conv, bn, ReLU, max pool, then an optional residual branch (layer1.residual.res1...)."""

    def __init__(self, c_in: int, c_out: int, residual: bool, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)
        self.pool = nn.MaxPool2d(2)
        self.residual = Residual(c_out, affine) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.residual(x) if self.residual is not None else x


class DawnResNet9(nn.Module):
    """ResNet9 as in DAWNBench / "How to train your ResNet"."""

    def __init__(self, widths=RESNET9_WIDTHS, channels: int = 3, affine: bool = True) -> None:
        super().__init__()
        w = widths
        self.prep = ConvBN(channels, w[0], affine)
        self.layer1 = DawnLayer(w[0], w[1], residual=True, affine=affine)
        self.layer2 = DawnLayer(w[1], w[4], residual=False, affine=affine)
        self.layer3 = DawnLayer(w[4], w[5], residual=True, affine=affine)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(w[5], w[8], bias=False)
        self.logits = Mul(0.125)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.logits(self.classifier(self.flatten(self.pool(x))))

    def convs_in_forward_order(self) -> list[nn.Conv2d]:
        l1, l3 = self.layer1.residual, self.layer3.residual
        return [
            self.prep.conv,
            self.layer1.conv,
            l1.res1.conv,
            l1.res2.conv,
            self.layer2.conv,
            self.layer3.conv,
            l3.res1.conv,
            l3.res2.conv,
        ]

    def norms_in_forward_order(self) -> list[nn.BatchNorm2d]:
        l1, l3 = self.layer1.residual, self.layer3.residual
        return [
            self.prep.bn,
            self.layer1.bn,
            l1.res1.bn,
            l1.res2.bn,
            self.layer2.bn,
            self.layer3.bn,
            l3.res1.bn,
            l3.res2.bn,
        ]


def conv_block(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """The popular tutorial ResNet9 block: convolution with bias, batch norm, ReLU."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


class TutorialResNet9(nn.Module):
    """conv1, conv2, res1.{0,1}, conv3, conv4, res2.{0,1}, classifier: names out of order."""

    def __init__(self, widths=(8, 16, 16, 16, 32, 64, 64, 64, 10), channels: int = 1) -> None:
        super().__init__()
        w = widths
        self.conv1 = conv_block(channels, w[0])
        self.conv2 = conv_block(w[0], w[1], pool=True)
        self.res1 = nn.Sequential(conv_block(w[1], w[2]), conv_block(w[2], w[3]))
        self.conv3 = conv_block(w[3], w[4], pool=True)
        self.conv4 = conv_block(w[4], w[5], pool=True)
        self.res2 = nn.Sequential(conv_block(w[5], w[6]), conv_block(w[6], w[7]))
        self.classifier = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(w[7], w[8])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = x + self.res1(x)
        x = self.conv4(self.conv3(x))
        x = x + self.res2(x)
        return self.classifier(x)


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class SequentialResidual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.res1 = conv_bn(c, c)
        self.res2 = conv_bn(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


def sequential_resnet9(w=RESNET9_WIDTHS) -> nn.Sequential:
    """The conv_bn layout as one nn.Sequential: keys 0.0.weight, 3.res1.0.weight, 11.weight."""
    return nn.Sequential(
        conv_bn(3, w[0]),
        conv_bn(w[0], w[1]),
        nn.MaxPool2d(2),
        SequentialResidual(w[1]),
        conv_bn(w[1], w[4]),
        nn.MaxPool2d(2),
        conv_bn(w[4], w[5]),
        nn.MaxPool2d(2),
        SequentialResidual(w[5]),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w[5], w[8], bias=False),
        Mul(0.125),
    )


def randomise_batch_norms(net: nn.Module) -> nn.Module:
    """Give every batch norm statistics and affine parameters a mapping error would show."""
    torch.manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
            if module.affine:
                with torch.no_grad():
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
    return net.eval()


# -- helpers -------------------------------------------------------------------------------


def save(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def assert_same_outputs(reference: nn.Module, spec, mapped: dict) -> None:
    """Our direct model with the mapped weights computes what the user's network computes."""
    if not HAVE_MODELS:
        pytest.skip("nembed_compress.models is not available")
    from nembed_compress.models import build_model

    model = build_model(spec)
    model.load_state_dict(mapped)
    model.eval()
    reference.eval()
    torch.manual_seed(0)
    x = torch.randn(3, *spec.in_shape)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# -- fc ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("layout", list(MLPS))
def test_an_mlp_in_any_user_layout_maps_onto_our_fc_keys(tmp_path, layout, suffix):
    torch.manual_seed(0)
    net = MLPS[layout]().eval()
    path = tmp_path / f"mlp{suffix}"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path)

    linears = linears_in_forward_order(net)
    assert checkpoint.spec.family == "fc"
    assert checkpoint.spec.repr == "direct"
    assert checkpoint.spec.in_shape == (1, 28, 28)
    assert checkpoint.spec.widths == tuple(m.out_features for m in linears)
    assert len(checkpoint.state_dict) == 2 * len(linears)
    for i, linear in enumerate(linears, start=1):
        assert torch.equal(checkpoint.state_dict[f"layers.fc{i}.weight"], linear.weight)
        assert torch.equal(checkpoint.state_dict[f"layers.fc{i}.bias"], linear.bias)
    assert_same_outputs(net, checkpoint.spec, checkpoint.state_dict)


def test_mapped_tensors_are_contiguous_float32_copies():
    net = TwoLayerMLP().to(torch.float16)
    state = {k: v.t().t() for k, v in net.state_dict().items()}
    spec, mapped = detect_architecture(state)
    assert spec.widths == (32, 10)
    for key, tensor in mapped.items():
        assert tensor.dtype == torch.float32, key
        assert tensor.is_contiguous(), key
    mapped["layers.fc1.weight"].zero_()
    assert net.fc1.weight.abs().sum() > 0


@pytest.mark.parametrize(
    ("in_features", "in_shape"),
    [(784, (1, 28, 28)), (3072, (3, 32, 32)), (20, (20,))],
)
def test_fc_input_shape_follows_from_the_first_layer(in_features, in_shape):
    state = nn.Linear(in_features, 5).state_dict()
    spec, _ = detect_architecture(state)
    assert spec.in_shape == in_shape
    assert spec.widths == (5,)


def test_a_linear_layer_without_bias_gets_a_zero_bias():
    state = {"fc1.weight": torch.randn(8, 784), "fc2.weight": torch.randn(10, 8)}
    _, mapped = detect_architecture(state)
    assert torch.equal(mapped["layers.fc2.bias"], torch.zeros(10))


def test_a_given_in_shape_must_hold_as_many_values_as_the_first_layer_takes():
    state = TwoLayerMLP().state_dict()
    spec, _ = detect_architecture(state, in_shape=(4, 14, 14))
    assert spec.in_shape == (4, 14, 14)
    with pytest.raises(CheckpointError, match=r"'fc1.weight' \(32, 784\) takes 784 inputs"):
        detect_architecture(state, in_shape=(3, 32, 32))


# -- file formats and wrappers ---------------------------------------------------------------


@pytest.mark.parametrize("key", STATE_DICT_KEYS)
def test_a_checkpoint_dict_holding_the_state_dict_under_a_common_key_is_read(tmp_path, key):
    net = TwoLayerMLP()
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, key: net.state_dict(), "optimizer": optimizer}, path)

    state = read_state_dict(path)

    assert list(state) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_data_parallel_and_torch_compile_prefixes_are_removed(tmp_path):
    net = TwoLayerMLP()
    parallel = nn.DataParallel(net).state_dict()
    assert all(key.startswith("module.") for key in parallel)
    compiled = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    for i, state in enumerate([parallel, compiled]):
        path = tmp_path / f"wrapped{i}.bin"
        torch.save(state, path)
        assert list(read_state_dict(path)) == list(net.state_dict())


def test_a_whole_pickled_module_needs_allow_pickle(tmp_path):
    net = sequential_mlp()
    path = tmp_path / "whole.pt"
    torch.save(net, path)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "pickled Python code" in str(err.value)
    assert "--allow-pickle" in str(err.value)

    checkpoint = load_checkpoint(path, allow_pickle=True)
    assert checkpoint.spec.widths == (32, 10)
    assert torch.equal(checkpoint.state_dict["layers.fc1.weight"], net[1].weight)


def test_a_pickled_dawnbench_module_loads_with_allow_pickle(tmp_path):
    net = randomise_batch_norms(DawnResNet9())
    path = tmp_path / "dawn.pt"
    torch.save({"model": net, "epoch": 24}, path)
    checkpoint = load_checkpoint(path, allow_pickle=True, output_scale=0.125)
    assert checkpoint.spec.family == "resnet9"
    assert checkpoint.spec.widths == RESNET9_WIDTHS


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_loading_never_changes_the_file_and_reports_its_sha256(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    save(DawnResNet9().state_dict(), path)
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns

    checkpoint = load_checkpoint(path, output_scale=0.125)
    checkpoint.state_dict["layers.prep.weight"].add_(1.0)

    assert path.read_bytes() == before
    assert os.stat(path).st_mtime_ns == mtime
    assert checkpoint.sha256 == hashlib.sha256(before).hexdigest() == sha256_of(path)
    assert checkpoint.path == path


# -- convnet -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_the_mnist_convnet_maps_onto_our_convnet_keys(tmp_path, suffix):
    torch.manual_seed(0)
    net = SmallConvNet().eval()
    path = tmp_path / f"convnet{suffix}"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path)

    spec, mapped = checkpoint.spec, checkpoint.state_dict
    assert spec.family == "convnet"
    assert spec.in_shape == (1, 28, 28)
    assert spec.widths == (4, 6, 12, 8, 10)
    assert torch.equal(mapped["layers.conv2.weight"], net.conv2.weight)
    assert torch.equal(mapped["layers.fc3.bias"], net.fc3.bias)
    assert_same_outputs(net, spec, mapped)


def test_a_convnet_that_flattens_its_feature_map_is_refused_with_the_reason():
    state = SmallConvNet().state_dict()
    state["fc1.weight"] = torch.randn(12, 6 * 7 * 7)
    with pytest.raises(CheckpointError) as err:
        detect_architecture(state, source="flat.pt")
    message = str(err.value)
    assert message.startswith("flat.pt: ")
    assert "'fc1.weight' (12, 294) takes 294 inputs" in message
    assert "pools globally" in message


# -- resnet9 -------------------------------------------------------------------------------


def assert_dawnbench_mapping(net: DawnResNet9, mapped: dict, affine: bool = True) -> None:
    for name, conv, bn in zip(
        RESNET9_LAYERS, net.convs_in_forward_order(), net.norms_in_forward_order(), strict=True
    ):
        assert torch.equal(mapped[f"layers.{name}.weight"], conv.weight), name
        assert torch.equal(mapped[f"norms.{name}.running_mean"], bn.running_mean), name
        assert torch.equal(mapped[f"norms.{name}.running_var"], bn.running_var), name
        assert int(mapped[f"norms.{name}.num_batches_tracked"]) == 7, name
        if affine:
            assert torch.equal(mapped[f"norms.{name}.weight"], bn.weight), name
            assert torch.equal(mapped[f"norms.{name}.bias"], bn.bias), name
        else:
            assert f"norms.{name}.weight" not in mapped
    assert torch.equal(mapped["layers.fc.weight"], net.classifier.weight)
    assert torch.equal(mapped["layers.fc.bias"], torch.zeros(RESNET9_WIDTHS[-1]))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_dawnbench_resnet9_maps_onto_our_resnet9_keys(tmp_path, suffix):
    torch.manual_seed(0)
    net = randomise_batch_norms(DawnResNet9())
    path = tmp_path / f"dawn{suffix}"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path, output_scale=0.125)

    spec = checkpoint.spec
    assert spec.family == "resnet9"
    assert spec.widths == RESNET9_WIDTHS
    assert spec.in_shape == (3, 32, 32)
    assert spec.bn_affine is True
    assert spec.pool == "max"
    assert spec.output_scale == 0.125
    assert_dawnbench_mapping(net, checkpoint.state_dict)
    assert_same_outputs(net, spec, checkpoint.state_dict)


def test_dawnbench_residual_names_without_the_residual_level_are_recognised():
    net = randomise_batch_norms(DawnResNet9())
    state = {k.replace(".residual.", "."): v for k, v in net.state_dict().items()}
    state = dict(sorted(state.items()))  # as a safetensors file returns them
    _, mapped = detect_architecture(state)
    assert_dawnbench_mapping(net, mapped)


def test_a_resnet9_without_batch_norm_scale_and_shift_has_bn_affine_false(tmp_path):
    net = randomise_batch_norms(DawnResNet9(affine=False))
    path = tmp_path / "plain-bn.safetensors"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path, output_scale=0.125)

    assert checkpoint.spec.bn_affine is False
    assert_dawnbench_mapping(net, checkpoint.state_dict, affine=False)
    assert_same_outputs(net, checkpoint.spec, checkpoint.state_dict)


def test_a_frozen_batch_norm_scale_left_out_of_the_file_is_filled_with_ones():
    net = randomise_batch_norms(DawnResNet9())
    with torch.no_grad():
        for bn in net.norms_in_forward_order():
            bn.weight.fill_(1.0)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("bn.weight")}

    spec, mapped = detect_architecture(state, output_scale=0.125)

    assert spec.bn_affine is True
    assert torch.equal(mapped["norms.res3b.weight"], torch.ones(32))
    assert torch.equal(mapped["norms.res3b.bias"], net.layer3.residual.res2.bn.bias)
    assert_same_outputs(net, spec, mapped)


def test_a_missing_num_batches_tracked_becomes_a_zero_counter():
    net = DawnResNet9()
    state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    _, mapped = detect_architecture(state)
    counter = mapped["norms.layer2.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.dim() == 0 and int(counter) == 0


def test_a_sequential_conv_bn_resnet9_maps_from_safetensors(tmp_path):
    torch.manual_seed(0)
    net = randomise_batch_norms(sequential_resnet9())
    path = tmp_path / "seq.safetensors"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path, output_scale=0.125)

    assert checkpoint.spec.widths == RESNET9_WIDTHS
    assert torch.equal(checkpoint.state_dict["layers.layer3.weight"], net[6][0].weight)
    assert torch.equal(checkpoint.state_dict["layers.res3a.weight"], net[8].res1[0].weight)
    assert_same_outputs(net, checkpoint.spec, checkpoint.state_dict)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_tutorial_resnet9_with_conv_biases_folds_them_into_the_running_mean(tmp_path, suffix):
    torch.manual_seed(0)
    net = randomise_batch_norms(TutorialResNet9())
    path = tmp_path / f"tutorial{suffix}"
    save(net.state_dict(), path)

    checkpoint = load_checkpoint(path)

    spec, mapped = checkpoint.spec, checkpoint.state_dict
    assert spec.widths == (8, 16, 16, 16, 32, 64, 64, 64, 10)
    assert spec.in_shape == (1, 28, 28)
    conv, bn = net.res1[1][0], net.res1[1][1]
    assert torch.equal(mapped["layers.res1b.weight"], conv.weight)
    torch.testing.assert_close(mapped["norms.res1b.running_mean"], bn.running_mean - conv.bias)
    assert_same_outputs(net, spec, mapped)


def test_our_own_resnet9_keys_map_onto_themselves(tmp_path):
    _, mapped = detect_architecture(randomise_batch_norms(DawnResNet9()).state_dict())
    path = tmp_path / "ours.safetensors"
    save(mapped, path)

    checkpoint = load_checkpoint(path)

    assert checkpoint.spec.widths == RESNET9_WIDTHS
    assert set(checkpoint.state_dict) == set(mapped)
    for key, tensor in mapped.items():
        assert torch.equal(checkpoint.state_dict[key], tensor), key


def test_pool_and_output_scale_are_taken_from_the_caller():
    state = DawnResNet9().state_dict()
    spec, _ = detect_architecture(state, pool="avg", output_scale=0.125)
    assert (spec.pool, spec.output_scale) == ("avg", 0.125)
    with pytest.raises(UsageError, match="--pool 'min'"):
        detect_architecture(state, pool="min")


def test_a_resnet9_convolution_without_batch_norm_is_refused():
    state = DawnResNet9().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer2.bn.")}
    with pytest.raises(CheckpointError, match=r"no batch norm found for convolution 'layer2.conv"):
        detect_architecture(state, source="dawn.pt")


# -- forcing a family ----------------------------------------------------------------------


def test_a_forced_family_that_does_not_match_names_the_key_and_shape_found():
    state = TwoLayerMLP().state_dict()
    with pytest.raises(CheckpointError) as err:
        detect_architecture(state, arch="convnet", source="mlp.pt")
    message = str(err.value)
    assert message.startswith("mlp.pt: does not match --arch convnet")
    assert "expected 2 convolution weights (4-D), found 0" in message
    assert "'fc1.weight' (32, 784)" in message


def test_a_forced_fc_on_a_resnet9_names_a_convolution():
    with pytest.raises(CheckpointError, match=r"--arch fc: .*convolution 'prep.conv.weight'"):
        detect_architecture(DawnResNet9().state_dict(), arch="fc")


def test_an_unknown_family_name_is_a_usage_error():
    with pytest.raises(UsageError, match="--arch 'vgg'"):
        detect_architecture(TwoLayerMLP().state_dict(), arch="vgg")


# -- unsupported networks ------------------------------------------------------------------


def test_a_transformer_is_refused_naming_an_attention_key():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
    state = {"embed.weight": torch.randn(100, 16)}
    state.update({f"encoder.{k}": v for k, v in layer.state_dict().items()})
    with pytest.raises(CheckpointError) as err:
        detect_architecture(state, source="gpt.pt")
    message = str(err.value)
    assert "'encoder.self_attn.in_proj_weight' (48, 16)" in message
    assert "--arch" in message


def test_a_transformer_of_plain_linear_and_layer_norm_modules_is_refused():
    state = {
        "blocks.0.ln.weight": torch.ones(16),
        "blocks.0.ln.bias": torch.zeros(16),
        "blocks.0.mlp.weight": torch.randn(64, 16),
        "blocks.0.proj.weight": torch.randn(16, 64),
    }
    with pytest.raises(CheckpointError) as err:
        detect_architecture(state, source="tiny.pt")
    assert "'blocks.0.ln.weight' (16,)" in str(err.value)
    assert "--arch" in str(err.value)


def test_a_vgg_with_13_convolutions_is_refused_with_the_count():
    widths = [3, 8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    state = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        state[f"features.{i}.weight"] = torch.randn(b, a, 3, 3)
        state[f"features.{i}.bias"] = torch.randn(b)
    state["classifier.0.weight"] = torch.randn(10, 64)
    with pytest.raises(CheckpointError) as err:
        detect_architecture(state, source="vgg.pt")
    message = str(err.value)
    assert "13 convolution weights (4-D) (first 'features.0.weight' (8, 3, 3, 3))" in message
    assert "--arch" in message


def test_a_dict_of_only_1d_tensors_is_refused_naming_a_key():
    state = {"scale.weight": torch.ones(10), "scale.bias": torch.zeros(10)}
    with pytest.raises(CheckpointError, match=r"'scale.weight' \(10,\).*--arch"):
        detect_architecture(state, source="1d.pt")


# -- unreadable files ----------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=r"nope\.pt: file not found"):
        load_checkpoint(path)


def test_an_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: file is empty"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_truncated_file_is_reported_as_truncated(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    save(TwoLayerMLP().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    assert "truncated" in str(err.value)


@pytest.mark.parametrize("first_byte", [b"\x13", b"\x80"])
def test_random_bytes_are_not_a_checkpoint(tmp_path, first_byte):
    path = tmp_path / "noise.pt"
    path.write_bytes(first_byte + bytes(range(7, 250)) * 4)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "not a PyTorch" in str(err.value) or "could not be read" in str(err.value)


def test_a_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match=r"meta\.pt: holds no tensors"):
        read_state_dict(path)


def test_integer_weights_are_refused_naming_the_key(tmp_path):
    path = tmp_path / "int8.pt"
    torch.save({"fc1.weight": torch.ones(4, 784, dtype=torch.int8)}, path)
    with pytest.raises(CheckpointError, match=r"int8\.pt: key 'fc1.weight' has dtype torch.int8"):
        read_state_dict(path)


@pytest.mark.parametrize(
    ("bad", "words"), [(float("nan"), "3 NaN and 0 Inf"), (float("inf"), "0 NaN and 3 Inf")]
)
def test_nan_or_inf_weights_are_refused_with_key_and_count(tmp_path, bad, words):
    state = TwoLayerMLP().state_dict()
    state["fc2.weight"][0, :3] = bad
    path = tmp_path / "diverged.safetensors"
    save(state, path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert f"key 'fc2.weight' holds {words} values of 320" in str(err.value)
    assert "diverged.safetensors" in str(err.value)
