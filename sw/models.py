"""The hardware-mappable model family and the paper-scale networks.

The family is what the accelerator runs: blocks of Conv3x3 (stride 1, padding 1, no bias) +
BatchNorm + ReLU with an optional 2x2 max-pool, then flatten (or a global average pool) and
linear layers: hidden ones, each followed by ReLU, and the classifier.  `layer_specs` walks
any model and either describes it in those terms or refuses it, naming the first layer that
does not fit, before any training or export work is done.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunefab.errors import PrunefabError


class UnmappableModel(PrunefabError, ValueError):
    """A model is outside the hardware-mappable family; one line naming the layer."""


class UserModelError(PrunefabError, ValueError):
    """A user's model file or factory cannot give a model; one line naming the file."""


class ConvBlock(nn.Sequential):
    """Conv3x3 + BatchNorm + ReLU [+ MaxPool2x2]."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool):
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    @property
    def pool(self) -> bool:
        return len(self) == 4


class HardwareNet(nn.Module):
    """A network of the family: `features` (ConvBlocks), then `classifier` (Linear); with
    `global_pool`, the classifier (or the first hidden layer) takes each channel's average
    (`pool`), and `hidden` gives the widths of hidden Linear + ReLU layers before it."""

    def __init__(self, input_shape=(1, 28, 28), channels=(8, 16, 32), pools=(True, False, True),
                 num_classes: int = 10, hidden=(), global_pool: bool = False):
        super().__init__()
        if len(channels) != len(pools) or not channels:
            raise ValueError(f"channels {channels} and pools {pools} must be non-empty and of equal length")
        c, h, w = input_shape
        if min(input_shape) < 1:
            raise UnmappableModel(f"input shape {'x'.join(map(str, input_shape))}: every "
                                  f"dimension must be at least 1")
        least = 2 ** sum(map(bool, pools))
        if min(h, w) < least:
            raise UnmappableModel(f"{h}x{w} inputs are too small for {sum(map(bool, pools))} 2x2 "
                                  f"pools; this model needs at least {least}x{least}")
        blocks = []
        for n, pool in zip(channels, pools):
            blocks.append(ConvBlock(c, n, pool))
            c = n
            if pool:
                h, w = h // 2, w // 2
        hidden, global_pool = tuple(int(f) for f in hidden), bool(global_pool)
        self.input_shape = tuple(input_shape)
        self.config = {"input_shape": list(input_shape), "channels": list(channels),
                       "pools": list(pools), "num_classes": num_classes}
        if hidden or global_pool:       # only when used: a plain network's config is as before
            self.config |= {"hidden": list(hidden), "global_pool": global_pool}
        self.features = nn.Sequential(*blocks)
        features = c * h * w
        if global_pool:
            self.pool = nn.AdaptiveAvgPool2d(1)
            features = c
        self.flatten = nn.Flatten()
        if hidden:
            layers = []
            for f in hidden:
                layers += [nn.Linear(features, f), nn.ReLU(inplace=True)]
                features = f
            self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if hasattr(self, "pool"):
            x = self.pool(x)
        x = self.flatten(x)
        if hasattr(self, "hidden"):
            x = self.hidden(x)
        return self.classifier(x)


def reference_net(num_classes: int = 10) -> HardwareNet:
    """The iCE40UP5K-sized Fashion-MNIST network (about 21k parameters).

    Feature maps are 28x28 and 14x14 only, so the accelerator's lane groups stay balanced.
    """
    return HardwareNet((1, 28, 28), (8, 16, 32), (True, False, True), num_classes)


def _vgg(cfg: list, num_classes: int) -> HardwareNet:
    """A VGG for 32x32 inputs (CIFAR variant) from its layer list: widths, "M" for a pool."""
    channels, pools = [], []
    for v in cfg:
        if v == "M":
            pools[-1] = True
        else:
            channels.append(v)
            pools.append(False)
    return HardwareNet((3, 32, 32), tuple(channels), tuple(pools), num_classes)


def vgg11_cifar(num_classes: int = 10) -> HardwareNet:
    """VGG-11 (configuration A): 8 conv layers, 5 pools, one classifier."""
    return _vgg([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], num_classes)


def vgg16_cifar(num_classes: int = 10) -> HardwareNet:
    """VGG-16 (configuration D): 13 conv layers, 5 pools, one classifier."""
    return _vgg([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
                num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-20/56 (CIFAR variant, 3 stages of (depth - 2) / 6 basic blocks), for 3x32x32
    images or any other shape (global average pooling before the classifier).

    Outside the plain family that `layer_specs` describes (strided and 1x1 convolutions,
    residual additions); `engine_spec` gives its graph for quantization and export.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, input_shape=(3, 32, 32)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, not {depth}")
        n = (depth - 2) // 6
        self.input_shape = tuple(input_shape)
        self.config = {"architecture": "resnet", "depth": depth, "num_classes": num_classes,
                       "input_shape": list(input_shape)}
        self.conv1 = nn.Conv2d(self.input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(c, width, 2 if stage and i == 0 else 1))
                c = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def resnet20_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(20, num_classes)


def resnet56_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar(56, num_classes)


MODELS = {"reference": reference_net, "resnet20": resnet20_cifar, "resnet56": resnet56_cifar,
          "vgg11": vgg11_cifar, "vgg16": vgg16_cifar}


def build(name: str, num_classes: int = 10) -> nn.Module:
    """A built-in model by name, or the family network of a user's `FILE.py:FACTORY` (its own
    input shape and classes; `num_classes` applies to built-in models)."""
    if is_user_model(name):
        try:
            return as_family(load_user_model(name))
        except UnmappableModel as e:
            raise UnmappableModel(f"{name}: {e}") from None
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes)


def for_data(name: str, input_shape, num_classes: int) -> nn.Module:
    """Model `name` for `input_shape` images and `num_classes` classes, or UnmappableModel (one
    line).  Every model keeps its widths (and a family model its pools) and takes the data's
    shape; a family model is refused when the inputs are too small for its pools."""
    if is_user_model(name):
        user = load_user_model(name)
        try:
            return as_family(user, getattr(user, "input_shape", None) or input_shape)
        except UnmappableModel as e:
            raise UnmappableModel(f"{name}: {e}") from None
    model = build(name, num_classes)
    if isinstance(model, ResNetCifar):
        return ResNetCifar(model.config["depth"], num_classes, tuple(input_shape))
    try:
        return HardwareNet(tuple(input_shape), model.config["channels"], model.config["pools"],
                           num_classes, model.config.get("hidden", ()),
                           model.config.get("global_pool", False))
    except UnmappableModel as e:
        raise UnmappableModel(f"{name}: {e}") from None


# ----------------------------------------------------------------------------------------------
# the user's own model: `path/to/file.py:factory`

def is_user_model(name: str) -> bool:
    """Whether `name` names a factory in a Python file (`path/to/file.py:factory`)."""
    path, sep, factory = str(name).rpartition(":")
    return bool(sep) and path.endswith(".py") and factory.isidentifier()


def load_user_model(name: str) -> nn.Module:
    """The nn.Module that `factory()` in the user's `file.py` returns (`name` is
    `file.py:factory`).  The file is the user's own code and runs as such; whatever goes wrong
    is one UserModelError line naming the file."""
    path, _, factory = name.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise UserModelError(f"{path}: no such file (--model FILE.py:FACTORY)")
    spec = importlib.util.spec_from_file_location(f"prunefab_user_model_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserModelError(f"{path}: running it raised {type(e).__name__}: {e}") from None
    make = getattr(module, factory, None)
    if not callable(make):
        raise UserModelError(f"{path} defines no function {factory}")
    try:
        model = make()
    except Exception as e:
        raise UserModelError(f"{name}: {factory}() raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{name}: {factory}() returned a {type(model).__name__}, not a "
                             f"torch.nn.Module")
    return model


def as_family(model: nn.Module, input_shape=None) -> HardwareNet:
    """The HardwareNet with `model`'s layers and weights (the form train, prune, export and
    checkpoints know), or UnmappableModel naming the first layer outside the family.

    The input shape is `input_shape`, else the model's `input_shape` attribute, else the square
    one the first linear layer's input size implies (not after a global pool, which takes any).
    A convolution's bias moves into its BatchNorm (exactly, in inference); a convolution without
    BatchNorm gets one that starts as the identity but for its epsilon, and trains.
    """
    spec = layer_specs(model)
    channels = tuple(c.conv.out_channels for c in spec.convs)
    pools = tuple(c.pool for c in spec.convs)
    first = spec.convs[0].conv.in_channels
    head_name, head = spec.hidden[0] if spec.hidden else (spec.linear_name, spec.linear)
    input_shape = input_shape or getattr(model, "input_shape", None)
    if input_shape is None:
        side = math.isqrt(head.in_features // channels[-1])
        if spec.global_pool or side * side * channels[-1] != head.in_features:
            inputs = f"{channels[-1]} pooled channels" if spec.global_pool else \
                f"{channels[-1]} square feature maps"
            raise UnmappableModel(f"layer {head_name} takes {head.in_features} inputs, "
                                  f"{'from ' if spec.global_pool else 'not '}{inputs}; give the "
                                  f"model an input_shape attribute (C, H, W)")
        input_shape = (first, side * 2 ** sum(pools), side * 2 ** sum(pools))
    input_shape = tuple(int(v) for v in input_shape)
    if input_shape[0] != first:
        raise UnmappableModel(f"layer {spec.convs[0].name} takes {first} input channels, the "
                              f"images have {input_shape[0]}")
    net = HardwareNet(input_shape, channels, pools, spec.linear.out_features,
                      tuple(lin.out_features for _, lin in spec.hidden), spec.global_pool)
    linears = [*(lin for _, lin in spec.hidden), spec.linear]
    mine = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if mine[0].in_features != head.in_features:
        raise UnmappableModel(f"layer {head_name} takes {head.in_features} inputs, "
                              f"but {'x'.join(map(str, input_shape))} images leave "
                              f"{mine[0].in_features}")
    with torch.no_grad():
        for block, c in zip(net.features, spec.convs):
            block.conv.weight.copy_(c.conv.weight)
            if c.bn is not None:
                for key, value in c.bn.state_dict().items():
                    block.bn.state_dict()[key].copy_(value)
                block.bn.eps = c.bn.eps
            if c.conv.bias is not None:     # BN(x + b) is BN with its mean moved down by b
                block.bn.running_mean -= c.conv.bias
        names = [*(name for name, _ in spec.hidden), spec.linear_name]
        for to, lin, name in zip(mine, linears, names):
            if to.weight.shape != lin.weight.shape:
                raise UnmappableModel(f"layer {name} takes {lin.in_features} inputs, the layer "
                                      f"before it gives {to.in_features}")
            to.weight.copy_(lin.weight)
            if lin.bias is not None:
                to.bias.copy_(lin.bias)
            else:
                to.bias.zero_()
    return net


# ----------------------------------------------------------------------------------------------
# the family check

@dataclass(frozen=True)
class ConvSpec:
    """One conv block as the hardware sees it (module names for error messages and export).

    source:   the feature map it reads (docs/arithmetic.md numbers them: 0 the input, conv i
              writes i + 1); None: the one before it
    relu:     False for a projection shortcut, whose output only feeds a residual addition
    residual: the feature map added before the ReLU, or None
    """

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    pool: bool
    name: str
    relu: bool = True
    source: int | None = None
    residual: int | None = None


@dataclass(frozen=True)
class NetSpec:
    """Conv blocks, then hidden linear layers with ReLU (name, module), then the classifier;
    `global_pool`: the first linear layer takes each channel's average."""

    convs: tuple[ConvSpec, ...]
    linear: nn.Linear
    linear_name: str
    hidden: tuple[tuple[str, nn.Linear], ...] = ()
    global_pool: bool = False

    @property
    def first_linear(self) -> nn.Linear | None:
        """The linear layer that reads the last conv layer's map: the first hidden one, or
        the classifier (None when the spec has no classifier)."""
        return self.hidden[0][1] if self.hidden else self.linear


