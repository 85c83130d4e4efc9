"""The command line end to end on the synthetic set: train, prune, quantize, eval, and errors."""

import fcntl
import json
import math
import os
import pty
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunefab.cli import build_parser, main
from prunefab.errors import UsageError
from prunefab.sw import artifact


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    assert run("train", "--data", "synthetic", "--epochs", 1, "-o", d / "dense.pt") == 0
    return d


def test_pipeline_and_same_seed_same_artifact(dense, capsys):
    d = dense
    for tag in ("a", "b"):
        assert run("prune", d / "dense.pt", "--method", "kep", "--flops-cut", 0.7,
                   "--sparsity-epochs", 1, "--finetune-epochs", 1, "-o", d / f"kep-{tag}.pt") == 0
        assert run("quantize", d / f"kep-{tag}.pt", "--calibration", 300, "-o", d / f"kep-{tag}.pfab") == 0
    out = capsys.readouterr().out
    assert "conv-FLOPs cut" in out and "int8" in out
    assert (d / "kep-a.pfab").read_bytes() == (d / "kep-b.pfab").read_bytes()
    net = artifact.load(d / "kep-a.pfab")
    assert artifact.stats((d / "kep-a.pfab").read_bytes()).conv_index_bits_per_nonzero == 4.0
    assert artifact.read(d / "kep-a.pfab").pruning == artifact.Pruning("kep", 0.7)
    assert run("eval", d / "kep-a.pfab", "--data", "synthetic") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("kep-a.pfab: 1x12x12 input, 4 classes, 3 conv layers, made from synthetic")
    assert out[1] == "pruned by kep for a 70.0% conv-FLOPs cut"
    assert out[2].startswith("engine icebreaker (8 lanes): fits, weight memory ")
    assert out[3].startswith("engine ecp5-85f (64 lanes): fits, weight memory ")
    assert run("eval", d / "kep-a.pt") == 0
    out = capsys.readouterr().out
    assert "int8 accuracy" in out and "sparsity" in out and len(net.convs) == 3


def test_errors_are_one_line(dense, tmp_path, capsys):
    bad = tmp_path / "bad.pfab"
    bad.write_bytes(b"PFAB" + b"\0" * 20)
    assert run("eval", bad) == 2
    assert run("prune", tmp_path / "missing.pt", "--method", "kep", "-o", tmp_path / "x.pt") == 2
    assert run("prune", dense / "dense.pt", "--method", "iessp", "--schedule", "step", "-o",
               tmp_path / "x.pt") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("prunefab: error: ") for line in err)
    assert "Traceback" not in "".join(err)
    assert not (tmp_path / "x.pt").exists()


def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "prunefab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "prune", "quantize", "export", "eval", "gen", "demo"):
        assert cmd in out.stdout


def test_export_checks_engine_limits(dense, tmp_path, capsys):
    from prunefab.hw.config import EngineConfig
    small = tmp_path / "small.json"
    small.write_text(EngineConfig(lanes=2, max_channels=4, max_height=12, max_width=12,
                                  act_depth=64).to_json())
    assert run("export", dense / "dense.pt", "--calibration", 200, "--config", small,
               "-o", tmp_path / "net.pfab") == 2
    err = capsys.readouterr().err
    assert "max_channels" in err and "conv0" in err
    assert not (tmp_path / "net.pfab").exists()
    assert run("export", dense / "dense.pt", "--calibration", 200, "--config", "icebreaker",
               "-o", tmp_path / "net.pfab") == 0
    assert "fits the engine (8 lanes)" in capsys.readouterr().out
    assert artifact.read(tmp_path / "net.pfab").pruning is None       # a dense network
    assert run("eval", tmp_path / "net.pfab", "--images", 5) == 0
    out = capsys.readouterr().out
    assert "pruning: not recorded" in out and "engine icebreaker (8 lanes): fits" in out


