"""The report's readings: kernel-element survival and the sweep's records."""

import numpy as np

from prunefab.report import distinct_patterns, engine_figures, position_survival, sweep_records


def test_survival_per_position_and_patterns():
    w = np.zeros((2, 2, 3, 3), dtype=np.int8)
    w[0, :, 1, 1] = 5               # a stripe: the centre in every input channel of filter 0
    w[1, 0, 0, 0] = w[1, 1, 2, 2] = -3
    share = position_survival(w)
    assert share[1, 1] == 0.5 and share[0, 0] == 0.25 and share[2, 2] == 0.25 and share.sum() == 1.0
    assert distinct_patterns(w) == 3        # the centre, the corner, the other corner


def test_engine_latency_and_images_per_second():
    ms, rate = engine_figures(300_000, 30.0, 3_000_000)
    assert ms == 10.0
    assert abs(rate - 1 / (784 * 10 / 3e6 + 0.01)) < 1e-9


def test_sweep_records_of_the_data_set_and_test_split(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(
        "text\n\n"
        "| data | split | method | options | target % | seeds | accuracy % | conv-FLOPs cut % |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        "| fashion-mnist | test | dense | - | - | 3 | 90.70 ± 0.05 | 0.0 ± 0.0 |\n"
        "| fashion-mnist | test | kep | - | 75 | 3 | 90.80 ± 0.12 | 75.1 ± 0.1 |\n"
        "| fashion-mnist | test | kep | - | 50 | 3 | 90.90 ± 0.10 | 50.2 ± 0.1 |\n"
        "| fashion-mnist | search | kep | - | 75 | 3 | 80.00 ± 0.10 | 75.0 ± 0.1 |\n"
        "| synthetic | test | iessp | - | 75 | 3 | 99.00 ± 0.10 | 75.0 ± 0.1 |\n")
    [kep] = sweep_records(doc, "fashion-mnist")
    assert kep["method"] == "kep"
    assert np.allclose(kep["cuts"], [0.502, 0.751]) and np.allclose(kep["means"], [0.909, 0.908])
    assert np.allclose(kep["stds"], [0.001, 0.0012])
    assert sweep_records(tmp_path / "missing.md", "fashion-mnist") == []
