"""Stimulus and golden expectations for every unit, packed with the units' own layouts.

Each ``*_vectors`` function returns a dict for :func:`hbfp_hw.sim.runner.run_unit` (and for
the Amaranth-simulator tests): ``inputs`` (packed ``i_stream`` payloads), ``expected`` (packed
``o_stream`` payloads computed by :mod:`hbfp_hw.golden`), and, for units whose outputs carry a
channel, ``key_mask`` (outputs of one channel arrive in order, channels may interleave).

The data mixes seeded random values over the whole FP32 range with the contract's corner
cases: ties, powers of two and their neighbours, subnormals, ±0, the largest finite values,
NaN and ±Inf, all-equal and single-nonzero blocks, overflowing products and sums.
"""

from __future__ import annotations

import numpy as np

from hbfp_hw import golden
from hbfp_hw.formats import BFP8, CANONICAL_NAN_BITS, FloatFormat
from hbfp_hw.golden import minifloat as golden_minifloat
from hbfp_hw.rtl_gen import layout
from hbfp_hw.rtl_gen.dot_product import dot_input_layout

__all__ = ["corner_fp32_bits", "random_fp32_blocks", "align_vectors", "mac_vectors",
           "minifloat_block_products", "to_float_vectors", "accumulator_vectors", "dot_vectors",
           "fp32_mac_vectors"]


def corner_fp32_bits():
    """FP32 bit patterns every unit must get right (both signs)."""
    pos = [0x00000000, 0x00000001, 0x00000002, 0x003FFFFF, 0x00400000, 0x007FFFFF, 0x00800000,
           0x00800001, 0x00FFFFFF, 0x3F7FFFFF, 0x3F800000, 0x3F800001, 0x3FC00000, 0x3FFFFFFF,
           0x40000000, 0x34000000, 0x4B7FFFFF, 0x4B800000, 0x7EFFFFFF, 0x7F000000, 0x7F7FFFFE,
           0x7F7FFFFF, 0x0C800000, 0x1F7FFFFF, 0x60000001]
    return np.array(pos + [p | 0x80000000 for p in pos], dtype=np.uint32)


_SPECIAL = np.array([0x7F800000, 0xFF800000, CANONICAL_NAN_BITS, 0x7F800001, 0xFFC00001],
                    dtype=np.uint32)


def _bits(sign, field, frac):
    return ((sign.astype(np.uint32) << 31) | (field.astype(np.uint32) << 23)
            | frac.astype(np.uint32))


def random_fp32_blocks(rng, nblocks, bs, fmt, *, specials=True):
    """Return ``[nblocks, bs]`` FP32 bit patterns drawn from a mix of stimulus categories.

    ``fmt`` places the exact ties on its mantissa grid.
    """
    out = np.empty((nblocks, bs), dtype=np.uint32)
    kind = rng.choice(8, size=nblocks, p=[0.22, 0.3, 0.14, 0.1, 0.08, 0.06, 0.05, 0.05])
    shape = (nblocks, bs)
    sign = rng.integers(0, 2, shape)
    frac = rng.integers(0, 1 << 23, shape)
    # 0: wide dynamic range, any exponent field (subnormals included)
    wide = _bits(sign, rng.integers(0, 255, shape), frac)
    # 1: clustered around a random exponent (a typical activation/weight block)
    center = rng.integers(1, 255, (nblocks, 1))
    clustered = _bits(sign, np.clip(center + rng.integers(-4, 5, shape), 1, 254), frac)
    # 2: exact ties: max 2^E, others (k + 1/2) steps of 2^(E-(w-2))
    e = rng.integers(-100, 100, (nblocks, 1)).astype(np.float64)
    steps = rng.integers(-fmt.max_mantissa, fmt.max_mantissa, shape) + 0.5
    ties = np.ldexp(steps, (e - fmt.fraction_bits).astype(np.int64))
    ties[:, :1] = np.ldexp(np.where(rng.integers(0, 2, (nblocks, 1)), 1.0, -1.0), e.astype(int))
    ties = ties.astype(np.float32).view(np.uint32)
    # 3: corner values
    corners = rng.choice(corner_fp32_bits(), size=shape)
    # 4: huge magnitudes (products and sums overflow)
    huge = _bits(sign, rng.integers(230, 255, shape), frac)
    # 5: tiny magnitudes (subnormal products, underflow)
    tiny = _bits(sign, rng.integers(0, 12, shape), frac)
    # 6: all equal / single nonzero / all zero
    eq = np.repeat(wide[:, :1], bs, axis=1)
    single = np.where(np.arange(bs) == rng.integers(0, bs, (nblocks, 1)), clustered,
                      rng.choice(np.array([0, 0x80000000], np.uint32), size=shape))
    sparse = np.where(rng.integers(0, 3, (nblocks, 1)) == 0, eq, single)
    # 7: one NaN/Inf lane in an otherwise ordinary block
    special = clustered.copy()
    if specials:
        special[np.arange(nblocks), rng.integers(0, bs, nblocks)] = rng.choice(_SPECIAL, nblocks)
    for k, arr in enumerate([wide, clustered, ties, corners, huge, tiny, sparse, special]):
        out[kind == k] = arr[kind == k]
    if not specials:
        bad = (out & 0x7F800000) == 0x7F800000
        out[bad] &= 0xFF7FFFFF
    return out


