"""Prove that the golden-model tests can fail: run the same checks on broken golden models.

Each mutant replaces one internal step of the golden model with a plausible bug:
:mod:`hbfp_hw.golden.quantizer` exposes ``_floor_log2`` and its rounding step (``_round``, or
``_round_shifted`` in the integer-significand variant) as hooks for exactly this purpose, and
:mod:`hbfp_hw.golden.arith` looks up ``product_exponent`` and ``canonicalize_nan`` at call time.
The checks of ``golden_checks`` (the ones the real tests assert to be 0) must then report
mismatches, while the unmodified model reports none.
"""

import numpy as np
import pytest

from hbfp_hw import golden
from hbfp_hw.formats import MXINT8, BFPFormat, Rounding
from hbfp_hw.golden import arith, quantizer

from .golden_checks import (
    adversarial_quantize_mismatches,
    dot_mismatches,
    fp32_add_special_mismatches,
    gemm_mismatches,
    mxint8_mismatches,
    pow2_blocks,
    quantize_mismatches,
    random_clustered,
    tie_blocks,
)


def floor_log2_in_floating_point(x):
    """Mutant (a): floor(log2) from a float32 log2, off by one just below powers of two."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fl = np.floor(np.log2(np.abs(x).astype(np.float32)))
    return np.where(np.isfinite(fl), fl, 0).astype(np.int32)


# The golden model rounds through one of two hooks, depending on its version:
#   _round(a, rounding, rand): a = float32 signed values x * 2^((w-2)-E), returns float32 ints;
#   _round_shifted(sig, shift, rounding, rand): magnitudes sig * 2^-shift, returns uint ints.
# The mutants below implement the nearest rounding with a given (q, guard, sticky) rule for
# whichever hook exists, and delegate the other roundings to the original.
ROUND_HOOK = "_round" if hasattr(quantizer, "_round") else "_round_shifted"
_original_round = getattr(quantizer, ROUND_HOOK)


def _nearest_variant(rule):
    """A rounding hook whose nearest-even decides with ``rule(q, guard, sticky)``."""

    def round_float(a, rounding, rand):
        if rounding is not Rounding.NEAREST_EVEN:
            return _original_round(a, rounding, rand)
        mag = np.abs(a.astype(np.float64))
        q = np.floor(mag)
        frac = mag - q                     # exact: float64 holds every float32 fraction
        guard = frac >= 0.5
        sticky = (frac != 0.0) & (frac != 0.5)
        sticky = np.where(guard, frac > 0.5, sticky)
        up = rule(q.astype(np.int64), guard, sticky)
        with np.errstate(invalid="ignore"):
            return np.copysign(q + up, a).astype(a.dtype)

    def round_shifted(sig, shift, rounding, rand):
        if rounding is not Rounding.NEAREST_EVEN:
            return _original_round(sig, shift, rounding, rand)
        s = sig.astype(np.int64)
        t = np.minimum(shift.astype(np.int64), 40)
        q = s >> t
        guard = np.where(t > 0, (s >> np.maximum(t - 1, 0)) & 1, 0).astype(bool)
        sticky = (s & ((np.int64(1) << np.maximum(t - 1, 0)) - 1)) != 0
        up = (t > 0) & rule(q, guard, sticky)
        return (q + up).astype(sig.dtype)

    return round_float if ROUND_HOOK == "_round" else round_shifted


#: Mutant (b): ties rounded away from zero (magnitude up) instead of to even.
ties_away = _nearest_variant(lambda q, g, st: g)
#: Mutant (c): the sticky bit is dropped, only guard and LSB decide (a tie-plus-a-bit that
#: should round up rounds to even).
sticky_dropped = _nearest_variant(lambda q, g, st: g & ((q & 1) == 1))
#: Sanity: the same machinery with the correct rule must be exact.
correct_rne = _nearest_variant(lambda q, g, st: g & (st | ((q & 1) == 1)))


def all_checks():
    """Run every mismatch-counting check once; return the counts by name."""
    rng = np.random.default_rng(77)
    fmt8 = BFPFormat(8, 16)
    counts = {
        "adversarial w3 b2": adversarial_quantize_mismatches(BFPFormat(3, 2)),
        "adversarial w8 b16": adversarial_quantize_mismatches(fmt8),
        "adversarial w16 b4": adversarial_quantize_mismatches(BFPFormat(16, 4)),
        "adversarial w5 b8 tz": adversarial_quantize_mismatches(BFPFormat(5, 8, "toward-zero")),
        "random clustered": quantize_mismatches(random_clustered(rng, 200, 16), fmt8),
        "mxint8": mxint8_mismatches(np.concatenate([
            tie_blocks(rng, MXINT8, 60).reshape(-1),
            pow2_blocks(rng, 32).reshape(-1)]).reshape(-1, 32)),
        "gemm": gemm_mismatches(tie_blocks(rng, fmt8, 8).reshape(4, 32),
                                tie_blocks(rng, fmt8, 6).reshape(32, 3), fmt8),
        "dot": dot_mismatches(fmt8) + dot_mismatches(BFPFormat(3, 2)),
        "fp32_add": fp32_add_special_mismatches(),
    }
    return counts


def test_unmutated_golden_passes_all_checks():
    counts = all_checks()
    assert counts == dict.fromkeys(counts, 0)


def test_correct_rule_in_mutant_machinery(monkeypatch):
    # guards against mutants that "fail" only because the replacement machinery is broken
    monkeypatch.setattr(quantizer, ROUND_HOOK, correct_rne)
    counts = all_checks()
    assert counts == dict.fromkeys(counts, 0)


@pytest.mark.parametrize("hook, mutant, must_catch", [
    ("_floor_log2", floor_log2_in_floating_point,
     ["adversarial w3 b2", "adversarial w8 b16", "adversarial w16 b4", "mxint8"]),
    (ROUND_HOOK, ties_away,
     ["adversarial w3 b2", "adversarial w8 b16", "adversarial w16 b4", "mxint8", "gemm"]),
    (ROUND_HOOK, sticky_dropped,
     ["adversarial w3 b2", "adversarial w8 b16", "adversarial w16 b4", "mxint8"]),
], ids=["float-log2", "ties-away", "no-sticky"])
def test_mutant_is_caught(monkeypatch, hook, mutant, must_catch):
    assert hasattr(quantizer, hook), f"golden quantizer lost its {hook} hook"
    monkeypatch.setattr(quantizer, hook, mutant)
    counts = all_checks()
    for name in must_catch:
        assert counts[name] > 0, f"{name} did not notice the mutant: {counts}"


_original_product_exponent = arith.product_exponent


def swapped_exponent_sign(ea, eb, fmt, fmt_b=None):
    """Mutant (d): the product exponent uses Ea - Eb (a swapped sign)."""
    ep, nan = _original_product_exponent(ea, eb, fmt, fmt_b)
    eb = np.asarray(eb, dtype=np.int32)
    return np.where(nan, ep, ep - 2 * eb), nan


def nan_not_canonicalized(x):
    """Mutant (e): NaN payloads and signs pass through instead of becoming 0x7FC00000."""
    return np.asarray(x, dtype=np.float32)


@pytest.mark.parametrize("module, hook, mutant, must_catch", [
    (arith, "product_exponent", swapped_exponent_sign, ["dot"]),
    (arith, "canonicalize_nan", nan_not_canonicalized, ["fp32_add"]),
], ids=["swapped-exponent-sign", "nan-payload-kept"])
def test_arith_mutant_is_caught(monkeypatch, module, hook, mutant, must_catch):
    assert hasattr(module, hook), f"golden {module.__name__} lost {hook}"
    monkeypatch.setattr(module, hook, mutant)
    counts = all_checks()
    for name in must_catch:
        assert counts[name] > 0, f"{name} did not notice the mutant: {counts}"


def test_mutant_is_active(monkeypatch):
    """The hooks are really used by golden.quantize (looked up at call time)."""
    x = np.array([[np.nextafter(np.float32(16), np.float32(0)), 1.0]], dtype=np.float32)
    before = golden.quantize(x, BFPFormat(8, 2))
    monkeypatch.setattr(quantizer, "_floor_log2", floor_log2_in_floating_point)
    after = golden.quantize(x, BFPFormat(8, 2))
    assert before.exponents[0, 0] == 3
    assert after.exponents[0, 0] == 4
