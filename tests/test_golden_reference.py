"""Self-checks of the slow reference (tests/golden_reference.py) against independent oracles.

The reference is what the golden model is judged by, so it is itself checked here against
numpy/hardware IEEE arithmetic, ``math.frexp`` and published xorshift32 values. (The reference
never uses these internally.)
"""

import math
import struct
from fractions import Fraction

import numpy as np
import pytest

from hbfp_hw.formats import BFPFormat

from .golden_checks import random_finite_bits
from .golden_reference import (
    CANONICAL_NAN,
    NAN_BLOCK,
    bits_to_float,
    bits_to_fraction,
    float_to_bits,
    ref_block_dot,
    ref_floor_log2,
    ref_fp32_add,
    ref_lane_seed,
    ref_quantize_block,
    ref_random_bits,
    ref_round_to_fp32,
    ref_xorshift32_lane_stream,
    ref_xorshift32_step,
)


def test_floor_log2_against_frexp():
    rng = np.random.default_rng(0)
    xs = random_finite_bits(rng, 3000)
    xs = xs[xs != 0]
    for x in xs:
        assert ref_floor_log2(float(x)) == math.frexp(float(x))[1] - 1


@pytest.mark.parametrize("k", range(-149, 128))
def test_floor_log2_powers_of_two(k):
    p = np.ldexp(np.float32(1), k)
    assert ref_floor_log2(float(p)) == k
    assert ref_floor_log2(-float(p)) == k
    below = np.nextafter(p, np.float32(0))
    if below != 0:
        assert ref_floor_log2(float(below)) == k - 1
    above = np.nextafter(p, np.float32(np.inf))
    if np.isfinite(above):
        assert ref_floor_log2(float(above)) == (k if k > -149 else -148)


def test_round_to_fp32_against_hardware_cast():
    rng = np.random.default_rng(1)
    # float64 values across the whole float32 range and beyond, plus exact float32 ties
    e = rng.integers(-160, 132, size=4000)
    x = np.ldexp(rng.uniform(1, 2, size=e.size), e) * rng.choice([-1, 1], size=e.size)
    f = random_finite_bits(rng, 2000).astype(np.float64)
    half_ulp = np.ldexp(1.0, np.frexp(f)[1] - 25)
    x = np.concatenate([x, f + half_ulp, f - half_ulp, f + half_ulp / 3])
    with np.errstate(over="ignore"):
        want = x.astype(np.float32).view(np.uint32)
    for xi, wi in zip(x, want, strict=True):
        assert ref_round_to_fp32(Fraction(float(xi))) == int(wi), xi


@pytest.mark.parametrize("q, expected", [
    (Fraction(0), 0x00000000),
    (Fraction(1), 0x3F800000),
    (Fraction(-1, 2**150), 0x80000000),               # tie with 0: to even (zero), sign kept
    (Fraction(3, 2**151), 0x00000001),                 # 0.75 ulp: up
    (Fraction(1, 2**150), 0x00000000),                 # exact tie at 0 -> 0
    (Fraction(3, 2**150), 0x00000002),                 # tie 1.5 -> 2
    (Fraction(2**24 - 1, 2**150), 0x00800000),         # largest subnormal + 1/2 -> min normal
    (Fraction(2**128), 0x7F800000),
    (Fraction(2**128 - 2**104), 0x7F7FFFFF),            # exactly max finite
    (Fraction(2**128 - 2**103), 0x7F800000),            # tie above max: even is 2^128 -> Inf
    (Fraction(2**128 - 2**103 - 1), 0x7F7FFFFF),
    (-Fraction(2**200), 0xFF800000),
    (Fraction(2**24 + 1), 0x4B800000),                  # tie -> even (2^24)
    (Fraction(2**24 + 3), 0x4B800002),                  # tie -> even (2^24 + 4)
])
def test_round_to_fp32_cases(q, expected):
    assert ref_round_to_fp32(q) == expected


def test_fp32_add_against_hardware():
    rng = np.random.default_rng(2)
    x = random_finite_bits(rng, 3000)
    # partners: random, near-negations, same binade and far apart
    y = np.concatenate([random_finite_bits(rng, 1000),
                        -x[1000:2000] * np.float32(1 + 2 ** -20),
                        (x[2000:] * rng.uniform(-1, 1, size=1000)).astype(np.float32)])
    with np.errstate(over="ignore"):
        want = (x + y).view(np.uint32)
    for xi, yi, wi in zip(x.view(np.uint32), y.view(np.uint32), want, strict=True):
        assert ref_fp32_add(int(xi), int(yi)) == int(wi)


