"""The `prunefab` command: parse, call the library, print.  Every step is a library call too.

Every argument is checked before any work (prunefab.arguments).  An error a user can act on
(`PrunefabError`, `OSError`) ends the command with one line on stderr and exit status 2, Ctrl-C
with one line and 130; anything else is a bug and keeps its traceback.  `--debug` shows the
traceback of every error.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import traceback
from pathlib import Path

from prunefab import arguments as arg
from prunefab.errors import PrunefabError, UsageError

DATA_HELP = "fashion-mnist, synthetic, synthetic-cifar, cifar10[:ROOT] or a directory of IDX files"


class _Parser(argparse.ArgumentParser):
    """argparse's complaints become a UsageError: one line, like every other error."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------------------------
# commands

def _budget(args):
    """The recipe's budget (or the default one), with the options given on the command line."""
    import dataclasses
    from prunefab.sw.pipeline import Budget
    budget = _recipe(args).budget if getattr(args, "recipe", None) else Budget()
    given = {field: getattr(args, option, None) for field, option in (
        ("train_epochs", "epochs"), ("sparsity_epochs", "sparsity_epochs"),
        ("finetune_epochs", "finetune_epochs"), ("calibration_images", "calibration"),
        ("prune_lr" if getattr(args, "command", None) == "prune" else "lr", "lr"),
        ("batch_size", "batch_size"))}
    return dataclasses.replace(budget, **{k: v for k, v in given.items() if v is not None})


def _recipe(args):
    from prunefab.sw.recipes import recipe
    return recipe(args.recipe)


def _leave_process_group() -> None:
    """All ranks of a torchrun job leave together once a command has succeeded."""
    distributed = sys.modules.get("prunefab.sw.distributed")
    if distributed is not None:
        distributed.teardown(together=True)


def _distributed(args):
    """Join torchrun's process group, if any (sw/distributed.py); only rank 0 writes and prints."""
    from prunefab.sw import distributed
    return distributed.setup(args.device, args.amp)


def _checkpoint_and_data(args, path):
    """A checkpoint, its data set's name (--data, else the one it was trained on), the train
    and test splits (refused in one line when the network cannot take them) and how it was
    pruned (None: not pruned)."""
    from prunefab.sw.artifact import Pruning
    from prunefab.sw import data
    from prunefab.sw.pipeline import check_data
    from prunefab.sw.train import load_checkpoint
    from prunefab import progress
    model, extra = load_checkpoint(path)
    name = args.data
    if name is None:
        name = extra.get("data")
        progress.note(f"data: {name}, the checkpoint's" if name else
                      "data: fashion-mnist; the checkpoint names none (--data picks one)")
        name = name or "fashion-mnist"
    splits = data.load(name, "train"), data.load(name, "test")
    for split in splits:
        check_data(str(path), model.input_shape, model.config["num_classes"], split, name)
    return model, name, splits, Pruning.of(extra)


def cmd_train(args) -> None:
    from prunefab.sw import data, models
    from prunefab.sw.pipeline import check_data
    from prunefab.sw.train import accuracy, remove_state, save_checkpoint, seed_everything, train
    ctx = _distributed(args)
    seed_everything(args.seed)
    budget = _budget(args)
    chosen = _recipe(args) if args.recipe else None
    name = args.data or (chosen.data if chosen else "fashion-mnist")
    model_name = args.model or (chosen.model if chosen else "reference")
    tr, te = data.load(name, "train"), data.load(name, "test")
    model = models.for_data(model_name, tr.shape, len(tr.classes))
    if isinstance(model, models.HardwareNet):
        models.layer_specs(model)
    check_data(model_name, model.input_shape, len(tr.classes), te, name)
    state = f"{args.output}.train-state" if args.resume else None
    train(model, tr, budget.train_epochs, seed=args.seed, lr=budget.lr, batch_size=budget.batch_size,
          regime=budget.regime, state=state)
    save_checkpoint(model, args.output, data=name, seed=args.seed)
    remove_state(state)
    if ctx.is_main:
        print(f"float test accuracy {accuracy(model, te):.2%}; wrote {args.output}")


