# amaranth: UnusedElaboratable=no
"""BlockDotUnit (MacTree -> BlockToFloat -> FPAccumulator) on minifloat blocks: whole
k-chains against the golden model's dot products accumulated in FP32, bit for bit."""

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import resolve_format
from hbfp_hw.rtl_gen.block_dot import BlockDotUnit, block_dot_input_layout
from hbfp_hw.rtl_gen.layout import accumulator_output_layout, pack, unpack


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp4_e2m1", "bm6_e3m2"])
def test_chains_against_golden(stream_runner, name):
    fmt = resolve_format(name).replace(block_size=8)
    rng = np.random.default_rng(len(name))
    chains, kblocks, channels = 12, 3, 2
    x = rng.standard_normal((chains, kblocks * 8)) * np.exp2(rng.integers(-20, 20, (chains, 1)))
    y = rng.standard_normal((chains, kblocks * 8)) * np.exp2(rng.integers(-20, 20, (chains, 1)))
    x, y = x.astype(np.float32), y.astype(np.float32)
    x[3, 5] = np.inf                                  # a NaN block in one chain
    y[7] *= np.float32(2.0 ** 100)                    # sums near FP32's top
    qx, qy = golden.quantize(x, fmt), golden.quantize(y, fmt)
    want = golden.accumulate(golden.dot(qx, qy), axis=-1)
    layout = block_dot_input_layout(fmt, channels)
    ex, ey = qx.exponent_codes, qy.exponent_codes
    cx, cy = qx.element_codes(), qy.element_codes()
    inputs = []
    for c in range(chains):
        for kb in range(kblocks):
            inputs.append(pack(layout, {
                "a": {"exponent": int(ex[c, kb]), "mantissas": [int(v) for v in cx[c, kb]]},
                "b": {"exponent": int(ey[c, kb]), "mantissas": [int(v) for v in cy[c, kb]]},
                "channel": c % channels, "first": int(kb == 0),
                "last": int(kb == kblocks - 1)}))
    dut = BlockDotUnit(fmt, channels=channels, mac_stages=2, convert_stages=3, adder_stages=3)
    run = stream_runner(dut, inputs, n_outputs=chains, seed=3, valid_prob=0.8, ready_prob=0.7)
    out = [unpack(accumulator_output_layout(channels), v) for v in run.outputs]
    got = [o["value"] for o in out]
    assert [o["channel"] for o in out] == [c % channels for c in range(chains)]
    assert got == [int(v) for v in golden.f32_to_bits(want)]