def engine_spec(model: nn.Module) -> NetSpec:
    """The graph the engine's arithmetic runs for `model` (docs/arithmetic.md): `layer_specs`
    for the plain family, the residual graph of a ResNetCifar; else UnmappableModel."""
    if not isinstance(model, ResNetCifar):
        return layer_specs(model)
    convs = [ConvSpec(model.conv1, model.bn1, False, "conv1")]
    for b, block in enumerate(model.layers):
        x = len(convs)                  # the map the block reads
        name = f"layers.{b}"
        convs.append(ConvSpec(block.conv1, block.bn1, False, f"{name}.conv1", source=x))
        middle = len(convs)
        shortcut = x
        if len(block.shortcut):
            convs.append(ConvSpec(block.shortcut[0], block.shortcut[1], False, f"{name}.shortcut.0",
                                  relu=False, source=x))
            shortcut = len(convs)
        convs.append(ConvSpec(block.conv2, block.bn2, False, f"{name}.conv2", source=middle,
                              residual=shortcut))
    return NetSpec(tuple(convs), model.classifier, "classifier", global_pool=True)


def layer_specs(model: nn.Module) -> NetSpec:
    """Describe `model` as conv blocks, then an optional global average pool and linear layers
    (hidden ones each followed by ReLU, then the classifier), or raise UnmappableModel.

    The model must be a sequence of leaf modules in forward order (nested Sequentials and
    HardwareNet are); anything the accelerator cannot run is named in the error.
    """
    leaves = _leaves_in_order(model)
    convs: list[ConvSpec] = []
    linears: list[tuple[str, nn.Linear]] = []
    global_pool, classifier = False, False
    i = 0
    while i < len(leaves):
        name, m = leaves[i]
        if isinstance(m, nn.Conv2d):
            if linears or global_pool:
                raise UnmappableModel(f"layer {name}: a convolution after the linear layers")
            _check_conv(name, m)
            bn = None
            j = i + 1
            if j < len(leaves) and isinstance(leaves[j][1], nn.BatchNorm2d):
                bn = leaves[j][1]
                j += 1
            if j >= len(leaves) or not isinstance(leaves[j][1], nn.ReLU):
                raise UnmappableModel(f"layer {name}: a convolution must be followed by "
                                      f"[BatchNorm2d] and ReLU")
            j += 1
            pool = False
            if j < len(leaves) and isinstance(leaves[j][1], nn.MaxPool2d):
                _check_pool(*leaves[j])
                pool = True
                j += 1
            convs.append(ConvSpec(m, bn, pool, name))
            i = j
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            if m.output_size not in (1, (1, 1)) or not convs or linears or global_pool:
                raise UnmappableModel(f"layer {name} (AdaptiveAvgPool2d): only a global average "
                                      f"pool (output size 1) after the last convolution")
            global_pool = True
            i += 1
        elif isinstance(m, nn.Flatten):
            i += 1
        elif isinstance(m, nn.Linear):
            if classifier:
                raise UnmappableModel(f"layer {name}: a Linear layer after the classifier (a "
                                      f"hidden Linear layer is followed by ReLU)")
            linears.append((name, m))
            i += 1
            while i < len(leaves) and isinstance(leaves[i][1], (nn.Dropout, nn.Identity)):
                i += 1
            if i < len(leaves) and isinstance(leaves[i][1], nn.ReLU):
                i += 1          # a hidden layer
            else:
                classifier = True
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            i += 1
        else:
            raise UnmappableModel(f"layer {name} ({type(m).__name__}) is not in the hardware family "
                                  f"(Conv3x3 + BatchNorm + ReLU [+ MaxPool2x2], then [a global "
                                  f"average pool and] Linear layers, ReLU after all but the last)")
    if not convs:
        raise UnmappableModel("the model has no convolution")
    if not classifier:
        raise UnmappableModel("the model does not end in a Linear classifier"
                              + (" (its last Linear layer is followed by ReLU)" if linears else ""))
    return NetSpec(tuple(convs), linears[-1][1], linears[-1][0], tuple(linears[:-1]), global_pool)


