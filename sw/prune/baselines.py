"""Baselines: L1-norm filter pruning and unstructured magnitude pruning."""

from __future__ import annotations

import torch
from torch import nn

from prunefab.sw.models import UnmappableModel
from prunefab.sw.prune.base import Masks, PruningMethod, check_cut, dense_conv_flops, flops_per_element


class FilterPruning(PruningMethod):
    """L1-norm filter pruning (Li et al.): the same fraction of filters leaves every conv layer.

    A removed filter takes its BatchNorm scale and shift with it (so the channel is exactly
    zero) and the weights that read it in the next layer (conv input channel or classifier
    columns), which then count no FLOPs.  The fraction is the smallest that meets the target.
    """

    name = "filter"

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        spec, _ = flops_per_element(model)
        if spec.linear is None:
            raise UnmappableModel(f"filter pruning needs a plain chain of conv layers; "
                                  f"{type(model).__name__} has residual connections")
        return {c.name: c.conv.weight.detach().abs().sum(dim=(1, 2, 3)) for c in spec.convs}

    def _keep(self, model: nn.Module, fraction: float) -> list[torch.Tensor]:
        spec, _ = flops_per_element(model)
        keeps = []
        for c, s in zip(spec.convs, self.importance(model).values()):
            n = len(s)
            drop = min(int(round(fraction * n)), n - 1)
            keep = torch.ones(n)
            keep[s.argsort()[:drop]] = 0.0
            keeps.append(keep)
        return keeps

    def _flops(self, model: nn.Module, keeps: list[torch.Tensor]) -> float:
        spec, per_elem = flops_per_element(model)
        total, prev = 0.0, None
        for c, f, keep in zip(spec.convs, per_elem, keeps):
            ins = c.conv.in_channels if prev is None else float(prev.sum())
            total += f * 9 * ins * float(keep.sum())
            prev = keep
        return total

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        check_cut(flops_cut)
        spec, _ = flops_per_element(model)
        budget = (1.0 - flops_cut) * dense_conv_flops(model)
        lo, hi = 0.0, 1.0
        for _ in range(40):                       # smallest fraction meeting the budget
            mid = (lo + hi) / 2
            if self._flops(model, self._keep(model, mid)) <= budget:
                hi = mid
            else:
                lo = mid
        keeps = self._keep(model, hi)
        if self._flops(model, keeps) > budget:
            raise ValueError(f"filter pruning cannot cut {flops_cut:.0%} of conv FLOPs while "
                             f"keeping one filter per layer")
        masks: Masks = {}
        for i, (c, keep) in enumerate(zip(spec.convs, keeps)):
            w = torch.ones_like(c.conv.weight) * keep.reshape(-1, 1, 1, 1)
            if i > 0:
                w = w * keeps[i - 1].reshape(1, -1, 1, 1)
            masks[(c.conv, "weight")] = w
            if c.bn is not None:
                masks[(c.bn, "weight")] = keep.clone()
                masks[(c.bn, "bias")] = keep.clone()
        lw = spec.linear.weight
        last = keeps[-1]
        cols = last.repeat_interleave(lw.shape[1] // len(last))
        masks[(spec.linear, "weight")] = torch.ones_like(lw) * cols.reshape(1, -1)
        return masks


class MagnitudePruning(PruningMethod):
    """Unstructured magnitude pruning: every conv layer keeps its largest (1 - cut) weights."""

    name = "magnitude"

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        spec, _ = flops_per_element(model)
        return {c.name: c.conv.weight.detach().abs() for c in spec.convs}

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        check_cut(flops_cut)
        spec, _ = flops_per_element(model)
        masks: Masks = {}
        for c, s in zip(spec.convs, self.importance(model).values()):
            keep = max(1, int((1.0 - flops_cut) * s.numel()))
            if keep >= s.numel():
                masks[(c.conv, "weight")] = torch.ones_like(s)
                continue
            idx = s.flatten().topk(keep).indices
            m = torch.zeros(s.numel())
            m[idx] = 1.0
            masks[(c.conv, "weight")] = m.reshape(s.shape)
        return masks
