"""Stripe pruning: a stripe is the 1x1xC_in slice of a filter at one kernel position.

Shared machinery (a learnable scale per stripe, the filter skeleton of SWP, attached as a
parametrization of the conv weight) and the SWP baseline as in its public code (Meng et al.,
"Pruning Filter in Filter", NeurIPS 2020): L1 on the skeleton, entries at or below a fixed
threshold zeroed with their gradient at every step, filters without a stripe removed with their
BatchNorm and the next layer's inputs.  docs/pruning.md maps the reference onto this file.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunefab.sw.prune.base import (Masks, PruningError, PruningMethod, check_cut, dense_conv_flops,
                                    flops_per_element)


class StripeScale(nn.Module):
    """weight -> weight * scale, with one scale per (output channel, kernel position)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(out_channels, 1, 3, 3))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale


def attach_scales(model: nn.Module) -> None:
    spec, _ = flops_per_element(model)
    for c in spec.convs:
        if not parametrize.is_parametrized(c.conv, "weight"):
            parametrize.register_parametrization(c.conv, "weight", StripeScale(c.conv.out_channels))


def stripe_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """The scale parameters [C_out, 1, 3, 3] per conv layer name."""
    spec, _ = flops_per_element(model)
    out = {}
    for c in spec.convs:
        if not parametrize.is_parametrized(c.conv, "weight"):
            raise ValueError(f"layer {c.name}: stripe scales are not attached (call prepare first)")
        out[c.name] = c.conv.parametrizations.weight[0].scale
    return out


def fold_scales(model: nn.Module) -> None:
    spec, _ = flops_per_element(model)
    for c in spec.convs:
        if parametrize.is_parametrized(c.conv, "weight"):
            parametrize.remove_parametrizations(c.conv, "weight", leave_parametrized=True)


def stripe_flops(model: nn.Module, stripes: list[torch.Tensor]) -> float:
    """Conv FLOPs when layer l keeps `stripes[l]` ([C_out, 9] booleans); in a plain chain a filter
    with no stripe left also removes the next layer's input channel (not in a residual network,
    whose channels have other readers)."""
    spec, per_elem = flops_per_element(model)
    total, alive_in = 0.0, None
    for c, f, k in zip(spec.convs, per_elem, stripes):
        ins = c.conv.in_channels if alive_in is None else float(alive_in.sum())
        total += f * ins * float(k.sum())
        alive_in = k.any(dim=1) if spec.linear is not None else None
    return total


