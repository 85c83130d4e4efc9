"""`prunefab check`: how a model maps to an engine, layer by layer, or the first layer that
cannot and why; and the user's own model (`FILE.py:FACTORY`) through the whole flow."""

from pathlib import Path

import numpy as np
import pytest
import torch

from prunefab.check import check
from prunefab.cli import main
from prunefab.hw.config import EngineConfig
from prunefab.sw import artifact, data, models
from prunefab.sw.flops import count

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
EXAMPLE = str(EXAMPLES / "small_cnn.py") + ":small_cnn"
POOLED = str(EXAMPLES / "pooled_cnn.py") + ":pooled_cnn"


def run(*args):
    return main([str(a) for a in args])


def test_a_family_model_maps_layer_by_layer(capsys):
    assert run("check", "--model", "reference", "--config", "icebreaker") == 0
    out = capsys.readouterr().out.splitlines()
    counts = count(models.reference_net())
    assert out[0] == "reference: 1x28x28 input, 10 classes, on the icebreaker engine (8 lanes)"
    rows = out[2:-2]
    assert [r.split()[0] for r in rows] == ["conv0", "conv1", "conv2", "linear"]
    assert rows[0].split()[2:5] == ["conv3x3+bn+relu+maxpool2x2", "1x28x28", "8x14x14"]
    assert rows[-1].split()[3:5] == ["1568", "10"]
    total = out[-2].split()
    assert total[0] == "total" and int(total[2]) == counts.dense_parameters
    assert float(total[1]) == pytest.approx((counts.dense_conv_flops + counts.linear.dense_flops) / 1e6,
                                            abs=1e-3)
    assert out[-1].startswith("maps to the icebreaker engine (8 lanes): dense, weight memory ")


@pytest.mark.parametrize("name, config, problem", [
    ("resnet56", "ecp5-85f", "network: 58 layers exceeds this engine's limit of 24; generate an "
                             "engine with max_layers >= 58"),
])
def test_a_model_that_cannot_map_gets_its_table_and_one_line_naming_the_layer_and_limit(
        name, config, problem, capsys):
    assert run("check", "--model", name, "--config", config) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{name}: 3x32x32 input, 10 classes, on the {config} engine (64 lanes)"
    assert out[-1].startswith(f"{name} does not map to the {config} engine") and problem in out[-1]


def test_a_network_beyond_the_chip_is_refused_with_the_bytes_it_needs(capsys):
    """VGG-16 at CIFAR size: beyond the engine's limits and, dense or pruned, beyond the
    ECP5-85F's block RAM; the line gives the bytes needed against the chip's 208 x 18 kbit."""
    assert run("check", "--model", "vgg16", "--config", "ecp5-85f") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "vgg16: 3x32x32 input, 10 classes, on the ecp5-85f engine (64 lanes)"
    line = out[-1]
    assert line.startswith("vgg16 does not map to the ecp5-85f engine (64 lanes): conv2 "
                           "(features.2.0): 128 output channels exceeds this engine's limit of 64; "
                           "generate an engine with max_channels >= 128; nor would its memories "
                           "fit the chip, even pruned: dense ")
    assert line.endswith("with 2 of 9 elements of each 3x3 plane kept, against the ulx3s-85f's "
                         f"{208 * 18 * 1024 // 8 // 1024} KB")


def test_chip_memory_counts_every_memory_as_the_block_rams_hold_it():
    from prunefab.boards.fit import chip_memory, memory_bits
    from prunefab.check import _stand_in
    from prunefab.hw.loader import demand, pack_network
    from prunefab.hw.memories import memory_spec
    from prunefab.sw.models import engine_spec
    cfg = EngineConfig.ecp5_85f()
    spec = engine_spec(models.build("resnet20"))
    pruned = _stand_in(spec, (3, 32, 32), kept=2)
    need = demand(cfg, pruned)
    program = pack_network(cfg, pruned)                      # within the limits: the loader's words
    assert (need.step_words, need.params) == (len(program.weights), len(program.params))
    assert need.config == cfg                               # no limit raised
    found = chip_memory(cfg, pruned)
    assert found.fits and found.board == "ulx3s-85f"
    assert found.needed["weights"] == need.step_words * memory_spec(cfg, "weights").mapped_width
    # the 16 activation banks, each on two read ports (the residual operand's)
    assert found.needed["activations"] == 16 * 2 * 8 * need.act_words
    assert memory_bits(cfg, {})["weights"] == cfg.weight_depth * memory_spec(cfg, "weights").mapped_width
    vgg = _stand_in(engine_spec(models.build("vgg16")), (3, 32, 32), kept=1)
    big = chip_memory(cfg, vgg)
    assert not big.fits and big.total > 5 * big.available
    assert big.lanes == 64 and demand(cfg, vgg).config.max_channels == 512
    assert chip_memory(cfg.with_lanes(32), pruned) is None   # no board's preset: nothing to say


