"""FLOPs and parameter counts, by one rule used everywhere.

A multiply-add is 2 FLOPs.  A conv layer costs 2 * H * W * (nonzero weights), with H x W its
output size before pooling; the classifier costs 2 * (nonzero weights).  BatchNorm (folded),
bias, ReLU and pooling are not counted.  Parameters are nonzero weights plus one bias for every
output channel that is still alive (BatchNorm folds into that bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunefab.sw.models import NetSpec, layer_specs


@dataclass(frozen=True)
class LayerCount:
    name: str
    shape: tuple[int, ...]
    out_hw: tuple[int, int]
    weights: int
    nonzeros: int
    flops: int
    dense_flops: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / max(self.weights, 1)


@dataclass(frozen=True)
class NetCount:
    convs: tuple[LayerCount, ...]
    linear: LayerCount
    parameters: int
    dense_parameters: int

    @property
    def conv_flops(self) -> int:
        return sum(c.flops for c in self.convs)

    @property
    def dense_conv_flops(self) -> int:
        return sum(c.dense_flops for c in self.convs)

    @property
    def conv_flops_cut(self) -> float:
        return 1.0 - self.conv_flops / self.dense_conv_flops

    @property
    def parameter_cut(self) -> float:
        return 1.0 - self.parameters / self.dense_parameters


def conv_output_sizes(spec: NetSpec, input_shape) -> list[tuple[int, int]]:
    """Output H x W (before pooling) of every conv layer."""
    _, h, w = input_shape
    sizes = []
    for c in spec.convs:
        sizes.append((h, w))
        if c.pool:
            h, w = h // 2, w // 2
    return sizes


def effective_weight(conv: nn.Module) -> torch.Tensor:
    """The weight as the forward pass uses it (masks and parametrizations applied)."""
    return conv.weight.detach()


def count(model: nn.Module, input_shape=None) -> NetCount:
    spec = layer_specs(model)
    input_shape = input_shape or model.input_shape
    convs = []
    params = dense_params = 0
    for c, (h, w) in zip(spec.convs, conv_output_sizes(spec, input_shape)):
        wt = effective_weight(c.conv)
        nnz = int(torch.count_nonzero(wt))
        alive = int((wt.flatten(1).abs().sum(1) > 0).sum())
        convs.append(LayerCount(c.name, tuple(wt.shape), (h, w), wt.numel(), nnz,
                                2 * h * w * nnz, 2 * h * w * wt.numel()))
        params += nnz + alive
        dense_params += wt.numel() + wt.shape[0]
    lw = spec.linear.weight.detach()
    lnnz = int(torch.count_nonzero(lw))
    linear = LayerCount(spec.linear_name, tuple(lw.shape), (1, 1), lw.numel(), lnnz, 2 * lnnz,
                        2 * lw.numel())
    params += lnnz + lw.shape[0]
    dense_params += lw.numel() + lw.shape[0]
    return NetCount(tuple(convs), linear, params, dense_params)
