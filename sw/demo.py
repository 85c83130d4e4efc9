"""The main job: train the reference network, prune it with every method, quantize, encode,
and print one comparison table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from prunefab.sw import artifact, data, models
from prunefab.sw.pipeline import Budget, Evaluation, evaluate, prune, quantize_model, summary_table
from prunefab.sw.train import load_checkpoint, save_checkpoint, seed_everything, train


def run_demo(methods: list[str], flops_cut: float = 0.75, budget: Budget = Budget(), seed: int = 0,
             out_dir: Path = Path("out/demo"), data_name: str = "fashion-mnist",
             progress: bool = True) -> list[Evaluation]:
    """Returns the dense row followed by one row per method; writes checkpoints, artifacts and
    results.json under out_dir."""
    from prunefab.sw.prune import METHODS
    from prunefab.sw.prune.base import check_cut
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown pruning method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    check_cut(flops_cut)                   # before any training or file
    tr, te = data.load(data_name, "train"), data.load(data_name, "test")
    dense_path = out_dir / f"dense-seed{seed}-e{budget.train_epochs}.pt"
    t0 = time.perf_counter()
    if dense_path.exists():
        model, _ = load_checkpoint(dense_path)
        print(f"dense model from {dense_path}")
    else:
        seed_everything(seed)
        model = models.HardwareNet(tr.shape, (8, 16, 32), (True, False, True), len(tr.classes))
        train(model, tr, budget.train_epochs, lr=budget.lr, batch_size=budget.batch_size, seed=seed,
              desc="dense", progress=progress)
        save_checkpoint(model, dense_path, data=data_name, seed=seed)
    qnet = quantize_model(model, tr, budget)
    artifact.save(qnet, out_dir / "dense.pfab", data=data_name)
    dense = evaluate("dense", model, te, qnet)
    dense = replace(dense, seconds=time.perf_counter() - t0)
    rows = [dense]
    print(summary_table(rows, dense), flush=True)
    for name in methods:
        t = time.perf_counter()
        pruned = prune(model, name, tr, flops_cut, budget, seed=seed, progress=progress)
        save_checkpoint(pruned, out_dir / f"{name}.pt", data=data_name, seed=seed, method=name,
                        flops_cut=flops_cut)
        q = quantize_model(pruned, tr, budget)
        artifact.save(q, out_dir / f"{name}.pfab", data=data_name)
        ev = evaluate(name, pruned, te, q)
        rows.append(replace(ev, seconds=time.perf_counter() - t))
        print(summary_table(rows[-1:], dense).splitlines()[-1], flush=True)
    print()
    print(f"Fashion-MNIST test set ({len(te)} images); conv-FLOPs target {flops_cut:.0%}; budget: "
          f"{budget.train_epochs} dense epochs, {budget.sparsity_epochs} sparsity + "
          f"{budget.finetune_epochs} fine-tune epochs per method; seed {seed}")
    print(summary_table(rows, dense))
    results = [{"method": r.name, "float_accuracy": r.float_accuracy, "int8_accuracy": r.int8_accuracy,
                "conv_flops_cut": r.counts.conv_flops_cut, "parameter_cut": r.counts.parameter_cut,
                "conv_flops": r.counts.conv_flops, "parameters": r.counts.parameters,
                "index_bits_per_conv_nonzero": r.encoding.conv_index_bits_per_nonzero if r.encoding else None,
                "artifact_bytes": r.encoding.file_bytes if r.encoding else None,
                "seconds": r.seconds} for r in rows]
    artifact.write_atomic(out_dir / "results.json",
                          json.dumps({"budget": asdict(budget), "seed": seed, "flops_cut": flops_cut,
                                      "rows": results}, indent=2).encode())
    return rows
