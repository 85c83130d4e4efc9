"""FLOPs and parameter counts, by one rule used everywhere.

A multiply-add is 2 FLOPs.  A conv layer costs 2 * H * W * (nonzero weights), with H x W its
output size before pooling; a linear layer costs 2 * (nonzero weights) (counted in the
parameters, and the classifier's in `linear`).  BatchNorm (folded),
bias, ReLU and pooling are not counted.  Parameters are nonzero weights plus one bias for every
output channel that is still alive (BatchNorm folds into that bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
    """The counts of a float model (masks applied)."""
    spec = layer_specs(model)
    sizes = conv_output_sizes(spec, input_shape or model.input_shape)
    convs = [(c.name, effective_weight(c.conv).numpy(), hw) for c, hw in zip(spec.convs, sizes)]
    hidden = [lin.weight.detach().numpy() for _, lin in spec.hidden]
    return _tally(convs, (spec.linear_name, spec.linear.weight.detach().numpy()), hidden)


def count_network(net) -> NetCount:
    """The counts of a quantized network (`prunefab.sw.qnet.QuantizedNetwork`): what an
    artifact costs, from its own weights."""
    shapes = net.feature_shapes()
    convs = []
    for i, layer in enumerate(net.convs):
        _, h, w = shapes[net.conv_source(i)]
        hw = (-(-h // layer.stride), -(-w // layer.stride))     # the output before any pool
        convs.append((f"conv{i}", layer.weights, hw))
    hidden = [layer.weights for layer in net.hidden]
    return _tally(convs, ("linear", net.linear.weights), hidden)


def _tally(convs, linear, hidden=()) -> NetCount:
    """convs: (name, weights [O, I, K, K], output (H, W)) each; linear: (name, weights [O, I]);
    hidden: the weights of hidden linear layers (counted in the parameters)."""
    layers = []
    params = dense_params = 0
    for name, wt, (h, w) in convs:
        nnz = int(np.count_nonzero(wt))
        alive = int((np.abs(wt).reshape(wt.shape[0], -1).sum(1) > 0).sum())
        layers.append(LayerCount(name, tuple(wt.shape), (h, w), wt.size, nnz, 2 * h * w * nnz,
                                 2 * h * w * wt.size))
        params += nnz + alive
        dense_params += wt.size + wt.shape[0]
    for hw_ in hidden:
        params += int(np.count_nonzero(hw_)) + hw_.shape[0]
        dense_params += hw_.size + hw_.shape[0]
    name, lw = linear
    lnnz = int(np.count_nonzero(lw))
    params += lnnz + lw.shape[0]
    dense_params += lw.size + lw.shape[0]
    return NetCount(tuple(layers), LayerCount(name, tuple(lw.shape), (1, 1), lw.size, lnnz,
                                              2 * lnnz, 2 * lw.size), params, dense_params)