def filter_masks(model: nn.Module, stripes: list[torch.Tensor]) -> Masks:
    """Keep-masks for kept stripes; a filter with none left loses its BatchNorm scale and shift
    (its channel is exactly zero) and the next layer's weights that read it (conv input channel
    or the first linear layer's columns).  A residual network (no plain chain) keeps its filters' channels."""
    spec, _ = flops_per_element(model)
    masks: Masks = {}
    alive_in = None
    if spec.linear is None:
        return {(c.conv, "weight"): k.float().reshape(-1, 1, 3, 3).expand_as(c.conv.weight).contiguous()
                for c, k in zip(spec.convs, stripes)}
    for c, k in zip(spec.convs, stripes):
        w = k.float().reshape(-1, 1, 3, 3).expand_as(c.conv.weight)
        if alive_in is not None:
            w = w * alive_in.float().reshape(1, -1, 1, 1)
        masks[(c.conv, "weight")] = w.contiguous()
        alive_in = k.any(dim=1)
        if c.bn is not None and not alive_in.all():
            masks[(c.bn, "weight")] = alive_in.float()
            masks[(c.bn, "bias")] = alive_in.float()
    head = spec.first_linear        # flattened (C*H*W columns) or pooled (C columns)
    lw = head.weight
    cols = alive_in.float().repeat_interleave(lw.shape[1] // len(alive_in))
    masks[(head, "weight")] = (torch.ones_like(lw) * cols.reshape(1, -1)).contiguous()
    return masks


@torch.no_grad()
def threshold_skeleton(model: nn.Module, threshold: float, strength: float = 0.0,
                       weights: dict[str, torch.Tensor] | None = None) -> None:
    """SWP's in-loop step, between backward and the optimizer step: the skeleton's gradient gains
    `strength * weight * sign(scale)` (the L1 term), entries with |scale| <= threshold are set to
    zero with their gradient, and a filter left without an entry has its BatchNorm scale and
    shift zeroed with their gradients."""
    spec, _ = flops_per_element(model)
    for c in spec.convs:
        s = c.conv.parametrizations.weight[0].scale
        if s.grad is None:
            continue
        if strength:
            w = 1.0 if weights is None else weights[c.name].reshape(s.shape)
            s.grad.add_(strength * w * torch.sign(s))
        keep = s.abs() > threshold
        s.mul_(keep)
        s.grad.mul_(keep)
        alive = keep.flatten(1).any(dim=1)
        if c.bn is not None and not alive.all():
            for p in (c.bn.weight, c.bn.bias):
                p.mul_(alive)
                if p.grad is not None:
                    p.grad.mul_(alive)


def stripes_above(scores: list[torch.Tensor], threshold: float) -> list[torch.Tensor]:
    """Kept stripes [C_out, 9] per layer: score above the threshold (each layer keeps its best)."""
    kept = []
    for s in scores:
        k = s > threshold
        if not k.any():
            k.view(-1)[s.argmax()] = True
        kept.append(k)
    return kept


def stripes_for_target(model: nn.Module, scores: list[torch.Tensor], flops_cut: float,
                       floor: float = 0.0) -> list[torch.Tensor]:
    """Kept stripes at the smallest score threshold (at least `floor`) that meets the FLOPs target,
    found by bisection over the sorted scores; filters left without a stripe save their readers'
    FLOPs too (`stripe_flops`)."""
    check_cut(flops_cut)
    budget = (1.0 - flops_cut) * dense_conv_flops(model)
    values = torch.cat([s.flatten() for s in scores])
    candidates = torch.unique(torch.cat([values[values > floor], torch.tensor([floor])])).tolist()
    lo, hi = 0, len(candidates) - 1           # FLOPs fall as the threshold rises
    if stripe_flops(model, stripes_above(scores, candidates[hi])) > budget:
        raise PruningError(f"stripe pruning cannot cut {flops_cut:.0%} of conv FLOPs while keeping "
                           f"one stripe per layer")
    while lo < hi:
        mid = (lo + hi) // 2
        if stripe_flops(model, stripes_above(scores, candidates[mid])) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return stripes_above(scores, candidates[lo])


def balanced_stripes(model: nn.Module, scores: list[torch.Tensor], flops_cut: float,
                     min_stripes: int = 1) -> list[torch.Tensor]:
    """Kept stripes [C_out, 9] per layer, lane-balanced: every filter of a layer keeps its k best
    stripes, k per layer, so a lane group's filters (and the engine's lanes) stay in lock-step as
    KEP's planes do.  A stripe of score 0 (its scale zeroed in the loop) is never kept.

    k per layer from the FLOPs target: from 9 everywhere, the layer whose next stripe per filter
    loses the least share of the layer's score per FLOP it saves gives one up (a step that saves
    nothing, every filter's stripe at that rank being zero already, is free), down to
    `min_stripes`, until the conv FLOPs of the kept stripes meet the target.  Filters left with
    no stripe also remove the next layer's inputs in a plain chain; that saving is not counted,
    so the cut met is at least the target.
    """
    check_cut(flops_cut)
    spec, per_elem = flops_per_element(model)
    budget = (1.0 - flops_cut) * dense_conv_flops(model)
    order = [s.sort(dim=1, descending=True, stable=True) for s in scores]
    ranked = [o.values for o in order]
    live = [(r > 0).sum(dim=1) for r in ranked]               # stripes of each filter above 0
    total = [float(r.sum().clamp_min(1e-12)) for r in ranked]
    unit = [f * c.conv.in_channels for c, f in zip(spec.convs, per_elem)]   # FLOPs of a stripe
    k = [r.shape[1] for r in ranked]

    def kept(layer: int, count: int) -> float:
        return float(live[layer].clamp(max=count).sum())

    flops = sum(u * kept(n, kn) for n, (u, kn) in enumerate(zip(unit, k)))
    while flops > budget:
        best, best_price = None, None
        for n in range(len(k)):
            if k[n] <= min_stripes:
                continue
            saved = unit[n] * (kept(n, k[n]) - kept(n, k[n] - 1))
            price = 0.0 if saved == 0 else float(ranked[n][:, k[n] - 1].sum()) / total[n] / saved
            if best_price is None or price < best_price:
                best, best_price = n, price
        if best is None:
            raise PruningError(f"balanced stripe pruning cannot cut {flops_cut:.0%} of conv FLOPs "
                               f"with {min_stripes} stripe(s) per filter")
        flops -= unit[best] * (kept(best, k[best]) - kept(best, k[best] - 1))
        k[best] -= 1
    masks = []
    for s, o, kn in zip(scores, order, k):
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(1, o.indices[:, :kn], True)
        masks.append(keep & (s > 0))
    return masks


class StripeWisePruning(PruningMethod):
    """SWP: the filter skeleton (one learnable scale per stripe) under L1, thresholded in the loop.

    After every backward pass (`after_backward`, the reference's `update_skeleton`) the skeleton's
    gradient gains `strength * sign(scale)`, entries with |scale| <= `threshold` are set to zero
    and their gradient masked, and a filter with no entry left has its BatchNorm scale and shift
    zeroed with their gradients.  The hard prune keeps the entries above the threshold and removes
    filters without a stripe with the next layer's inputs.

    `meet_target=False` (the reference): the threshold is fixed; the pipeline trains the skeleton
    through the whole budget and prunes once without fine-tuning, and the FLOPs cut is whatever
    the threshold leaves.  `meet_target=True`: the prune threshold is the smallest (found by
    bisection over the sorted |scale| values, never below `threshold`) whose network meets the
    FLOPs target; then the pipeline fine-tunes.  Each layer keeps at least its largest stripe.
    """

    name = "swp"
    wants_sparsity_phase = True

    def __init__(self, strength: float = 2.6e-3, threshold: float = 0.01, meet_target: bool = False):
        if strength < 0 or threshold < 0:
            raise ValueError(f"SWP strength and threshold must be >= 0, not {strength} and {threshold}")
        self.strength = strength
        self.threshold = threshold
        self.meet_target = meet_target
        self.follows_target = meet_target
        self.fine_tunes = meet_target

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        attach_scales(model)

    def after_backward(self, model: nn.Module) -> None:
        threshold_skeleton(model, self.threshold, self.strength)

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: s.detach().abs().reshape(-1, 9) for n, s in stripe_scales(model).items()}

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        scores = list(self.importance(model).values())
        if not self.meet_target:
            return filter_masks(model, stripes_above(scores, self.threshold))
        return filter_masks(model, stripes_for_target(model, scores, flops_cut, self.threshold))

    def finalize(self, model: nn.Module) -> None:
        fold_scales(model)
