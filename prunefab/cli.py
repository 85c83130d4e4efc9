"""The `prunefab` command: parse, call the library, print.  Every step is a library call too."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path



def _errors() -> tuple[type[Exception], ...]:
    from prunefab.sw.artifact import ArtifactError
    from prunefab.sw.data import DataError
    from prunefab.sw.models import UnmappableModel
    from prunefab.sw.qnet import NetworkError
    from prunefab.sw.train import CheckpointError
    from prunefab.sim.icarus import SimulationError
    from prunefab.sim.runner import RtlMismatch
    from prunefab.boards.build import BuildError
    from prunefab.boards.host import LinkError
    return (BuildError, ArtifactError, DataError, UnmappableModel, NetworkError, CheckpointError, ValueError,
            TypeError, SimulationError, RtlMismatch, LinkError)


def _seed(args) -> None:
    from prunefab.sw.train import seed_everything
    seed_everything(args.seed)


def _data_name(args, extra: dict) -> str:
    """--data, else the data set the checkpoint was trained on, said in a note."""
    from prunefab import progress
    if args.data:
        return args.data
    name = extra.get("data")
    progress.note(f"data: {name}, the checkpoint's" if name else
                  "data: fashion-mnist; the checkpoint names none (--data picks one)")
    return name or "fashion-mnist"


def _budget(args):
    """The recipe's budget (or the default one), with the options given on the command line."""
    import dataclasses
    from prunefab.sw.pipeline import Budget
    budget = _recipe(args).budget if getattr(args, "recipe", None) else Budget()
    given = {field: getattr(args, option, None) for field, option in (
        ("train_epochs", "epochs"), ("sparsity_epochs", "sparsity_epochs"),
        ("finetune_epochs", "finetune_epochs"), ("calibration_images", "calibration"),
        ("prune_lr" if getattr(args, "command", None) == "prune" else "lr", "lr"), ("batch_size", "batch_size"))}
    return dataclasses.replace(budget, **{k: v for k, v in given.items() if v is not None})


def _recipe(args):
    from prunefab.sw.recipes import recipe
    return recipe(args.recipe)


def _distributed(args):
    """Join torchrun's process group, if any (sw/distributed.py); only rank 0 writes and prints."""
    from prunefab.sw import distributed
    return distributed.setup(args.device, args.amp)


def cmd_train(args) -> None:
    from prunefab.sw import data, models
    from prunefab.sw.train import accuracy, remove_state, save_checkpoint, train
    ctx = _distributed(args)
    _seed(args)
    budget = _budget(args)
    chosen = _recipe(args) if args.recipe else None
    args.data = args.data or (chosen.data if chosen else "fashion-mnist")
    args.model = args.model or (chosen.model if chosen else "reference")
    tr, te = data.load(args.data, "train"), data.load(args.data, "test")
    model = models.build(args.model, num_classes=len(tr.classes))
    if not isinstance(model, models.HardwareNet):         # ResNet-56: trained, never exported
        if tuple(model.input_shape) != tr.shape:
            raise ValueError(f"{args.model} takes {model.input_shape} images; {args.data} has {tr.shape}")
    elif tuple(model.input_shape) != tr.shape:
        model = models.HardwareNet(tr.shape, model.config["channels"], model.config["pools"],
                                   len(tr.classes))
    else:
        models.layer_specs(model)
    state = f"{args.output}.train-state" if args.resume else None
    train(model, tr, budget.train_epochs, seed=args.seed, lr=budget.lr, batch_size=budget.batch_size,
          regime=budget.regime, state=state)
    save_checkpoint(model, args.output, data=args.data, seed=args.seed)
    remove_state(state)
    if ctx.is_main:
        print(f"float test accuracy {accuracy(model, te):.2%}; wrote {args.output}")


