import dataclasses
import random

import pytest

from prunefab.hw.layouts import descriptor_layout, pack, param_layout, step_layout, unpack
from prunefab.hw.loader import LayerDescriptor


def test_pack_and_unpack_round_trip(small_config):
    rng = random.Random(0)
    P = small_config.lanes
    for _ in range(50):
        step = {"weight": [rng.randint(-128, 127) for _ in range(P)],
                "position": [rng.randint(0, 15) for _ in range(P)],
                "addr": rng.randrange(small_config.act_depth), "last": rng.randint(0, 1)}
        assert unpack(step_layout(small_config), pack(step_layout(small_config), step)) == step


@pytest.mark.parametrize("values, message", [
    ({"bias": 1, "mult": 2}, r"missing fields \['shift'\]"),
    ({"bias": 1, "mult": 2, "shift": 3, "w_base": 0}, r"unknown fields \['w_base'\]"),
    ({"bias": 1, "mult": 1 << 16, "shift": 3}, r"does not fit the 16-bit field mult"),
])
def test_pack_refuses_missing_unknown_and_oversized_fields(small_config, values, message):
    with pytest.raises(ValueError, match=message):
        pack(param_layout(small_config), values)


def test_pack_refuses_a_list_of_the_wrong_length(small_config):
    step = {"weight": [0], "position": [0] * small_config.lanes, "addr": 0, "last": 0}
    with pytest.raises(ValueError, match=f"weight needs a list of {small_config.lanes}"):
        pack(step_layout(small_config), step)


def test_a_layer_descriptor_is_exactly_the_hardware_descriptor(small_config):
    d = LayerDescriptor(linear=0, pool=1, stride=0, relu=1, in_h=9, in_w=7, pitch_in=1, out_base=64, plane_out=3,
                        pitch_out=1, out_channels=5, n_outputs=60)
    plain = {k: v for k, v in vars(d).items()
             if k not in ("residual", "res_signed", "res_offset", "pixels")}
    assert unpack(descriptor_layout(small_config), d.pack(small_config)) == plain
    residual = dataclasses.replace(small_config, residual=True, pixels_per_step=4)
    d = dataclasses.replace(d, residual=1, res_signed=1, res_offset=residual.act_depth - 5,
                            pixels=2)
    assert unpack(descriptor_layout(residual), d.pack(residual)) == vars(d)
    with pytest.raises(ValueError, match="needs an engine with residual=True"):
        d.pack(small_config)
    with pytest.raises(ValueError, match="needs an engine with pixels_per_step > 1"):
        dataclasses.replace(d, residual=0, res_signed=0, res_offset=0).pack(small_config)
