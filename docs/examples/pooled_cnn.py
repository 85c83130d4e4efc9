"""A user's own model for prunefab (docs/models.md): conv blocks, a global average pool, a
hidden Linear + ReLU layer and the classifier, for the synthetic set's 1x12x12 images and four
classes."""

from torch import nn


def pooled_cnn() -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 12), nn.ReLU(),
        nn.Linear(12, 4))
    model.input_shape = (1, 12, 12)       # a global pool takes any size: say which
    return model
