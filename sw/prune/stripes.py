"""Stripe pruning: a stripe is the 1x1xC_in slice of a filter at one kernel position.

Shared machinery (a learnable scale per stripe, the filter skeleton of SWP, attached as a
parametrization of the conv weight) and the plain SWP baseline: an L1 penalty on the scales
and a cut of the smallest.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunefab.sw.prune.base import Masks, PruningMethod, check_cut, dense_conv_flops, flops_per_element


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


def select_stripes(model: nn.Module, scores: dict[str, torch.Tensor], flops_cut: float,
                   flops_exponent: float = 0.0) -> Masks:
    """Drop the lowest-scoring stripes across all layers until the FLOPs target is met.

    scores: [C_out, 9] per layer.  Scores are ranked after division by (FLOPs the stripe
    saves) ** flops_exponent: 0 ranks by score alone; 1 by score per FLOP, which strips the
    largest layer almost bare; in between, a cheap stripe of a small layer is not dropped for
    little gain, nor the big layer emptied.  Each layer keeps at least one stripe.
    """
    check_cut(flops_cut)
    spec, per_elem = flops_per_element(model)
    budget = (1.0 - flops_cut) * dense_conv_flops(model)
    entries = []
    flops = 0.0
    for li, (c, f) in enumerate(zip(spec.convs, per_elem)):
        s = scores[c.name].detach().reshape(c.conv.out_channels, 9).double()
        cost = f * c.conv.in_channels
        flops += cost * s.numel()
        rank = s / cost ** flops_exponent
        for o in range(s.shape[0]):
            for p in range(9):
                entries.append((float(rank[o, p]), li, o, p, cost))
    entries.sort()
    keep = [torch.ones(c.conv.out_channels, 9) for c in spec.convs]
    left = [k.numel() for k in keep]
    for _, li, o, p, cost in entries:
        if flops <= budget:
            break
        if left[li] == 1:
            continue
        keep[li][o, p] = 0.0
        left[li] -= 1
        flops -= cost
    masks = {}
    for c, k in zip(spec.convs, keep):
        masks[(c.conv, "weight")] = k.reshape(-1, 1, 3, 3).expand_as(c.conv.weight).contiguous()
    return masks


class StripeWisePruning(PruningMethod):
    """SWP baseline: L1 on the stripe scales, then cut the smallest |scale| globally."""

    name = "swp"
    wants_sparsity_phase = True

    def __init__(self, strength: float = 1e-4):
        if strength < 0:
            raise ValueError(f"SWP penalty strength must be >= 0, not {strength}")
        self.strength = strength

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        attach_scales(model)

    def penalty(self, model: nn.Module, output_loss: torch.Tensor, progress: float) -> torch.Tensor:
        return self.strength * sum(s.abs().sum() for s in stripe_scales(model).values())

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: s.detach().abs().reshape(-1, 9) for n, s in stripe_scales(model).items()}

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        return select_stripes(model, self.importance(model), flops_cut)

    def finalize(self, model: nn.Module) -> None:
        fold_scales(model)
