"""simulate_rtl and its report: the library behind `prunefab sim`."""

import numpy as np
import pytest

from prunefab.hw.generate import generate
from prunefab.sim.cycle_model import network_report
from prunefab.sim.icarus import SimulationError
from prunefab.sim.runner import format_report, simulate_rtl
from prunefab.sw import artifact, reference
from prunefab.sw.synthetic import Pattern, random_images, random_network

from .conftest import CONFIGS, needs_icarus, needs_verilator

pytestmark = pytest.mark.rtl


def _network(seed=21):
    rng = np.random.default_rng(seed)
    net = random_network(rng, (2, 6, 6), channels=(4, 4), pools=(True, False), classes=4,
                         patterns=(Pattern.KERNEL_ELEMENTS, Pattern.STRIPES), density=0.4)
    return net, random_images(rng, 2, net.input_shape)


@needs_icarus
def test_artifact_and_design_folder_on_icarus_with_waves(tmp_path):
    net, images = _network()
    path = tmp_path / "net.pfab"
    artifact.save(net, path)
    cfg = CONFIGS["p4-small"]
    design = generate(cfg, tmp_path / "design")
    waves = tmp_path / "run.vcd"
    result = simulate_rtl(path, design.config.parent, images, waves=waves)
    assert result.logits.tolist() == reference.run(net, images).tolist()
    assert result.report == network_report(cfg, net)
    assert [list(r.layer_cycles) for r in result.runs] == [[r.cycles for r in result.report.layers]] * 2
    assert waves.read_text()[:200].lstrip().startswith("$date")
    text = format_report(result)
    lines = text.splitlines()
    assert lines[0].startswith("2 images (given) on icarus")
    assert [line.split()[0] for line in lines[1:7]] == ["layer", "conv0", "conv1", "linear", "total", "simulated"]
    conv0 = result.report.layers[0]
    assert lines[2].split() == ["conv0", str(conv0.cycles), f"{100 * conv0.mac_utilisation:.1f}%",
                                str(conv0.zero_skip_limit), str(conv0.dense_cycles), f"{conv0.speedup:.2f}x"]


@needs_verilator
def test_verilator_backend_with_an_image_count(tmp_path):
    net, _ = _network(22)
    result = simulate_rtl(net, CONFIGS["p4-small"], 3, backend="verilator", work_dir=tmp_path)
    assert result.images_source == "random (seed 0)"
    images = np.random.default_rng(0).integers(0, 256, size=(3, *net.input_shape), dtype=np.uint8)
    assert result.logits.tolist() == reference.run(net, images).tolist()
    assert result.cycles_per_second > 0


def test_bad_arguments_are_one_line_errors(tmp_path):
    net, images = _network()
    with pytest.raises(SimulationError, match="unknown backend 'modelsim'; use one of icarus, verilator"):
        simulate_rtl(net, CONFIGS["p4-small"], images, backend="modelsim")
    with pytest.raises(SimulationError, match=r"images must be uint8 \[N, 2, 6, 6\], not uint8 \[2, 1, 6, 6\]"):
        simulate_rtl(net, CONFIGS["p4-small"], images[:, :1])
    with pytest.raises(SimulationError, match="cannot read the engine configuration"):
        simulate_rtl(net, tmp_path / "missing.json", images)