def test_eval_names_the_first_limit_an_engine_preset_breaks(tmp_path, capsys):
    from prunefab.sw.synthetic import random_network
    net = random_network(np.random.default_rng(5), (1, 12, 12), (40,), (True,), classes=4)
    artifact.save(net, tmp_path / "wide.pfab", data="synthetic")
    assert run("eval", tmp_path / "wide.pfab", "--images", 3) == 0
    out = capsys.readouterr().out
    fits = [line for line in out.splitlines() if line.startswith("engine ")]
    assert fits[0].startswith("engine icebreaker (8 lanes): does not fit: ") and "conv0" in fits[0]
    assert fits[1].startswith("engine ecp5-85f (64 lanes): fits, ")


def test_gen_writes_design_and_config(tmp_path, capsys):
    from prunefab.hw.config import EngineConfig
    cfg = tmp_path / "cfg.json"
    cfg.write_text(EngineConfig(lanes=2, max_channels=4, max_height=8, max_width=8, act_depth=64,
                                weight_depth=64, param_depth=16, max_layers=3).to_json())
    assert run("gen", "--config", cfg, "--lanes", 3, "-o", tmp_path / "design") == 0
    assert "module prunefab_engine" in (tmp_path / "design" / "prunefab_engine.v").read_text()
    back = EngineConfig.from_json((tmp_path / "design" / "config.json").read_text())
    assert back.lanes == 3 and back.max_channels == 4


def test_sim_prints_per_layer_table(tmp_path, capsys):
    import numpy as np
    from prunefab.hw.config import EngineConfig
    from prunefab.sw.synthetic import Pattern, random_network
    net = random_network(np.random.default_rng(3), (1, 6, 6), (4,), (True,), classes=3,
                         patterns=Pattern.KERNEL_ELEMENTS)
    artifact.save(net, tmp_path / "net.pfab")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(EngineConfig(lanes=4, max_channels=4, max_height=8, max_width=8, act_depth=64,
                                weight_depth=64, param_depth=16, max_layers=3).to_json())
    assert run("sim", "--artifact", tmp_path / "net.pfab", "--config", cfg, "--images", 2) == 0
    out = capsys.readouterr().out
    assert "zero-skip limit" in out and "conv0" in out and "equal the reference" in out


# ----------------------------------------------------------------------------------------------
# the fuzz corpus: every input a careless or hostile user tried gives one line and a non-zero
# exit, before any work and without leaving a file behind

