"""Training and evaluation on uint8 data sets, deterministic for a given seed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from prunefab.errors import PrunefabError
from prunefab import progress as _progress
from prunefab.sw import distributed
from prunefab.sw.artifact import write_atomic
from prunefab.sw.data import Dataset

# (model, output loss, progress in 0..1) -> extra loss
Penalty = Callable[[nn.Module, torch.Tensor, float], torch.Tensor]
# (model) -> None, called between backward and the optimizer step (gradient masking)
AfterBackward = Callable[[nn.Module], None]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero while training, then restore the mode found.

    Denormals (nonzero floats below 1.2e-38) cost a CPU's float unit tens of cycles each.  A
    pruned entry whose optimizer momentum decays geometrically lands there within a few hundred
    steps (SWP's skeleton: an entry zeroed at every step is moved again by its decaying momentum,
    and every weight of its stripe is scaled by it), and training then ran ten times slower.
    Flushed, such values are zero, which is what they stand for.  The mode is the processor's,
    global to the thread, hence restored on the way out.  (On a CPU without it, nothing changes.)
    """
    was = float(torch.tensor([1e-39]) * 1.0) == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


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


class Update(str, Enum):
    """The update rule and the shape of its learning-rate schedule."""

    ADAM_ONE_CYCLE = "adam"   # Adam, one-cycle: warm-up over the first quarter, then cosine down
    SGD_STEP = "sgd"          # SGD with momentum, the rate times `gamma` at each milestone
    SGD_ONE_CYCLE = "sgd-one-cycle"   # SGD with momentum (held), one-cycle like ADAM_ONE_CYCLE


@dataclass(frozen=True)
class Regime:
    """How training runs, besides its epochs, peak learning rate and batch size.

    milestones are fractions of the run's epochs (SGD_STEP): (0.5, 0.75) of 160 epochs divides
    the rate at epochs 80 and 120, the usual CIFAR schedule.  augment: each training image is
    shifted by up to 4 pixels (zero padding) and flipped left-right half of the time, drawn
    from the seed and the epoch (the usual CIFAR augmentation).
    """

    update: Update = Update.ADAM_ONE_CYCLE
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    augment: bool = False

    def __post_init__(self):
        object.__setattr__(self, "update", Update(self.update))
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"weight decay must be >= 0 and momentum in [0, 1), not "
                             f"{self.weight_decay} and {self.momentum}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the epochs in (0, 1), not {self.milestones}")

    def build(self, params, lr: float, epochs: int, steps_per_epoch: int):
        """(optimizer, scheduler stepped once per step)."""
        if self.update is Update.ADAM_ONE_CYCLE:
            opt = torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
            return opt, torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25)
        opt = torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.update is Update.SGD_ONE_CYCLE:
            return opt, torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25,
                cycle_momentum=False)
        steps = sorted({round(m * epochs) * steps_per_epoch for m in self.milestones})
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, steps, gamma=self.gamma)


class Stateful(Protocol):
    """Anything whose state a resumed run must restore (a pruning method's running statistics)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _local_batches(data: Dataset, batch_size: int, seed: int, device: torch.device, augment: bool):
    """This rank's part of each global batch of `batches(data, batch_size, True, seed)`.

    The augmentation of every image of the epoch is drawn before the split, so it does not
    depend on the number of ranks.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    if augment:
        shifts = rng.integers(-4, 5, size=(len(data), 2))
        flips = rng.random(len(data)) < 0.5
    for start in range(0, len(order), batch_size):
        positions = distributed.shard(np.arange(start, min(start + batch_size, len(order))))
        images = data.images[order[positions]]
        if augment:
            images = _shift_and_flip(images, shifts[positions], flips[positions])
        yield (to_float(images).to(device), torch.from_numpy(data.labels[order[positions]]).to(device),
               min(batch_size, len(order) - start))