def cmd_prune(args) -> None:
    from prunefab.sw.pipeline import cuts, prune
    from prunefab.sw.train import accuracy, save_checkpoint, seed_everything
    if args.schedule is not None and args.method != "kep":
        raise UsageError("--schedule applies to --method kep only")
    if args.balanced and args.method != "iessp":
        raise UsageError("--balanced applies to --method iessp only")
    ctx = _distributed(args)
    seed_everything(args.seed)
    flops_cut = (args.flops_cut if args.flops_cut is not None
                 else _recipe(args).flops_cut if args.recipe else 0.75)
    model, name, (tr, te), _ = _checkpoint_and_data(args, args.checkpoint)
    options = {k: getattr(args, k) for k in ("strength", "schedule") if getattr(args, k) is not None}
    balanced = {"balanced": True} if args.balanced else {}      # recorded only when asked for
    pruned = prune(model, args.method, tr, flops_cut, _budget(args), seed=args.seed,
                   state=args.output if args.resume else None, **options, **balanced)
    save_checkpoint(pruned, args.output, data=name, seed=args.seed, method=args.method,
                    flops_cut=flops_cut, **balanced)
    if ctx.is_main:
        print(f"{args.method}: {cuts(pruned)}, float test accuracy {accuracy(pruned, te):.2%}; "
              f"wrote {args.output}")


def cmd_quantize(args) -> None:
    from prunefab.sw import artifact
    from prunefab.sw.pipeline import quantize_model, requantization_table
    model, name, (tr, te), pruning = _checkpoint_and_data(args, args.checkpoint)
    qnet = quantize_model(model, tr, _budget(args))
    print(requantization_table(qnet))
    if args.output:
        st = artifact.save(qnet, args.output, data=name, pruning=pruning)
        print(f"wrote {args.output} ({st.file_bytes} bytes, {st.conv_index_bits_per_nonzero:.2f} "
              f"index bits per conv nonzero)")
    print(_accuracy_line(qnet, te, model, name))


def cmd_export(args) -> None:
    from prunefab.sw import artifact, data
    from prunefab.sw.pipeline import quantize_model
    model = None
    if args.network.suffix == ".pfab":
        art = artifact.read(args.network)
        qnet, name, pruning = art.network, art.data, art.pruning
    else:
        model, name, (tr, _), pruning = _checkpoint_and_data(args, args.network)
        if args.config:         # a layer the engine cannot run is refused before calibration
            from prunefab.check import check_model
            from prunefab.hw.config import EngineLimitError
            found = check_model(model, args.config, model.input_shape)
            if not found.ok:
                raise EngineLimitError(found.problem)
        qnet = quantize_model(model, tr, _budget(args))
    program = None
    if args.config:
        from prunefab.hw.loader import pack_network
        program = pack_network(args.config, qnet)   # refuses what does not fit
        _say_engine(args.config)
    st = artifact.save(qnet, args.output, data=name, pruning=pruning)
    print(f"wrote {args.output}: {st.file_bytes} bytes, {st.nonzeros} nonzeros, "
          f"{st.conv_index_bits_per_nonzero:.2f} index bits per conv nonzero, "
          f"{st.index_bits_per_nonzero:.2f} over all layers")
    if program is not None:
        cfg = program.config
        print(f"fits the engine ({cfg.lanes} lanes): {_memory(program)}, "
              f"{len(program.load_words())} load words")
    if name is not None:            # an artifact that records no data set has nothing to say
        test = data.load(name, "test")
        if tuple(qnet.input_shape) == test.shape:
            print(_accuracy_line(qnet, test, model, name))


