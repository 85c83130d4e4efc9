"""The demo's software steps: the reference network trained, or pruned with one method, then
quantized, written as an artifact and evaluated; each step returns the row the demo's table,
results.json and report show (a plain dict, so that a reused step's row reads back from JSON)."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from prunefab.sw import artifact, models
from prunefab.sw.data import Dataset
from prunefab.sw.pipeline import Budget, evaluate, prune, quantize_model
from prunefab.sw.train import save_checkpoint, seed_everything, train

# The reference network: the hardware family's three 3x3 conv layers (pooling after the first
# and the last), then the classifier.
CHANNELS = (8, 16, 32)
POOLS = (True, False, True)


def train_dense(train_set: Dataset, budget: Budget, seed: int, progress: bool = True) -> nn.Module:
    """The reference network trained on `train_set` for `budget.train_epochs` epochs."""
    seed_everything(seed)
    model = models.HardwareNet(train_set.shape, CHANNELS, POOLS, len(train_set.classes))
    train(model, train_set, budget.train_epochs, lr=budget.lr, batch_size=budget.batch_size,
          seed=seed, desc="dense", progress=progress)
    return model


def prune_method(dense: nn.Module, method: str, train_set: Dataset, flops_cut: float,
                 budget: Budget, seed: int, progress: bool = True) -> nn.Module:
    """A pruned copy of `dense` (sw/pipeline.py's `prune`)."""
    return prune(dense, method, train_set, flops_cut, budget, seed=seed, progress=progress)


def export(name: str, model: nn.Module, train_set: Dataset, test_set: Dataset, budget: Budget,
           out_dir: Path, data_name: str, seed: int, started: float, **extra) -> dict:
    """Write `<name>.pt` and `<name>.pfab` into `out_dir` (with `extra`, the checkpoint's
    metadata: a pruned network's `method` and `flops_cut`, recorded in the artifact too) and
    return the network's row: cuts, float and int8 accuracy, encoding, seconds since `started`."""
    save_checkpoint(model, out_dir / f"{name}.pt", data=data_name, seed=seed, **extra)
    qnet = quantize_model(model, train_set, budget)
    artifact.save(qnet, out_dir / f"{name}.pfab", data=data_name, pruning=artifact.Pruning.of(extra))
    ev = evaluate(name, model, test_set, qnet)
    return {"method": name, "float_accuracy": ev.float_accuracy, "int8_accuracy": ev.int8_accuracy,
            "conv_flops_cut": ev.counts.conv_flops_cut, "parameter_cut": ev.counts.parameter_cut,
            "conv_flops": ev.counts.conv_flops, "parameters": ev.counts.parameters,
            "index_bits_per_conv_nonzero": ev.encoding.conv_index_bits_per_nonzero,
            "artifact_bytes": ev.encoding.file_bytes, "test_images": len(test_set),
            "seconds": time.perf_counter() - started}


def table(rows: list[dict]) -> str:
    """Method, cuts, float and int8 accuracy (and int8 against the dense float model, in
    points), index bits per conv nonzero, artifact size, time; the first row is the baseline."""
    head = (f"{'method':<10}{'conv-FLOPs cut':>15}{'param cut':>11}{'float acc':>11}{'int8 acc':>10}"
            f"{'vs dense':>10}{'idx bits/nz':>12}{'artifact':>10}{'time':>7}")
    lines = [head]
    base = rows[0]["float_accuracy"] if rows else 0.0
    for r in rows:
        lines.append(
            f"{r['method']:<10}{r['conv_flops_cut']:>15.1%}{r['parameter_cut']:>11.1%}"
            f"{r['float_accuracy']:>11.2%}{r['int8_accuracy']:>10.2%}"
            f"{(r['int8_accuracy'] - base) * 100:>+9.2f}p{r['index_bits_per_conv_nonzero']:>12.2f}"
            f"{r['artifact_bytes']:>9}B{r['seconds']:>6.0f}s")
    return "\n".join(lines)
