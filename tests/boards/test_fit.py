"""The resource estimate and the lane choice: refusals name the resource and the limit, auto-fit
picks the most lanes that fit, memories are counted as yosys maps them."""

import dataclasses

import pytest

from prunefab.boards import fit as F
from prunefab.boards.top import BOARDS
from prunefab.hw.config import EngineConfig


def test_blocks_takes_the_cheapest_shape():
    assert F.blocks(8, 512, F.BRAM_SHAPES["ice40"]) == 1
    assert F.blocks(56, 128, F.BRAM_SHAPES["ice40"]) == 4          # 4 x 16 bits, 256 deep
    assert F.blocks(396, 4096, F.BRAM_SHAPES["ecp5"]) == 88        # 11 x 36 bits x 8 x 512
    assert F.blocks(106, 4096, (F.SPRAM_SHAPE,)) == 7


def test_ecp5_block_ram_matches_what_yosys_maps():
    # synth_ecp5 of the 32-lane board top (08d8b49) maps 16 activation banks, 88 weight blocks
    # (396 bits by 4096: 11 x 8 of 36 x 512), the parameters (the 53 bits used of 56, 512 words
    # and the 12 layer counters: 3 x 18 bits by 1024) and the link's two buffers to DP16KD; the
    # identity ROM to LUTs, the 12-word descriptors and 32-word logit FIFO go to LUT RAM.
    then = dataclasses.replace(EngineConfig.ecp5_85f(), lanes=32, weight_depth=4096, act_depth=2048,
                               param_depth=512, max_layers=12, residual=False,
                               pixels_per_step=1)
    est = F.estimate(then, "ulx3s-85f")
    assert est.bram == 16 + 88 + 3 + 2
    assert est.dsp == 32 + F.REQUANTIZER_DSPS
    # the 64-lane preset: 16 banks of 4096 bytes, each twice (the residual operand's read
    # port), two 9 x 2048 blocks a copy; 780-bit step words by 2048, 87 blocks of 9 x 2048;
    # 76-bit parameters by 1024 + 24 counters, 9 blocks of 9 x 2048
    est = F.estimate(EngineConfig.ecp5_85f(), "ulx3s-85f")
    assert est.bram == 16 * 2 * 2 + 87 + 9 + 2
    # a requantizer per pixel of a 2x2 block, each with the residual operand's product: synth_ecp5
    # of the ULX3S board at 7157128 maps 76 MULT18X18D (and 160 DP16KD)
    assert est.dsp == 64 + 4 * (F.REQUANTIZER_DSPS + F.RESIDUAL_DSPS) == 76


def test_refusal_names_the_resource_and_a_lane_count_that_fits():
    with pytest.raises(F.FitError) as e:
        F.fit("ulx3s-85f", lanes=200)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("ulx3s-85f: 200 lanes do not fit (")
    assert "DSP ~206 of 156" in msg        # 200 lanes and two requantizers of 3 (blocks of 2)
    best = int(msg.rsplit("--lanes ", 1)[1].split()[0])
    routed = dataclasses.replace(EngineConfig.ecp5_85f(), pixels_per_step=2)
    assert F.estimate(routed.with_lanes(best), "ulx3s-85f").fits
    assert not F.estimate(routed.with_lanes(best + 1), "ulx3s-85f").fits


def test_auto_fit_takes_the_preset_when_it_fits():
    choice = F.choose("ulx3s-85f")
    # the preset's lanes, in blocks of as many pixels as route on the ECP5
    assert choice.config == dataclasses.replace(EngineConfig.ecp5_85f(), pixels_per_step=2)
    assert choice.config.lanes >= 64 and choice.estimate.dsp == 64 + 2 * 3
    assert choice.note.startswith("ulx3s-85f: 64 lanes fit the estimate (LUT ~")
    assert choice.note.endswith("; blocks of 2 pixels, not 4 (those do not route on this device)")
    assert F.choose("ulx3s-85f", lanes=32).config.pixels_per_step == 2
    # an engine within what routes is taken as it is, and the iCE40 has no such limit
    one = dataclasses.replace(EngineConfig.ecp5_85f(), pixels_per_step=1)
    assert F.choose("ulx3s-85f", one).config == one
    assert "pixels" not in F.choose("icebreaker").note


