"""The demo's software steps: rows, artifacts, and the same seed giving the same bytes."""

import numpy as np

from prunefab.sw import artifact, data, reference
from prunefab.sw.demo import export, prune_method, table, train_dense
from prunefab.sw.pipeline import Budget

BUDGET = Budget(train_epochs=1, sparsity_epochs=1, finetune_epochs=1, calibration_images=300)


def _run(out, methods=("kep", "iessp")):
    tr, te = data.load("synthetic", "train"), data.load("synthetic", "test")
    dense = train_dense(tr, BUDGET, seed=0, progress=False)
    rows = [export("dense", dense, tr, te, BUDGET, out, "synthetic", 0, 0.0)]
    for m in methods:
        pruned = prune_method(dense, m, tr, 0.75, BUDGET, seed=0, progress=False)
        rows.append(export(m, pruned, tr, te, BUDGET, out, "synthetic", 0, 0.0, method=m,
                           flops_cut=0.75))
    return rows


def test_rows_artifacts_and_the_same_bytes_for_the_same_seed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    rows = _run(first)
    assert [r["method"] for r in rows] == ["dense", "kep", "iessp"]
    for r in rows[1:]:
        assert r["conv_flops_cut"] >= 0.75 and 0.0 <= r["int8_accuracy"] <= 1.0
    assert rows[1]["index_bits_per_conv_nonzero"] == 4.0
    kep = artifact.read(first / "kep.pfab")
    assert (kep.pruning.method, kep.pruning.flops_cut, kep.data) == ("kep", 0.75, "synthetic")
    assert artifact.read(first / "dense.pfab").pruning is None
    net = kep.network
    assert reference.run(net, np.zeros((1, 1, 12, 12), dtype=np.uint8)).shape == (1, 4)
    text = table(rows)
    assert text.splitlines()[0].split()[:3] == ["method", "conv-FLOPs", "cut"]
    assert len(text.splitlines()) == 4
    _run(second)
    for name in ("dense", "kep", "iessp"):
        assert (first / f"{name}.pfab").read_bytes() == (second / f"{name}.pfab").read_bytes(), name