def _accuracy_line(qnet, test, model, name: str) -> str:
    """'int8 accuracy A (float F) on N NAME test images': what quantize and export end with
    (the float figure only when there is a float model)."""
    from prunefab.sw.pipeline import int8_accuracy
    from prunefab.sw.train import accuracy
    ref = f" (float {accuracy(model, test):.2%})" if model is not None else ""
    return f"int8 accuracy {int8_accuracy(qnet, test):.2%}{ref} on {len(test)} {name} test images"


def _engine_fits(qnet) -> list[str]:
    """One line per engine preset: whether the network fits it, with the memory it takes, or
    the first limit it breaks.  (An artifact does not depend on an engine, so none is recorded
    in it; this is what `export --config` checks.)"""
    from prunefab.errors import PrunefabError
    from prunefab.hw.config import PRESETS
    from prunefab.hw.loader import pack_network
    lines = []
    for name, preset in PRESETS.items():
        cfg = preset()
        try:
            program = pack_network(cfg, qnet)
        except PrunefabError as e:
            lines.append(f"engine {name} ({cfg.lanes} lanes): does not fit: {e}")
            continue
        lines.append(f"engine {name} ({cfg.lanes} lanes): fits, {_memory(program)}")
    return lines


def _memory(program) -> str:
    cfg = program.config
    return (f"weight memory {len(program.weights)} of {cfg.weight_depth} words, "
            f"parameters {len(program.params)} of {cfg.param_depth}")


def _say_engine(config) -> None:
    """A note naming the preset an engine configuration is, if it is one."""
    from prunefab import progress
    from prunefab.hw.config import EngineConfig
    for name, preset in (("icebreaker", EngineConfig.icebreaker), ("ecp5-85f", EngineConfig.ecp5_85f)):
        if config == preset():
            progress.note(f"engine: the {name} preset, {config.lanes} lanes; a board build fits "
                          f"as many lanes as its board holds, maybe fewer")


def cmd_check(args) -> int:
    from prunefab.check import check
    found = check(args.model, args.config, args.input_shape, args.classes or 10)
    where = _engine_name(args.config)
    if found.layers:        # the model's layers are known: its table, then whether it maps
        print(f"{args.model}: {'x'.join(map(str, found.input_shape))} input, "
              f"{found.layers[-1].output_shape[0]} classes, on {where}")
        print(found.table())
    if not found.ok:
        print(f"{args.model} does not map to {where}: {found.problem}")
        return 1
    print(f"maps to {where}: {found.memory}")
    return 0


def _engine_name(config) -> str:
    from prunefab.hw.config import PRESETS
    name = next((n for n, preset in PRESETS.items() if config == preset()), None)
    return f"the {name} engine ({config.lanes} lanes)" if name else f"the {config.lanes}-lane engine"


def cmd_gen(args) -> None:
    from prunefab import progress
    from prunefab.hw.generate import generate
    cfg = args.config
    if args.lanes is not None:
        cfg = cfg.with_lanes(args.lanes)
    with progress.stage(f"generating the {cfg.lanes}-lane engine's Verilog and RTLIL"):
        design = generate(cfg, args.output)
    print(f"wrote {design.verilog}, {design.rtlil} and {design.config} ({cfg.lanes} lanes)")


def cmd_eval(args) -> None:
    if args.network.suffix == ".pfab":
        return _eval_artifact(args)
    from prunefab.sw.pipeline import evaluate, layer_table, quantize_model
    model, _, (tr, te), _ = _checkpoint_and_data(args, args.network)
    te = te.subset(args.images)
    qnet = None if args.float_only else quantize_model(model, tr)
    ev = evaluate(args.network.stem, model, te, qnet)
    print(f"float accuracy {ev.float_accuracy:.2%}" +
          (f", int8 accuracy {ev.int8_accuracy:.2%}" if ev.int8_accuracy is not None else ""))
    print(f"conv MFLOPs {ev.counts.conv_flops / 1e6:.3f} of {ev.counts.dense_conv_flops / 1e6:.3f} dense "
          f"(cut {ev.counts.conv_flops_cut:.1%}); parameters {ev.counts.parameters} of "
          f"{ev.counts.dense_parameters} (cut {ev.counts.parameter_cut:.1%})")
    print(layer_table(ev))


