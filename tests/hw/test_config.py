import dataclasses
import json

import numpy as np
import pytest

from prunefab.hw.config import ConfigError, EngineConfig, EngineLimitError
from prunefab.sw.synthetic import random_conv, random_network, with_classifier


def test_presets_are_valid_and_round_trip_through_json():
    for cfg in (EngineConfig(), EngineConfig.icebreaker(), EngineConfig.ecp5_85f()):
        assert EngineConfig.from_json(cfg.to_json()) == cfg
    assert EngineConfig.icebreaker().lanes == 8 and EngineConfig.ecp5_85f().lanes == 64


def test_variants_are_replaced_copies():
    base = EngineConfig.icebreaker()
    wide = dataclasses.replace(base, lanes=16)
    assert wide.lanes == 16 and base.lanes == 8
    assert wide.step_bits == base.step_bits + 8 * 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.lanes = 4


@pytest.mark.parametrize("kwargs,error,match", [
    ({"lanes": 0}, ValueError, r"^EngineConfig.lanes must be at least 1, not 0$"),
    ({"lanes": 2.5}, TypeError, r"^EngineConfig.lanes must be an integer, not 2.5$"),
    ({"act_depth": 16}, ValueError, r"act_depth >= "),
    ({"param_depth": 4}, ValueError, r"param_depth >= 16"),
    ({"pixels_per_step": 3}, ValueError, r"^EngineConfig.pixels_per_step=3; use one of 1, 2, 4$"),
    ({"lanes": 6, "pixels_per_step": 4}, ValueError,
     r"^EngineConfig.lanes=6 does not split into pixels_per_step=4 equal parts$"),
])
def test_invalid_configs_fail_with_one_actionable_line(kwargs, error, match):
    with pytest.raises(error, match=match):
        EngineConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"lanes": 10 ** 6}, r"^EngineConfig.lanes=1000000 exceeds the generator's limit of 512$"),
    ({"max_layers": 10 ** 6}, r"^EngineConfig.max_layers=1000000 exceeds the generator's limit of 256$"),
    ({"act_depth": 10 ** 9}, r"the act0 memory \(1000000000 words of 8 bits\) .* lower act_depth$"),
    ({"lanes": 512, "weight_depth": 16384}, r"the weights memory .* lower lanes or weight_depth$"),
    ({"max_height": 10 ** 6, "max_width": 10 ** 6}, r"act_depth >= "),
])
def test_absurd_engines_are_refused_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EngineConfig(**kwargs)


def test_from_json_refuses_every_malformed_document_in_one_line():
    base = json.loads(EngineConfig().to_json())
    for text in ("{", "[" * 100000, json.dumps({**base, "lanes": "8"}), json.dumps({**base, "lanes": 1e6}),
                 json.dumps({**base, "lanes": None}), json.dumps(["engine"]), b"\xff\xfe\x00"):
        with pytest.raises(ConfigError) as e:
            EngineConfig.from_json(text)
        assert "\n" not in str(e.value)


def test_from_json_rejects_other_documents():
    with pytest.raises(ValueError, match="unknown keys"):
        EngineConfig.from_json(json.dumps({"engine": "prunefab", "lanes": 8, "colour": 1}))
    with pytest.raises(ValueError, match="not a prunefab engine"):
        EngineConfig.from_json("{}")


def test_check_network_names_the_layer_and_limit():
    rng = np.random.default_rng(0)
    net = random_network(rng, (1, 30, 12), channels=(4,), pools=(True,))
    with pytest.raises(EngineLimitError, match=r"^conv0: 30 rows exceeds this engine's limit of 28; "
                                                r"generate an engine with max_height >= 30$"):
        EngineConfig().check_network(net)
    net = random_network(rng, (1, 8, 8), channels=(4,), pools=(True,), classes=20)
    with pytest.raises(EngineLimitError, match=r"^linear: 20 outputs .* max_classes >= 20$"):
        EngineConfig().check_network(net)
    net = random_network(rng, (1, 8, 8), channels=(4,) * 8, pools=(False,) * 8)
    with pytest.raises(EngineLimitError, match=r"max_layers >= 9$"):
        EngineConfig().check_network(net)


def test_residual_additions_are_a_choice_of_the_engine():
    cfg = dataclasses.replace(EngineConfig(), residual=True)
    assert EngineConfig.from_json(cfg.to_json()) == cfg and not EngineConfig().residual
    # the parameter word gains N (15 bits) and s - u (5 bits) only where it is generated
    assert cfg.param_bits == EngineConfig().param_bits + 20
    with pytest.raises(TypeError, match=r"^EngineConfig.residual must be True or False, not 1$"):
        EngineConfig(residual=1)
    with pytest.raises(ConfigError, match="residual must be True or False"):
        EngineConfig.from_json(json.dumps({**json.loads(cfg.to_json()), "residual": "yes"}))
    rng = np.random.default_rng(1)
    convs = [random_conv(rng, 2, 4), random_conv(rng, 4, 4, residual=1)]
    net = with_classifier(rng, (2, 6, 6), convs, classes=3)
    with pytest.raises(EngineLimitError, match=r"^conv1: a residual addition needs an engine "
                                                r"generated with residual=True \(a second read "
                                                r"port on each activation bank\); this one has none$"):
        EngineConfig().check_network(net)
    cfg.check_network(net)