def _leaves_in_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, (nn.Sequential, HardwareNet)):
        plain = (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten,
                 nn.Linear, nn.Dropout, nn.Identity, nn.AdaptiveAvgPool2d)
        odd = next((f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                    if n and not isinstance(m, plain)), None)
        first = next((n for n, _ in model.named_children()), type(model).__name__)
        raise UnmappableModel(f"model {type(model).__name__} has a custom forward (at {odd or first}); "
                              f"the hardware family is a plain sequence of layers (nn.Sequential)")
    leaves = []
    for name, m in model.named_modules():
        # a parametrized weight (stripe scales) hangs extra modules below its layer
        if "parametrizations" in name.split("."):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)) or len(list(m.children())) == 0:
            leaves.append((name, m))
    return leaves


def _check_conv(name: str, m: nn.Conv2d) -> None:
    problems = []
    if m.kernel_size != (3, 3):
        problems.append(f"kernel {m.kernel_size[0]}x{m.kernel_size[1]} (3x3 only)")
    if m.stride != (1, 1):
        problems.append(f"stride {m.stride[0]} (1 only)")
    if m.padding != (1, 1) or m.padding_mode != "zeros":
        problems.append(f"padding {m.padding} (zero padding 1 only)")
    if m.dilation != (1, 1):
        problems.append("dilation (none allowed)")
    if m.groups != 1:
        problems.append(f"groups={m.groups} (1 only)")
    if problems:
        raise UnmappableModel(f"layer {name} (Conv2d): " + "; ".join(problems))


def _check_pool(name: str, m: nn.MaxPool2d) -> None:
    k, s = m.kernel_size, m.stride
    if k not in (2, (2, 2)) or s not in (2, (2, 2)) or m.padding not in (0, (0, 0)) or m.ceil_mode:
        raise UnmappableModel(f"layer {name} (MaxPool2d): only 2x2 pooling with stride 2 is supported")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
