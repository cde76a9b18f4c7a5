"""The stochastic-rounding PRNG of the numerics contract (docs/numerics.md, section 2.4).

One xorshift32 generator (shifts 13, 17, 5) per lane. Lane ``l`` starts from
``seed ^ C_l`` with ``C_l = 0x9E3779B9 * (l + 1) mod 2**32`` (or ``C_l`` if that is 0). Every
lane steps once per block; block ``b`` uses the state after ``b + 1`` steps, top 16 bits.

Generating ``nblocks`` states per lane is inherently sequential, so this module uses the
linearity of xorshift over GF(2): it computes a first chunk of states step by step and then
jumps whole chunks ahead with a precomputed 32x32 bit-matrix (applied through byte tables).
"""

from functools import lru_cache

import numpy as np

from hbfp_hw.formats import SR_RANDOM_BITS

__all__ = ["GOLDEN_RATIO_32", "xorshift32", "lane_seeds", "lane_states", "random_bits",
           "check_seed", "fresh_seed"]

GOLDEN_RATIO_32 = 0x9E3779B9
_MASK32 = np.uint32(0xFFFFFFFF)


def check_seed(seed):
    """Validate a seed: an integer in ``[0, 2**32 - 1]``."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer between 0 and 4294967295, not {seed!r}")
    if not 0 <= int(seed) <= 0xFFFFFFFF:
        raise ValueError(f"seed must be between 0 and 4294967295, not {seed!r}")
    return int(seed)


def fresh_seed():
    """Draw a non-reproducible seed from the operating system's entropy."""
    return int(np.random.default_rng().integers(0, 1 << 32))


def xorshift32(state):
    """Advance xorshift32 states (a uint32 array or a Python int) by one step."""
    if isinstance(state, (int, np.integer)):
        s = int(state)
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        return s
    s = np.asarray(state, dtype=np.uint32)
    s = s ^ (s << np.uint32(13))
    s = s ^ (s >> np.uint32(17))
    s = s ^ (s << np.uint32(5))
    return s


def lane_seeds(seed, lanes, first=0):
    """Return the start state of each of ``lanes`` generators (lanes ``first`` to
    ``first + lanes - 1``) as a uint32 array."""
    seed = check_seed(seed)
    index = np.arange(first + 1, first + lanes + 1, dtype=np.uint64)
    consts = (GOLDEN_RATIO_32 * index) & 0xFFFFFFFF
    states = consts ^ np.uint64(seed)
    states = np.where(states == 0, consts, states)
    return states.astype(np.uint32)


@lru_cache(maxsize=32)
def _jump_tables(nsteps):
    """Byte tables T[k][v] = M**nsteps applied to (v << 8k), M being one xorshift32 step."""
    # Columns of the step matrix raised to the power nsteps, by stepping each basis vector.
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    cols = basis.copy()
    for _ in range(nsteps):
        cols = xorshift32(cols)
    tables = np.zeros((4, 256), dtype=np.uint32)
    values = np.arange(256)
    for k in range(4):
        acc = np.zeros(256, dtype=np.uint32)
        for bit in range(8):
            acc ^= np.where((values >> bit) & 1, cols[8 * k + bit], np.uint32(0))
        tables[k] = acc
    return tables


def _jump(states, tables):
    s = states
    return (tables[0][s & 0xFF] ^ tables[1][(s >> 8) & 0xFF]
            ^ tables[2][(s >> 16) & 0xFF] ^ tables[3][s >> 24])


def lane_states(seed, nblocks, lanes, first=0):
    """Return the ``[nblocks, lanes]`` uint32 states used by blocks ``0..nblocks-1`` (lanes
    ``first`` onwards)."""
    out = np.empty((nblocks, lanes), dtype=np.uint32)
    if nblocks == 0:
        return out
    chunk = int(max(1, min(nblocks, round(np.sqrt(nblocks * 4)))))
    s = lane_seeds(seed, lanes, first)
    for b in range(chunk):
        s = xorshift32(s)
        out[b] = s
    if nblocks > chunk:
        tables = _jump_tables(chunk)
        start = chunk
        while start < nblocks:
            stop = min(start + chunk, nblocks)
            out[start:stop] = _jump(out[start - chunk:stop - chunk], tables)
            start = stop
    return out


def random_bits(seed, nblocks, lanes, first=0):
    """Return the ``[nblocks, lanes]`` 16-bit random values that stochastic rounding adds
    (lanes ``first`` onwards)."""
    return lane_states(seed, nblocks, lanes, first) >> np.uint32(32 - SR_RANDOM_BITS)
