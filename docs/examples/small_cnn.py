"""A user's own model for prunefab (docs/models.md): a plain nn.Sequential of the hardware family,
sized for the synthetic set's 1x12x12 images and four classes."""

from torch import nn


def small_cnn() -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * 3 * 3, 4))
    model.input_shape = (1, 12, 12)       # optional: else the square shape the Linear implies
    return model
