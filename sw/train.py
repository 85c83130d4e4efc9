"""Training and evaluation on uint8 data sets, deterministic for a given seed."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prunefab.sw.artifact import write_atomic
from prunefab.sw.data import Dataset

# (model, output loss, progress in 0..1) -> extra loss
Penalty = Callable[[nn.Module, torch.Tensor, float], torch.Tensor]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 images -> float tensor in [0, 1], the input scale 1/255 of docs/arithmetic.md."""
    return torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)


def batches(data: Dataset, batch_size: int, shuffle: bool, seed: int = 0
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = (np.random.default_rng(seed).permutation(len(data)) if shuffle
             else np.arange(len(data)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield to_float(data.images[idx]), torch.from_numpy(data.labels[idx])


def train(model: nn.Module, data: Dataset, epochs: int, *, lr: float = 3e-3,
          batch_size: int = 128, seed: int = 0, penalty: Penalty | None = None,
          desc: str = "train", progress: bool = True) -> list[float]:
    """Adam with a one-cycle schedule; returns the mean output loss of each epoch."""
    if epochs <= 0:
        return []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25)
    losses = []
    total = epochs * steps_per_epoch
    step = 0
    for epoch in range(epochs):
        model.train()
        running, n = 0.0, 0
        bar = tqdm(batches(data, batch_size, True, seed * 1000 + epoch), total=steps_per_epoch,
                   desc=f"{desc} {epoch + 1}/{epochs}", disable=None if progress else True, leave=False,
                   dynamic_ncols=True)
        for x, y in bar:
            out_loss = nn.functional.cross_entropy(model(x), y)
            loss = out_loss
            if penalty is not None:
                loss = loss + penalty(model, out_loss, step / max(total - 1, 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += float(out_loss.detach()) * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{running / n:.3f}", refresh=False)
        losses.append(running / max(n, 1))
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(x).argmax(dim=1).numpy() for x, _ in batches(data, batch_size, False)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, data: Dataset) -> float:
    return float((predict(model, data) == data.labels).mean())


# ----------------------------------------------------------------------------------------------
# checkpoints: a state dict plus the model's constructor arguments, loaded without pickle code

class CheckpointError(ValueError):
    """A checkpoint cannot be read; one line naming the file."""


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra) -> None:
    """Write the state dict and constructor arguments atomically (torch.save, tensors only)."""
    config = getattr(model, "config", None)
    if config is None:
        raise CheckpointError(f"{path}: only HardwareNet models can be saved as checkpoints")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"config": json.dumps(config, sort_keys=True), "extra": json.dumps(extra, sort_keys=True),
                "state_dict": state}, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike):
    """(model, extra) from a checkpoint written by save_checkpoint."""
    from prunefab.sw.models import HardwareNet
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        config = json.loads(blob["config"])
        extra = json.loads(blob.get("extra", "{}"))
        model = HardwareNet(tuple(config["input_shape"]), tuple(config["channels"]),
                            tuple(config["pools"]), config["num_classes"])
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # any defect of an untrusted file becomes one line
        first = str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a prunefab checkpoint ({first})") from None
    model.eval()
    return model, extra
