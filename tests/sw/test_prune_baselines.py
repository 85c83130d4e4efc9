"""The baselines hold their references' defining behaviour on a tiny network.

SWP (Meng et al. 2020, public code): skeleton entries at or below the threshold are zero and get
no gradient; a filter with no stripe left loses its BatchNorm and its readers' inputs.
Magnitude: torch.nn.utils.prune's global L1 unstructured result.  L1 filter (Li et al. 2017):
the filters of smallest L1 norm go.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunefab.sw import data, flops, models
from prunefab.sw.pipeline import Budget, prune
from prunefab.sw.prune import make
from prunefab.sw.prune.base import dense_conv_flops, flops_per_element
from prunefab.sw.prune.stripes import StripeWisePruning, stripe_scales


def tiny(seed: int = 0) -> models.HardwareNet:
    torch.manual_seed(seed)
    model = models.HardwareNet((1, 8, 8), (4, 6, 8), (True, False, False), 3)
    for m in model.modules():                     # BatchNorm away from its defaults
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def backward(model: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1])).backward()


def test_swp_entries_at_or_below_threshold_are_zero_without_gradient():
    model = tiny()
    swp = StripeWisePruning(strength=1e-3, threshold=0.01)
    swp.prepare(model, [])
    s = stripe_scales(model)["features.1.0"]
    with torch.no_grad():
        s[0, 0, 0, 0] = 0.01                       # at the threshold
        s[1, 0, 1, 2] = -0.004                     # below it
        s[2, 0, 2, 2] = 0.02                       # above it
    backward(model)
    plain = s.grad.clone()
    swp.after_backward(model)
    small = s.detach().abs() <= 0.01
    assert small.sum() == 2
    assert (s.detach()[small] == 0).all() and (s.grad[small] == 0).all()
    # the L1 term of the reference's update_skeleton: strength * sign(scale) on the survivors
    assert torch.allclose(s.grad[~small], (plain + 1e-3 * torch.sign(s.detach()))[~small])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    opt.step()                                     # a fresh optimizer: nothing moves them
    assert (s.detach()[small] == 0).all() and s.detach()[2, 0, 2, 2] != 0


def test_swp_filter_without_stripes_loses_batchnorm_and_readers():
    model = tiny()
    swp = StripeWisePruning(threshold=0.01)
    swp.prepare(model, [])
    spec = models.layer_specs(model)
    with torch.no_grad():
        stripe_scales(model)["features.1.0"][3] = 0.005      # filter 3 of layer 2: no stripe
    backward(model)
    swp.after_backward(model)
    bn = spec.convs[1].bn
    assert bn.weight[3] == 0 and bn.bias[3] == 0
    assert bn.weight.grad[3] == 0 and bn.bias.grad[3] == 0
    assert (bn.weight[:3] != 0).all()
    masks = swp.compute_masks(model, 0.0)
    assert masks[(bn, "weight")][3] == 0 and masks[(bn, "bias")][3] == 0
    reader = masks[(spec.convs[2].conv, "weight")]
    assert (reader[:, 3] == 0).all() and (reader[:, :3] == 1).all()
    # the last layer's dead filter takes the classifier columns that read its channel
    with torch.no_grad():
        stripe_scales(model)["features.2.0"][5] = 0.0
    masks = swp.compute_masks(model, 0.0)
    cols = masks[(spec.linear, "weight")].reshape(3, 8, -1)
    assert (cols[:, 5] == 0).all() and (cols[:, 4] == 1).all()


def test_swp_target_mode_finds_the_smallest_threshold_by_bisection():
    model = tiny()
    swp = StripeWisePruning(meet_target=True)
    swp.prepare(model, [])
    torch.manual_seed(1)
    with torch.no_grad():
        for s in stripe_scales(model).values():
            s.uniform_(0.0, 1.0)
    masks = swp.compute_masks(model, 0.6)
    spec, per = flops_per_element(model)
    kept = sum(f * float(masks[(c.conv, "weight")].sum()) for c, f in zip(spec.convs, per))
    assert kept <= 0.4 * dense_conv_flops(model)
    # every kept stripe scores above every dropped one, layer minimum aside
    scores = torch.cat([s.detach().abs().flatten() for s in stripe_scales(model).values()])
    keep = torch.cat([masks[(c.conv, "weight")][:, 0].flatten() for c in spec.convs]).bool()
    assert scores[keep].min() > scores[~keep].max()
    # one dropped stripe fewer (the largest dropped one back) misses the target
    fewer = copy.deepcopy(swp)
    fewer.meet_target = False
    fewer.threshold = float(scores[~keep].sort().values[-2])
    back = fewer.compute_masks(model, 0.0)
    assert sum(f * float(back[(c.conv, "weight")].sum()) for c, f in zip(spec.convs, per)) \
        > 0.4 * dense_conv_flops(model)


def test_swp_reference_mode_prunes_at_its_threshold_without_fine_tuning(monkeypatch):
    """The whole budget trains the skeleton (thresholded in the loop); one prune at the end."""
    from prunefab.sw import pipeline

    class Seeded(StripeWisePruning):
        def prepare(self, model, batches):
            super().prepare(model, batches)
            with torch.no_grad():                  # half of one layer's stripes start dead
                stripe_scales(model)["features.1.0"][:3] = 0.005

    calls = []
    real_train = pipeline.train
    monkeypatch.setattr(pipeline, "train", lambda model, ds, epochs, **kw: (
        calls.append((epochs, kw.get("penalty") is not None)), real_train(model, ds, epochs, **kw))[1])
    ds = data.synthetic(300, shape=(1, 8, 8), classes=3)
    budget = Budget(sparsity_epochs=2, finetune_epochs=1, calibration_images=100)
    swp = Seeded(strength=1e-3, threshold=0.01)
    assert not swp.fine_tunes and not swp.follows_target
    pruned = prune(tiny(), swp, ds, 0.75, budget, progress=False)
    assert calls == [(3, True), (0, False)]
    w = models.layer_specs(pruned).convs[1].conv.weight
    assert (w[:3] == 0).all() and (w[3:] != 0).any()
    assert 0.0 < flops.count(pruned).conv_flops_cut < 0.75


def test_magnitude_is_torch_global_l1_unstructured():
    model = tiny()
    method = make("magnitude")
    masks = method.compute_masks(model, 0.6)
    reference = copy.deepcopy(model)
    convs = [c.conv for c in models.layer_specs(reference).convs]
    amount = method.amount(model, 0.6)
    torch_prune.global_unstructured([(c, "weight") for c in convs],
                                    pruning_method=torch_prune.L1Unstructured, amount=amount)
    for c, ref in zip(models.layer_specs(model).convs, convs):
        assert torch.equal(masks[(c.conv, "weight")], ref.weight_mask)
    # the amount is the fewest weights that meet the target
    spec, per = flops_per_element(model)
    budget = 0.4 * dense_conv_flops(model)
    assert sum(f * float(m.sum()) for f, m in zip(per, (masks[(c.conv, "weight")] for c in spec.convs))) <= budget
    fewer = copy.deepcopy(model)
    fewer_convs = [c.conv for c in models.layer_specs(fewer).convs]
    torch_prune.global_unstructured([(c, "weight") for c in fewer_convs],
                                    pruning_method=torch_prune.L1Unstructured, amount=amount - 1)
    assert sum(f * float(c.weight_mask.sum()) for f, c in zip(per, fewer_convs)) > budget


def test_l1_filter_pruning_removes_the_smallest_l1_filters():
    model = tiny()
    method = make("filter")
    masks = method.compute_masks(model, 0.5)
    spec = models.layer_specs(model)
    for c in spec.convs:
        l1 = c.conv.weight.detach().abs().sum(dim=(1, 2, 3))
        gone = masks[(c.conv, "weight")].flatten(1).sum(1) == 0
        assert gone.any()
        assert l1[gone].max() < l1[~gone].min()
        assert (masks[(c.bn, "weight")][gone] == 0).all()


@pytest.mark.parametrize("name", ["kep", "iessp"])
def test_in_loop_masking_of_the_headline_methods(name):
    """KEP's `mask_from` and IESSP's threshold hold pruned weights at zero inside the loop."""
    model = tiny()
    method = make(name, mask_from=0.0) if name == "kep" else make(name, threshold=0.01)
    if name == "kep":
        method.set_target(0.6)
    method.prepare(model, [])
    if name == "iessp":
        with torch.no_grad():
            stripe_scales(model)["features.0.0"][0] = 0.001
    backward(model)
    method.penalty(model, torch.zeros(()), 1.0)
    method.after_backward(model)
    if name == "kep":
        for c in models.layer_specs(model).convs:
            dropped = method._prior[c.name] == 0
            assert (c.conv.weight.detach()[dropped] == 0).all()
            assert (c.conv.weight.grad[dropped] == 0).all()
    else:
        s = stripe_scales(model)["features.0.0"]
        assert (s.detach()[0] == 0).all() and (s.grad[0] == 0).all()
        assert models.layer_specs(model).convs[0].bn.weight[0] == 0


def test_balanced_stripes_give_every_filter_of_a_layer_the_same_count():
    """`balanced_stripes`: k best stripes per filter, k per layer from the FLOPs target, no
    stripe of score 0, and the cut met."""
    from prunefab.sw.prune.stripes import balanced_stripes, stripe_flops
    model = tiny()
    spec, _ = flops_per_element(model)
    torch.manual_seed(1)
    scores = [torch.rand(c.conv.out_channels, 9) for c in spec.convs]
    scores[1][0] = 0.0                                  # a filter whose scales were all zeroed
    scores[2][:, 4] = 0.0                               # a position zeroed in every filter
    kept = balanced_stripes(model, scores, 0.7)
    assert stripe_flops(model, kept) <= 0.3 * dense_conv_flops(model)
    for s, k in zip(scores, kept):
        counts = k.sum(dim=1)
        live = (s > 0).sum(dim=1)
        per_layer = int(counts.max())
        assert 1 <= per_layer < 9
        assert torch.equal(counts, live.clamp(max=per_layer))      # balanced where scores allow
        assert not (k & (s == 0)).any()
        for o in range(len(s)):                                    # each filter's best stripes
            if counts[o]:
                assert s[o][k[o]].min() >= s[o][~k[o]].max()
    assert kept[1][0].sum() == 0 and kept[2][:, 4].sum() == 0
    with pytest.raises(ValueError, match="cannot cut 99% of conv FLOPs with 1 stripe"):
        balanced_stripes(model, scores, 0.99)


def test_balanced_iessp_prunes_lane_balanced_stripes_to_the_target():
    model = tiny()
    method = make("iessp", balanced=True)
    method.prepare(model, [(torch.rand(8, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))])
    masks = method.compute_masks(model, 0.6)
    spec, _ = flops_per_element(model)
    kept_flops = 0.0
    for c, f in zip(spec.convs, flops_per_element(model)[1]):
        m = masks[(c.conv, "weight")].flatten(2)                  # [C_out, C_in, 9]
        stripe = m.amax(dim=1)                                    # a stripe: every input channel
        assert torch.equal(m, stripe.unsqueeze(1).expand_as(m) * (m.sum(2, keepdim=True) > 0))
        counts = stripe.sum(dim=1)
        assert (counts[counts > 0] == counts.max()).all()         # one count per layer
        kept_flops += f * float(m.sum())
    assert kept_flops <= 0.4 * dense_conv_flops(model) + 1e-6