def _eval_artifact(args) -> None:
    from prunefab.sw import artifact
    from prunefab.sw.pipeline import evaluate_artifact, sparsity_table
    from prunefab.sw.flops import count_network
    art = artifact.read(args.network)
    qnet = art.network
    c = count_network(qnet)
    print(f"{args.network.name}: {'x'.join(map(str, qnet.input_shape))} input, "
          f"{qnet.linear.out_features} classes, {len(qnet.convs)} conv layers, made from "
          f"{art.data or 'an unrecorded data set'}; conv MFLOPs {c.conv_flops / 1e6:.3f} of "
          f"{c.dense_conv_flops / 1e6:.3f} dense (cut {c.conv_flops_cut:.1%})")
    print(f"pruned by {art.pruning.method} for a {art.pruning.flops_cut:.1%} conv-FLOPs cut"
          if art.pruning else "pruning: not recorded")
    for line in _engine_fits(qnet):
        print(line)
    ev = evaluate_artifact(art, _evaluation_data(art, args.data, args.network).subset(args.images))
    print(f"int8 accuracy {ev.accuracy:.2%} on {ev.images} images "
          f"({ev.seconds:.2f} s in the integer reference)")
    print(f"artifact {ev.encoding.file_bytes} bytes, {ev.encoding.nonzeros} nonzeros, "
          f"{ev.encoding.conv_index_bits_per_nonzero:.2f} index bits per conv nonzero")
    print(sparsity_table(qnet))


def cmd_sim(args) -> None:
    from prunefab.sim.runner import format_report, simulate_rtl
    from prunefab.sw import artifact
    art, images = artifact.read(args.artifact), args.images
    if art.data is not None or args.data is not None:      # else the runner's own pick
        images = _evaluation_data(art, args.data, args.artifact).subset(args.images).images
    if not isinstance(args.config, Path):
        _say_engine(args.config)
    result = simulate_rtl(art.network, args.config, images, waves=args.waves, backend=args.backend)
    print(format_report(result))


def cmd_hil(args) -> int:
    from prunefab.boards import hil
    from prunefab.sw import artifact
    if args.faults is not None and args.simulate is None:
        raise UsageError("--faults applies to a simulated board (--simulate) only")
    if args.board is not None and args.simulate is not None:
        raise UsageError("--board applies to a board on --port only; --simulate names the simulated one")
    if args.timeout is not None and args.simulate is not None:
        raise UsageError("--timeout applies to a board on --port only; a simulated board is "
                         "waited on in simulated time")
    art = artifact.read(args.artifact)
    net = art.network
    test = _evaluation_data(art, args.data, args.artifact).subset(args.images)
    if args.simulate is not None:
        run = hil.run_simulated_hil(args.simulate, net, test.images, test.labels, retries=args.retries,
                                    **({"faults": args.faults} if args.faults else {}))
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
    """The test images an artifact is evaluated on (its own data set wins, refused in one line
    when the network cannot take them); a note on stderr."""
    from prunefab.sw.artifact import evaluation_data
    from prunefab.sw.pipeline import check_data
    choice = evaluation_data(art, requested, where=str(where))
    check_data(str(where), art.input_shape, art.network.linear.out_features, choice.dataset, choice.name)
    if choice.note:
        from prunefab import progress
        progress.note(choice.note)
    return choice.dataset


def cmd_simboard(args) -> None:
    from prunefab.boards.hil import serve_simulated_board
    serve_simulated_board(args.board, announce=lambda line: print(line, flush=True),
                          **({"faults": args.faults} if args.faults else {}))


