"""Baselines: L1-norm filter pruning and unstructured magnitude pruning."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunefab.sw.models import UnmappableModel
from prunefab.sw.prune.base import (Masks, PruningError, PruningMethod, check_cut, dense_conv_flops,
                                    flops_per_element)
from prunefab.sw.prune.stripes import filter_masks, stripe_flops


class FilterPruning(PruningMethod):
    """L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

    In every conv layer the filters are ranked by the sum of their absolute kernel weights,
    computed on the trained weights ("independent" in the paper), and the lowest go, together
    with their feature maps: a removed filter takes its BatchNorm scale and shift (so the channel
    is exactly zero) and the weights that read it in the next layer (conv input channel or
    the first linear layer's columns), which then count no FLOPs.  The same fraction leaves every layer, the
    smallest that meets the FLOPs target (the paper sets per-layer fractions by hand from a
    sensitivity analysis); each layer keeps one filter.  The pipeline then fine-tunes.
    """

    name = "filter"

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        spec, _ = flops_per_element(model)
        if spec.linear is None:
            raise UnmappableModel(f"filter pruning needs a plain chain of conv layers; "
                                  f"{type(model).__name__} has residual connections")
        return {c.name: c.conv.weight.detach().abs().sum(dim=(1, 2, 3)) for c in spec.convs}

    def kept_filters(self, model: nn.Module, fraction: float) -> list[torch.Tensor]:
        """Per layer, [C_out, 9] booleans: every stripe of the kept filters."""
        keeps = []
        for s in self.importance(model).values():
            drop = min(int(round(fraction * len(s))), len(s) - 1)
            keep = torch.ones(len(s), dtype=torch.bool)
            keep[s.argsort(stable=True)[:drop]] = False
            keeps.append(keep.reshape(-1, 1).expand(-1, 9))
        return keeps

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        check_cut(flops_cut)
        budget = (1.0 - flops_cut) * dense_conv_flops(model)
        lo, hi = 0.0, 1.0
        for _ in range(40):                       # smallest fraction meeting the budget
            mid = (lo + hi) / 2
            if stripe_flops(model, self.kept_filters(model, mid)) <= budget:
                hi = mid
            else:
                lo = mid
        keeps = self.kept_filters(model, hi)
        if stripe_flops(model, keeps) > budget:
            raise PruningError(f"filter pruning cannot cut {flops_cut:.0%} of conv FLOPs while "
                               f"keeping one filter per layer")
        return filter_masks(model, keeps)


class _Holder(nn.Module):
    """A detached copy of one weight, for torch.nn.utils.prune to compute a mask on."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)


class MagnitudePruning(PruningMethod):
    """Unstructured magnitude pruning: torch.nn.utils.prune.global_unstructured with
    L1Unstructured over every conv weight, the number of weights removed being the smallest
    that meets the conv-FLOPs target (a weight of a layer with a larger output map saves more).
    """

    name = "magnitude"

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        spec, _ = flops_per_element(model)
        return {c.name: c.conv.weight.detach().abs() for c in spec.convs}

    def amount(self, model: nn.Module, flops_cut: float) -> int:
        """Fewest weights whose removal, smallest |w| first across all layers, meets the cut."""
        check_cut(flops_cut)
        spec, per_elem = flops_per_element(model)
        mags = torch.cat([c.conv.weight.detach().abs().flatten() for c in spec.convs])
        costs = torch.cat([torch.full((c.conv.weight.numel(),), float(f))
                           for c, f in zip(spec.convs, per_elem)])
        saved = costs[mags.argsort(stable=True)].double().cumsum(0)
        need = flops_cut * dense_conv_flops(model)
        if need <= 0:
            return 0
        return min(int(torch.searchsorted(saved, torch.tensor([need], dtype=torch.float64))) + 1,
                   len(saved))

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        spec, per_elem = flops_per_element(model)
        budget = (1.0 - flops_cut) * dense_conv_flops(model)
        amount = self.amount(model, flops_cut)
        while True:       # torch may break ties between equal magnitudes in other layers
            holders = [_Holder(c.conv.weight) for c in spec.convs]
            torch_prune.global_unstructured([(h, "weight") for h in holders],
                                            pruning_method=torch_prune.L1Unstructured, amount=amount)
            kept = sum(f * float(h.weight_mask.sum()) for h, f in zip(holders, per_elem))
            if kept <= budget or amount >= sum(h.weight.numel() for h in holders):
                break
            amount += 1
        return {(c.conv, "weight"): h.weight_mask.clone() for c, h in zip(spec.convs, holders)}
