"""IESSP: information-extraction sparse stripe pruning.

Interpretation (docs/pruning.md has the reasoning):

* Stripes carry learnable scales (the filter skeleton, as in SWP).
* The information extraction module (IEM) scores every stripe (o, p) of layer l with
  information from both neighbouring layers:
      I[o, p] = || W[o, :, p] * a_in ||_2  *  u[o]
  where a_in[c] is the mean |activation| the previous layer actually delivers on input channel
  c (measured on live batches through forward hooks, as a running average), and u[o] is how
  strongly the next layer reads output channel o (the L1 norm of its weights on that channel).
  I is normalized to mean 1 per layer.  The stripe's score is |scale| * I.
* Adaptive loss.  The sparsity term is a weighted L1 on the scales, each stripe's weight being
  1 / I (little information, more pressure), and its strength follows the output loss:
      lambda_t = lambda_0 * clip((L_ref / L_t) ** gamma, 0, max_boost)
  with L_ref the output loss of the trained model before pruning and L_t a running average of
  the current output loss.  While pruning hurts the output, the pressure relaxes; while the
  output loss is low, stripes are pushed harder, so sparsity adapts during training.
* In-loop thresholding, as in SWP: after every backward pass, scales at or below `threshold`
  are zeroed with their gradient, and a filter left without a stripe loses its BatchNorm.
* Hard prune: keep the stripes whose score / sqrt(FLOPs saved) is above the smallest threshold
  that meets the target (bisection); filters left without a stripe go with the next layer's
  inputs, as in SWP.  `balanced=True` (`prunefab prune --balanced`) keeps the same number of
  stripes in every filter of a layer instead, the count per layer allocated as KEP allocates
  its elements (`stripes.balanced_stripes`): a lane group then needs no padding steps, and a
  network whose stripes pile up in its widest layers (where one step word serves all lanes
  with the fullest filter's count) needs fewer step words.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunefab.sw import distributed
from prunefab.sw.prune.base import Masks, PruningMethod, flops_per_element
from prunefab.sw.prune.stripes import (attach_scales, balanced_stripes, filter_masks, fold_scales,
                                       stripe_scales, stripes_for_target, threshold_skeleton)


class InformationExtraction:
    """The IEM: stripe information scores from neighbouring layers' activations and weights."""

    def __init__(self, model: nn.Module, momentum: float = 0.9):
        self.momentum = momentum
        self.spec, _ = flops_per_element(model)
        self.input_strength: dict[str, torch.Tensor] = {}
        self._handles = [c.conv.register_forward_pre_hook(self._hook(c.name)) for c in self.spec.convs]

    def _hook(self, name: str):
        def record(module, args):
            x = args[0].detach()
            strength = distributed.mean_over_batch(x.abs(), (0, 2, 3))   # the global batch's
            old = self.input_strength.get(name)
            if old is not None:       # calibration ran on the CPU, training may run on a GPU
                strength = self.momentum * old.to(strength.device) + (1 - self.momentum) * strength
            self.input_strength[name] = strength
        return record

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def next_layer_usage(self) -> dict[str, torch.Tensor]:
        """u[o] per layer: L1 norm of the next layer's weights reading output channel o."""
        usage = {}
        convs = self.spec.convs
        for i, c in enumerate(convs):
            n = c.conv.out_channels
            if i + 1 < len(convs) and convs[i + 1].conv.in_channels == n:
                u = convs[i + 1].conv.weight.detach().abs().sum(dim=(0, 2, 3))
            elif i + 1 == len(convs) and self.spec.linear is not None:
                w = self.spec.first_linear.weight.detach().abs()
                u = w.reshape(w.shape[0], n, -1).sum(dim=(0, 2))
            else:
                # the reader of this layer is not a plain next layer (a residual branch)
                u = torch.ones(n)
            usage[c.name] = u
        return usage

    def information(self) -> dict[str, torch.Tensor]:
        """I [C_out, 9] per layer, mean 1 per layer."""
        usage = self.next_layer_usage()
        info = {}
        for c in self.spec.convs:
            w = c.conv.weight.detach()               # parametrized: includes the scales
            a = self.input_strength.get(c.name)
            a = torch.ones(c.conv.in_channels) if a is None else a
            a = a.to(w.device)
            extracted = (w * a.reshape(1, -1, 1, 1)).pow(2).sum(dim=1).sqrt().reshape(-1, 9)
            i = extracted * usage[c.name].reshape(-1, 1)
            info[c.name] = i / i.mean().clamp_min(1e-12)
        return info


