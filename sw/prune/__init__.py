"""Pruning methods: KEP, IESSP and baselines behind one interface (see base.py)."""

from prunefab.sw.prune.base import Masks, PruningMethod, apply_masks, bake
from prunefab.sw.prune.baselines import FilterPruning, MagnitudePruning
from prunefab.sw.prune.iessp import InformationExtractionStripePruning
from prunefab.sw.prune.kep import KernelElementPruning, Schedule
from prunefab.sw.prune.stripes import StripeWisePruning

METHODS: dict[str, type[PruningMethod]] = {
    m.name: m for m in (KernelElementPruning, InformationExtractionStripePruning, StripeWisePruning,
                        FilterPruning, MagnitudePruning)
}


def make(name: str, **options) -> PruningMethod:
    """A pruning method by its name (kep, iessp, swp, filter, magnitude)."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)


__all__ = ["METHODS", "Masks", "PruningMethod", "apply_masks", "bake", "make", "Schedule",
           "KernelElementPruning", "InformationExtractionStripePruning", "StripeWisePruning",
           "FilterPruning", "MagnitudePruning"]
