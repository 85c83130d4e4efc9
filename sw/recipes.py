"""Paper-scale schedules: one table, `prunefab train|prune --recipe NAME` (docs/scale.md).

A recipe names the model, the data, the FLOPs target of pruning and the training budget; an
option given on the command line wins over the recipe's value.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunefab.sw.pipeline import Budget
from prunefab.sw.train import Regime, Update

# SWP's public CIFAR schedule (its main.py): batch 64, 160 epochs, SGD with momentum 0.9 and
# weight decay 1e-4, learning rate 0.1 divided by 10 at 50 % and 75 % of the epochs, images
# shifted by up to 4 pixels and flipped
_CIFAR_SGD = Regime(Update.SGD_STEP, momentum=0.9, weight_decay=1e-4, milestones=(0.5, 0.75),
                    gamma=0.1, augment=True)


@dataclass(frozen=True)
class Recipe:
    """A model, its data set, the conv-FLOPs cut to prune to, and the training budget."""

    model: str
    data: str
    flops_cut: float
    budget: Budget


RECIPES: dict[str, Recipe] = {
    # IESSP reports VGG-16 on CIFAR-10 at -75.88 % FLOPs (+0.29 points); KEP is run at the same cut
    "vgg16-cifar10": Recipe("vgg16", "cifar10", 0.7588,
                            Budget(train_epochs=160, sparsity_epochs=40, finetune_epochs=40, lr=0.1,
                                   batch_size=64, regime=_CIFAR_SGD, prune_regime=_CIFAR_SGD,
                                   prune_lr=0.1, finetune_lr=0.1 / 3)),
    # the abstracts give no ResNet-56 target; half the conv FLOPs is the usual comparison point
    "resnet56-cifar10": Recipe("resnet56", "cifar10", 0.5,
                               Budget(train_epochs=160, sparsity_epochs=40, finetune_epochs=40,
                                      lr=0.1, batch_size=64, regime=_CIFAR_SGD,
                                      prune_regime=_CIFAR_SGD, prune_lr=0.1, finetune_lr=0.1 / 3)),
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
