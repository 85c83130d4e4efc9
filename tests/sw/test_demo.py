"""The main job on the synthetic set: every method's row, artifacts and results written."""

import json

import numpy as np

from prunefab.sw import artifact, reference
from prunefab.sw.demo import run_demo
from prunefab.sw.pipeline import Budget


def test_demo_rows_and_outputs(tmp_path, capsys):
    budget = Budget(train_epochs=1, sparsity_epochs=1, finetune_epochs=1, calibration_images=300)
    rows = run_demo(["kep", "iessp", "filter"], 0.75, budget, seed=0, out_dir=tmp_path,
                    data_name="synthetic", progress=False)
    assert [r.name for r in rows] == ["dense", "kep", "iessp", "filter"]
    for r in rows[1:]:
        assert r.counts.conv_flops_cut >= 0.75
        assert 0.0 <= r.int8_accuracy <= 1.0
    assert rows[1].encoding.conv_index_bits_per_nonzero == 4.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["dense", "kep", "iessp", "filter"]
    net = artifact.load(tmp_path / "kep.pfab")
    assert reference.run(net, np.zeros((1, 1, 12, 12), dtype=np.uint8)).shape == (1, 4)
    table = capsys.readouterr().out
    assert "conv-FLOPs cut" in table and "idx bits/nz" in table