def test_resnet20_maps_as_a_graph_layer_by_layer(capsys):
    assert run("check", "--model", "resnet20", "--config", "ecp5-85f") == 0
    out = capsys.readouterr().out.splitlines()
    # every layer kind runs; dense, its weights need more step words than the engine has
    assert out[-1].startswith("maps to the ecp5-85f engine (64 lanes): dense, it does not fit the "
                              "memories (network: ") and out[-1].endswith("pruning shrinks the weights")
    rows = {r.split()[0]: r.split() for r in out[2:-1]}
    # 19 convolutions and two 1x1 projections, then global average pooling into the classifier
    assert len(rows) == 22 + 1
    assert rows["conv0"][1:5] == ["conv1", "conv3x3+bn+relu", "3x32x32", "16x32x32"]
    assert rows["conv2"][1:5] == ["layers.0.conv2", "conv3x3+bn+add:conv0+relu", "16x32x32", "16x32x32"]
    assert rows["conv7"][1:5] == ["layers.3.conv1", "conv3x3/2+bn+relu", "16x32x32", "32x16x16"]
    assert rows["conv8"][1:5] == ["layers.3.shortcut.0", "conv1x1/2+bn", "16x32x32", "32x16x16"]
    assert rows["conv9"][1:5] == ["layers.3.conv2", "conv3x3+bn+add:conv8+relu", "32x16x16", "32x16x16"]
    assert rows["linear"][1:5] == ["classifier", "avgpool+linear", "64", "10"]
    model = models.resnet20_cifar()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert int(rows["total"][-1]) == (sum(c.weight.numel() + c.out_channels for c in convs)
                                      + model.classifier.weight.numel() + 10)


def test_a_model_without_a_graph_gets_one_line(tmp_path, capsys):
    (tmp_path / "odd.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)\n    def forward(self, x):\n"
        "        return self.conv(x)\ndef make():\n    return Net()\n")
    assert run("check", "--model", f"{tmp_path / 'odd.py'}:make") == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "model Net has a custom forward (at conv)" in out


def test_the_first_layer_over_a_limit_is_named_with_the_models_own_name(tmp_path, capsys):
    narrow = tmp_path / "narrow.json"
    narrow.write_text(EngineConfig(lanes=2, max_channels=8, max_height=12, max_width=12,
                                   act_depth=64).to_json())
    found = check(EXAMPLE, EngineConfig.from_json(narrow.read_text()))
    assert not found.ok and found.problem.startswith("conv1 (4): 16 output channels exceeds this "
                                                     "engine's limit of 8")


def test_the_example_user_model_runs_the_whole_flow(tmp_path, capsys):
    from tests.test_cli import write_idx_dir
    assert run("check", "--model", EXAMPLE, "--config", "icebreaker") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("small_cnn: 1x12x12 input, 4 classes, on the icebreaker engine (8 lanes)")
    assert [r.split()[1] for r in out[2:-2]] == ["0", "4", "6", "12"]       # the file's own layers
    write_idx_dir(tmp_path / "data", 16, (12, 12))
    assert run("train", "--model", EXAMPLE, "--data", tmp_path / "data", "--epochs", 1,
               "-o", tmp_path / "mine.pt") == 0
    assert run("export", tmp_path / "mine.pt", "--calibration", 16, "--config", "icebreaker",
               "-o", tmp_path / "mine.pfab") == 0
    net = artifact.load(tmp_path / "mine.pfab")
    assert net.input_shape == (1, 12, 12) and [c.out_channels for c in net.convs] == [8, 16, 16]