def cmd_prune(args) -> None:
    from prunefab.sw import data
    from prunefab.sw.flops import count
    from prunefab.sw.models import HardwareNet
    from prunefab.sw.pipeline import prune
    from prunefab.sw.train import accuracy, load_checkpoint, save_checkpoint
    ctx = _distributed(args)
    _seed(args)
    flops_cut = (args.flops_cut if args.flops_cut is not None
                 else _recipe(args).flops_cut if args.recipe else 0.75)
    model, extra = load_checkpoint(args.checkpoint)
    options = {}
    if args.strength is not None:
        options["strength"] = args.strength
    if args.schedule is not None:
        if args.method != "kep":
            raise ValueError("--schedule applies to --method kep only")
        options["schedule"] = args.schedule
    name = _data_name(args, extra)
    tr, te = data.load(name, "train"), data.load(name, "test")
    pruned = prune(model, args.method, tr, flops_cut, _budget(args), seed=args.seed,
                   state=args.output if args.resume else None, **options)
    save_checkpoint(pruned, args.output, data=name, seed=args.seed, method=args.method,
                    flops_cut=flops_cut)
    if not ctx.is_main:
        return
    if not isinstance(pruned, HardwareNet):
        from prunefab.sw.prune.base import conv_flops, dense_conv_flops
        print(f"{args.method}: conv-FLOPs cut {1 - conv_flops(pruned) / dense_conv_flops(pruned):.1%}, "
              f"float test accuracy {accuracy(pruned, te):.2%}; wrote {args.output}")
        return
    c = count(pruned)
    print(f"{args.method}: conv-FLOPs cut {c.conv_flops_cut:.1%}, parameters cut "
          f"{c.parameter_cut:.1%}, float test accuracy {accuracy(pruned, te):.2%}; wrote {args.output}")


def cmd_quantize(args) -> None:
    from prunefab.sw import artifact, data
    from prunefab.sw.pipeline import quantize_model
    from prunefab.sw.train import load_checkpoint
    model, extra = load_checkpoint(args.checkpoint)
    name = _data_name(args, extra)
    tr, te = data.load(name, "train"), data.load(name, "test")
    qnet = quantize_model(model, tr, _budget(args))
    for i, layer in enumerate(qnet.convs):
        print(f"conv{i}: output scale {qnet.activation_scales[i + 1]:.5f}, requantization "
              f"M/2^s in [{(layer.multiplier / 2.0 ** layer.shift).min():.3g}, "
              f"{(layer.multiplier / 2.0 ** layer.shift).max():.3g}]")
    if args.output:
        st = artifact.save(qnet, args.output, data=name)
        print(f"wrote {args.output} ({st.file_bytes} bytes, {st.conv_index_bits_per_nonzero:.2f} "
              f"index bits per conv nonzero)")
    print(_accuracy_line(qnet, te, model, name))


def _accuracy_line(qnet, test, model, name: str) -> str:
    """'int8 accuracy A (float F) on N NAME test images': what quantize and export end with
    (the float figure only when there is a float model)."""
    from prunefab.sw import reference
    from prunefab.sw.train import accuracy
    int8 = float((reference.classify(qnet, test.images) == test.labels).mean())
    ref = f" (float {accuracy(model, test):.2%})" if model is not None else ""
    return f"int8 accuracy {int8:.2%}{ref} on {len(test)} {name} test images"


def cmd_export(args) -> None:
    from prunefab.sw import artifact, data
    from prunefab.sw.pipeline import quantize_model
    source = Path(args.network)
    model = None
    if source.suffix == ".pfab":
        art = artifact.read(source)
        qnet, name = art.network, art.data
    else:
        from prunefab.sw.train import load_checkpoint
        model, extra = load_checkpoint(source)
        name = _data_name(args, extra)
        qnet = quantize_model(model, data.load(name, "train"), _budget(args))
    program = None
    if args.config:
        from prunefab.hw.loader import pack_network
        program = pack_network(_engine_config(args.config), qnet)   # refuses what does not fit
    st = artifact.save(qnet, args.output, data=name)
    print(f"wrote {args.output}: {st.file_bytes} bytes, {st.nonzeros} nonzeros, "
          f"{st.conv_index_bits_per_nonzero:.2f} index bits per conv nonzero, "
          f"{st.index_bits_per_nonzero:.2f} over all layers")
    if program is not None:
        cfg = program.config
        print(f"fits the engine ({cfg.lanes} lanes): weight memory {len(program.weights)} of "
              f"{cfg.weight_depth} words, parameters {len(program.params)} of {cfg.param_depth}, "
              f"{len(program.load_words())} load words")
    if name is not None:            # an artifact that records no data set has nothing to say
        test = data.load(name, "test")
        if tuple(qnet.input_shape) == test.shape:
            print(_accuracy_line(qnet, test, model, name))


