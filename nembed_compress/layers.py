"""Layers whose weights are generated from neuron embeddings.

A layer here owns only what belongs to its output neurons (bias, depthwise
kernel); the embeddings live in the model, one tensor per neuron set, because
a neuron set is shared by the layer that writes it and the layer that reads it.
The model passes both embeddings to ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import generate, is_linear, kernel_scale


class EmbeddingLinear(nn.Module):
    """A fully connected layer with weight kernel(z_out, z_in) and one bias per output neuron.

    Dense mode materialises the (n_out, n_in) weight; factored mode (linear kernels
    only) computes ``(x @ z_in) @ z_out.T``, which costs d(m + n) instead of mn per sample.
    """

    def __init__(self, n_in: int, n_out: int, kernel: str = "dot", bias: bool = True) -> None:
        super().__init__()
        self.n_in, self.n_out, self.kernel = n_in, n_out, kernel
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def weight(self, z_in: torch.Tensor, z_out: torch.Tensor) -> torch.Tensor:
        return generate(z_out, z_in, self.kernel)

    def forward(
        self, x: torch.Tensor, z_in: torch.Tensor, z_out: torch.Tensor, factored: bool = False
    ) -> torch.Tensor:
        if factored and is_linear(self.kernel):
            y = (x @ z_in) @ z_out.T  # (B, d) then (B, n_out)
            scale = kernel_scale(self.kernel, z_in.shape[1])
            y = y * scale if scale != 1.0 else y
            return y + self.bias if self.bias is not None else y
        return F.linear(x, self.weight(z_in, z_out), self.bias)


class BlueprintConv2d(nn.Module):
    """Blueprint-separable convolution: pointwise 1x1 first, then one k x k kernel per channel.

    The pointwise weight is either an explicit (n_out, n_in) parameter (``sep``) or
    generated from neuron embeddings (``emb``). A conv neuron is then its embedding,
    its depthwise kernel (one row of ``depthwise``, shape (k, k)) and its bias.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        kernel_size: int,
        *,
        padding: int = 0,
        bias: bool = True,
        embedded: bool = False,
        kernel: str = "dot",
    ) -> None:
        super().__init__()
        self.n_in, self.n_out, self.kernel_size = n_in, n_out, kernel_size
        self.padding, self.embedded, self.kernel = padding, embedded, kernel
        if not embedded:
            self.pointwise = nn.Parameter(torch.empty(n_out, n_in))
            nn.init.kaiming_uniform_(self.pointwise, a=5**0.5)
        # Each output channel has its own spatial kernel; a normal start keeps the
        # pointwise scale meaningful (unit-norm rows, like the rank-1 conversion).
        depthwise = torch.randn(n_out, kernel_size, kernel_size)
        self.depthwise = nn.Parameter(depthwise / depthwise.flatten(1).norm(dim=1)[:, None, None])
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def pointwise_weight(
        self, z_in: torch.Tensor | None = None, z_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (n_out, n_in) pointwise matrix, explicit or generated."""
        if not self.embedded:
            return self.pointwise
        return generate(z_out, z_in, self.kernel)

    def dense_weight(self, z_in=None, z_out=None) -> torch.Tensor:
        """The equivalent full convolution weight (n_out, n_in, k, k)."""
        pw = self.pointwise_weight(z_in, z_out)
        return pw[:, :, None, None] * self.depthwise[:, None, :, :]

    def forward(
        self,
        x: torch.Tensor,
        z_in: torch.Tensor | None = None,
        z_out: torch.Tensor | None = None,
        factored: bool = False,
    ) -> torch.Tensor:
        if self.embedded and factored and is_linear(self.kernel):
            # Two 1x1 convolutions through the d-dimensional embedding space.
            y = F.conv2d(x, z_in.T[:, :, None, None])  # (B, d, H, W)
            scale = kernel_scale(self.kernel, z_in.shape[1])
            y = F.conv2d(y, (z_out * scale)[:, :, None, None])  # (B, n_out, H, W)
        else:
            y = F.conv2d(x, self.pointwise_weight(z_in, z_out)[:, :, None, None])
        weight = self.depthwise[:, None, :, :]  # (n_out, 1, k, k)
        return F.conv2d(y, weight, self.bias, padding=self.padding, groups=self.n_out)
