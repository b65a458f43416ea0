"""Weight-generating kernels: the weight between two neurons from their embeddings.

For neuron sets with embeddings ``z_in`` (n_in, d) and ``z_out`` (n_out, d) the
generated weight matrix has the layout of ``torch.nn.Linear.weight``: (n_out, n_in),
entry (j, i) = sigma(z_out[j] . z_in[i]).

- ``dot``: the paper's unscaled dot product with sigma = identity (equation 1).
- ``scaled-dot``: divided by sqrt(d) as in Transformer attention.
- ``tanh``: the unscaled dot product through tanh, a bounded nonlinearity.
"""

from __future__ import annotations

import math

import torch

LINEAR_KERNELS = ("dot", "scaled-dot")


def kernel_scale(kernel: str, dim: int) -> float:
    """The constant factor a linear kernel puts on the dot product."""
    return 1.0 / math.sqrt(dim) if kernel == "scaled-dot" else 1.0


def is_linear(kernel: str) -> bool:
    """Whether the kernel is a (scaled) dot product, so a layer can run factored."""
    return kernel in LINEAR_KERNELS


def generate(z_out: torch.Tensor, z_in: torch.Tensor, kernel: str = "dot") -> torch.Tensor:
    """The weight matrix (n_out, n_in) between two neuron sets."""
    scores = z_out @ z_in.T  # (n_out, n_in)
    if kernel == "dot":
        return scores
    if kernel == "scaled-dot":
        return scores * kernel_scale(kernel, z_in.shape[1])
    if kernel == "tanh":
        return torch.tanh(scores)
    raise ValueError(f"unknown kernel {kernel!r}; choose from dot, scaled-dot, tanh")


def init_embeddings(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's initialisation z ~ N(0, 1/d) (equation 3): embeddings of norm about 1."""
    return torch.randn(n, dim, generator=generator) / math.sqrt(dim)


def sinusoidal_1d(n: int, dim: int) -> torch.Tensor:
    """Fixed 1-D positional encodings (Vaswani et al.) for n positions, rows of unit norm."""
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    enc = torch.zeros(n, dim, dtype=torch.float64)
    enc[:, 0::2] = torch.sin(position * freq)
    enc[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return (enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def sinusoidal_2d(shape: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D encodings for every input of a (C, H, W) image, in flattening order.

    Half of the dimensions encode the row and half the column (Wang & Liu); with
    several channels a third of the dimensions encodes the channel instead.
    """
    channels, height, width = shape
    d_chan = dim // 3 if channels > 1 else 0
    d_row = (dim - d_chan) // 2
    d_col = dim - d_chan - d_row
    rows = sinusoidal_1d(height, max(d_row, 1))[:, :d_row]
    cols = sinusoidal_1d(width, max(d_col, 1))[:, :d_col]
    parts = [
        rows[None, :, None, :].expand(channels, height, width, d_row),
        cols[None, None, :, :].expand(channels, height, width, d_col),
    ]
    if d_chan:
        chans = sinusoidal_1d(channels, d_chan)
        parts.insert(0, chans[:, None, None, :].expand(channels, height, width, d_chan))
    enc = torch.cat(parts, dim=-1).reshape(channels * height * width, dim)  # (C*H*W, d)
    return enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12)
