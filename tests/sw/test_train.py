"""The training loop: update regimes, augmentation, and resuming from a training state."""

import numpy as np
import pytest
import torch

from prunefab.sw.data import synthetic
from prunefab.sw.models import HardwareNet
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.prune import InformationExtractionStripePruning
from prunefab.sw.train import (CheckpointError, Regime, Update, _shift_and_flip, seed_everything,
                               denormals_flushed, train)

DATA = synthetic(96, shape=(3, 16, 16), classes=4)


def _model() -> HardwareNet:
    seed_everything(0)
    return HardwareNet((3, 16, 16), (4, 8), (True, True), 4)


class Interrupt(Exception):
    pass


def _stop_at(step: int):
    """A penalty that stops the run at the given step, as a killed job would."""
    calls = iter(range(10 ** 6))

    def penalty(model, loss, progress):
        if next(calls) == step:
            raise Interrupt
        return loss.new_zeros(())
    return penalty


@pytest.mark.parametrize("regime", [Regime(), Regime(Update.SGD_STEP, weight_decay=1e-4, augment=True)])
def test_resumed_run_equals_uninterrupted(regime, tmp_path):
    kw = dict(lr=0.05 if regime.update is Update.SGD_STEP else 3e-3, batch_size=32, regime=regime,
              progress=False)
    whole = _model()
    want = train(whole, DATA, 4, penalty=_stop_at(-1), **kw)
    state = tmp_path / "run.train-state"
    with pytest.raises(Interrupt):
        train(_model(), DATA, 4, penalty=_stop_at(7), state=state, **kw)   # dies in epoch 3
    resumed = _model()
    got = train(resumed, DATA, 4, penalty=_stop_at(-1), state=state, **kw)
    assert got == want
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_state_of_another_run_is_refused(tmp_path):
    state = tmp_path / "run.train-state"
    train(_model(), DATA, 1, batch_size=32, state=state, progress=False)
    with pytest.raises(CheckpointError, match="another run .*batch_size 32 != 48"):
        train(_model(), DATA, 1, batch_size=48, state=state, progress=False)
    blob = torch.load(state, weights_only=True)
    blob["epoch"] = 0
    torch.save(blob, state)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        train(_model(), DATA, 1, batch_size=32, state=state, progress=False)
    state.write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="not a prunefab training state"):
        train(_model(), DATA, 1, batch_size=32, state=state, progress=False)


class InterruptedIessp(InformationExtractionStripePruning):
    """IESSP whose sparsity phase dies once at a given step."""

    def __init__(self, stop: int):
        super().__init__()
        self.stop = stop

    def penalty(self, model, output_loss, progress):
        if self._steps == self.stop:
            raise Interrupt
        return super().penalty(model, output_loss, progress)


def test_resumed_iessp_prune_equals_uninterrupted(tmp_path):
    dense = _model()
    train(dense, DATA, 2, batch_size=32, progress=False)
    budget = Budget(sparsity_epochs=3, finetune_epochs=1, batch_size=32)
    want = prune(dense, InterruptedIessp(-1), DATA, 0.5, budget, progress=False)
    state = str(tmp_path / "iessp.pt")
    with pytest.raises(Interrupt):      # in the sparsity phase's third epoch: its running statistics
        prune(dense, InterruptedIessp(7), DATA, 0.5, budget, progress=False, state=state)
    got = prune(dense, InterruptedIessp(-1), DATA, 0.5, budget, progress=False, state=state)
    for (k, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(tmp_path.iterdir())          # the states are gone once the run is written


def test_shift_and_flip():
    images = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    out = _shift_and_flip(images, np.array([[1, 0], [0, -2]]), np.array([False, True]))
    assert np.array_equal(out[0, 0, :3], images[0, 0, 1:]) and not out[0, 0, 3].any()
    shifted = np.zeros((4, 4), dtype=np.uint8)
    shifted[:, 2:] = images[1, 0, :, :2]
    assert np.array_equal(out[1, 0], shifted[:, ::-1])


def test_regime_checks():
    with pytest.raises(ValueError, match="milestones"):
        Regime(Update.SGD_STEP, milestones=(0.5, 1.0))
    with pytest.raises(ValueError, match="momentum"):
        Regime(momentum=1.0)


def test_resnet_checkpoint_round_trip(tmp_path):
    from prunefab.sw.models import ResNetCifar
    from prunefab.sw.train import load_checkpoint, save_checkpoint
    net = ResNetCifar(8, 10)
    save_checkpoint(net, tmp_path / "r.pt", data="synthetic-cifar")
    back, extra = load_checkpoint(tmp_path / "r.pt")
    assert isinstance(back, ResNetCifar) and extra == {"data": "synthetic-cifar"}
    for (k, a), b in zip(net.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def _flushes() -> bool:
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


def test_denormals_are_flushed_while_training_only():
    assert not _flushes()
    with denormals_flushed():
        assert _flushes()
    assert not _flushes()       # the mode found is restored (other code in the process needs it)
    with pytest.raises(RuntimeError):
        with denormals_flushed():
            raise RuntimeError("a failing epoch")
    assert not _flushes()