def _lanes_for(bits, input_format):
    """Input lane patterns and the float32 values they stand for."""
    if FloatFormat(input_format) is FloatFormat.BF16:
        return bits >> 16, (bits & np.uint32(0xFFFF0000))
    return bits, bits


def align_vectors(fmt, count, rng, *, input_format="fp32", seed=0):
    """Vectors for the quantizer (:class:`FloatToBlock`, or the minifloat one): ``count``
    blocks; the PRNG is reseeded with ``seed``."""
    bits = random_fp32_blocks(rng, count, fmt.block_size, fmt)
    lanes, values = _lanes_for(bits, input_format)
    q = golden.quantize(values.view(np.float32), fmt, axis=-1, seed=seed,
                        input_format=input_format)
    in_layout = layout.float_vector_layout(fmt, input_format)
    out_layout = layout.block_layout(fmt)
    codes = q.exponent_codes[:, 0]
    elements = q.element_codes() if fmt.is_minifloat else q.mantissas
    inputs = [layout.pack(in_layout, row.tolist()) for row in lanes]
    expected = [layout.pack(out_layout, {"exponent": int(c), "mantissas": mm.tolist()})
                for c, mm in zip(codes, elements[:, 0])]
    return {"inputs": inputs, "expected": expected, "inputs_for": inputs,
            "static": {"seed": seed}, "pulse": {"reseed": 1}}


def _random_block_codes(rng, fmt, count):
    codes = rng.integers(0, fmt.nan_code + 1, count)
    codes[rng.random(count) < 0.05] = fmt.nan_code
    codes[rng.random(count) < 0.05] = 0
    if fmt.is_minifloat:
        # element codes: all of them (reserved ones too), all-extreme blocks, sparse blocks
        width = fmt.element.width
        elems = rng.integers(0, 1 << width, (count, fmt.block_size))
        top = int(golden_minifloat.encode(fmt.max_mantissa, fmt.element))
        extreme = rng.random(count) < 0.1
        elems[extreme] = rng.choice(np.array([top, top | 1 << (width - 1)]),
                                    size=(int(extreme.sum()), fmt.block_size))
        sparse = rng.random(count) < 0.1
        elems[sparse] *= rng.random((int(sparse.sum()), fmt.block_size)) < 0.3
        return codes, elems
    m = fmt.max_mantissa
    mant = rng.integers(-m, m + 1, (count, fmt.block_size))
    extreme = rng.random(count) < 0.1
    mant[extreme] = rng.choice(np.array([-m, m]), size=(int(extreme.sum()), fmt.block_size))
    return codes, mant


def minifloat_block_products(fmt, codes_a, elems_a, codes_b, elems_b):
    """The golden ``(S, Ep, nan)`` of minifloat block pairs given as wire codes (scale codes
    ``[k]``, element codes ``[k, N]``), read as :meth:`golden.BFPTensor.from_codes` reads them
    (a reserved element code makes a NaN block); ``S`` (Python ints) is 0 in NaN pairs, as the
    MacTree gives it."""
    qa = golden.BFPTensor.from_codes(np.asarray(codes_a)[:, None],
                                     np.asarray(elems_a)[:, None, :], fmt)
    qb = golden.BFPTensor.from_codes(np.asarray(codes_b)[:, None],
                                     np.asarray(elems_b)[:, None, :], fmt)
    s = golden.int_dot(qa.mantissas[:, 0].astype(object), qb.mantissas[:, 0].astype(object))
    ep, nan = golden.product_exponent(qa.exponents[:, 0], qb.exponents[:, 0], fmt)
    return (np.where(nan, 0, s).astype(object), np.asarray(ep, dtype=np.int64),
            np.asarray(nan, dtype=bool))