def test_a_user_model_with_a_pooled_hidden_head_runs_the_whole_flow_on_the_engine(tmp_path, capsys):
    """Global average pooling and a hidden layer, filter-pruned (the removed filters take the
    hidden layer's columns), exported and run on the engine's RTL bit-exactly."""
    assert run("check", "--model", POOLED, "--config", "icebreaker") == 0
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[2:-2]]
    assert [(r[0], r[2]) for r in rows] == [("conv0", "conv3x3+bn+relu+maxpool2x2"),
                                            ("conv1", "conv3x3+bn+relu"),
                                            ("linear0", "avgpool+linear+relu"), ("linear", "linear")]
    assert run("train", "--model", POOLED, "--data", "synthetic", "--epochs", 1,
               "-o", tmp_path / "p.pt") == 0
    assert run("prune", tmp_path / "p.pt", "--data", "synthetic", "--method", "filter",
               "--flops-cut", 0.5, "--finetune-epochs", 1, "-o", tmp_path / "pf.pt") == 0
    assert run("export", tmp_path / "pf.pt", "--data", "synthetic", "--calibration", 16,
               "--config", "icebreaker", "-o", tmp_path / "pf.pfab") == 0
    net = artifact.load(tmp_path / "pf.pfab")
    assert net.hidden[0].global_pool and net.linear.in_features == 12
    dead = ~np.abs(net.convs[1].weights).reshape(16, -1).any(axis=1)
    assert dead.any() and not net.hidden[0].weights[:, dead].any()
    capsys.readouterr()
    import shutil
    if shutil.which("iverilog"):
        assert run("sim", "--artifact", tmp_path / "pf.pfab", "--config", "icebreaker",
                   "--images", 2) == 0
        out = capsys.readouterr().out
        assert "logits and every layer's cycle counter equal the reference and the cycle model" in out
        assert [r.split()[0] for r in out.splitlines() if r.startswith("linear")] == ["linear0", "linear"]


def test_a_user_model_keeps_its_outputs_as_the_family_network():
    torch.manual_seed(0)
    user = models.load_user_model(EXAMPLE)
    for m in user.modules():            # trained-looking statistics, so BatchNorm matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    user.eval()
    net = models.as_family(user).eval()
    x = torch.rand(3, 1, 12, 12)
    torch.testing.assert_close(net(x), user(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("source, factory, message", [
    ("def make():\n    return 3\n", "make", "make() returned a int, not a torch.nn.Module"),
    ("def make():\n    raise RuntimeError('no weights')\n", "make", "make() raised RuntimeError: no weights"),
    ("import nothing_here\n", "make", "running it raised ModuleNotFoundError"),
    ("x = 1\n", "make", "defines no function make"),
    ("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)\n    def forward(self, x):\n"
     "        return self.conv(x)\ndef make():\n    return Net()\n", "make",
     "model Net has a custom forward (at conv)"),
])
def test_a_broken_user_model_is_refused_in_one_line(tmp_path, capsys, source, factory, message):
    (tmp_path / "mine.py").write_text(source)
    assert run("train", "--model", f"{tmp_path / 'mine.py'}:{factory}", "--data", "synthetic",
               "-o", tmp_path / "m.pt") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prunefab: error: ") and message in err
    assert not (tmp_path / "m.pt").exists()


def test_an_engine_refuses_a_resnet_before_calibration_and_it_exports_as_version_2(tmp_path, capsys):
    from prunefab.sw.train import save_checkpoint
    torch.manual_seed(0)
    save_checkpoint(models.ResNetCifar(8, 10, (3, 32, 32)), tmp_path / "r8.pt",
                    data="synthetic-cifar", seed=0)
    assert run("export", tmp_path / "r8.pt", "--config", "icebreaker", "--calibration", 16,
               "-o", tmp_path / "r8.pfab") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: data: synthetic-cifar, the checkpoint's" and len(err) == 2
    assert err[1] == ("prunefab: error: network: 10 layers exceeds this engine's limit of 8; "
                      "generate an engine with max_layers >= 10")
    assert not (tmp_path / "r8.pfab").exists()
    # the ECP5-85F preset runs every layer kind of a ResNet
    assert run("export", tmp_path / "r8.pt", "--config", "ecp5-85f", "--calibration", 16,
               "-o", tmp_path / "r8.pfab") == 0
    assert "fits the engine (64 lanes): weight memory " in capsys.readouterr().out
    # without an engine it exports (the integer reference runs it; tests/sw/test_quantize.py)
    from prunefab.sw.pipeline import quantize_model
    from prunefab.sw.train import load_checkpoint
    net = quantize_model(load_checkpoint(tmp_path / "r8.pt")[0], data.synthetic_cifar(16))
    encoded = artifact.encode(net, "synthetic-cifar")
    assert encoded[4:6] == b"\x02\x00" and artifact.decode(encoded).input_shape == (3, 32, 32)
    assert [(c.kernel, c.stride) for c in net.convs if not c.relu] == [(1, 2), (1, 2)]
    assert net.linear.global_pool
