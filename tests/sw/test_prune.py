"""Every pruning method: meets its FLOPs target, with the structure it promises, as masks."""

import numpy as np
import pytest
import torch

from prunefab.sw import data, flops, models
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.prune import METHODS, apply_masks, bake, make
from prunefab.sw.prune.kep import KernelElementPruning, Schedule
from prunefab.sw.train import batches, train

TINY = Budget(train_epochs=1, sparsity_epochs=1, finetune_epochs=1, calibration_images=200)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    ds = data.synthetic(600, shape=(1, 12, 12))
    model = models.HardwareNet((1, 12, 12), (8, 16), (True, False), 4)
    train(model, ds, 2, seed=0, progress=False)
    return model, ds


# SWP meets a target only in its target mode (its reference mode stops at its threshold)
TARGET_OPTIONS = {"swp": {"meet_target": True}}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("cut", [0.5, 0.75])
def test_meets_flops_target_and_bakes(trained, name, cut):
    model, ds = trained
    pruned = prune(model, name, ds, cut, TINY, progress=False, **TARGET_OPTIONS.get(name, {}))
    c = flops.count(pruned)
    assert c.conv_flops_cut >= cut - 1e-9
    assert c.conv_flops_cut <= cut + 0.12          # not wildly more than asked
    assert not any(n.endswith("_mask") for n, _ in pruned.named_buffers())
    assert flops.count(model).conv_flops_cut == 0.0  # the original is untouched


def test_kep_keeps_equal_elements_per_plane(trained):
    model, ds = trained
    pruned = prune(model, "kep", ds, 0.75, TINY, progress=False)
    for spec in models.layer_specs(pruned).convs:
        per_plane = (spec.conv.weight != 0).flatten(2).sum(2)
        # every plane holds the same k (a few may hold fewer where fine-tuning left a zero)
        assert per_plane.max() <= 9 and (per_plane == per_plane.max()).float().mean() > 0.95


def test_kep_penalty_drives_dropped_elements_down(trained):
    model, ds = trained
    import copy
    m = copy.deepcopy(model)
    kep = KernelElementPruning(strength=0.5, schedule=Schedule.CONSTANT)
    kep.set_target(0.75)
    kep.prepare(m, [])
    prior = kep._prior
    def dropped_energy(net):
        return sum(float((s.conv.weight.detach() * (1 - prior[s.name])).pow(2).sum())
                   for s in models.layer_specs(net).convs)
    before = dropped_energy(m)
    train(m, ds, 8, penalty=kep.penalty, progress=False)
    assert dropped_energy(m) < 0.5 * before


def test_kep_schedules():
    kep = KernelElementPruning(strength=2.0, schedule=Schedule.LINEAR)
    assert [kep.strength_at(t) for t in (0, 0.5, 1)] == [0.0, 1.0, 2.0]
    kep = KernelElementPruning(strength=2.0, schedule=Schedule.STEP)
    assert [kep.strength_at(t) for t in (0.2, 0.7)] == [0.0, 2.0]


@pytest.mark.parametrize("name", ["iessp", "swp"])
def test_stripe_methods_prune_whole_stripes(trained, name):
    model, ds = trained
    pruned = prune(model, name, ds, 0.6, TINY, progress=False, **TARGET_OPTIONS.get(name, {}))
    for spec in models.layer_specs(pruned).convs:
        nz = (spec.conv.weight != 0)
        stripe_alive = nz.any(dim=1)                 # [C_out, 3, 3]
        # an alive stripe may have a few zeros; a dead stripe has none alive
        assert (nz.sum(dim=1)[~stripe_alive] == 0).all()
        assert (~stripe_alive).any()


def test_iessp_pressure_follows_output_loss(trained):
    model, ds = trained
    import copy
    m = copy.deepcopy(model)
    method = make("iessp", strength=1e-3)
    method.prepare(m, list(batches(ds.subset(200), 100, False)))
    low = method.reference_loss * 0.5
    high = method.reference_loss * 4
    method._loss_avg = None
    lam_low = method.adaptive_strength(low)
    method._loss_avg = None
    lam_high = method.adaptive_strength(high)
    assert lam_low > method.strength > lam_high
    info = method.iem.information()
    assert all(abs(float(i.mean()) - 1) < 1e-6 for i in info.values())
    method.finalize(m)


def test_filter_pruning_kills_channels_end_to_end(trained):
    model, ds = trained
    pruned = prune(model, "filter", ds, 0.6, TINY, progress=False)
    convs = models.layer_specs(pruned).convs
    dead = (convs[0].conv.weight.flatten(1).abs().sum(1) == 0)
    assert dead.any()
    assert (convs[0].bn.weight[dead] == 0).all() and (convs[0].bn.bias[dead] == 0).all()
    assert (convs[1].conv.weight[:, dead] == 0).all()


def test_masks_follow_torch_prune_convention(trained):
    model, _ = trained
    import copy
    m = copy.deepcopy(model)
    masks = make("magnitude").compute_masks(m, 0.5)
    apply_masks(masks)
    names = [n for n, _ in m.named_buffers() if n.endswith("weight_mask")]
    assert len(names) == 2
    bake(m)
    assert not any(n.endswith("_mask") for n, _ in m.named_buffers())


def test_bad_targets():
    with pytest.raises(ValueError, match="unknown pruning method"):
        make("random")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make("magnitude").compute_masks(models.reference_net(), 1.0)


@pytest.mark.parametrize("name", ["kep", "iessp", "swp", "magnitude"])
def test_paper_scale_networks_prune_to_target(name):
    """VGG-16 and ResNet-56 (CIFAR): hard pruning reaches the target (no training here)."""
    for model in (models.vgg16_cifar(), models.resnet56_cifar()):
        method = make(name, **TARGET_OPTIONS.get(name, {}))
        if name == "kep":
            method.set_target(0.75)
        method.prepare(model, [])
        masks = method.compute_masks(model, 0.75)
        method.finalize(model)
        apply_masks(masks)
        from prunefab.sw.prune.base import dense_conv_flops, flops_per_element
        spec, per = flops_per_element(model)
        kept = sum(f * int((c.conv.weight != 0).sum()) for c, f in zip(spec.convs, per))
        assert kept <= 0.25 * dense_conv_flops(model) + 1e-6
        bake(model)
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_filter_pruning_refuses_residual_networks():
    with pytest.raises(models.UnmappableModel, match="residual"):
        make("filter").compute_masks(models.resnet56_cifar(), 0.5)