def write_idx_dir(folder, n, shape, classes=4, seed=0):
    """An MNIST-family directory (train and test split) of n random images of `shape` (HxW)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % classes
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(head + array.tobytes())
    return folder


@pytest.fixture(scope="module")
def corpus(dense, tmp_path_factory):
    """Files the corpus refers to: {pt}, {pfab}, data sets, configurations, obstacles."""
    from prunefab.hw.config import EngineConfig
    d = tmp_path_factory.mktemp("corpus")
    assert run("quantize", dense / "dense.pt", "--calibration", 100, "-o", d / "dense.pfab") == 0
    write_idx_dir(d / "data8", 40, (8, 8))
    write_idx_dir(d / "data28", 40, (28, 28))
    write_idx_dir(d / "empty", 0, (28, 28))
    (d / "a-file").write_text("in the way")
    (d / "a-dir").mkdir()
    cfg = json.loads(EngineConfig().to_json())
    for name, change in (("lanes-1e6", {"lanes": 10 ** 6}), ("lanes-text", {"lanes": "8"}),
                         ("lanes-float", {"lanes": 1e6}), ("depth-1e9", {"act_depth": 10 ** 9}),
                         ("layers-1e6", {"max_layers": 10 ** 6})):
        (d / f"{name}.json").write_text(json.dumps({**cfg, **change}))
    (d / "nested.json").write_text("[" * 100000 + "]" * 100000)
    (d / "binary.json").write_bytes(bytes(range(256)))
    return {"pt": dense / "dense.pt", "pfab": d / "dense.pfab", "d": d}


CORPUS = [
    # output paths: a directory, an impossible path, an unwritable one, an overlong name
    ("train --data synthetic -o {d}/a-dir", "is a directory"),
    ("train --data synthetic -o {d}/a-file/x.pt", "is not a directory"),
    ("train --data synthetic -o /proc/prunefab/x.pt", "cannot write in /proc"),
    ("train --data synthetic -o {d}/" + "n" * 300 + ".pt", "longer than 255 bytes"),
    ("train --data synthetic -o ''", "must not be empty"),
    ("prune {pt} --method kep -o {d}/a-dir", "is a directory"),
    ("quantize {pt} -o {d}/a-file/q.pfab", "is not a directory"),
    ("export {pt} -o {d}/a-dir", "is a directory"),
    ("gen -o {d}/a-file", "is not a directory"),
    ("gen -o /proc/prunefab", "cannot write in /proc"),
    ("demo --data synthetic --out {d}/a-file/demo", "is not a directory"),
    ("sim --artifact {pfab} --waves {d}/a-dir", "is a directory"),
    ("build --board icebreaker --out {d}/a-file", "is not a directory"),
    # counts and numbers out of range
    ("train --data synthetic --epochs -1 -o {d}/x.pt", "--epochs: must be at least 1, not -1"),
    ("train --data synthetic --epochs 0 -o {d}/x.pt", "--epochs: must be at least 1, not 0"),
    ("train --data synthetic --lr nan -o {d}/x.pt", "--lr: must be a finite number"),
    ("train --data synthetic --lr 0 -o {d}/x.pt", "--lr: must be a finite number in (0, 1]"),
    ("train --data synthetic --seed -1 -o {d}/x.pt", "--seed: must be in 0..4294967295, not -1"),
    ("train --data synthetic --epochs 1.5 -o {d}/x.pt", "--epochs: '1.5' is not an integer"),
    ("prune {pt} --method kep --strength nan -o {d}/x.pt", "--strength: must be a finite number >= 0"),
    ("prune {pt} --method kep --strength inf -o {d}/x.pt", "--strength: must be a finite number >= 0"),
    ("prune {pt} --method kep --strength -1 -o {d}/x.pt", "--strength: must be a finite number >= 0"),
    ("prune {pt} --method kep --flops-cut 1 -o {d}/x.pt", "--flops-cut: must be a finite number in [0, 1)"),
    ("prune {pt} --method kep --flops-cut -0.1 -o {d}/x.pt", "--flops-cut"),
    ("prune {pt} --method kep --flops-cut nan -o {d}/x.pt", "--flops-cut"),
    ("prune {pt} --method kep --sparsity-epochs -1 -o {d}/x.pt", "--sparsity-epochs: must be at least 0"),
    ("prune {pt} --method iessp --schedule step -o {d}/x.pt", "--schedule applies to --method kep only"),
    ("prune {pt} --method kep --balanced -o {d}/x.pt", "--balanced applies to --method iessp only"),
    ("demo --data synthetic --flops-cut 2 --out {d}/demo", "--flops-cut: must be a finite number in [0, 1)"),
    ("demo --data synthetic --methods kep,nope --out {d}/demo", "unknown name(s) 'nope'"),
    ("demo --data synthetic --methods kep,kep --out {d}/demo", "names a method twice"),
    ("demo --data synthetic --epochs -1 --out {d}/demo", "--epochs: must be at least 1"),
    ("quantize {pt} --calibration 0", "--calibration: must be at least 1, not 0"),
    ("eval {pfab} --images -5", "--images: must be at least 1, not -5"),
    ("eval {pfab} --images 0", "--images: must be at least 1, not 0"),
    ("sim --artifact {pfab} --images 0", "--images: must be at least 1, not 0"),
    ("hil --simulate icebreaker --artifact {pfab} --images -5", "--images: must be at least 1"),
    ("hil --port socket://127.0.0.1:9 --artifact {pfab} --timeout 0", "--timeout: must be a finite number > 0"),
    ("hil --port socket://127.0.0.1:9 --artifact {pfab} --timeout nan", "--timeout: must be a finite"),
    ("hil --simulate icebreaker --artifact {pfab} --retries -1", "--retries: must be at least 0"),
    ("hil --simulate icebreaker --artifact {pfab} --faults flip=2", "flip_rate must be a probability"),
    ("hil --simulate icebreaker --artifact {pfab} --faults bogus", "is not flip=P, drop=P or seed=N"),
    ("hil --port socket://127.0.0.1:9 --artifact {pfab} --faults flip=0.1",
     "--faults applies to a simulated board"),
    ("hil --artifact {pfab}", "one of the arguments --port --simulate is required"),
    ("hil --port x --simulate icebreaker --artifact {pfab}", "not allowed with argument"),
    ("simboard --board icebreaker --faults drop=-1", "drop_rate must be a probability"),
    ("build --board icebreaker --lanes 0", "--lanes: must be at least 1, not 0"),
    ("build --board icebreaker --lanes 1000000", "lanes=1000000 exceeds the generator's limit"),
    ("build --board icebreaker --seed -1", "--seed: must be in"),
    # empty and unknown data
    ("train --data '' -o {d}/x.pt", "--data: must not be empty"),
    ("prune {pt} --method kep --data '' -o {d}/x.pt", "--data: must not be empty"),
    ("eval {pfab} --data ''", "--data: must not be empty"),
    ("hil --simulate icebreaker --artifact {pfab} --data ''", "--data: must not be empty"),
    ("train --data {d}/empty -o {d}/x.pt", "the train split has no images"),
    ("eval {pfab} --data {d}/empty", "the test split has no images"),
    ("train --data {d}/nowhere -o {d}/x.pt", "unknown data set"),
    # the network and the data disagree
    ("prune {pt} --method kep --data {d}/data8 -o {d}/x.pt", "the network takes 1x12x12 images, "),
    ("quantize {pt} --data {d}/data28", "the network takes 1x12x12 images"),
    ("export {pt} --data {d}/data8 -o {d}/x.pfab", "the network takes 1x12x12 images"),
    ("eval {pt} --data {d}/data28", "the network takes 1x12x12 images"),
    ("eval {pfab} --data {d}/data8", "the network takes 1x12x12 images"),
    ("hil --simulate icebreaker --artifact {pfab} --data {d}/data28", "the network takes 1x12x12"),
    ("train --model vgg16 --data synthetic -o {d}/x.pt", "12x12 inputs are too small for 5 2x2 pools"),
    ("train --model vgg16 --data {d}/data28 -o {d}/x.pt", "28x28 inputs are too small for 5 2x2 pools"),
    ("train --model vgg11 --data synthetic -o {d}/x.pt", "vgg11: 12x12 inputs are too small for 5 2x2 pools"),
    ("train --model resnet18 --data synthetic -o {d}/x.pt", "'resnet18' is neither a model"),
    ("train --model {d}/none.py:make --data synthetic -o {d}/x.pt", "none.py: no such file"),
    ("train --data synthetic --batch-size 0 -o {d}/x.pt", "--batch-size: must be at least 1, not 0"),
    ("train --data synthetic --device tpu -o {d}/x.pt", "invalid choice: 'tpu'"),
    ("prune {pt} --method kep --lr -1 -o {d}/x.pt", "--lr: must be a finite number in (0, 1]"),
    ("hil --simulate icebreaker --artifact {pfab} --timeout 1", "--timeout applies to a board on --port only"),
    # engine configurations
    ("gen --lanes 1000000 -o {d}/engine", "lanes=1000000 exceeds the generator's limit of 512"),
    ("gen --config {d}/lanes-1e6.json -o {d}/engine", "exceeds the generator's limit"),
    ("gen --config {d}/depth-1e9.json -o {d}/engine", "the act0 memory (1000000000 words"),
    ("gen --config {d}/layers-1e6.json -o {d}/engine", "max_layers=1000000 exceeds"),
    ("gen --config {d}/lanes-text.json -o {d}/engine", "lanes must be an integer, not '8'"),
    ("gen --config {d}/lanes-float.json -o {d}/engine", "lanes must be an integer"),
    ("gen --config {d}/nested.json -o {d}/engine", "not a JSON engine configuration"),
    ("gen --config {d}/binary.json -o {d}/engine", "not a JSON engine configuration"),
    ("gen --config {d}/nowhere.json -o {d}/engine", "neither an engine preset"),
    ("export {pfab} --config {d}/lanes-1e6.json -o {d}/x.pfab", "exceeds the generator's limit"),
    ("sim --artifact {pfab} --config {d}/lanes-1e6.json", "exceeds the generator's limit"),
    # files that are not what they claim
    ("eval {d}/a-file", "not a prunefab checkpoint"),
    ("eval {d}/a-dir", "not a prunefab checkpoint"),
    ("prune {d}/nowhere.pt --method kep -o {d}/x.pt", "no such checkpoint"),
    ("sim --artifact {d}/a-file.pfab", "a-file.pfab"),
    ("hil --simulate icebreaker --artifact {pt}", "dense.pt"),
    # the command itself
    ("", "the following arguments are required: command"),
    ("frobnicate", "invalid choice: 'frobnicate'"),
    ("train --data synthetic", "the following arguments are required: -o/--output"),
]


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("line,expected", CORPUS, ids=[c[0][:60] for c in CORPUS])
def test_corpus_case_is_one_line_and_leaves_nothing(corpus, line, expected, capsys):
    args = [a.format(**corpus) for a in shlex.split(line)]
    before = _files(corpus["d"])
    capsys.readouterr()
    status = main(args)
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("prunefab"), err
    assert expected in err and "Traceback" not in err
    assert _files(corpus["d"]) == before


def _finite(v):
    return isinstance(v, float) and math.isfinite(v)


# (command line before the option, option, what a value it accepts must satisfy)
OPTIONS = [
    ("train -o {out}", "--epochs", lambda v: isinstance(v, int) and v >= 1),
    ("train -o {out}", "--lr", lambda v: _finite(v) and 0 < v <= 1),
    ("train -o {out}", "--seed", lambda v: isinstance(v, int) and 0 <= v < 2 ** 32),
    ("prune x.pt --method kep -o {out}", "--flops-cut", lambda v: _finite(v) and 0 <= v < 1),
    ("prune x.pt --method kep -o {out}", "--strength", lambda v: _finite(v) and v >= 0),
    ("prune x.pt --method kep -o {out}", "--finetune-epochs", lambda v: isinstance(v, int) and v >= 0),
    ("quantize x.pt", "--calibration", lambda v: isinstance(v, int) and v >= 1),
    ("eval x.pfab", "--images", lambda v: isinstance(v, int) and v >= 1),
    ("hil --simulate icebreaker --artifact x.pfab", "--timeout", lambda v: _finite(v) and v > 0),
    ("hil --simulate icebreaker --artifact x.pfab", "--retries", lambda v: isinstance(v, int) and v >= 0),
    ("gen -o {out}", "--lanes", lambda v: isinstance(v, int) and v >= 1),
    ("demo", "--flops-cut", lambda v: _finite(v) and 0 <= v < 1),
]
VALUES = st.one_of(st.text(max_size=8), st.integers().map(str), st.floats().map(repr),
                   st.sampled_from(["nan", "-inf", "1e309", "0x10", "1_000", " 3 ", "", "0.9999999999"]))


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(OPTIONS), value=VALUES)
def test_generated_option_values_parse_in_range_or_are_refused_in_one_line(parser, tmp_path, option,
                                                                          value):
    before, flag, accepts = option
    args = shlex.split(before.format(out=tmp_path / "out")) + [f"{flag}={value}"]
    try:
        ns = parser.parse_args(args)
    except UsageError as e:
        assert "\n" not in str(e) and flag in str(e)
    else:
        assert accepts(getattr(ns, flag.lstrip("-").replace("-", "_")))
    assert not any(tmp_path.iterdir())


def test_help_lists_exactly_the_models_that_train(capsys):
    from prunefab.sw.models import MODELS
    for command in ("train", "check"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--model {" + ",".join(MODELS) + "}|FILE.py:FACTORY" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["reference", "resnet20", "resnet56", "vgg11", "vgg16"])
def test_every_listed_model_trains_or_is_refused_in_one_line_before_work(name, tmp_path, capsys,
                                                                        monkeypatch):
    from prunefab import progress
    from prunefab.sw.models import MODELS
    assert name in MODELS
    monkeypatch.setattr(progress, "BAR_DELAY", 0.0)         # any training would show its bar
    write_idx_dir(tmp_path / "data12", 4, (12, 12))
    status = run("train", "--model", name, "--data", tmp_path / "data12", "--epochs", 1,
                 "-o", tmp_path / "m.pt")
    out, err = capsys.readouterr()
    if name.startswith("vgg"):      # five 2x2 pools need 32x32 images
        assert status == 2 and not (tmp_path / "m.pt").exists()
        assert err == f"prunefab: error: {name}: 12x12 inputs are too small for 5 2x2 pools; this " \
                      f"model needs at least 32x32\n"
    else:
        assert status == 0 and "wrote" in out and "train epoch 1/1" in err
        assert (tmp_path / "m.pt").exists()


def test_vgg11_trains_on_32x32_data(tmp_path, capsys):
    write_idx_dir(tmp_path / "data32", 4, (32, 32))
    assert run("train", "--model", "vgg11", "--data", tmp_path / "data32", "--epochs", 1,
               "-o", tmp_path / "vgg.pt") == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "vgg.pt").exists()


def test_vgg16_trains_on_32x32_data(tmp_path, capsys):
    write_idx_dir(tmp_path / "data32", 16, (32, 32))
    assert run("train", "--model", "vgg16", "--data", tmp_path / "data32", "--epochs", 1,
               "-o", tmp_path / "vgg.pt") == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "vgg.pt").exists()


def test_more_images_than_the_set_holds_uses_the_set(corpus, capsys):
    assert run("eval", corpus["pfab"], "--data", "synthetic", "--images", 10 ** 6) == 0
    assert "on 500 images" in capsys.readouterr().out


def test_programming_errors_keep_their_traceback(monkeypatch, corpus):
    def broken(args):
        raise ValueError("a bug")
    monkeypatch.setattr("prunefab.cli.cmd_eval", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["eval", str(corpus["pfab"])])


def test_debug_shows_the_traceback_of_a_user_error(corpus, capsys):
    assert main(["eval", str(corpus["pfab"]), "--data", str(corpus["d"] / "data8"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ArtifactError" in err
    assert err.splitlines()[-1].startswith("prunefab: error: ")


def test_os_errors_are_one_line(monkeypatch, corpus, capsys):
    def refuse(args):
        raise PermissionError(13, "Permission denied", str(corpus["d"] / "x"))
    monkeypatch.setattr("prunefab.cli.cmd_eval", refuse)
    assert main(["eval", str(corpus["pfab"])]) == 2
    assert capsys.readouterr().err == f"prunefab: error: {corpus['d'] / 'x'}: Permission denied\n"


# ----------------------------------------------------------------------------------------------
# Ctrl-C: one line, exit 130, no partial file; in a real process, at start-up and at work

def _prunefab(tmp_path, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "prunefab", *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, **kw)


def _wait_for(predicate, proc, what):
    """Poll until `predicate()`; the process must still be running (minutes of grace, as the
    machine may be loaded: this waits for progress, it does not time it)."""
    deadline = time.monotonic() + 600
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what}: the process ended or took 10 minutes ({proc.wait()})")
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_ctrl_c_during_start_up(tmp_path):
    proc = _prunefab(tmp_path, "train", "--data", "synthetic", "--epochs", 1, "-o", tmp_path / "x.pt",
                     stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    _wait_for(lambda: "libtorch" in maps.read_text(), proc, "torch import")    # start-up
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert err == "prunefab: interrupted\n"
    assert _files(tmp_path) == []


def test_ctrl_c_during_training(tmp_path):
    # stderr on a terminal (80 columns), so that the training's progress shows when work has begun
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    # batches of one image: an epoch lasts long enough for its bar to show (quick loops print nothing)
    proc = _prunefab(tmp_path, "train", "--data", "synthetic", "--epochs", 1000, "--batch-size", 1,
                     "-o", tmp_path / "x.pt", stderr=slave)
    os.close(slave)
    seen = []

    def progress():
        if select.select([master], [], [], 0)[0]:
            seen.append(os.read(master, 4096))
        return bool(seen)
    _wait_for(progress, proc, "training progress")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=600)
    while True:                                  # the rest of stderr
        try:
            chunk = os.read(master, 4096)
        except OSError:                          # the terminal closed with the process
            break
        if not chunk:
            break
        seen.append(chunk)
    os.close(master)
    err = b"".join(seen).decode(errors="replace").replace("\r", "\n")
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1] == "prunefab: interrupted"
    assert _files(tmp_path) == []