def mac_vectors(fmt, count, rng):
    """Vectors for :class:`MacTree`: ``count`` block pairs with random codes and mantissas."""
    ca, ma = _random_block_codes(rng, fmt, count)
    cb, mb = _random_block_codes(rng, fmt, count)
    if fmt.is_minifloat:
        s, ep, nan = minifloat_block_products(fmt, ca, ma, cb, mb)
    else:
        s = golden.int_dot(ma, mb)
        ep, nan = golden.product_exponent(ca - fmt.exponent_bias, cb - fmt.exponent_bias, fmt)
    pair = layout.block_pair_layout(fmt)
    out = layout.product_layout(fmt)
    inputs = [layout.pack(pair, {"a": {"exponent": int(a), "mantissas": x.tolist()},
                                 "b": {"exponent": int(b), "mantissas": y.tolist()}})
              for a, x, b, y in zip(ca, ma, cb, mb)]
    expected = [layout.pack(out, {"value": 0 if n else int(v), "exponent": int(e),
                                  "nan": int(n)})
                for v, e, n in zip(s, ep, nan)]
    return {"inputs": inputs, "expected": expected, "inputs_for": inputs}


def _random_int(rng, bits):
    """A uniform Python int below ``2**bits`` (any ``bits``: minifloat products reach 71)."""
    value = 0
    for _ in range(0, bits, 32):
        value = value << 32 | int(rng.integers(0, 1 << 32))
    return value & ((1 << bits) - 1)


def to_float_vectors(fmt, count, rng):
    """Vectors for :class:`BlockToFloat`: exact products across the whole exponent range."""
    width = fmt.product_bits
    eshape = layout.product_exponent_shape(fmt)
    lo, hi = -(1 << (eshape.width - 1)), (1 << (eshape.width - 1)) - 1
    nbits = rng.integers(0, width, count)
    s = np.array([_random_int(rng, int(b)) | (1 << int(b)) >> 1 if b else 0
                  for b in nbits], dtype=object)
    s = [-int(v) if rng.random() < 0.5 else int(v) for v in s]
    s = [max(min(v, (1 << (width - 1)) - 1), -(1 << (width - 1)) + 1) for v in s]
    # Exponents: uniform, and concentrated where the result is subnormal or overflows.
    e = rng.integers(lo, hi + 1, count)
    focus = rng.random(count)
    bl = np.array([abs(v).bit_length() for v in s])
    e = np.where(focus < 0.25, -149 - bl + rng.integers(-2, 26, count), e)
    e = np.where((focus >= 0.25) & (focus < 0.4), 128 - bl + rng.integers(-3, 2, count), e)
    e = np.clip(e, lo, hi)
    # Ties at the FP32 LSB: 25 significant bits ending in 1.
    tie = rng.random(count) < 0.1
    if width > 26:
        for i in np.flatnonzero(tie):
            s[i] = ((int(rng.integers(0, 1 << 23)) | (1 << 23)) << 1 | 1) * (-1 if s[i] < 0
                                                                             else 1)
    nan = rng.random(count) < 0.03
    # int64 holds every product of integer elements; wide minifloat ones need Python ints
    values = np.array(s, dtype=np.int64 if width <= 53 else object)
    bits = golden.f32_to_bits(golden.to_float32(values, e, nan))
    in_layout = layout.product_layout(fmt)
    inputs = [layout.pack(in_layout, {"value": v, "exponent": int(x), "nan": int(n)})
              for v, x, n in zip(s, e, nan)]
    return {"inputs": inputs, "expected": [int(b) for b in bits], "inputs_for": inputs}


def _channel_schedule(rng, channels, count, max_len=8):
    """Interleaved sums: ``(channel, first, last)`` per transfer, at least ``count`` of them.

    Batches of ``channels`` sums of random lengths (1..``max_len`` terms) go round-robin, so
    while all are active consecutive terms of a channel are ``channels`` transfers apart; as
    sums end, the spacing shrinks and the accumulator's hazard logic is exercised too. Every
    sum is complete.
    """
    sched = []
    while len(sched) < count:
        lengths = rng.integers(1, max_len + 1, channels)
        for r in range(int(lengths.max())):
            for ch in range(channels):
                if r < lengths[ch]:
                    sched.append((ch, r == 0, r == lengths[ch] - 1))
    return sched


def _sum_ids(schedule):
    """Number every sum; return the sum id of each transfer."""
    ids, current, nxt = [], {}, 0
    for ch, first, _ in schedule:
        if first:
            current[ch] = nxt
            nxt += 1
        ids.append(current[ch])
    return np.array(ids), nxt


