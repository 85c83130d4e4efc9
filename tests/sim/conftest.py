import shutil

import pytest

from prunefab.hw.config import EngineConfig

# Two lane counts and two memory sizes; every random network is drawn to fit its engine.  The
# three small engines run residual additions (their random networks draw ResNet blocks), two
# of them blocks of pixels at once (2x2 and 1x2); the preset does neither, as built for its
# board.
CONFIGS = {
    "p4-small": EngineConfig(lanes=4, max_height=10, max_width=10, max_channels=8, max_layers=6,
                             max_classes=8, act_depth=128, weight_depth=256, param_depth=32,
                             residual=True),
    "p8-small": EngineConfig(lanes=8, max_height=8, max_width=12, max_channels=12, max_layers=6,
                             max_classes=10, act_depth=128, weight_depth=256, param_depth=48,
                             residual=True, pixels_per_step=4),
    "p4-large": EngineConfig(lanes=4, max_height=16, max_width=16, max_channels=16, max_layers=6,
                             max_classes=12, act_depth=512, weight_depth=1024, param_depth=96,
                             residual=True, pixels_per_step=2),
    "p8-large": EngineConfig.icebreaker(),
}

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None,
                                  reason="Icarus Verilog (iverilog, vvp) is not installed")
needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None,
                                     reason="verilator is not installed; the fast path is not tested")


def pytest_configure(config):
    config.addinivalue_line("markers", "rtl: runs the emitted Verilog in a simulator")
