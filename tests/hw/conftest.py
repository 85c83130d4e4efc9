import pytest

from prunefab.hw.config import EngineConfig


@pytest.fixture
def small_config():
    """A small engine so simulations stay fast."""
    return EngineConfig(lanes=4, max_height=10, max_width=10, max_channels=8, max_layers=4,
                        max_classes=8, act_depth=128, weight_depth=256, param_depth=32)
