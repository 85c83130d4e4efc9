"""KEP: kernel-element pruning with a prior-knowledge mask and a controllable penalty.

Interpretation (docs/pruning.md has the reasoning):

* Prior-knowledge mask.  From the trained weights, each element's importance is its magnitude
  weighted by the layer's positional prior: how strongly, on average over the layer, that
  kernel position carries weight.  Every kernel plane keeps its k most important elements, k
  per layer, so the hardware sees balanced planes and each nonzero needs a 4-bit index.
* k per layer from the FLOPs target.  Starting from k = 9 everywhere, the layer whose next
  element removal loses the least normalized importance per FLOP saved gives up one element
  per plane, until the conv-FLOPs target is met.
* Controllable penalty.  During the sparsity phase, lambda(t) * sum of squares of exactly the
  elements the prior mask drops, with lambda following the user's schedule, drives them to
  zero before they are cut; the hard prune then costs little accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

import torch
from torch import nn

from prunefab.sw.prune.base import (Masks, PruningError, PruningMethod, check_cut, dense_conv_flops,
                                    flops_per_element)
from prunefab.sw.qnet import KERNEL_ELEMENTS


class Schedule(Enum):
    """How the penalty strength moves from 0 to its maximum over the sparsity phase."""

    CONSTANT = "constant"   # full strength throughout
    LINEAR = "linear"       # ramps from 0 to full
    STEP = "step"           # 0 for the first half, then full


class KernelElementPruning(PruningMethod):
    name = "kep"
    wants_sparsity_phase = True

    def __init__(self, strength: float = 1.7e-2, schedule: Schedule = Schedule.LINEAR,
                 prior_weight: float = 1.0, min_elements: int = 1, mask_from: float = 1.0):
        if strength < 0:
            raise ValueError(f"KEP penalty strength must be >= 0, not {strength}")
        if not 1 <= min_elements <= KERNEL_ELEMENTS:
            raise ValueError(f"min_elements must be in 1..9, not {min_elements}")
        self.strength = strength
        self.schedule = Schedule(schedule)
        self.prior_weight = prior_weight
        self.min_elements = min_elements
        self.mask_from = mask_from
        self._progress = 0.0
        self._target: float | None = None
        self._prior: dict[str, torch.Tensor] = {}
        self.elements: dict[str, int] = {}

    def set_target(self, flops_cut: float) -> None:
        """KEP needs the FLOPs target before the sparsity phase, to know what to penalize."""
        self._target = check_cut(flops_cut)

    # -- prior knowledge ------------------------------------------------------------------------

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Element importance [C_out, C_in, 9]: |w| times the layer's positional prior."""
        spec, _ = flops_per_element(model)
        scores = {}
        for c in spec.convs:
            w = c.conv.weight.detach().abs().flatten(2)
            prior = w.mean(dim=(0, 1))
            prior = prior / prior.mean().clamp_min(1e-12)
            scores[c.name] = w * prior.pow(self.prior_weight)
        return scores

    def allocate(self, model: nn.Module, flops_cut: float) -> dict[str, int]:
        """Elements kept per kernel plane, per layer, meeting the conv-FLOPs target."""
        check_cut(flops_cut)
        spec, per_elem = flops_per_element(model)
        scores = self.importance(model)
        budget = (1.0 - flops_cut) * dense_conv_flops(model)
        ranked = {n: s.sort(dim=2, descending=True).values for n, s in scores.items()}
        total = {n: s.sum().clamp_min(1e-12) for n, s in ranked.items()}
        k = {c.name: KERNEL_ELEMENTS for c in spec.convs}
        planes = {c.name: c.conv.weight.shape[0] * c.conv.weight.shape[1] for c in spec.convs}
        cost = {c.name: f for c, f in zip(spec.convs, per_elem)}

        def flops() -> float:
            return sum(k[n] * planes[n] * cost[n] for n in k)

        while flops() > budget:
            best, best_price = None, None
            for n in k:
                if k[n] <= self.min_elements:
                    continue
                lost = float(ranked[n][:, :, k[n] - 1].sum() / total[n])
                price = lost / (planes[n] * cost[n])
                if best_price is None or price < best_price:
                    best, best_price = n, price
            if best is None:
                raise PruningError(f"KEP cannot cut {flops_cut:.0%} of conv FLOPs with at least "
                                   f"{self.min_elements} element(s) per kernel plane")
            k[best] -= 1
        return k

    def prior_masks(self, model: nn.Module, elements: dict[str, int]) -> dict[str, torch.Tensor]:
        """Keep-mask [C_out, C_in, 3, 3] per layer: the top-k important elements of each plane."""
        masks = {}
        for name, s in self.importance(model).items():
            top = s.topk(elements[name], dim=2).indices
            m = torch.zeros_like(s).scatter_(2, top, 1.0)
            masks[name] = m.reshape(s.shape[0], s.shape[1], 3, 3)
        return masks

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        if self._target is None:
            raise ValueError("KEP needs its FLOPs target before the sparsity phase: call set_target")
        self.elements = self.allocate(model, self._target)
        self._prior = self.prior_masks(model, self.elements)

    # -- the controllable penalty --------------------------------------------------------------

    def strength_at(self, progress: float) -> float:
        if self.schedule is Schedule.CONSTANT:
            return self.strength
        if self.schedule is Schedule.LINEAR:
            return self.strength * min(max(progress, 0.0), 1.0)
        return self.strength if progress >= 0.5 else 0.0

    def penalty(self, model: nn.Module, output_loss: torch.Tensor, progress: float) -> torch.Tensor:
        self._progress = progress
        lam = self.strength_at(progress)
        spec, _ = flops_per_element(model)
        total = output_loss.new_zeros(())
        if lam == 0.0 or not self._prior:
            return total
        for c in spec.convs:
            if self._prior[c.name].device != c.conv.weight.device:     # training on a GPU
                self._prior[c.name] = self._prior[c.name].to(c.conv.weight.device)
            dropped = c.conv.weight * (1.0 - self._prior[c.name])
            total = total + dropped.pow(2).sum()
        return lam * total

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        """From `mask_from` (progress in the sparsity phase) on, the elements the prior mask drops
        are held at zero and get no gradient: the network adapts to the cut inside the phase."""
        if self._progress < self.mask_from or not self._prior:
            return
        spec, _ = flops_per_element(model)
        for c in spec.convs:
            keep = self._prior[c.name]
            c.conv.weight.mul_(keep)
            if c.conv.weight.grad is not None:
                c.conv.weight.grad.mul_(keep)

    # -- hard pruning --------------------------------------------------------------------------

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        if not self._prior or self._target != check_cut(flops_cut):
            self._target = flops_cut
            self.prepare(model, ())
        spec, _ = flops_per_element(model)
        return {(c.conv, "weight"): self._prior[c.name] for c in spec.convs}