def cmd_demo(args) -> None:
    import dataclasses
    from prunefab.demo import FAST_BUDGET, DemoSettings, run_demo
    budget = _budget(args)
    if args.fast:      # the fast path's epochs, unless given
        budget = dataclasses.replace(FAST_BUDGET, **{f: getattr(budget, f) for f, o in (
            ("train_epochs", "epochs"), ("sparsity_epochs", "sparsity_epochs"),
            ("finetune_epochs", "finetune_epochs")) if getattr(args, o) is not None})
    out = args.out or Path("out/demo-fast" if args.fast else "out/demo")
    run_demo(DemoSettings(methods=tuple(args.methods), flops_cut=args.flops_cut, budget=budget,
                          seed=args.seed, out_dir=out, data_name=args.data, fast=args.fast))


def cmd_build(args) -> None:
    from prunefab.boards.build import BuildError, build
    from prunefab.boards.fit import choose
    from prunefab.boards.top import board_spec
    if args.clock is not None:
        board_spec(args.board).at(args.clock)   # a clock the board cannot run: refused before the fit
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


# ----------------------------------------------------------------------------------------------
# the parser: one function per command, each argument with its range

SEED = arg.integer(0, arg.SEED_LIMIT - 1)
EPOCHS = arg.integer(0)
COUNT = arg.integer(1)
FRACTION = arg.number(0.0, 1.0, open_high=True)


def _data_seed(sp, data_default: str | None = "fashion-mnist",
               data_help: str = " (default: the set the checkpoint was trained on)") -> None:
    sp.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    sp.add_argument("--data", type=arg.text, default=data_default,
                    help=DATA_HELP + (f" (default {data_default})" if data_default else data_help))


def _training(sp) -> None:
    """Options of the verbs that train; docs/scale.md."""
    from prunefab.sw.distributed import DEVICES
    from prunefab.sw.recipes import RECIPES
    sp.add_argument("--recipe", choices=sorted(RECIPES),
                    help="paper-scale schedule (epochs, SGD, batch, FLOPs target); options given here win")
    sp.add_argument("--lr", type=arg.number(0.0, 1.0, open_low=True), default=None,
                    help="peak learning rate, in (0, 1], of dense training (train) or of the sparsity "
                         "phase (prune); default: the recipe's, else sw/pipeline.py's Budget")
    sp.add_argument("--batch-size", type=COUNT, default=None,
                    help="global batch, split across torchrun's processes (default 128)")
    sp.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if visible")
    sp.add_argument("--amp", action="store_true", help="mixed precision (float16, CUDA only)")
    sp.add_argument("--resume", action="store_true",
                    help="keep a training state next to the output after every epoch and continue from it")


def _model_metavar() -> str:
    from prunefab.sw.models import MODELS
    return "{" + ",".join(MODELS) + "}|FILE.py:FACTORY"


def _add_train(sub, common) -> None:
    sp = sub.add_parser("train", parents=[common], help="train a network")
    _data_seed(sp, None, " (default fashion-mnist, or the recipe's)")
    _training(sp)
    sp.add_argument("--model", default=None, type=arg.model, metavar=_model_metavar(),
                    help="a built-in model or FACTORY() from your FILE.py (docs/models.md); "
                         "default reference, or the recipe's.  Each takes the data's shape and "
                         "exports; `prunefab check` says whether an engine runs it")
    sp.add_argument("--epochs", type=COUNT, default=None, help="training epochs (default 3)")
    sp.add_argument("-o", "--output", type=arg.output_file, required=True,
                    help="checkpoint to write (.pt)")
    sp.set_defaults(func=cmd_train)


