from prunefab.hw.config import EngineConfig
from prunefab.hw.generate import TOP_NAME, generate


def test_generate_writes_verilog_rtlil_and_config(tmp_path, small_config):
    paths = generate(small_config, tmp_path / "design")
    assert EngineConfig.from_json(paths.config.read_text()) == small_config
    v = paths.verilog.read_text()
    assert f"module {TOP_NAME}" in v and "i_load__valid" in v and "o_logits__payload" in v
    assert f"module {TOP_NAME}" in paths.rtlil.read_text().replace("module \\", "module ")
