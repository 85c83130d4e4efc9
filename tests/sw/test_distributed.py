"""Two gloo processes under torchrun train and prune exactly as one process with the same global batch.

The test runs this file as torchrun's worker script (see the bottom): each rank runs the same
three runs as the single process of the test and writes its final weights.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunefab.sw import distributed
from prunefab.sw.data import synthetic
from prunefab.sw.models import HardwareNet
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.train import seed_everything, train

BATCH = 32          # global batch; 200 images make 7 steps an epoch, the last one of 8 images


def _runs() -> dict[str, dict[str, torch.Tensor]]:
    """Plain training (3 epochs), then KEP and IESSP pruning of its result (1 + 1 epochs each);
    and one epoch whose last batch is a single image, so that one rank has none."""
    seed_everything(0)
    uneven = HardwareNet((3, 32, 32), (4, 8), (True, True), 10)
    train(uneven, synthetic(193, shape=(3, 32, 32), classes=10), 1, batch_size=BATCH, progress=False)
    data = synthetic(200, shape=(3, 32, 32), classes=10)
    seed_everything(0)
    model = HardwareNet((3, 32, 32), (4, 8), (True, True), 10)
    train(model, data, 3, batch_size=BATCH, progress=False)
    out = {"uneven": uneven.state_dict(), "train": model.state_dict()}
    budget = Budget(sparsity_epochs=1, finetune_epochs=1, batch_size=BATCH)
    for method in ("kep", "iessp"):
        out[method] = prune(model, method, data, 0.6, budget, progress=False).state_dict()
    return {run: {k: v.detach().clone() for k, v in sd.items()} for run, sd in out.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    return _runs()


def test_two_gloo_ranks_match_one_process(single, tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", __file__, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for run in ("uneven", "train", "kep", "iessp"):
        assert ranks[0][run].keys() == single[run].keys()
        for name, want in single[run].items():
            got0, got1 = ranks[0][run][name], ranks[1][run][name]
            assert torch.equal(got0, got1), f"{run} {name}: ranks differ"
            if name.endswith("num_batches_tracked"):
                assert torch.equal(got0, want)
                continue
            if name.startswith("features") and name.endswith("0.weight"):   # conv: the masks
                assert torch.equal(got0 == 0, want == 0), f"{run} {name}: masks differ"
            torch.testing.assert_close(got0, want, rtol=1e-4, atol=2e-5, msg=f"{run} {name}")
    # the runs did prune: KEP leaves balanced kernel planes, IESSP whole stripes
    w = single["kep"]["features.1.0.weight"].flatten(2)
    assert len(set((w != 0).sum(dim=2).flatten().tolist())) == 1
    zero = (single["iessp"]["features.1.0.weight"] == 0).flatten(2)
    zero = zero[:, ~zero.all(dim=2).all(dim=0)]     # less the inputs of filters removed whole
    assert zero.any() and torch.equal(zero, zero[:, :1].expand_as(zero))


def test_cli_under_torchrun(tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m prunefab train|prune ...` as a user types it."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    for args in (["train", "--data", "synthetic", "--epochs", 1, "-o", "x.pt"],
                 ["prune", "x.pt", "--method", "kep", "--sparsity-epochs", 1, "--finetune-epochs", 1,
                  "--resume", "-o", "k.pt"]):
        done = subprocess.run(distributed.torchrun_command(args, 2), cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote") == 1           # rank 0 alone reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pt", "x.pt"]   # no state left behind


def test_torchrun_command():
    one = distributed.torchrun_command(["train", "-o", "x.pt"], 4)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                       "-m", "prunefab", "train", "-o", "x.pt"]
    two = distributed.torchrun_command(["train"], 8, nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert "--nnodes=2" in two and "--node-rank=1" in two and "--master-addr=10.0.0.1" in two
    with pytest.raises(ValueError, match="master_addr"):
        distributed.torchrun_command(["train"], 8, nnodes=2)


def test_amp_and_cuda_need_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ValueError, match="--amp needs a CUDA device"):
        distributed.setup("cpu", amp=True)
    with pytest.raises(ValueError, match="no CUDA device"):
        distributed.setup("cuda")
    assert distributed.setup("auto") == distributed.Context()


if __name__ == "__main__":          # one rank of the torchrun job above
    ctx = distributed.setup("cpu")
    try:
        torch.save(_runs(), Path(sys.argv[1]) / f"rank{ctx.rank}.pt")
    finally:
        distributed.teardown()