def _add_prune(sub, common) -> None:
    from prunefab.sw.prune import METHODS
    sp = sub.add_parser("prune", parents=[common], help="prune a trained checkpoint to a conv-FLOPs target")
    _data_seed(sp, None)
    _training(sp)
    sp.add_argument("checkpoint", type=Path)
    sp.add_argument("--method", required=True, choices=sorted(METHODS))
    sp.add_argument("--flops-cut", type=FRACTION, default=None,
                    help="conv-FLOPs reduction in [0, 1) (default 0.75, or the recipe's)")
    sp.add_argument("--sparsity-epochs", type=EPOCHS, default=None, help="default 2")
    sp.add_argument("--finetune-epochs", type=EPOCHS, default=None, help="default 3")
    sp.add_argument("--strength", type=arg.number(0.0), default=None,
                    help="penalty strength, >= 0 (method default)")
    sp.add_argument("--schedule", choices=["constant", "linear", "step"], default=None,
                    help="KEP penalty schedule (default linear)")
    sp.add_argument("--balanced", action="store_true",
                    help="IESSP: every filter of a layer keeps equally many stripes (lane-balanced; "
                         "fewer step words on a wide engine)")
    sp.add_argument("-o", "--output", type=arg.output_file, required=True)
    sp.set_defaults(func=cmd_prune)


def _add_quantize_export(sub, common) -> None:
    sp = sub.add_parser("quantize", parents=[common],
                        help="int8-quantize a checkpoint and write the .pfab artifact")
    _data_seed(sp, None)
    sp.add_argument("checkpoint", type=Path)
    sp.add_argument("--calibration", type=COUNT, default=2000, help="calibration images (default 2000)")
    sp.add_argument("-o", "--output", type=arg.output_file, help="also write the artifact (.pfab)")
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("export", parents=[common],
                        help="write the .pfab artifact, checked against an engine")
    _data_seed(sp, None)
    sp.add_argument("network", type=Path, help="a checkpoint (.pt, quantized here) or an artifact (.pfab)")
    sp.add_argument("--calibration", type=COUNT, default=2000)
    sp.add_argument("--config", type=arg.engine(), help="engine preset (icebreaker, ecp5-85f) or "
                                                        "config.json: refuse a network over its limits")
    sp.add_argument("-o", "--output", type=arg.output_file, required=True, help="artifact to write (.pfab)")
    sp.set_defaults(func=cmd_export)


def _add_check(sub, common) -> None:
    sp = sub.add_parser("check", parents=[common],
                        help="how a model maps to an engine, layer by layer, before any training")
    sp.add_argument("--model", required=True, type=arg.model, metavar=_model_metavar(),
                    help="a built-in model or FACTORY() from your FILE.py (docs/models.md)")
    sp.add_argument("--config", type=arg.engine(), default="icebreaker",
                    help="engine preset (icebreaker, ecp5-85f) or config.json (default icebreaker)")
    sp.add_argument("--input-shape", type=arg.shape, metavar="C,H,W",
                    help="the images' shape (default: the model's own: 1,28,28 for reference, "
                         "3,32,32 for the others, yours from its input_shape or its classifier)")
    sp.add_argument("--classes", type=COUNT, help="classes of a built-in model (default 10)")
    sp.set_defaults(func=cmd_check)


def _add_gen_eval_sim(sub, common) -> None:
    sp = sub.add_parser("gen", parents=[common], help="generate the accelerator's Verilog and RTLIL")
    sp.add_argument("--config", type=arg.engine(), default="icebreaker",
                    help="engine preset (icebreaker, ecp5-85f) or config.json (default icebreaker)")
    sp.add_argument("--lanes", type=COUNT, help="override the preset's lane count")
    sp.add_argument("-o", "--output", type=arg.output_dir, required=True, help="output directory")
    sp.set_defaults(func=cmd_gen)

    sp = sub.add_parser("eval", parents=[common],
                        help="accuracy, FLOPs, parameters and sparsity of a checkpoint or artifact")
    _data_seed(sp, None)
    sp.add_argument("network", type=Path, help="a checkpoint (.pt) or an artifact (.pfab)")
    sp.add_argument("--images", type=COUNT, default=None, help="test images to use (default all)")
    sp.add_argument("--float-only", action="store_true", help="skip quantization for a checkpoint")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("sim", parents=[common],
                        help="cycle-accurate RTL simulation of an artifact on an engine")
    sp.add_argument("--artifact", type=Path, required=True, help="the network (.pfab)")
    sp.add_argument("--config", type=arg.engine(folders=True), default="icebreaker",
                    help="engine preset, config.json or a folder written by gen (default icebreaker)")
    sp.add_argument("--images", type=COUNT, default=1,
                    help="first N test images of the artifact's data set (--data; random images "
                         "when it names none)")
    sp.add_argument("--data", type=arg.text, help="test images of another data set of the same image shape")
    sp.add_argument("--waves", type=arg.output_file, help="write a waveform of the run (.vcd)")
    sp.add_argument("--backend", choices=["icarus", "verilator"], default="icarus",
                    help="icarus (cocotb bench) or verilator (fast C++ harness)")
    sp.set_defaults(func=cmd_sim)