def _engine_config(spec: str | None):
    """An engine configuration from a preset name or a config.json written by `prunefab gen`."""
    from prunefab import progress
    from prunefab.hw.config import EngineConfig
    presets = {"icebreaker": EngineConfig.icebreaker, "ecp5-85f": EngineConfig.ecp5_85f}
    if spec is None or spec in presets:
        name = spec or "icebreaker"
        config = presets[name]()
        progress.note(f"engine: the {name} preset, {config.lanes} lanes"
                      f"{' (no --config given)' if spec is None else ''}; a board build fits "
                      f"as many lanes as its board holds, maybe fewer")
        return config
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec}: neither an engine preset ({', '.join(presets)}) nor a "
                         f"configuration file")
    try:
        return EngineConfig.from_json(path.read_text())
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def cmd_gen(args) -> None:
    import dataclasses

    from prunefab import progress
    from prunefab.hw.generate import generate
    cfg = _engine_config(args.config)
    if args.lanes is not None:
        cfg = dataclasses.replace(cfg, lanes=args.lanes)
    with progress.stage(f"generating the {cfg.lanes}-lane engine's Verilog and RTLIL"):
        design = generate(cfg, args.output)
    print(f"wrote {design.verilog}, {design.rtlil} and {design.config} ({cfg.lanes} lanes)")


def cmd_eval(args) -> None:
    from prunefab.sw import artifact, data, reference
    from prunefab.sw.pipeline import evaluate, layer_table
    path = Path(args.network)
    if path.suffix == ".pfab":
        from prunefab.sw.flops import count_network
        art = artifact.read(path)
        qnet = art.network
        c = count_network(qnet)
        print(f"{path.name}: {'x'.join(map(str, qnet.input_shape))} input, "
              f"{qnet.linear.out_features} classes, {len(qnet.convs)} conv layers, made from "
              f"{art.data or 'an unrecorded data set'}; conv MFLOPs {c.conv_flops / 1e6:.3f} of "
              f"{c.dense_conv_flops / 1e6:.3f} dense (cut {c.conv_flops_cut:.1%})")
        te = _evaluation_data(art, args.data, path).subset(args.images)
        t = time.perf_counter()
        pred = reference.classify(qnet, te.images)
        dt = time.perf_counter() - t
        st = artifact.stats(artifact.encode(qnet, art.data))
        print(f"int8 accuracy {(pred == te.labels).mean():.2%} on {len(te)} images "
              f"({dt:.2f} s in the integer reference)")
        print(f"artifact {st.file_bytes} bytes, {st.nonzeros} nonzeros, "
              f"{st.conv_index_bits_per_nonzero:.2f} index bits per conv nonzero")
        for i, layer in enumerate(qnet.convs):
            nz = int((layer.weights != 0).sum())
            print(f"conv{i:<3}{'x'.join(map(str, layer.weights.shape)):>14}  nonzeros {nz:>7}  "
                  f"sparsity {1 - nz / layer.weights.size:6.1%}")
        return
    from prunefab.sw.train import load_checkpoint
    model, extra = load_checkpoint(path)
    name = args.data or extra.get("data", "fashion-mnist")
    tr, te = data.load(name, "train"), data.load(name, "test").subset(args.images)
    qnet = None
    if not args.float_only:
        from prunefab.sw.pipeline import quantize_model
        qnet = quantize_model(model, tr)
    ev = evaluate(path.stem, model, te, qnet)
    print(f"float accuracy {ev.float_accuracy:.2%}" +
          (f", int8 accuracy {ev.int8_accuracy:.2%}" if ev.int8_accuracy is not None else ""))
    print(f"conv MFLOPs {ev.counts.conv_flops / 1e6:.3f} of {ev.counts.dense_conv_flops / 1e6:.3f} dense "
          f"(cut {ev.counts.conv_flops_cut:.1%}); parameters {ev.counts.parameters} of "
          f"{ev.counts.dense_parameters} (cut {ev.counts.parameter_cut:.1%})")
    print(layer_table(ev))


