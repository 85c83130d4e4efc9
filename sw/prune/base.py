"""The interface every pruning method shares, and the mask plumbing.

A method is a strategy object.  The pipeline (`prunefab.sw.pipeline.prune`) drives it:

1. `prepare(model, batches)`   look at the trained model (prior masks, stripe scales, ...)
2. `penalty(model, loss, t)`   the training hook: a regularization term added to the output loss
                               during the sparsity phase (t runs from 0 to 1 over that phase)
   `after_backward(model)`     the other hook: between backward and the optimizer step of the
                               sparsity phase (in-loop thresholding, gradient masking)
3. `importance(model)`         scores at the method's granularity
4. `compute_masks(model, cut)` keep-masks that reach a conv-FLOPs reduction `cut`
5. `finalize(model)`           fold any reparametrization into the weights

Masks are attached with torch.nn.utils.prune, so they live on the module as `<name>_mask`
buffers next to `<name>_orig`, and `bake` makes them permanent.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunefab.errors import PrunefabError
from prunefab.sw.flops import conv_output_sizes
from prunefab.sw.models import ConvSpec, NetSpec, UnmappableModel, layer_specs

# (module, parameter name) -> keep-mask of the parameter's shape
Masks = dict[tuple[nn.Module, str], torch.Tensor]


class PruningError(PrunefabError, ValueError):
    """A method cannot reach the requested cut on this model; one line naming the limit."""


class PruningMethod(ABC):
    """One pruning strategy; subclasses set `name` and implement the abstract steps."""

    name: str = ""
    #: epochs of penalty-driven sparsity training before hard pruning (0: prune at once)
    wants_sparsity_phase: bool = False
    #: compute_masks meets the FLOPs target it is given (SWP's reference mode stops at its own
    #: threshold instead)
    follows_target: bool = True
    #: the pipeline fine-tunes after the hard prune; a method that does not is trained through
    #: the sparsity and fine-tune epochs together before it prunes
    fine_tunes: bool = True

    def prepare(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
        """Inspect the trained model before the sparsity phase (default: nothing)."""

    def penalty(self, model: nn.Module, output_loss: torch.Tensor, progress: float) -> torch.Tensor:
        """Regularization added to the loss during the sparsity phase (default: none)."""
        return output_loss.new_zeros(())

    def after_backward(self, model: nn.Module) -> None:
        """Called between backward and the optimizer step in the sparsity phase (default: nothing)."""

    @abstractmethod
    def importance(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Scores per conv layer name, at the method's granularity (higher = keep)."""

    @abstractmethod
    def compute_masks(self, model: nn.Module, flops_cut: float) -> Masks:
        """Keep-masks reaching at least `flops_cut` reduction of dense conv FLOPs."""

    def finalize(self, model: nn.Module) -> None:
        """Fold reparametrizations into plain weights (default: nothing to fold)."""

    def state_dict(self) -> dict:
        """Running statistics a resumed sparsity phase must restore (default: none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


def check_cut(flops_cut: float) -> float:
    if not 0.0 <= flops_cut < 1.0:
        raise ValueError(f"conv-FLOPs cut must be in [0, 1), not {flops_cut}")
    return float(flops_cut)


_traced: "weakref.WeakKeyDictionary[nn.Module, tuple[NetSpec, list[int]]]" = weakref.WeakKeyDictionary()


def flops_per_element(model: nn.Module) -> tuple[NetSpec, list[int]]:
    """The prunable conv layers and, per layer, the FLOPs one weight element costs (2 * H * W).

    A model of the hardware family is described by `layer_specs`.  Any other model (ResNet-56,
    say) is traced once with a dummy input: its 3x3 convolutions are the prunable layers, in
    execution order, and the spec has no classifier (methods that need one refuse it).
    """
    try:
        spec = layer_specs(model)
    except UnmappableModel:
        if model not in _traced:
            _traced[model] = _trace_convs(model)
        return _traced[model]
    return spec, [2 * h * w for h, w in conv_output_sizes(spec, model.input_shape)]


def _trace_convs(model: nn.Module) -> tuple[NetSpec, list[int]]:
    sites, sizes, handles = [], {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            sites.append(ConvSpec(m, None, False, name))
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:]))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    order = {n: i for i, n in enumerate(sizes)}
    sites.sort(key=lambda c: order[c.name])
    return NetSpec(tuple(sites), None, ""), [2 * sizes[c.name][0] * sizes[c.name][1] for c in sites]


def dense_conv_flops(model: nn.Module) -> int:
    spec, per = flops_per_element(model)
    return sum(f * c.conv.weight.numel() for c, f in zip(spec.convs, per))


def conv_flops(model: nn.Module) -> int:
    """Conv FLOPs of the nonzero weights, for any model `flops_per_element` describes."""
    spec, per = flops_per_element(model)
    return sum(f * int(torch.count_nonzero(c.conv.weight.detach())) for c, f in zip(spec.convs, per))


def apply_masks(masks: Masks) -> None:
    """Attach keep-masks as `<name>_mask` buffers (torch.nn.utils.prune convention)."""
    for (module, pname), mask in masks.items():
        device = getattr(module, pname).device
        torch_prune.custom_from_mask(module, pname, mask.to(device=device, dtype=torch.float32))


def bake(model: nn.Module) -> None:
    """Make every attached mask permanent: the parameter becomes the masked tensor."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
