"""How a model maps to an engine, layer by layer, before any training: `prunefab check`.

A model of the hardware family (sw/models.py) becomes conv blocks and one classifier; each is
checked against the engine's limits by the same code that checks an artifact before loading it
(`EngineConfig.check_network`, the loader's memory packing), on a stand-in integer network of
the model's shapes with every weight kept.  The first layer that cannot map is named with the
limit it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from prunefab.errors import PrunefabError
from prunefab.hw.config import EngineConfig
from prunefab.sw.flops import count
from prunefab.sw.models import NetSpec, layer_specs
from prunefab.sw.qnet import ConvLayer, LinearLayer, QuantizedNetwork


@dataclass(frozen=True)
class LayerMap:
    """One layer as the engine runs it: its name there (conv0.., linear) and in the model."""

    name: str
    module: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    flops: int
    parameters: int


@dataclass(frozen=True)
class ModelMap:
    """A model on an engine: its layers, or the first one that cannot map and why."""

    input_shape: tuple[int, ...] | None
    layers: tuple[LayerMap, ...]
    problem: str | None          # one line naming the layer and the limit; None: it maps
    memory: str | None           # the memories the dense network takes, when it maps

    @property
    def ok(self) -> bool:
        return self.problem is None

    def table(self) -> str:
        width = max(len("module"), *(len(m.module) for m in self.layers)) + 2
        rows = [f"{'layer':<8}{'module':<{width}}{'kind':<26}{'input':>10}{'output':>10}{'MFLOPs':>9}"
                f"{'parameters':>12}"]
        for m in self.layers:
            rows.append(f"{m.name:<8}{m.module:<{width}}{m.kind:<26}{_dims(m.input_shape):>10}"
                        f"{_dims(m.output_shape):>10}{m.flops / 1e6:>9.3f}{m.parameters:>12}")
        rows.append(f"{'total':<{8 + width + 46}}{sum(m.flops for m in self.layers) / 1e6:>9.3f}"
                    f"{sum(m.parameters for m in self.layers):>12}")
        return "\n".join(rows)


def check(name: str, config: EngineConfig, input_shape=None, classes: int = 10) -> ModelMap:
    """How the model `name` (built-in, or `FILE.py:FACTORY`) maps to the engine `config`, for
    `input_shape` images (None: the model's own) and, for a built-in model, `classes`."""
    from prunefab.sw import models
    if not models.is_user_model(name):
        model = (models.build(name, classes) if input_shape is None
                 else models.for_data(name, input_shape, classes))
        return check_model(model, config, model.input_shape)
    model = models.load_user_model(name)
    try:        # the shape it takes, checked against its classifier
        shape = models.as_family(model, input_shape).input_shape
    except models.UnmappableModel as e:
        return ModelMap(input_shape, (), str(e), None)
    return check_model(model, config, shape)


def check_model(model: nn.Module, config: EngineConfig, input_shape) -> ModelMap:
    """How `model` maps to the engine `config` for `input_shape` images; a model outside the
    hardware family gives the first layer outside it as the problem."""
    input_shape = tuple(input_shape)
    try:
        spec = layer_specs(model)
    except PrunefabError as e:
        return ModelMap(input_shape, (), str(e), None)
    counts = count(model, input_shape)
    layers, shape = [], input_shape
    for i, (c, n) in enumerate(zip(spec.convs, counts.convs)):
        out_c, (h, w) = c.conv.out_channels, n.out_hw
        out = (out_c, h // 2, w // 2) if c.pool else (out_c, h, w)
        kind = "conv3x3" + ("+bn" if c.bn is not None else "") + "+relu" + ("+maxpool2x2" if c.pool else "")
        layers.append(LayerMap(f"conv{i}", c.name, kind, shape, out, n.dense_flops, n.weights + out_c))
        shape = out
    lin = counts.linear
    layers.append(LayerMap("linear", spec.linear_name, "linear", (lin.shape[1],), (lin.shape[0],),
                           lin.dense_flops, lin.weights + lin.shape[0]))
    net = _stand_in(spec, input_shape)
    # the engine's layers are named conv0.. and linear; say which of the model's that is
    names = {f"conv{i}": c.name for i, c in enumerate(spec.convs)} | {"linear": spec.linear_name}
    from prunefab.hw.loader import pack_network
    try:
        config.check_network(net)
    except PrunefabError as e:
        return ModelMap(input_shape, tuple(layers), _named(str(e), names), None)
    try:
        program = pack_network(config, net)
    except PrunefabError as e:
        return ModelMap(input_shape, tuple(layers), None, f"dense, it does not fit the memories ({_named(str(e), names)}); "
                                             f"pruning shrinks the weights")
    return ModelMap(input_shape, tuple(layers), None,
                    f"dense, weight memory {len(program.weights)} of {config.weight_depth} words, "
                    f"parameters {len(program.params)} of {config.param_depth}")


def _stand_in(spec: NetSpec, input_shape) -> QuantizedNetwork:
    """An integer network of the model's shapes with every weight kept (each 1): what the
    engine's limits and memories see of the dense model."""
    convs = []
    for c in spec.convs:
        o, i = c.conv.out_channels, c.conv.in_channels
        convs.append(ConvLayer(np.ones((o, i, 3, 3), np.int8), np.zeros(o, np.int32),
                               np.full(o, 1, np.int32), np.full(o, 16, np.int32), c.pool))
    k, f = spec.linear.out_features, spec.linear.in_features
    return QuantizedNetwork(tuple(input_shape), tuple(convs),
                            LinearLayer(np.ones((k, f), np.int8), np.zeros(k, np.int32)))


def _named(message: str, names: dict[str, str]) -> str:
    """The engine's message with its layer name (conv3) followed by the model's (features.3.0)."""
    head, sep, rest = message.partition(":")
    return f"{head} ({names[head]}){sep}{rest}" if head in names and names[head] != head else message


def _dims(shape) -> str:
    return "x".join(map(str, shape))
