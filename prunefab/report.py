"""The demo's report: `report.html` (one self-contained file, the plots inline as base64 PNG) and
`report.md` beside it (the plots as PNG files in `report/`).

It shows the accuracy table; which 3x3 kernel elements survive each method (per position across a
layer's kernels, and every kernel plane of one layer, so that KEP's per-plane patterns and the
stripes' shared positions are seen side by side); accuracy against the conv-FLOPs cut (the demo's
points, and the sweep's means from docs/results.md when it has them); per-layer cycles against the
zero-skip limit and the dense run; the board's resources against the chip; engine latency and
images per second end to end.  Everything comes from the demo's stage results and artifacts.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunefab.sw import artifact
from prunefab.sw.artifact import write_atomic

SWEEP = Path(__file__).resolve().parent.parent / "docs" / "results.md"
PLANES_LAYER = 1        # the layer whose every kernel plane is drawn (16 x 8 planes)
# End to end on the board: a 28x28 image crosses the UART (8N1, ten bits a byte), then the
# engine runs it (README's "On the chip").
IMAGE_BYTES = 28 * 28
BITS_PER_BYTE = 10


@dataclass(frozen=True)
class Figure:
    name: str           # file stem
    title: str
    png: bytes


def write(demo, out_dir: Path) -> dict:
    """Write report.html, report.md and report/*.png into `out_dir`; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    out = Path(out_dir)
    nets = {r["method"]: artifact.load(out / f"{r['method']}.pfab") for r in demo.rows}
    sweep = sweep_records(SWEEP, demo.settings.data_name)
    figures = [f for f in (
        _positions_figure(nets), _planes_figure(nets), _accuracy_figure(demo.rows, sweep),
        _cycles_figure(demo.results.get("rtl")), _resources_figure(demo.results.get("bitstream")),
    ) if f is not None]
    sections = _sections(demo, nets, sweep)
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    for f in figures:
        write_atomic(folder / f"{f.name}.png", f.png)
    md, page = _markdown(demo, sections, figures), _html(demo, sections, figures)
    write_atomic(out / "report.md", md.encode())
    write_atomic(out / "report.html", page.encode())
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
            "figures": [f.name for f in figures]}


# ----------------------------------------------------------------------------------------------
# figures

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    # no date or software version in the file: the same figures give the same bytes
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def position_survival(weights: np.ndarray) -> np.ndarray:
    """[3, 3]: the share of a conv layer's kernel planes (output x input channel) in which each
    kernel element is nonzero."""
    nz = np.asarray(weights) != 0
    return nz.reshape(-1, nz.shape[-2], nz.shape[-1]).mean(axis=0)


def _patterns(count: int) -> str:
    return f"{count} pattern{'s' if count != 1 else ''}"


def distinct_patterns(weights: np.ndarray) -> int:
    """How many different 3x3 survival patterns the layer's nonzero kernel planes have."""
    nz = (np.asarray(weights) != 0).reshape(-1, 9)
    nz = nz[nz.any(axis=1)]
    return len({row.tobytes() for row in nz})


def _positions_figure(nets: dict) -> Figure:
    import matplotlib.pyplot as plt
    names, layers = list(nets), len(next(iter(nets.values())).convs)
    fig, axes = plt.subplots(len(names), layers, figsize=(1.9 * layers + 1, 1.75 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, conv in enumerate(nets[name].convs):
            ax = axes[i][j]
            share = position_survival(conv.weights)
            ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
            for (y, x), v in np.ndenumerate(share):
                ax.text(x, y, f"{v:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 else "black")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"conv{j} ({conv.out_channels}x{conv.in_channels})", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle("share of kernel planes keeping each 3x3 position", fontsize=10)
    return Figure("positions", "Kernel elements kept, per position", _png(fig))


def _planes_figure(nets: dict) -> Figure | None:
    import matplotlib.pyplot as plt
    names = [n for n in nets if len(nets[n].convs) > PLANES_LAYER]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        w = nets[name].convs[PLANES_LAYER].weights != 0          # [O, I, 3, 3]
        o, i = w.shape[:2]
        # every plane as a 3x3 block with a one-pixel gap; rows are output channels
        grid = np.full((o * 4 - 1, i * 4 - 1), 0.35)
        for a in range(o):
            for b in range(i):
                grid[a * 4:a * 4 + 3, b * 4:b * 4 + 3] = w[a, b]
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{name}\n{_patterns(distinct_patterns(nets[name].convs[PLANES_LAYER].weights))}",
                     fontsize=9)
    fig.suptitle(f"conv{PLANES_LAYER}: every kernel plane (rows: output channels, columns: "
                 f"input channels; black: kept)", fontsize=10)
    return Figure("planes", f"Every kernel plane of conv{PLANES_LAYER}", _png(fig))


def _accuracy_figure(rows: list[dict], sweep: list[dict]) -> Figure:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {}
    for rec in sweep:
        line = ax.errorbar([100 * c for c in rec["cuts"]], [100 * a for a in rec["means"]],
                           yerr=[100 * s for s in rec["stds"]], marker="o", ms=3, capsize=2,
                           alpha=0.6, label=f"{rec['method']} (sweep, float)")
        colors[rec["method"]] = line[0].get_color()
    for r in rows:
        ax.scatter([100 * r["conv_flops_cut"]], [100 * r["int8_accuracy"]], marker="*", s=140,
                   edgecolor="black", linewidth=0.5, zorder=3, color=colors.get(r["method"]),
                   label=f"{r['method']} (this run, int8)")
    ax.set_xlabel("conv-FLOPs cut (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return Figure("accuracy", "Accuracy against conv-FLOPs cut", _png(fig))


def _cycles_figure(rtl: dict | None) -> Figure | None:
    import matplotlib.pyplot as plt
    if not rtl:
        return None
    runs = rtl["runs"]
    first = next(iter(runs.values()))
    layers = [layer["name"] for layer in first["layers"]]
    series = [(f"{n} (measured)", runs[n]["measured"]) for n in runs]
    for n in runs:
        if n != "dense":
            series.append((f"{n} zero-skip limit", [layer["zero_skip_limit"] for layer in runs[n]["layers"]]))
    series.append(("every weight nonzero", [layer["dense_cycles"] for layer in first["layers"]]))
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    width = 0.8 / len(series)
    x = np.arange(len(layers))
    for k, (label, values) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label,
               hatch="//" if "limit" in label else None)
    ax.set_xticks(x, layers)
    ax.set_ylabel(f"cycles per image ({rtl['lanes']} lanes)")
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return Figure("cycles", "Cycles per layer on the engine", _png(fig))


def _resources_figure(bitstream: dict | None) -> Figure | None:
    import matplotlib.pyplot as plt
    if not bitstream or not bitstream.get("resources"):
        return None
    res = ordered_resources(bitstream["resources"])
    names = list(res)
    share = [res[k]["used"] / res[k]["available"] for k in names]
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(names) + 1.0))
    ax.barh([k.upper() for k in names], [100 * s for s in share],
            color=["tab:red" if s > 1 else "tab:blue" for s in share])
    for y, k in enumerate(names):
        ax.text(min(100 * share[y], 100) + 1, y, f"{res[k]['used']} / {res[k]['available']}",
                va="center", fontsize=8)
    ax.set_xlim(0, 125)
    ax.axvline(100, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("% of the chip" + (" (estimate: no build on the fast path)"
                                     if bitstream.get("skipped") else ""))
    return Figure("resources", "The board's resources", _png(fig))


# ----------------------------------------------------------------------------------------------
# the sweep's records

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def sweep_records(path: Path, data_name: str) -> list[dict]:
    """Per method, the sweep's cuts, mean accuracies and standard deviations on `data_name`'s test
    set, read from the Markdown tables of `path` (docs/results.md, bench/sweep.py) whose header
    names a method, a cut and an accuracy column and whose accuracy cells read "MEAN ± STD"
    (percent); rows of another data set or split are left out when the table names them.  []
    when there is no such file or table."""
    try:
        text = path.read_text()
    except OSError:
        return []
    found: dict[str, list[tuple[float, float, float]]] = {}
    header = None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        lower = [c.lower() for c in cells]

        def column(*words):
            return next((k for k, c in enumerate(lower) if any(w in c for w in words)), None)

        if header is None:
            header = {"method": column("method"), "cut": column("cut"), "acc": column("acc"),
                      "data": column("data"), "split": column("split")}
            continue
        if None in (header["method"], header["cut"], header["acc"]) or set(line) <= set("|-: "):
            continue
        try:
            if header["data"] is not None and cells[header["data"]] != data_name:
                continue
            if header["split"] is not None and cells[header["split"]] != "test":
                continue
            name = cells[header["method"]].strip("`* ")
            cut = float(re.search(_NUMBER, cells[header["cut"]]).group(1)) / 100
            m = re.search(_NUMBER + r"\s*(?:±|\+/-|\+-)\s*" + _NUMBER, cells[header["acc"]])
        except (IndexError, AttributeError, ValueError):
            continue
        if m and name and name != "dense":
            found.setdefault(name, []).append((cut, float(m.group(1)) / 100, float(m.group(2)) / 100))
    records = []
    for name, points in found.items():
        points.sort()
        records.append({"method": name, "cuts": [p[0] for p in points],
                        "means": [p[1] for p in points], "stds": [p[2] for p in points]})
    return records


# ----------------------------------------------------------------------------------------------
# tables and text

@dataclass(frozen=True)
class Section:
    title: str
    text: str                           # a paragraph (plain text, may hold `code`)
    table: list[list[str]] | None       # header row first
    figure: str | None                  # a Figure name


def ordered_resources(resources: dict) -> dict:
    """A build report's resources in the order `prunefab build` prints them."""
    from prunefab.boards.build import ORDER
    return {k: resources[k] for k in sorted(resources, key=lambda k: (k not in ORDER,
                                                                     ORDER.index(k) if k in ORDER else 0, k))}


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def engine_figures(cycles: int, clock_mhz: float, baud: int) -> tuple[float, float]:
    """(engine latency in ms, images per second end to end) of a network taking `cycles` per
    image at `clock_mhz`, its image sent over the UART at `baud` first."""
    engine_s = cycles / (clock_mhz * 1e6)
    line_s = IMAGE_BYTES * BITS_PER_BYTE / baud
    return 1e3 * engine_s, 1 / (line_s + engine_s)


def _sections(demo, nets: dict, sweep: list[dict]) -> list[Section]:
    from prunefab.boards.top import board_spec
    clock = board_spec(demo.settings.board).clock_mhz
    bit = demo.results.get("bitstream")
    if bit and not bit.get("skipped"):
        clock = bit["clock_mhz"]                 # the configured clock of the timing-clean build
    sections = [_accuracy(demo), *_survival(nets), _accuracy_curve(sweep), _cycles(demo),
                _resources(demo, clock), _latency(demo, clock), _board(demo), _stages(demo)]
    return [section for section in sections if section is not None]


def _accuracy(demo) -> Section:
    s, rows = demo.settings, demo.rows
    base = rows[0]["float_accuracy"]
    table = [["method", "conv-FLOPs cut", "param cut", "float acc", "int8 acc", "vs dense",
              "idx bits/nz", "artifact", "time"]]
    for r in rows:
        table.append([r["method"], _pct(r["conv_flops_cut"], 1), _pct(r["parameter_cut"], 1),
                      _pct(r["float_accuracy"]), _pct(r["int8_accuracy"]),
                      f"{100 * (r['int8_accuracy'] - base):+.2f} p",
                      f"{r['index_bits_per_conv_nonzero']:.2f}", f"{r['artifact_bytes']} B",
                      f"{r['seconds']:.0f} s"])
    return Section("Accuracy", f"{s.data_name} test set ({rows[0]['test_images']} images), "
                   f"conv-FLOPs target {s.flops_cut:.0%}, seed {s.seed}; budget "
                   f"{s.budget.train_epochs} dense epochs, {s.budget.sparsity_epochs} sparsity + "
                   f"{s.budget.finetune_epochs} fine-tune epochs per method. \"vs dense\": int8 "
                   f"accuracy against the dense float model. One seed: the spread across seeds "
                   f"is in docs/results.md.", table, None)


def _survival(nets: dict) -> list[Section]:
    patterns = [["method", *(f"conv{j}" for j in range(len(next(iter(nets.values())).convs)))]]
    for name, net in nets.items():
        patterns.append([name, *(f"{_patterns(distinct_patterns(c.weights))}, "
                                 f"{100 * np.mean(c.weights != 0):.0f} % kept" for c in net.convs)])
    return [Section("Which kernel elements survive",
                    "Per method and conv layer, the share of kernel planes (one output channel "
                    "by one input channel) that keep each of the nine 3x3 positions, and how "
                    "many different survival patterns the planes show. KEP picks each plane's "
                    "elements; stripe methods (IESSP, SWP) keep a position for every input "
                    "channel of a filter at once.", patterns, "positions"),
            Section(f"Every kernel plane of conv{PLANES_LAYER}",
                    "Each 3x3 block is one kernel plane; a row of blocks is one output channel. "
                    "Stripes show as rows whose blocks are all alike.", None, "planes")]


def _accuracy_curve(sweep: list[dict]) -> Section:
    return Section("Accuracy against the conv-FLOPs cut",
                   "Stars: this run (int8 accuracy). " + (
                       f"Lines: the sweep's float accuracy, mean and one standard deviation over "
                       f"seeds (docs/{SWEEP.name}, {len(sweep)} methods)." if sweep else
                       f"No sweep records in docs/{SWEEP.name} yet (make sweep)."),
                   None, "accuracy")


def _cycles(demo) -> Section | None:
    rtl = demo.results.get("rtl")
    if not rtl:
        return None
    runs = rtl["runs"]
    pruned = [n for n in runs if n != "dense"]
    table = [["layer", *(f"{n}, measured" for n in runs), *(f"{n} zero-skip limit" for n in pruned),
              "every weight nonzero"]]
    first = next(iter(runs.values()))
    for k, layer in enumerate(first["layers"]):
        table.append([layer["name"], *(str(runs[n]["measured"][k]) for n in runs),
                      *(str(runs[n]["layers"][k]["zero_skip_limit"]) for n in pruned),
                      str(layer["dense_cycles"])])
    table.append(["total", *(str(runs[n]["total_cycles"]) for n in runs),
                  *(str(sum(x["zero_skip_limit"] for x in runs[n]["layers"])) for n in pruned),
                  str(sum(x["dense_cycles"] for x in first["layers"]))])
    checked = ", ".join(f"{n} {r['images']} images ({r['correct']} right)" for n, r in runs.items())
    return Section("Cycles on the engine",
                   f"The {rtl['lanes']}-lane engine the {demo.settings.board} build holds, in the "
                   f"cycle-accurate Verilator model: {checked}; every answer equal to the "
                   f"integer reference, every layer's cycle counter equal to the cycle "
                   f"model. The zero-skip limit is the fewest cycles any zero-skipping "
                   f"engine with as many lanes could take (nonzero MACs / lanes).",
                   table, "cycles")


def _resources(demo, clock: float) -> Section | None:
    bit, board = demo.results.get("bitstream"), demo.settings.board
    if not bit:
        return None
    table = [["resource", "used", "available", "share"]]
    for k, v in ordered_resources(bit.get("resources", {})).items():
        table.append([k.upper(), str(v["used"]), str(v["available"]),
                      f"{100 * v['used'] / v['available']:.0f} %"])
    if bit.get("skipped"):
        text = (f"{bit['skipped']}: the resource estimate (boards/fit.py) of the "
                f"{bit['lanes']}-lane engine, at the board's own {clock:.4g} MHz clock.")
    else:
        text = (f"{bit['lanes']} lanes, timing-clean: clock {bit['clock_mhz']:.4g} MHz "
                f"(asked {bit['target_mhz']:.4g}), routed Fmax {bit['fmax_mhz']:.1f} MHz; "
                f"{board}/prunefab.bin and build_report.json beside this report.")
    return Section(f"The {board}'s resources", text, table, "resources")


def _latency(demo, clock: float) -> Section | None:
    from prunefab.boards.top import BAUD
    rtl = demo.results.get("rtl")
    if not rtl:
        return None
    table = [["network", "cycles per image", "engine latency", "images/s end to end"]]
    for n, r in rtl["runs"].items():
        ms, rate = engine_figures(r["total_cycles"], clock, BAUD)
        table.append([n, str(r["total_cycles"]), f"{ms:.2f} ms", f"{rate:.0f}"])
    return Section("Latency and throughput",
                   f"At {clock:.4g} MHz; end to end: a {IMAGE_BYTES}-byte image on the "
                   f"{BAUD / 1e6:g} Mbaud UART (8N1), then the engine.", table, None)


def _board(demo) -> Section | None:
    board = demo.results.get("board")
    if not board:
        return None
    return Section("The simulated board over a damaged line",
                   f"The {board['network']} network on the simulated {demo.settings.board} (its "
                   f"gateware, UART link included, under Verilator), line damage "
                   f"`{board['faults']}`: {board['answered']}/{board['images']} images "
                   f"answered, {board['mismatches']} mismatches against the integer "
                   f"reference, {board['link_failures']} link failures; {board['flipped']} "
                   f"bytes flipped and {board['dropped']} dropped on the line, "
                   f"{board['resends']} frames resent; {board['cycles']} engine cycles per "
                   f"image.", None, None)


def _stages(demo) -> Section:
    times = [["stage", "wall time", "processor time", ""]]
    for name, t in demo.seconds.items():
        cpu = demo.cpu_seconds.get(name)
        times.append([name, f"{t:.0f} s", "-" if cpu is None else f"{cpu:.0f} s",
                      "reused" if demo.reused.get(name) else ""])
    s = demo.settings
    return Section("Stages", f"The stages ran in {s.workers} worker process(es), torch pinned to "
                   f"{s.threads} thread(s) in each, each stage as soon as those it needs were done; "
                   f"the whole demo took {demo.wall_seconds:.0f} s up to the report. Processor "
                   f"time: user and system time of the stage and the tools it ran, which a busy "
                   f"machine inflates less than the wall time. A reused stage shows the times it "
                   f"took when it ran.", times, None)


def _title(demo) -> str:
    return "prunefab demo" + (" (FAST PATH: tiny data and epochs, for tests)" if demo.settings.fast else "")


def _markdown(demo, sections: list[Section], figures: list[Figure]) -> str:
    names = {f.name for f in figures}
    lines = [f"# {_title(demo)}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.text, ""]
        if sec.table:
            lines.append("| " + " | ".join(sec.table[0]) + " |")
            lines.append("| " + " | ".join("---" for _ in sec.table[0]) + " |")
            lines += ["| " + " | ".join(row) + " |" for row in sec.table[1:]]
            lines.append("")
        if sec.figure in names:
            lines += [f"![{sec.title}](report/{sec.figure}.png)", ""]
    return "\n".join(lines)


def _html(demo, sections: list[Section], figures: list[Figure]) -> str:
    pngs = {f.name: f for f in figures}
    body = [f"<h1>{html.escape(_title(demo))}</h1>"]
    for sec in sections:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(sec.text))
        body.append(f"<p>{text}</p>")
        if sec.table:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in sec.table[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in sec.table[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        if sec.figure in pngs:
            data = base64.b64encode(pngs[sec.figure].png).decode()
            body.append(f'<img alt="{html.escape(sec.title)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#f2f2f2}img{max-width:100%}code{background:#f4f4f4}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(_title(demo))}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