def cmd_sim(args) -> None:
    from prunefab.sim.runner import format_report, simulate_rtl
    from prunefab.sw import artifact
    config = args.config
    if config is None or not Path(config).is_dir():
        config = _engine_config(config)
    art, images = artifact.read(args.artifact), args.images
    if art.data is not None or args.data is not None:      # else the runner's own pick
        images = _evaluation_data(art, args.data, args.artifact).subset(args.images).images
    result = simulate_rtl(art.network, config, images, waves=args.waves, backend=args.backend)
    print(format_report(result))


def cmd_hil(args) -> int:
    from prunefab.boards import hil
    from prunefab.boards.simboard import LineFaults
    from prunefab.sw import artifact
    if (args.port is None) == (args.simulate is None):
        raise ValueError("give one of --port URL (a board) or --simulate BOARD (a simulated one)")
    if args.faults and args.simulate is None:
        raise ValueError("--faults applies to a simulated board (--simulate) only")
    if args.timeout is not None and args.simulate is not None:
        raise ValueError("--timeout applies to a board on --port only; a simulated board is "
                         "waited on in simulated time")
    art = artifact.read(args.artifact)
    net = art.network
    test = _evaluation_data(art, args.data, args.artifact).subset(args.images)
    if args.simulate is not None:
        faults = LineFaults.parse(args.faults) if args.faults else LineFaults()
        run = hil.run_simulated_hil(args.simulate, net, test.images, test.labels, faults=faults,
                                    retries=args.retries)
        print(run.summary())
        report = run.report
    else:
        from prunefab.boards.build import configured_clock
        clock = configured_clock(args.board)[0] if args.board else None
        report = hil.run_hil(args.port, net, test.images, test.labels,
                             timeout=2.0 if args.timeout is None else args.timeout,
                             retries=args.retries, clock_mhz=clock)
        print(report.summary())
    return 0 if report.ok else 1


def _evaluation_data(art, requested, where):
    """The test images an artifact is evaluated on (its own data set wins); a note on stderr."""
    from prunefab.sw.artifact import evaluation_data
    from prunefab import progress
    choice = evaluation_data(art, requested, where=str(where))
    if choice.note:
        progress.note(choice.note)
    return choice.dataset


def cmd_simboard(args) -> None:
    from prunefab.boards.hil import serve_simulated_board
    from prunefab.boards.simboard import LineFaults
    faults = LineFaults.parse(args.faults) if args.faults else LineFaults()
    serve_simulated_board(args.board, faults=faults, announce=lambda line: print(line, flush=True))


def cmd_demo(args) -> None:
    from prunefab.sw.demo import run_demo
    run_demo(methods=args.methods.split(","), flops_cut=args.flops_cut, budget=_budget(args),
             seed=args.seed, out_dir=Path(args.out), data_name=args.data)


def cmd_build(args) -> None:
    from prunefab.boards.build import BuildError, build
    from prunefab.boards.fit import choose
    choice = choose(args.board, lanes=args.lanes)
    print(choice.note, flush=True)
    try:
        report = build(args.board, choice.config.lanes, args.out, program=args.program,
                       seed=args.seed, clock_mhz=args.clock)
    except BuildError as e:
        if e.report is not None:               # the figures, then the one-line error
            print(e.report.summary())
            print(f"wrote {e.report.out_dir / 'build_report.json'}")
        raise
    print(report.summary())
    print(f"wrote {report.bitstream} and {report.out_dir / 'build_report.json'}"
          + ("; programmed the board" if report.programmed else ""))


def cmd_cache(args) -> None:
    from prunefab import cache
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} entries ({freed / 1e6:.1f} MB) from {cache.shown(cache.root())}")
    else:
        print(cache.describe())


def cmd_doctor(args) -> None:
    from prunefab import __version__, cache, toolchain
    print(f"prunefab {__version__}; Python {sys.version.split()[0]}; cache {cache.shown(cache.root())}")
    for tool in toolchain.survey():
        print(tool.line())


def _global_options(p: argparse.ArgumentParser, default=None) -> None:
    """--quiet and --cache-dir, accepted before the command and after it."""
    p.add_argument("-q", "--quiet", action="store_true", default=default or False,
                   help="no progress bars, stage lines or notes on stderr (results and errors stay)")
    p.add_argument("--cache-dir", metavar="DIR", default=default,
                   help="where simulator builds are cached (default $PRUNEFAB_CACHE, else the "
                        "platform's cache directory)")