class InformationExtractionStripePruning(PruningMethod):
    name = "iessp"
    wants_sparsity_phase = True

    def __init__(self, strength: float = 5e-3, gamma: float = 2.0, max_boost: float = 4.0,
                 loss_momentum: float = 0.98, refresh_every: int = 20, flops_exponent: float = 0.5,
                 threshold: float = 0.01, balanced: bool = False):
        if strength < 0 or gamma < 0 or max_boost <= 0 or threshold < 0:
            raise ValueError("IESSP strength, gamma and threshold must be >= 0 and max_boost > 0")
        self.threshold = threshold
        self.balanced = balanced
        self.strength = strength
        self.gamma = gamma
        self.max_boost = max_boost
        self.loss_momentum = loss_momentum
        self.refresh_every = refresh_every
        self.flops_exponent = flops_exponent
        self.iem: InformationExtraction | None = None
        self.reference_loss: float | None = None
        self._loss_avg: float | None = None
        self._info: dict[str, torch.Tensor] = {}
        self._steps = 0
        self.history: list[float] = []          # lambda_t per step, for reports and tests

    def prepare(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        attach_scales(model)
        self.iem = InformationExtraction(model)
        losses = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for x, y in batches:
                losses.append(float(nn.functional.cross_entropy(model(x), y)))
        model.train(was_training)
        self.reference_loss = sum(losses) / len(losses) if losses else 1.0
        self._info = self.iem.information()

    def adaptive_strength(self, output_loss: float) -> float:
        """lambda_t from the running output loss against the reference loss."""
        m = self.loss_momentum
        self._loss_avg = output_loss if self._loss_avg is None else m * self._loss_avg + (1 - m) * output_loss
        ratio = (self.reference_loss or 1.0) / max(self._loss_avg, 1e-8)
        return self.strength * min(ratio ** self.gamma, self.max_boost)

    def penalty(self, model: nn.Module, output_loss: torch.Tensor, progress: float) -> torch.Tensor:
        if self.iem is None:
            raise ValueError("IESSP penalty before prepare")
        if self._steps % self.refresh_every == 0:
            self._info = self.iem.information()
        self._steps += 1
        lam = self.adaptive_strength(float(output_loss.detach()))
        self.history.append(lam)
        total = output_loss.new_zeros(())
        for name, s in stripe_scales(model).items():
            weight = 1.0 / self._info[name].reshape(s.shape).clamp_min(1e-3)
            total = total + (s.abs() * weight).sum()
        return lam * total

    def after_backward(self, model: nn.Module) -> None:
        threshold_skeleton(model, self.threshold)

    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.iem is None:
            self.prepare(model, ())
        info = self.iem.information()
        return {n: s.detach().abs().reshape(-1, 9) * info[n] for n, s in stripe_scales(model).items()}

    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        """Stripes ranked by score / (FLOPs the stripe saves) ** flops_exponent: 0 ranks by score
        alone, 1 by score per FLOP (which strips the largest layer almost bare).  Balanced: the
        same count in every filter of a layer (`balanced_stripes`)."""
        if self.balanced:
            return filter_masks(model, balanced_stripes(model, list(self.importance(model).values()),
                                                        flops_cut))
        spec, per_elem = flops_per_element(model)
        scores = [s / float(f * c.conv.in_channels) ** self.flops_exponent
                  for (c, f), s in zip(zip(spec.convs, per_elem), self.importance(model).values())]
        return filter_masks(model, stripes_for_target(model, scores, flops_cut))

    def state_dict(self) -> dict:
        return {"input_strength": dict(self.iem.input_strength) if self.iem else {},
                "loss_avg": self._loss_avg, "steps": self._steps, "history": list(self.history),
                "info": dict(self._info)}

    def load_state_dict(self, state: dict) -> None:
        if self.iem is not None:
            self.iem.input_strength = dict(state["input_strength"])
        self._loss_avg = state["loss_avg"]
        self._steps = int(state["steps"])
        self.history = [float(v) for v in state["history"]]
        self._info = dict(state["info"])

    def finalize(self, model: nn.Module) -> None:
        if self.iem is not None:
            self.iem.close()
        fold_scales(model)
