"""Arithmetic precision and memory layout of training and calibration.

``bfloat16`` runs convolutions and matrix products under autocast: weights,
optimiser state, batch-norm statistics and losses stay in float32, and bfloat16's
float32-sized exponent means no loss scaling is needed. On CPUs with AVX-512 BF16
or AMX units and on CUDA GPUs from Ampere on it is several times faster than
float32; on older hardware it is emulated and slower, so ``float32`` is the default.

Convolutional models also run in the channels-last memory layout while they train,
which oneDNN and cuDNN both prefer; they are put back in the default layout
afterwards, so saved tensors are plain contiguous arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import UsageError
from .layers import BlueprintConv2d

PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for float32)."""
    check_precision(precision)
    device = torch.device(device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _convolutional(module: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, BlueprintConv2d)) for m in module.modules())


def as_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` in ``memory_format`` when it is a batch of images (4-D), else unchanged."""
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


@contextlib.contextmanager
def fast_layout(*modules: torch.nn.Module) -> Iterator[torch.memory_format]:
    """Put convolutional ``modules`` in channels-last while the block runs.

    Yields the layout inputs should take. The parameters are restored to the
    default contiguous layout on exit, even on an error.
    """
    convolutional = any(_convolutional(m) for m in modules)
    fmt = torch.channels_last if convolutional else torch.contiguous_format
    try:
        if fmt is torch.channels_last:
            for m in modules:
                m.to(memory_format=fmt)
        yield fmt
    finally:
        if fmt is torch.channels_last:
            for m in modules:
                m.to(memory_format=torch.contiguous_format)
