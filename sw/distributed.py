"""Training on several processes: torchrun, DistributedDataParallel and what every rank must agree on.

One process is the default and changes nothing.  Under `torchrun` (WORLD_SIZE > 1) `setup` joins
the process group (gloo on CPU, NCCL on GPU) and the training loop (`sw/train.py`) then

* splits every global batch of the single-process order across the ranks (`shard`), so N
  processes see exactly the batches one process would see, and scales each rank's summed loss
  so that DistributedDataParallel's gradient average is the global batch's mean;
* normalizes with statistics of the whole global batch (`global_batchnorm`), so BatchNorm's
  output and its running statistics are those of one process, identical on every rank;
* hands penalties the global batch's output loss (`batch_loss`), so an adaptive penalty (IESSP)
  steps identically everywhere, and averages what a method measures on activations over the
  global batch (`mean_over_batch`: IESSP's information extraction).

Only the main rank (rank 0) writes files.  `torchrun_command` builds the launch line for a job
of several processes or nodes (sweeps run each point as one such job).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol

from prunefab.errors import PrunefabError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Context:
    """Where this process trains: its rank among `world_size`, its device, mixed precision."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes checkpoints, artifacts and reports."""
        return self.rank == 0


_context = Context()


class DeviceError(PrunefabError, ValueError):
    """The device asked for is not there; one line."""


def current() -> Context:
    return _context


def _device(name: str, local_rank: int) -> torch.device:
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device is visible to this process")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto", amp: bool = False) -> Context:
    """This process's context, joining torchrun's process group when there is one.

    torchrun describes the job in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); without it this is one process of one.  Mixed precision (`amp`) runs only on
    CUDA: on a CPU it is refused rather than silently ignored.
    """
    global _context
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    if amp and dev.type != "cuda":
        raise DeviceError("--amp needs a CUDA device (mixed precision runs on GPUs only); drop --amp "
                          "or train with --device cuda")
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(teardown)
    _context = Context(rank, world, local_rank, dev, amp)
    return _context


def teardown(together: bool = False) -> None:
    """Leave the process group (if any) and return to one process on the CPU.

    `together` (a command that ended normally) first waits at a barrier, so every rank destroys
    the group at the same point: a rank that leaves while its peer still works (rank 0 measuring
    test accuracy, writing a file) can otherwise abort in gloo's shutdown.  After an error there
    is no barrier: the peers may be inside another collective, and this rank leaves at once.
    """
    global _context
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
    _context = Context()


def shard(indices: np.ndarray, ctx: Context | None = None) -> np.ndarray:
    """This rank's part of one global batch: contiguous, sizes differing by at most one."""
    ctx = ctx or _context
    if not ctx.distributed:
        return indices
    return np.array_split(indices, ctx.world_size)[ctx.rank]


def wrap(model: nn.Module, ctx: Context | None = None) -> nn.Module:
    """The module the training step calls: DistributedDataParallel across ranks, else the model.

    DDP broadcasts rank 0's parameters and buffers (masks included) when it is built and its
    buffers before every forward, so a rank can never run on diverged state.
    """
    ctx = ctx or _context
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, global_count: int,
               ctx: Context | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to differentiate, the global batch's mean output loss).

    One process: the mean cross entropy, both times.  Several: this rank's summed loss times
    world_size / global_count, so DDP's average of the ranks' gradients is the gradient of the
    global batch's mean loss; and that mean itself, gathered from every rank, detached.
    """
    ctx = ctx or _context
    logits = logits.float()             # float16 logits under --amp; a no-op otherwise
    if not ctx.distributed:
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, loss
    local = nn.functional.cross_entropy(logits, labels, reduction="sum")
    total = local.detach().clone()
    dist.all_reduce(total)
    return local * (ctx.world_size / global_count), total / global_count


def mean_over_batch(t: torch.Tensor, dim: Sequence[int]) -> torch.Tensor:
    """`t.mean(dim)` over the global batch, on every rank (dim includes the batch dimension 0)."""
    if not _context.distributed:
        return t.mean(dim=tuple(dim))
    total = t.sum(dim=tuple(dim))
    count = torch.tensor([float(np.prod([t.shape[d] for d in dim]))], device=t.device)
    stats = torch.cat([total.reshape(-1).float(), count])
    dist.all_reduce(stats)
    return (stats[:-1] / stats[-1]).reshape(total.shape).to(t.dtype)


def broadcast_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite the tensors in place with rank 0's (no-op on one process)."""
    if not _context.distributed:
        return
    for t in tensors:
        on_device = t.to(_context.device)        # NCCL moves GPU tensors only
        dist.broadcast(on_device, src=0)
        t.copy_(on_device)


def everywhere(flag: bool) -> bool | None:
    """True if the flag holds on every rank, False if on none, None if the ranks disagree."""
    if not _context.distributed:
        return flag
    votes = torch.tensor([float(flag), -float(flag)], device=_context.device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)     # (any, -all)
    return {(1.0, -1.0): True, (0.0, 0.0): False}.get((float(votes[0]), float(votes[1])))


def barrier() -> None:
    if _context.distributed:
        dist.barrier()


def _summed(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over the ranks; its gradient is the sum of the ranks' gradients."""
    return funcol.wait_tensor(funcol.all_reduce(t, "sum", dist.group.WORLD))


class _GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all ranks.

    torch's SyncBatchNorm refuses CPU tensors, and `convert_sync_batchnorm` builds new modules,
    which would drop the masks and parametrizations pruning methods hold on the old ones; this
    class is swapped onto the existing modules for the length of a training run instead.
    The statistics come from two all-reduces (sums, then centred squares) whose backward passes
    all-reduce the gradients, so each rank's gradient holds every rank's contribution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        xf = x.float()
        dims = (0, 2, 3)
        count = torch.full((1,), float(x.numel() // x.shape[1]), device=x.device)
        sums = _summed(torch.cat([xf.sum(dim=dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = xf - mean.reshape(1, -1, 1, 1)
        var = _summed(centred.pow(2).sum(dim=dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        y = centred * torch.rsqrt(var + self.eps).reshape(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return y.to(x.dtype)


@contextlib.contextmanager
def global_batchnorm(model: nn.Module, ctx: Context | None = None) -> Iterator[None]:
    """Within the block, the model's BatchNorm2d layers normalize with global batch statistics."""
    ctx = ctx or _context
    swapped = []
    if ctx.distributed:
        for m in model.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = _GlobalBatchNorm2d
                swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


def torchrun_command(args: Sequence[str], nproc_per_node: int = 1, *, nnodes: int = 1,
                     node_rank: int = 0, master_addr: str | None = None, master_port: int = 29500,
                     python: str = sys.executable) -> list[str]:
    """The command line running `prunefab ARGS` as one torchrun job.

    One node: a standalone rendezvous on this machine (master_addr, if given, pins its address
    and master_port its port).  Several nodes: run the same line on each with its own node_rank,
    master_addr naming node 0.
    """
    if nproc_per_node < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"a torchrun job needs nproc_per_node >= 1, nnodes >= 1 and node_rank in "
                         f"0..{nnodes - 1}, not {nproc_per_node}, {nnodes}, {node_rank}")
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and master_addr is None:
        cmd.append("--standalone")
    else:
        if master_addr is None:
            raise ValueError("a job on several nodes needs master_addr (the address of node 0)")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                f"--master-port={master_port}"]
    return cmd + ["-m", "prunefab", *map(str, args)]