def _coherent_fp32_blocks(rng, schedule, bs, fmt, *, share=0.5):
    """Blocks for a schedule of sums, where a share of the sums are *coherent*.

    A coherent sum draws all its blocks around one magnitude (like a row of a real matrix),
    so its terms are comparable and the FP32 rounding of every addition matters: this is
    what exposes a wrong accumulation order. The other sums use the mixed categories of
    :func:`random_fp32_blocks`.
    """
    ids, nsums = _sum_ids(schedule)
    n = len(schedule)
    out = random_fp32_blocks(rng, n, bs, fmt)
    coherent = rng.random(nsums) < share
    # Block exponents spread a few binades around the sum's centre: the block products then
    # span more than FP32's 24 bits together, so their order of addition shows in the result.
    center = rng.integers(110, 145, nsums)[ids] + rng.integers(-5, 6, n)
    field = np.clip(center[:, None] + rng.integers(-1, 2, (n, bs)), 1, 254)
    frac = rng.integers(0, 1 << 23, (n, bs))
    sign = rng.integers(0, 2, (n, bs))
    mask = coherent[ids]
    out[mask] = _bits(sign, field, frac)[mask]
    return out


def _sum_terms(schedule, terms):
    """Expected ``(channel, value bits)`` per completed sum, in completion order."""
    acc = {}
    out = []
    for (ch, first, last), t in zip(schedule, terms):
        cur = np.float32(0) if first else acc[ch]
        cur = golden.fp32_add(cur, t)
        acc[ch] = cur
        if last:
            out.append((ch, int(golden.f32_to_bits(cur))))
    return out


def _key_mask(channels):
    width = layout.channel_shape(channels).width
    return ((1 << width) - 1) << 32


def _fp32_terms(rng, count):
    return golden.bits_to_f32(random_fp32_blocks(rng, count, 1, BFP8)[:, 0])


def accumulator_vectors(channels, count, rng):
    """Vectors for :class:`FPAccumulator`: interleaved sums of FP32 terms."""
    sched = _channel_schedule(rng, channels, count)
    terms = golden.bits_to_f32(_coherent_fp32_blocks(rng, sched, 1, BFP8)[:, 0])
    in_layout = layout.accumulator_input_layout(channels)
    out_layout = layout.accumulator_output_layout(channels)
    inputs = [layout.pack(in_layout, {"value": int(b), "channel": ch, "first": int(f),
                                      "last": int(la)})
              for (ch, f, la), b in zip(sched, golden.f32_to_bits(terms))]
    expected = [layout.pack(out_layout, {"value": v, "channel": ch})
                for ch, v in _sum_terms(sched, terms)]
    return {"inputs": inputs, "expected": expected, "key_mask": _key_mask(channels)}


def fp32_mac_vectors(channels, count, rng):
    """Vectors for :class:`Fp32MacBaseline`: interleaved sums of FP32 products."""
    sched = _channel_schedule(rng, channels, count)
    a = _fp32_terms(rng, len(sched))
    b = _fp32_terms(rng, len(sched))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        prod = golden.canonicalize_nan(a * b)
    in_layout = layout.mac_input_layout(channels)
    out_layout = layout.accumulator_output_layout(channels)
    inputs = [layout.pack(in_layout, {"a": int(x), "b": int(y), "channel": ch, "first": int(f),
                                      "last": int(la)})
              for (ch, f, la), x, y in zip(sched, golden.f32_to_bits(a), golden.f32_to_bits(b))]
    expected = [layout.pack(out_layout, {"value": v, "channel": ch})
                for ch, v in _sum_terms(sched, prod)]
    return {"inputs": inputs, "expected": expected, "key_mask": _key_mask(channels)}


def dot_vectors(fmt, channels, count, rng, *, input_format="fp32", seed=0):
    """Vectors for :class:`DotProductUnit`: interleaved dot products over random K."""
    sched = _channel_schedule(rng, channels, count)
    a_bits, a_vals = _lanes_for(_coherent_fp32_blocks(rng, sched, fmt.block_size, fmt),
                                input_format)
    b_bits, b_vals = _lanes_for(_coherent_fp32_blocks(rng, sched, fmt.block_size, fmt),
                                input_format)
    sr_seed_b = (seed + 1) % (1 << 32)
    qa = golden.quantize(a_vals.view(np.float32), fmt, seed=seed, input_format=input_format)
    qb = golden.quantize(b_vals.view(np.float32), fmt, seed=sr_seed_b,
                         input_format=input_format)
    products = golden.dot(qa, qb)[:, 0]
    in_layout = dot_input_layout(fmt, input_format, channels)
    out_layout = layout.accumulator_output_layout(channels)
    inputs = [layout.pack(in_layout, {"a": x.tolist(), "b": y.tolist(), "channel": ch,
                                      "first": int(f), "last": int(la)})
              for (ch, f, la), x, y in zip(sched, a_bits, b_bits)]
    expected = [layout.pack(out_layout, {"value": v, "channel": ch})
                for ch, v in _sum_terms(sched, products)]
    return {"inputs": inputs, "expected": expected, "key_mask": _key_mask(channels),
            "static": {"seed": seed}, "pulse": {"reseed": 1}}
