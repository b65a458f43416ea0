"""Mixed precision and channels-last layout of training and calibration."""

from __future__ import annotations

import pytest
import torch

from nembed_compress.convert import calibrate, to_embedding
from nembed_compress.errors import UsageError
from nembed_compress.models import build_model
from nembed_compress.precision import as_layout, autocast, fast_layout
from nembed_compress.spec import ArchSpec

RESNET9 = ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10))
FC = ArchSpec("fc", (1, 28, 28), (16, 10))


def test_float32_autocast_changes_nothing():
    x = torch.randn(4, 4)
    with autocast("cpu", "float32"):
        assert (x @ x).dtype == torch.float32


def test_bfloat16_autocast_runs_matrix_products_in_bfloat16():
    x = torch.randn(4, 4)
    with autocast("cpu", "bfloat16"):
        assert (x @ x).dtype == torch.bfloat16


def test_an_unknown_precision_names_the_option():
    with pytest.raises(UsageError, match="--precision must be one of float32, bfloat16"):
        autocast("cpu", "float16")


def test_a_convolutional_model_is_channels_last_inside_and_contiguous_after():
    model = build_model(RESNET9)
    with fast_layout(model) as fmt:
        assert fmt is torch.channels_last
        assert model.layers["layer1"].weight.is_contiguous(memory_format=torch.channels_last)
        assert as_layout(torch.randn(2, 3, 16, 16), fmt).is_contiguous(memory_format=fmt)
    assert all(p.is_contiguous() for p in model.parameters())


def test_the_layout_is_restored_even_when_the_block_fails():
    model = build_model(RESNET9)
    with pytest.raises(RuntimeError, match="boom"), fast_layout(model):
        raise RuntimeError("boom")
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_fully_connected_model_keeps_the_default_layout():
    with fast_layout(build_model(FC)) as fmt:
        assert fmt is torch.contiguous_format
    x = torch.randn(2, 784)
    assert as_layout(x, torch.channels_last) is x, "only 4-D batches change layout"


def test_bfloat16_calibration_lowers_the_distillation_loss_and_leaves_the_teacher_as_it_was():
    torch.manual_seed(0)
    teacher = build_model(RESNET9).eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = to_embedding(teacher, 4).model
    batches = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    stats = calibrate(student, teacher, batches, steps=24, lr=1e-2, precision="bfloat16")
    assert stats["kl_end"] < stats["kl_start"]
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]) and v.is_contiguous(), k
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in student.parameters())


def test_batch_statistics_mode_measures_the_statistics_again_at_the_end():
    torch.manual_seed(0)
    teacher = build_model(RESNET9).eval()
    student = to_embedding(teacher, 4).model
    batches = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    stats = calibrate(student, teacher, batches, steps=24, lr=1e-2, bn_mode="batch")
    assert stats["kl_end"] < stats["kl_start"] and stats["bn_mode"] == "batch"
    assert not student.training
    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    counts = {int(bn.num_batches_tracked) for bn in norms}
    assert counts == {len(batches)}, "statistics are a fresh average over the batches"


def test_an_unknown_batch_norm_mode_is_refused():
    teacher = build_model(RESNET9).eval()
    student = to_embedding(teacher, 4).model
    with pytest.raises(UsageError, match="batch-norm mode must be one of fixed, batch"):
        calibrate(student, teacher, [torch.randn(2, 3, 16, 16)], steps=1, bn_mode="train")


def test_layer_matching_lowers_the_layer_error_and_removes_its_hooks():
    torch.manual_seed(0)
    teacher = build_model(RESNET9).eval()
    student = to_embedding(teacher, 4).model
    batches = [torch.randn(16, 3, 16, 16) for _ in range(4)]
    stats = calibrate(student, teacher, batches, steps=24, lr=1e-2, layer_weight=1.0)
    assert stats["layer_end"] < stats["layer_start"]
    assert stats["kl_end"] < stats["kl_start"]
    for model in (student, teacher):
        assert all(not m._forward_hooks for m in model.modules()), "hooks are removed"


def test_without_layer_matching_no_layer_error_is_reported():
    torch.manual_seed(0)
    teacher = build_model(RESNET9).eval()
    student = to_embedding(teacher, 4).model
    stats = calibrate(student, teacher, [torch.randn(8, 3, 16, 16)], steps=2)
    assert stats["layer_weight"] == 0.0 and "layer_start" not in stats


def test_layer_matching_needs_a_teacher_with_the_same_layers():
    teacher = build_model(RESNET9).eval()
    student = to_embedding(teacher, 4).model
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))
    with pytest.raises(ValueError, match="layer layout"):
        calibrate(student, plain, [torch.randn(2, 3, 16, 16)], steps=1, layer_weight=1.0)
