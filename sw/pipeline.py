"""The software pipeline end to end: train, prune, quantize, encode, evaluate.

Each step is a plain function; the CLI and the demo are thin layers over them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from prunefab.sw import artifact, distributed, reference
from prunefab.sw.data import DataError, Dataset
from prunefab.sw.flops import NetCount, count
from prunefab.sw.prune import PruningMethod, apply_masks, bake, make
from prunefab.sw.prune.kep import KernelElementPruning
from prunefab.sw.qnet import QuantizedNetwork
from prunefab.sw.quantize import quantize
from prunefab.sw.train import Regime, Update, accuracy, batches, remove_state, seed_everything, train

# The common regime of every pruning method's sparsity and fine-tune phases: SGD with momentum
# 0.9 and weight decay 1e-4 on every parameter (the SWP and L1-norm filter references' optimizer)
# under a one-cycle schedule (docs/pruning.md).
PRUNE_REGIME = Regime(Update.SGD_ONE_CYCLE, momentum=0.9, weight_decay=1e-4)


@dataclass(frozen=True)
class Budget:
    """Training budget of one run, in epochs over the training set.

    Dense training uses `regime` at `lr`.  The pruning phases use `prune_regime`, peaking at
    `prune_lr` in the sparsity phase and at `finetune_lr` in the fine-tune phase, the same for
    every method.
    """

    train_epochs: int = 3          # dense training
    sparsity_epochs: int = 2       # penalty-driven phase (KEP, IESSP, SWP)
    finetune_epochs: int = 3       # after the hard prune
    lr: float = 3e-3
    batch_size: int = 128
    calibration_images: int = 2000
    regime: Regime = Regime()
    prune_regime: Regime = PRUNE_REGIME
    prune_lr: float = 0.05
    finetune_lr: float = 0.02

    def __post_init__(self):
        for name in ("train_epochs", "sparsity_epochs", "finetune_epochs", "batch_size",
                     "calibration_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"budget {name} must be >= 0, not {getattr(self, name)}")


def prune(model: nn.Module, method: PruningMethod | str, data: Dataset, flops_cut: float,
          budget: Budget = Budget(), seed: int = 0, progress: bool = True, state: str | None = None,
          **options) -> nn.Module:
    """A pruned copy of a trained model: sparsity phase, hard prune, fine-tune, masks baked.

    A method that does not fine-tune (SWP in its reference mode) spends the fine-tune epochs in
    its sparsity phase and prunes at the end; one that does not follow the target (the same)
    stops at its own threshold, whatever cut that gives.

    state: prefix of the training-state files (`<state>.sparsity-state`, `<state>.finetune-state`)
    from which an interrupted run continues (see `train`).
    """
    method = make(method, **options) if isinstance(method, str) else method
    model = copy.deepcopy(model)
    seed_everything(seed)
    if isinstance(method, KernelElementPruning):
        method.set_target(flops_cut)
    calib = list(batches(data.subset(2000), 500, shuffle=False))
    method.prepare(model, calib)
    finetune_epochs = budget.finetune_epochs if method.fine_tunes else 0
    if method.wants_sparsity_phase:
        train(model, data, budget.sparsity_epochs + budget.finetune_epochs - finetune_epochs,
              lr=budget.prune_lr, batch_size=budget.batch_size, seed=seed + 1, penalty=method.penalty,
              after_backward=method.after_backward, desc=f"{method.name} sparsity", progress=progress,
              regime=budget.prune_regime, state=state and f"{state}.sparsity-state", extra=method)
    masks = method.compute_masks(model, flops_cut)
    distributed.broadcast_tensors(list(masks.values()))    # every rank prunes rank 0's choice
    method.finalize(model)
    apply_masks(masks)
    train(model, data, finetune_epochs, lr=budget.finetune_lr, batch_size=budget.batch_size,
          seed=seed + 2, desc=f"{method.name} fine-tune", progress=progress,
          regime=budget.prune_regime, state=state and f"{state}.finetune-state")
    bake(model)
    if state is not None:
        remove_state(f"{state}.sparsity-state")
        remove_state(f"{state}.finetune-state")
    return model


def quantize_model(model: nn.Module, data: Dataset, budget: Budget = Budget()) -> QuantizedNetwork:
    return quantize(model, data.subset(budget.calibration_images))


@dataclass(frozen=True)
class Evaluation:
    """Accuracy, cost and encoding of one network."""

    name: str
    float_accuracy: float
    int8_accuracy: float | None
    counts: NetCount
    encoding: artifact.EncodingStats | None
    seconds: float = 0.0


def check_data(where: str, input_shape, classes: int, data: Dataset, data_name: str) -> None:
    """Refuse, in one line (DataError), data a network cannot take: images of another shape, or
    labels beyond its classes.  `where` names the network (its file)."""
    if tuple(data.shape) != tuple(input_shape):
        raise DataError(f"{where}: the network takes {'x'.join(map(str, input_shape))} images, "
                        f"{data_name} has {'x'.join(map(str, data.shape))}")
    top = int(data.labels.max()) if len(data) else -1
    if top >= classes:
        raise DataError(f"{where}: the network has {classes} classes, {data_name} has labels up to {top}")


def cuts(model: nn.Module) -> str:
    """`conv-FLOPs cut X%, parameters cut Y%` of a pruned model; the conv-FLOPs cut alone for a
    model outside the hardware family (ResNet-56)."""
    from prunefab.sw.models import HardwareNet
    from prunefab.sw.prune.base import conv_flops, dense_conv_flops
    if not isinstance(model, HardwareNet):
        return f"conv-FLOPs cut {1 - conv_flops(model) / dense_conv_flops(model):.1%}"
    c = count(model)
    return f"conv-FLOPs cut {c.conv_flops_cut:.1%}, parameters cut {c.parameter_cut:.1%}"


def int8_accuracy(qnet: QuantizedNetwork, test: Dataset) -> float:
    """Accuracy of the integer reference on `test`."""
    return float((reference.classify(qnet, test.images) == test.labels).mean())


def evaluate(name: str, model: nn.Module, test: Dataset, qnet: QuantizedNetwork | None = None
             ) -> Evaluation:
    int_acc = enc = None
    if qnet is not None:
        int_acc = int8_accuracy(qnet, test)
        enc = artifact.stats(artifact.encode(qnet))
    return Evaluation(name, accuracy(model, test), int_acc, count(model), enc)


@dataclass(frozen=True)
class ArtifactEvaluation:
    """The integer reference's accuracy on an artifact, and its encoding."""

    accuracy: float
    images: int
    seconds: float              # in the integer reference
    encoding: artifact.EncodingStats