def build_parser() -> argparse.ArgumentParser:
    from prunefab import __version__
    p = argparse.ArgumentParser(prog="prunefab", description=__doc__)
    p.add_argument("--version", action="version", version=f"prunefab {__version__}")
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, data_default="fashion-mnist"):
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument("--data", default=data_default,
                        help="fashion-mnist, synthetic, synthetic-cifar, cifar10[:ROOT] or a directory of IDX files")

    def training(sp):     # options of the verbs that train; docs/scale.md
        from prunefab.sw.distributed import DEVICES
        from prunefab.sw.recipes import RECIPES
        sp.add_argument("--recipe", choices=sorted(RECIPES),
                        help="paper-scale schedule (epochs, SGD, batch, FLOPs target); options given here win")
        sp.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of dense training (train) or of the sparsity phase "
                             "(prune); default: the recipe's, else sw/pipeline.py's Budget")
        sp.add_argument("--batch-size", type=int, default=None,
                        help="global batch, split across torchrun's processes (default 128)")
        sp.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if visible")
        sp.add_argument("--amp", action="store_true", help="mixed precision (float16, CUDA only)")
        sp.add_argument("--resume", action="store_true",
                        help="keep a training state next to the output after every epoch and "
                             "continue from it")

    sp = sub.add_parser("train", help="train a hardware-mappable network")
    common(sp, None)
    training(sp)
    sp.add_argument("--model", default=None, help="reference | vgg16 | resnet56 (default reference)")
    sp.add_argument("--epochs", type=int, default=None, help="default 3")
    sp.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt)")
    sp.set_defaults(func=cmd_train)

    from prunefab.sw.prune import METHODS
    sp = sub.add_parser("prune", help="prune a trained checkpoint to a conv-FLOPs target")
    common(sp, None)
    training(sp)
    sp.add_argument("checkpoint")
    sp.add_argument("--method", required=True, choices=sorted(METHODS))
    sp.add_argument("--flops-cut", type=float, default=None, help="conv-FLOPs reduction (default 0.75)")
    sp.add_argument("--sparsity-epochs", type=int, default=None, help="default 2")
    sp.add_argument("--finetune-epochs", type=int, default=None, help="default 3")
    sp.add_argument("--strength", type=float, default=None, help="penalty strength (method default)")
    sp.add_argument("--schedule", choices=["constant", "linear", "step"], default=None,
                    help="KEP penalty schedule (default linear)")
    sp.add_argument("-o", "--output", required=True)
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser("quantize", help="int8-quantize a checkpoint and write the .pfab artifact")
    common(sp, None)
    sp.add_argument("checkpoint")
    sp.add_argument("--calibration", type=int, default=2000, help="calibration images (default 2000)")
    sp.add_argument("-o", "--output", help="also write the artifact (.pfab)")
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("export", help="write the .pfab artifact, checked against an engine")
    common(sp, None)
    sp.add_argument("network", help="a checkpoint (.pt, quantized here) or an artifact (.pfab)")
    sp.add_argument("--calibration", type=int, default=2000)
    sp.add_argument("--config", help="engine preset (icebreaker, ecp5-85f) or config.json: refuse "
                                     "a network over its limits")
    sp.add_argument("-o", "--output", required=True, help="artifact to write (.pfab)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("gen", help="generate the accelerator's Verilog and RTLIL")
    sp.add_argument("--config",
                    help="engine preset (icebreaker, ecp5-85f) or config.json (default icebreaker)")
    sp.add_argument("--lanes", type=int, help="override the preset's lane count")
    sp.add_argument("-o", "--output", required=True, help="output directory")
    sp.set_defaults(func=cmd_gen)

    sp = sub.add_parser("eval", help="accuracy, FLOPs, parameters and sparsity of a checkpoint or artifact")
    common(sp, None)
    sp.add_argument("network", help="a checkpoint (.pt) or an artifact (.pfab)")
    sp.add_argument("--images", type=int, default=None, help="test images to use (default all)")
    sp.add_argument("--float-only", action="store_true", help="skip quantization for a checkpoint")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("sim", help="cycle-accurate RTL simulation of an artifact on an engine")
    sp.add_argument("--artifact", required=True, help="the network (.pfab)")
    sp.add_argument("--config",
                    help="engine preset, config.json or a folder written by gen (default icebreaker)")
    sp.add_argument("--images", type=int, default=1,
                    help="first N test images of the artifact's data set (--data; random images "
                         "when it names none)")
    sp.add_argument("--data", help="test images of another data set of the same image shape")
    sp.add_argument("--waves", help="write a waveform of the run (.vcd)")
    sp.add_argument("--backend", choices=["icarus", "verilator"], default="icarus",
                    help="icarus (cocotb bench) or verilator (fast C++ harness)")
    sp.set_defaults(func=cmd_sim)

    from prunefab.boards.top import BOARDS
    sp = sub.add_parser("build", help="build a board's bitstream: fit, synthesize, place and route, report")
    sp.add_argument("--board", required=True, choices=sorted(BOARDS))
    sp.add_argument("--lanes", type=int, help="MAC lanes (default: the most that fit the board)")
    sp.add_argument("--out", help="output directory (default build/BOARD)")
    sp.add_argument("--seed", type=int, default=1, help="place-and-route seed (default 1)")
    sp.add_argument("--clock", type=float, metavar="MHZ",
                    help="design clock to ask for (default: the board's, 30 or 100 MHz); a design "
                         "that misses it is built again at the fastest clock it meets")
    sp.add_argument("--program", action="store_true",
                    help="program the board after a good, timing-clean build (openFPGALoader "
                         "or iceprog)")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("hil", help="run test images on a board (or a simulated one) and compare "
                                    "every answer with the integer reference")
    sp.add_argument("--port", help="the board's serial port or pyserial URL (socket://HOST:PORT)")
    sp.add_argument("--simulate", metavar="BOARD", choices=sorted(BOARDS),
                    help=f"run against a simulated board instead ({', '.join(sorted(BOARDS))})")
    sp.add_argument("--board", choices=sorted(BOARDS),
                    help="with --port: the board, whose configured clock (build/BOARD/"
                         "build_report.json) gives the engine time per image")
    sp.add_argument("--artifact", required=True, help="the network (.pfab)")
    sp.add_argument("--images", type=int, default=100, help="first N test images (default 100)")
    sp.add_argument("--data", help="test images (default: the artifact's own data set): "
                                   "fashion-mnist, synthetic or a directory of IDX files")
    sp.add_argument("--timeout", type=float, default=None,
                    help="seconds to wait for a response before the round trips are measured "
                         "(default 2; --port only)")
    sp.add_argument("--retries", type=int, default=4, help="resends per exchange (default 4)")
    sp.add_argument("--faults", help="simulated line damage per byte, e.g. flip=0.001,drop=0.0002,seed=1")
    sp.set_defaults(func=cmd_hil)

    sp = sub.add_parser("simboard", help="serve a simulated board on a local socket until Ctrl-C")
    sp.add_argument("--board", required=True, choices=sorted(BOARDS))
    sp.add_argument("--faults", help="line damage per byte, e.g. flip=0.001,drop=0.0002,seed=1")
    sp.set_defaults(func=cmd_simboard)

    sp = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, every method, one table")
    common(sp)
    sp.add_argument("--methods", default="kep,iessp,swp,filter,magnitude")
    sp.add_argument("--flops-cut", type=float, default=0.75)
    sp.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    sp.add_argument("--sparsity-epochs", type=int, default=2)
    sp.add_argument("--finetune-epochs", type=int, default=3)
    sp.add_argument("--out", default="out/demo", help="where checkpoints and artifacts go")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("cache", help="the per-user cache of simulator builds: what it holds, or clear it")
    sp.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    sp.set_defaults(func=cmd_cache)

    sp = sub.add_parser("doctor", help="the toolchain found: versions, what each enables, what is missing")
    sp.set_defaults(func=cmd_doctor)

    for sp in sub.choices.values():
        _global_options(sp, default=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    from prunefab import __version__, cache, progress
    if (sys.argv[1:] if argv is None else argv)[:1] == ["--version"]:
        print(f"prunefab {__version__}")    # at once: the parser imports torch and amaranth
        return 0
    args = build_parser().parse_args(argv)
    try:
        with progress.quiet(args.quiet or progress.is_quiet()), cache.located(args.cache_dir):
            status = args.func(args)
    except _errors() as e:
        print(f"prunefab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunefab: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