def _shift_and_flip(images: np.ndarray, shifts: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Each image moved by (dy, dx) with zeros shifted in, then mirrored where flips says."""
    h, w = images.shape[2:]
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, :, 4 + dy:4 + dy + h, 4 + dx:4 + dx + w]
    out[flips] = out[flips][..., ::-1]
    return out


def train(model: nn.Module, data: Dataset, epochs: int, *, lr: float = 3e-3,
          batch_size: int = 128, seed: int = 0, penalty: Penalty | None = None,
          desc: str = "train", progress: bool = True, regime: Regime = Regime(),
          state: str | os.PathLike | None = None, extra: Stateful | None = None,
          after_backward: AfterBackward | None = None) -> list[float]:
    """Train for `epochs`; returns the mean output loss of each epoch.

    Runs on the device and ranks of `distributed.current()`: under torchrun every rank takes its
    share of each global batch of `batch_size` and the result is that of one process (see
    sw/distributed.py).  `state`: a training-state file; after every epoch the main rank writes
    the model, optimizer, schedule, epoch and `extra`'s state there, and a run that finds the
    file continues after its last epoch.  The model is back on the CPU on return.
    """
    if epochs <= 0:
        return []
    ctx = distributed.current()
    model.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = (len(data) + batch_size - 1) // batch_size
    opt, sched = regime.build(params, lr, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp)
    run = {"desc": desc, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
           "images": len(data), "update": regime.update.value, "augment": regime.augment}
    losses: list[float] = []
    first = 0
    found = distributed.everywhere(state is not None and Path(state).exists())
    if found is None:
        raise CheckpointError(f"{state}: a training state some ranks see and others do not; with "
                              f"--resume on several nodes the output must be on a shared file system")
    if found:
        first, losses = _load_state(state, run, model, opt, sched, scaler, extra)
    total = epochs * steps_per_epoch
    step = first * steps_per_epoch
    net = distributed.wrap(model)
    try:
        with distributed.global_batchnorm(model), denormals_flushed():
            for epoch in range(first, epochs):
                model.train()
                running, n = 0.0, 0
                bar = _progress.bar(
                    _local_batches(data, batch_size, seed * 1000 + epoch, ctx.device, regime.augment),
                    total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch",
                    enabled=progress and ctx.is_main)
                for x, y, count in bar:
                    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
                        logits = net(x)
                    loss, out_loss = distributed.batch_loss(logits, y, count)
                    if penalty is not None:
                        loss = loss + penalty(model, out_loss, step / max(total - 1, 1))
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if after_backward is not None:
                        scaler.unscale_(opt)
                        after_backward(model)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    step += 1
                    running += float(out_loss.detach()) * count
                    n += count
                    bar.set_postfix(loss=f"{running / n:.3f}", refresh=False)
                losses.append(running / max(n, 1))
                if state is not None:
                    _save_state(state, run, epoch + 1, losses, model, opt, sched, scaler, extra)
    finally:
        del net
        model.eval()
        model.to("cpu")
    return losses


def remove_state(path: str | os.PathLike | None) -> None:
    """Drop a training state once its run is written (main rank)."""
    if path is not None and distributed.current().is_main:
        Path(path).unlink(missing_ok=True)


def _save_state(path, run: dict, epoch: int, losses: list[float], model: nn.Module, opt, sched,
                scaler, extra: Stateful | None) -> None:
    if not distributed.current().is_main:
        return
    run_text = json.dumps(run, sort_keys=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"run": run_text, "epoch": epoch, "losses": losses, "model": weights,
                "sha256": checkpoint_digest(run_text, str(epoch), weights),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "extra": extra.state_dict() if extra else {}}, buf)
    write_atomic(path, buf.getvalue())


def _load_state(path, run: dict, model: nn.Module, opt, sched, scaler, extra: Stateful | None
                ) -> tuple[int, list[float]]:
    """Restore a training state written by _save_state; (epochs done, their losses)."""
    try:
        blob = torch.load(path, map_location=distributed.current().device, weights_only=True)
        saved = json.loads(blob["run"])
        intact = blob["sha256"] == checkpoint_digest(blob["run"], str(blob["epoch"]), blob["model"])
    except Exception as e:  # any defect of an untrusted file becomes one line
        raise CheckpointError(f"{path}: not a prunefab training state ({_first_line(e)})") from None
    if not intact:
        raise CheckpointError(f"{path}: checksum mismatch: the training state is damaged or was "
                              f"altered; remove it to start afresh")
    if saved != run:
        diff = ", ".join(f"{k} {saved.get(k)} != {v}" for k, v in run.items() if saved.get(k) != v)
        raise CheckpointError(f"{path}: a training state of another run ({diff}); remove it to "
                              f"start afresh")
    try:
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        if extra is not None:
            extra.load_state_dict(blob["extra"])
    except Exception as e:
        raise CheckpointError(f"{path}: training state does not fit this run ({_first_line(e)})") from None
    return int(blob["epoch"]), [float(v) for v in blob["losses"]]


def _first_line(e: Exception) -> str:
    return str(e).split(". ")[0].splitlines()[0] if str(e) else type(e).__name__


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    steps = _progress.bar(batches(data, batch_size, False), total=-(-len(data) // batch_size),
                          desc="evaluating", unit="batch")
    out = [model(x).argmax(dim=1).numpy() for x, _ in steps]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, data: Dataset) -> float:
    return float((predict(model, data) == data.labels).mean())


# ----------------------------------------------------------------------------------------------
# checkpoints: a state dict plus the model's constructor arguments, loaded without pickle code,
# with a SHA-256 over everything prunefab wrote (docs/format.md, "Checkpoints")

class CheckpointError(PrunefabError, ValueError):
    """A checkpoint cannot be read or written; one line naming the file."""


_CHECKPOINT_KEYS = frozenset({"config", "extra", "state_dict", "sha256"})


def checkpoint_digest(config: str, extra: str, state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()

    def add(raw: bytes) -> None:
        h.update(len(raw).to_bytes(8, "little") + raw)

    add(config.encode())
    add(extra.encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        add(name.encode())
        add(f"{t.dtype} {list(state[name].shape)}".encode())
        add(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a state dict holding NaN or infinity, naming the first such tensor."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{where}: tensor {name} holds {bad} non-finite value"
                                  f"{'s' if bad != 1 else ''} (NaN or infinity)")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra) -> None:
    """Write the state dict, constructor arguments and their SHA-256 atomically (torch.save,
    tensors and strings only).

    Under torchrun only the main rank writes.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise CheckpointError(f"{path}: only HardwareNet and ResNetCifar models can be saved as "
                              f"checkpoints")
    if not distributed.current().is_main:
        return
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    check_finite(state, f"{path}: not written")
    config_text, extra_text = json.dumps(config, sort_keys=True), json.dumps(extra, sort_keys=True)
    buf = io.BytesIO()
    torch.save({"config": config_text, "extra": extra_text, "state_dict": state,
                "sha256": checkpoint_digest(config_text, extra_text, state)}, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike):
    """(model, extra) from a checkpoint written by save_checkpoint; a damaged or altered file
    (checksum mismatch), a non-finite weight, or anything else wrong raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        keys = set(blob) if isinstance(blob, dict) else None
        if keys not in (_CHECKPOINT_KEYS, _CHECKPOINT_KEYS - {"sha256"}):
            raise ValueError(f"holds {sorted(keys) if keys else type(blob).__name__}, not "
                             f"{', '.join(sorted(_CHECKPOINT_KEYS))}")
        config_text, extra_text, state = blob["config"], blob["extra"], blob["state_dict"]
        digest = checkpoint_digest(config_text, extra_text, state)
    except Exception as e:  # any defect of an untrusted file becomes one line
        raise CheckpointError(f"{path}: not a prunefab checkpoint ({_first_line(e)})") from None
    if "sha256" not in blob:
        print(f"prunefab: warning: {path} has no checksum (written before checkpoints carried one), "
              f"so damage to it cannot be detected; train it again to replace it", file=sys.stderr)
    elif blob["sha256"] != digest:
        raise CheckpointError(f"{path}: checksum mismatch: the checkpoint is damaged or was altered; "
                              f"train it again")
    check_finite(state, str(path))
    try:
        model, extra = _model_from_config(json.loads(config_text)), json.loads(extra_text)
        model.load_state_dict(state)
    except Exception as e:  # an old unchecked file can still be malformed
        raise CheckpointError(f"{path}: not a prunefab checkpoint ({_first_line(e)})") from None
    model.eval()
    return model, extra


def _model_from_config(config: dict) -> nn.Module:
    from prunefab.sw.models import HardwareNet, ResNetCifar
    if config.get("architecture") == "resnet":
        return ResNetCifar(config["depth"], config["num_classes"],
                           tuple(config.get("input_shape", (3, 32, 32))))
    return HardwareNet(tuple(config["input_shape"]), tuple(config["channels"]),
                       tuple(config["pools"]), config["num_classes"],
                       tuple(config.get("hidden", ())), bool(config.get("global_pool", False)))