@pytest.mark.parametrize("x, y, expected", [
    (0x3F800000, 0xBF800000, 0x00000000),   # 1 + -1 = +0
    (0x80000000, 0x80000000, 0x80000000),   # -0 + -0 = -0
    (0x80000000, 0x00000000, 0x00000000),   # -0 + +0 = +0
    (0x7F800000, 0xFF800000, CANONICAL_NAN),
    (0x7F800000, 0x7F800000, 0x7F800000),
    (0xFF800000, 0x3F800000, 0xFF800000),
    (0x7FC00001, 0x3F800000, CANONICAL_NAN),
    (0xFFC00000, 0x7F800000, CANONICAL_NAN),
    (0x7F7FFFFF, 0x7F7FFFFF, 0x7F800000),
    (0xFF7FFFFF, 0xF3800000, 0xFF800000),   # -max - 2^104: tie, rounds to even (-Inf)
    (0x00000001, 0x80000001, 0x00000000),
    (0x00000001, 0x00000001, 0x00000002),
])
def test_fp32_add_cases(x, y, expected):
    assert ref_fp32_add(x, y) == expected


def test_xorshift32_marsaglia():
    # Marsaglia (2003), "Xorshift RNGs": xor32 from y = 2463534242 first returns 723471715
    assert ref_xorshift32_step(2463534242) == 723471715
    assert ref_xorshift32_step(0) == 0


def test_lane_seeds():
    assert ref_lane_seed(0, 0) == 0x9E3779B9
    assert ref_lane_seed(0, 1) == (2 * 0x9E3779B9) % 2**32
    assert ref_lane_seed(0xFFFFFFFF, 0) == 0xFFFFFFFF ^ 0x9E3779B9
    # seed equal to C_l would give state 0: the lane starts from C_l instead
    c3 = (4 * 0x9E3779B9) % 2**32
    assert ref_lane_seed(c3, 3) == c3
    assert ref_lane_seed(c3, 2) == c3 ^ (3 * 0x9E3779B9) % 2**32


def test_random_bits_layout():
    r = ref_random_bits(5, 4, 3)
    assert len(r) == 4 and all(len(row) == 3 for row in r)
    stream = ref_xorshift32_lane_stream(5, 2, 4)
    assert [row[2] for row in r] == [s >> 16 for s in stream]
    assert all(0 <= v < 2**16 for row in r for v in row)


def test_quantize_block_cases():
    fmt = BFPFormat(8, 4)
    assert ref_quantize_block([1.0, 0.5, -0.25, 0.0], fmt) == (0, [64, 32, -16, 0])
    assert ref_quantize_block([1.9999999], BFPFormat(8, 1)) == (0, [127])   # saturation
    assert ref_quantize_block([0.0, -0.0], BFPFormat(4, 2)) == (-127, [0, 0])
    assert ref_quantize_block([1.0, math.nan], BFPFormat(4, 2)) == (NAN_BLOCK, [0, 0])
    # ties of w=3 (step 1/2 at E=0): 1.25 -> 2.5 -> 2; 1.75 -> 3.5 -> 4 -> saturates to 3
    assert ref_quantize_block([1.25, -1.75], BFPFormat(3, 2)) == (0, [2, -3])
    assert ref_quantize_block([1.25, -1.75], BFPFormat(3, 2, "toward-zero")) == (0, [2, -3])
    assert ref_quantize_block([1.0, 0.75], BFPFormat(3, 2)) == (0, [2, 2])   # 1.5 -> 2
    assert ref_quantize_block([1.0, 0.25], BFPFormat(3, 2)) == (0, [2, 0])   # 0.5 -> 0
    # stochastic: a = 0.5 rounds up iff r >= 2^15
    sr = BFPFormat(3, 2, "stochastic")
    assert ref_quantize_block([1.0, 0.25], sr, [0, 2**15 - 1]) == (0, [2, 0])
    assert ref_quantize_block([1.0, 0.25], sr, [0, 2**15]) == (0, [2, 1])
    # upper clamp with e = 3 (Emax = 3): 100 saturates, 1 is 8 steps of 1/8 * 2^3 ... = 16
    assert ref_quantize_block([100.0, 1.0], BFPFormat(8, 2, exponent_bits=3)) == (3, [127, 8])


def test_block_dot_cases():
    fmt = BFPFormat(8, 2)
    assert ref_block_dot(0, [64, 64], 0, [64, -64], fmt) == 0           # exact zero -> +0
    assert ref_block_dot(0, [64, 0], 1, [64, 0], fmt) == float_to_bits(2.0)
    assert ref_block_dot(NAN_BLOCK, [0, 0], 0, [1, 1], fmt) == CANONICAL_NAN
    assert ref_block_dot(0, [1, 1], 128, [1, 1], fmt) == CANONICAL_NAN
    # -1 * 2^(-127-127-12) rounds to -0
    assert ref_block_dot(-127, [1, 0], -127, [-1, 0], fmt) == 0x80000000


def test_bits_helpers():
    for u in (0, 1, 0x3F800000, 0x80000000, 0x7F7FFFFF, 0x00800000, 0xC0490FDB):
        assert float_to_bits(bits_to_float(u)) == u
        assert bits_to_fraction(u) == Fraction(struct.unpack("<f", struct.pack("<I", u))[0])
    with pytest.raises(ValueError):
        bits_to_fraction(0x7F800000)