def _add_boards(sub, common) -> None:
    from prunefab.boards.top import BOARDS
    boards = sorted(BOARDS)
    sp = sub.add_parser("build", parents=[common],
                        help="build a board's bitstream: fit, synthesize, place and route, report")
    sp.add_argument("--board", required=True, choices=boards)
    sp.add_argument("--lanes", type=COUNT, help="MAC lanes (default: the most that fit the board)")
    sp.add_argument("--out", type=arg.output_dir, help="output directory (default build/BOARD)")
    sp.add_argument("--seed", type=SEED, default=1, help="place-and-route seed (default 1)")
    sp.add_argument("--clock", type=arg.number(0.0, open_low=True), metavar="MHZ",
                    help="design clock to ask for (default: the board's, 30 or 100 MHz); a design "
                         "that misses it is built again at the fastest clock it meets")
    sp.add_argument("--program", action="store_true",
                    help="program the board after a good, timing-clean build (openFPGALoader "
                         "or iceprog)")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("hil", parents=[common], help="run test images on a board (or a simulated "
                                                      "one) and compare every answer with the integer reference")
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=arg.text,
                       help="the board's serial port or pyserial URL (socket://HOST:PORT)")
    where.add_argument("--simulate", metavar="BOARD", choices=boards,
                       help=f"run against a simulated board instead ({', '.join(boards)})")
    sp.add_argument("--board", choices=boards,
                    help="with --port: the board, whose configured clock (build/BOARD/"
                         "build_report.json) gives the engine time per image")
    sp.add_argument("--artifact", type=Path, required=True, help="the network (.pfab)")
    sp.add_argument("--images", type=COUNT, default=100, help="first N test images (default 100)")
    sp.add_argument("--data", type=arg.text, help="test images (default: the artifact's own data set): "
                                                  + DATA_HELP)
    sp.add_argument("--timeout", type=arg.number(0.0, open_low=True), default=None,
                    help="seconds to wait for a response before the round trips are measured, "
                         "> 0 (default 2; --port only)")
    sp.add_argument("--retries", type=EPOCHS, default=4, help="resends per exchange (default 4)")
    sp.add_argument("--faults", type=arg.line_faults,
                    help="simulated line damage per byte, e.g. flip=0.001,drop=0.0002,seed=1")
    sp.set_defaults(func=cmd_hil)

    sp = sub.add_parser("simboard", parents=[common],
                        help="serve a simulated board on a local socket until Ctrl-C")
    sp.add_argument("--board", required=True, choices=boards)
    sp.add_argument("--faults", type=arg.line_faults,
                    help="line damage per byte, e.g. flip=0.001,drop=0.0002,seed=1")
    sp.set_defaults(func=cmd_simboard)


