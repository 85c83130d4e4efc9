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
from prunefab.sw.models import NetSpec, engine_spec
from prunefab.sw.qnet import ConvLayer, LinearLayer, QuantizedNetwork, Residual


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
        spec = engine_spec(model)
    except PrunefabError as e:
        return ModelMap(input_shape, (), str(e), None)
    net = _stand_in(spec, input_shape)
    layers = _layer_maps(spec, net)
    # the engine's layers are named conv0.., linear0.. and linear; say which of the model's that is
    names = ({f"conv{i}": c.name for i, c in enumerate(spec.convs)}
             | {f"linear{j}": name for j, (name, _) in enumerate(spec.hidden)}
             | {"linear": spec.linear_name})
    from prunefab.hw.loader import pack_network
    try:
        config.check_network(net)
    except PrunefabError as e:
        return ModelMap(input_shape, tuple(layers), _named(str(e), names) + _chip(config, spec, net),
                        None)
    try:
        program = pack_network(config, net)
    except PrunefabError as e:
        return ModelMap(input_shape, tuple(layers), None, f"dense, it does not fit the memories ({_named(str(e), names)}); "
                                             f"pruning shrinks the weights")
    return ModelMap(input_shape, tuple(layers), None,
                    f"dense, weight memory {len(program.weights)} of {config.weight_depth} words, "
                    f"parameters {len(program.params)} of {config.param_depth}")


def _chip(config: EngineConfig, spec: NetSpec, net: QuantizedNetwork) -> str:
    """For a board's preset that the network exceeds: what its memories would take on the chip,
    dense and with 2 of 9 elements kept in every 3x3 plane (a 78 % cut), when even the pruned
    network is beyond the chip's memory; "" otherwise."""
    from prunefab.boards.fit import chip_memory
    from prunefab.hw.config import EngineLimitError
    try:
        dense = chip_memory(config, net)
    except EngineLimitError:           # a layer kind no engine runs: nothing to size
        return ""
    if dense is None or dense.fits:
        return ""
    pruned = chip_memory(config, _stand_in(spec, net.input_shape, kept=2))
    if pruned.fits:                    # pruning makes room: the limits are the problem
        return ""
    return (f"; nor would its memories fit the chip, even pruned: dense {dense.describe()}, "
            f"{pruned.needed_bytes} with 2 of 9 elements of each 3x3 plane kept, against "
            f"{dense.capacity}")


def _layer_maps(spec: NetSpec, net: QuantizedNetwork) -> list[LayerMap]:
    """The table's rows: each layer's kind, shapes, dense FLOPs (a multiply-add is 2, the conv's
    output before pooling) and parameters (a bias per output)."""
    shapes = net.feature_shapes()
    layers = []
    for i, (c, layer) in enumerate(zip(spec.convs, net.convs)):
        k, stride = layer.kernel, layer.stride
        src = shapes[net.conv_source(i)]
        kind = (f"conv{k}x{k}" + (f"/{stride}" if stride > 1 else "") + ("+bn" if c.bn is not None else "")
                + (f"+add:{_writer(c.residual)}" if c.residual is not None else "") + ("+relu" if c.relu else "")
                + ("+maxpool2x2" if c.pool else ""))
        pixels = -(-src[1] // stride) * -(-src[2] // stride)
        layers.append(LayerMap(f"conv{i}", c.name, kind, src, shapes[i + 1],
                               2 * pixels * layer.weights.size, layer.weights.size + layer.out_channels))
    last = shapes[len(net.convs)]
    features = (last[0],) if spec.global_pool else (last[0] * last[1] * last[2],)
    linears = [*spec.hidden, (spec.linear_name, spec.linear)]
    for j, ((name, lin), layer) in enumerate(zip(linears, net.linears)):
        hidden = j < len(spec.hidden)
        kind = ("avgpool+" if layer.global_pool else "") + "linear" + ("+relu" if hidden else "")
        layers.append(LayerMap(f"linear{j}" if hidden else "linear", name, kind, features,
                               (lin.out_features,), 2 * layer.weights.size,
                               layer.weights.size + lin.out_features))
        features = (lin.out_features,)
    return layers


def _writer(feature_map: int) -> str:
    """The layer that writes a feature map (docs/arithmetic.md's numbering): input, conv0, ..."""
    return "input" if feature_map == 0 else f"conv{feature_map - 1}"


def _stand_in(spec: NetSpec, input_shape, kept: int = 9) -> QuantizedNetwork:
    """An integer network of the model's graph and shapes with every weight kept (each 1), or
    the first `kept` elements of every 3x3 plane: what the engine's limits and memories see of
    the dense (or so pruned) model."""
    convs = []
    for i, c in enumerate(spec.convs):
        o, n, k = c.conv.out_channels, c.conv.in_channels, c.conv.kernel_size[0]
        residual = None
        if c.residual is not None:
            residual = Residual(c.residual, np.ones(o, np.int32), np.full(o, 16, np.int32))
        weights = np.ones((o, n, k * k), np.int8)
        weights[:, :, min(kept, k * k):] = 0
        convs.append(ConvLayer(weights.reshape(o, n, k, k), np.zeros(o, np.int32),
                               np.full(o, 1, np.int32), np.full(o, 16, np.int32), c.pool,
                               c.conv.stride[0], c.relu, c.source, residual))
    hidden = []
    for j, (_, lin) in enumerate(spec.hidden):
        k, f = lin.out_features, lin.in_features
        hidden.append(LinearLayer(np.ones((k, f), np.int8), np.zeros(k, np.int32), np.ones(k, np.int32),
                                  np.full(k, 16, np.int32), spec.global_pool and j == 0))
    k, f = spec.linear.out_features, spec.linear.in_features
    return QuantizedNetwork(tuple(input_shape), tuple(convs),
                            LinearLayer(np.ones((k, f), np.int8), np.zeros(k, np.int32),
                                        global_pool=spec.global_pool and not hidden),
                            hidden=tuple(hidden))


def _named(message: str, names: dict[str, str]) -> str:
    """The engine's message with its layer name (conv3) followed by the model's (features.3.0)."""
    head, sep, rest = message.partition(":")
    return f"{head} ({names[head]}){sep}{rest}" if head in names and names[head] != head else message


def _dims(shape) -> str:
    return "x".join(map(str, shape))