def evaluate_artifact(art: artifact.Artifact, test: Dataset) -> ArtifactEvaluation:
    t = time.perf_counter()
    acc = int8_accuracy(art.network, test)
    return ArtifactEvaluation(acc, len(test), time.perf_counter() - t,
                              artifact.stats(artifact.encode(art.network, art.data, art.pruning)))


def sparsity_table(qnet: QuantizedNetwork) -> str:
    """Per conv layer of a quantized network: weight shape, nonzeros, sparsity."""
    rows = []
    for i, layer in enumerate(qnet.convs):
        nz = int((layer.weights != 0).sum())
        rows.append(f"conv{i:<3}{'x'.join(map(str, layer.weights.shape)):>14}  nonzeros {nz:>7}  "
                    f"sparsity {1 - nz / layer.weights.size:6.1%}")
    return "\n".join(rows)


def requantization_table(qnet: QuantizedNetwork) -> str:
    """Per conv layer: output scale and the range of its requantization factors M / 2^s."""
    rows = []
    for i, layer in enumerate(qnet.convs):
        factor = layer.multiplier / 2.0 ** layer.shift
        rows.append(f"conv{i}: output scale {qnet.activation_scales[i + 1]:.5f}, requantization "
                    f"M/2^s in [{factor.min():.3g}, {factor.max():.3g}]")
    return "\n".join(rows)


def layer_table(ev: Evaluation) -> str:
    """Per-layer shapes, nonzeros, sparsity and FLOPs."""
    rows = [f"{'layer':<16}{'shape':>18}{'nonzeros':>10}{'sparsity':>10}{'MFLOPs':>9}"]
    for c in (*ev.counts.convs, ev.counts.linear):
        rows.append(f"{c.name:<16}{'x'.join(map(str, c.shape)):>18}{c.nonzeros:>10}"
                    f"{c.sparsity:>10.1%}{c.flops / 1e6:>9.3f}")
    return "\n".join(rows)


def summary_table(rows: list[Evaluation], baseline: Evaluation) -> str:
    """The demo's table: method, cuts, accuracies, index bits per nonzero."""
    head = (f"{'method':<10}{'conv-FLOPs cut':>15}{'param cut':>11}{'float acc':>11}{'int8 acc':>10}"
            f"{'vs dense':>10}{'idx bits/nz':>12}{'artifact':>10}{'time':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        delta = (r.int8_accuracy - baseline.float_accuracy) * 100 if r.int8_accuracy is not None else 0.0
        lines.append(
            f"{r.name:<10}{r.counts.conv_flops_cut:>15.1%}{r.counts.parameter_cut:>11.1%}"
            f"{r.float_accuracy:>11.2%}{(r.int8_accuracy or 0):>10.2%}{delta:>+9.2f}p"
            f"{r.encoding.conv_index_bits_per_nonzero if r.encoding else 0:>12.2f}"
            f"{(r.encoding.file_bytes if r.encoding else 0):>9}B{r.seconds:>6.0f}s")
    return "\n".join(lines)