def _add_demo(sub, common) -> None:
    from prunefab.sw.prune import METHODS
    sp = sub.add_parser("demo", parents=[common],
                        help="the whole chain: train, prune with every method, quantize, engine, "
                             "RTL run, bitstream, simulated board, report")
    _data_seed(sp)
    sp.add_argument("--methods", type=arg.choice_list(tuple(METHODS)), default="kep,iessp,swp,filter,magnitude",
                    help=f"comma-separated, from {','.join(METHODS)} (default all)")
    sp.add_argument("--flops-cut", type=FRACTION, default=0.75, help="in [0, 1) (default 0.75)")
    sp.add_argument("--epochs", type=COUNT, default=None, help="dense training epochs (default 3)")
    sp.add_argument("--sparsity-epochs", type=EPOCHS, default=None, help="default 2")
    sp.add_argument("--finetune-epochs", type=EPOCHS, default=None, help="default 3")
    sp.add_argument("--fast", action="store_true",
                    help="the quick path for tests: 2000 training images, one epoch a phase, few "
                         "images on the engine and board, no bitstream (default out: out/demo-fast)")
    sp.add_argument("--out", type=arg.output_dir, default=None,
                    help="where artifacts, the bitstream and the report go (default out/demo)")
    sp.set_defaults(func=cmd_demo)


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


def _add_tools(sub, common) -> None:
    sp = sub.add_parser("cache", parents=[common],
                        help="the per-user cache of simulator builds: what it holds, or clear it")
    sp.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    sp.set_defaults(func=cmd_cache)
    sp = sub.add_parser("doctor", parents=[common],
                        help="the toolchain found: versions, what each enables, what is missing")
    sp.set_defaults(func=cmd_doctor)


def build_parser() -> argparse.ArgumentParser:
    from prunefab import __version__
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, stage lines or notes on stderr (results and errors stay)")
    common.add_argument("--cache-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="where simulator builds are cached (default $PRUNEFAB_CACHE, else the "
                             "platform's cache directory)")
    p = _Parser(prog="prunefab", description=__doc__.split("\n")[0], parents=[common])
    p.add_argument("--version", action="version", version=f"prunefab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_train, _add_prune, _add_quantize_export, _add_check, _add_gen_eval_sim,
                _add_boards, _add_demo, _add_tools):
        add(sub, common)
    return p


# ----------------------------------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        message = f"{e.filename}: {e.strerror}"
    else:
        message = str(e) or type(e).__name__
    return "prunefab: error: " + " ".join(message.split())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C.  A subclass, so that the interpreter does not take an interrupt that once passed
    through library code it runs as a string (pybind11's eval) for one that ended the program
    uncaught, and kill itself with SIGINT after `main` has returned 130."""


def _interrupt(signum, frame):
    raise Interrupted


@contextlib.contextmanager
def _sigint(handler):
    """SIGINT goes to `handler` inside the block (main thread only: elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start(argv: list[str]) -> argparse.Namespace:
    """Build the parser (it imports torch and amaranth) and parse, with Ctrl-C held until the
    imports are done: an interrupt inside a C extension's import can leave it half made, or be
    swallowed by a library's `except`, and the run go on."""
    pending = []
    with _sigint(lambda signum, frame: pending.append(signum)):
        args = build_parser().parse_args(argv)
    if pending:
        raise Interrupted
    return args


def main(argv: list[str] | None = None) -> int:
    from prunefab import __version__, cache, progress
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["--version"]:
        print(f"prunefab {__version__}")    # at once: the parser imports torch and amaranth
        return 0
    debug = "--debug" in argv
    try:
        with _sigint(_interrupt):
            args = _start(argv)
            quiet = getattr(args, "quiet", False) or progress.is_quiet()
            with progress.quiet(quiet), cache.located(getattr(args, "cache_dir", None)), \
                    cache.tool_caches():
                status = args.func(args) or 0
            _leave_process_group()
            return status
    except KeyboardInterrupt:
        progress.close_bars()
        if debug:
            traceback.print_exc()
        print("prunefab: interrupted", file=sys.stderr)
        return 130
    except (PrunefabError, OSError) as e:
        progress.close_bars()
        if debug:
            traceback.print_exc()
        print(_one_line(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