def test_auto_fit_picks_fewer_lanes_and_says_why():
    spec = BOARDS["ulx3s-85f"]
    big = dataclasses.replace(spec.config(), lanes=160)    # more multipliers and block RAM than exist
    choice = F.choose(spec, big)
    p = choice.config.lanes
    assert choice.estimate.fits and p < 160
    assert not F.estimate(choice.config.with_lanes(p + 1), spec).fits
    assert choice.note.startswith(f"ulx3s-85f: 160 lanes would not fit (DSP ~166 of 156, BRAM ~")
    assert f"); building {p} (LUT ~" in choice.note and "\n" not in choice.note


def test_icebreaker_refusal_is_one_line_naming_a_limit():
    try:
        choice = F.choose("icebreaker")
    except F.FitError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("icebreaker: even 1 lane does not fit (")
        assert " of " in msg
    else:
        assert choice.estimate.fits and choice.config.lanes >= 1
    with pytest.raises(F.FitError, match=r"^icebreaker: 64 lanes do not fit \(.*DSP ~66 of 8.*\); "):
        F.fit("icebreaker", lanes=64)


def test_ice40_counts_the_weight_memory_in_spram():
    cfg = dataclasses.replace(EngineConfig.icebreaker(), lanes=4)
    est = F.estimate(cfg, "icebreaker")
    assert est.spram == -(-cfg.step_bits // 16)
    assert est.lc is not None and "LC ~" in est.summary()


@pytest.mark.parametrize("lanes", [0, -3, 2.5, True, "4"])
def test_bad_lane_counts_are_refused_in_one_line(lanes):
    with pytest.raises(F.FitError, match=r"^ulx3s-85f: lane count must be a positive integer, not "):
        F.fit("ulx3s-85f", lanes=lanes)


def test_unknown_board():
    with pytest.raises(ValueError, match=r"^unknown board 'ulx3s'; choose one of icebreaker, ulx3s-85f$"):
        F.estimate(EngineConfig.ecp5_85f(), "ulx3s")


def test_memory_mapping_follows_yosys_costs():
    # as synth_ice40 / synth_ecp5 mapped them on real board tops
    assert F.memory_mapping("ice40", 96, 8) == ("bram", 6)              # descriptors, 8 layers
    assert F.memory_mapping("ice40", 71, 4) == ("logic", 284)           # descriptors, 4 layers
    assert F.memory_mapping("ice40", 8, 177, rom=True) == ("bram", 1)   # identity ROM
    assert F.memory_mapping("ecp5", 8, 177, rom=True)[0] == "logic"
    assert F.memory_mapping("ecp5", 8, 2048) == ("bram", 1)             # activation bank
    assert F.memory_mapping("ecp5", 8, 128) == ("lutram", 16)           # a small one
    assert F.memory_mapping("ecp5", 8, 256) == ("bram", 1)              # link buffer: a tie
    assert F.memory_mapping("ecp5", 56, 512) == ("bram", 2)             # parameters, PDPW16KD


def test_logic_lines_are_the_fit_of_the_recorded_builds():
    import json
    doc = json.loads(F.BUILDS.read_text())
    fitted = F.logic_lines(doc["builds"])
    assert F.LOGIC == fitted and set(fitted) == {"ice40", "ecp5"}
    assert set(fitted["ice40"]) == {"lut", "ff", "lc"} and set(fitted["ecp5"]) == {"lut", "ff"}


def test_a_later_single_build_moves_the_base_not_the_slope():
    sweep = [{"revision": "a", "board": "icebreaker", "lanes": p, "used": {"lut": 1000 + 300 * p}}
             for p in (1, 2, 4)]
    later = {"revision": "b", "board": "icebreaker", "lanes": 2, "used": {"lut": 1500}}
    assert F.logic_lines(sweep) == {"ice40": {"lut": (1000, 300)}}
    assert F.logic_lines(sweep + [later]) == {"ice40": {"lut": (900, 300)}}


def test_engine_memories_are_counted_from_their_description():
    cfg = EngineConfig.ecp5_85f()
    names = [m.name for m in F.memories(cfg)]
    assert names[:3] == ["weights", "params", "descriptors"] and "logits" in names
    assert {"receive_buffer", "send_buffer", "identity"} <= set(names)
