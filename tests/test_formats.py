"""Tests of hbfp_hw.formats: validation, derived constants, presets, names, serialization."""

import json

import pytest

from hbfp_hw.formats import (
    BFP8,
    CANONICAL_NAN_BITS,
    DEFAULT_FORMAT,
    MXINT8,
    PRESETS,
    SR_RANDOM_BITS,
    Accumulator,
    BFPFormat,
    FloatFormat,
    Rounding,
    check_operand_formats,
    resolve_format,
    split_accumulator,
)


class TestValidation:
    @pytest.mark.parametrize("w", [2, 3, 8, 15, 16])
    def test_mantissa_bits_accepted(self, w):
        assert BFPFormat(w, 16).mantissa_bits == w

    @pytest.mark.parametrize("w", [0, 1, 17, -8, 100])
    def test_mantissa_bits_range(self, w):
        with pytest.raises(ValueError,
                           match=rf"^mantissa_bits must be between 2 and 16, not {w}$"):
            BFPFormat(w, 16)

    @pytest.mark.parametrize("w", [8.0, "8", None, True, False])
    def test_mantissa_bits_type(self, w):
        with pytest.raises(TypeError,
                           match=r"^mantissa_bits must be an integer, not .+$"):
            BFPFormat(w, 16)

    @pytest.mark.parametrize("n", [1, 2, 4, 16, 32, 64, 1024, 4096])
    def test_block_size_accepted(self, n):
        assert BFPFormat(8, n).block_size == n

    @pytest.mark.parametrize("n", [0, -16, 3, 24, 48, 8192, 4095, 4097])
    def test_block_size_range(self, n):
        with pytest.raises(
                ValueError,
                match=rf"^block_size must be a power of two between 1 and 4096, not {n}$"):
            BFPFormat(8, n)

    def test_block_size_message_example(self):
        # the exact example given in docs/numerics.md section 1
        with pytest.raises(ValueError) as info:
            BFPFormat(8, 24)
        assert str(info.value) == "block_size must be a power of two between 1 and 4096, not 24"

    @pytest.mark.parametrize("n", [16.0, "16", None, True])
    def test_block_size_type(self, n):
        with pytest.raises(TypeError, match=r"^block_size must be an integer, not .+$"):
            BFPFormat(8, n)

    @pytest.mark.parametrize("e", [2, 3, 5, 8])
    def test_exponent_bits_accepted(self, e):
        fmt = BFPFormat(8, 16, exponent_bits=e)
        assert fmt.exponent_bits == e

    @pytest.mark.parametrize("e", [0, 1, 9, 16, -1])
    def test_exponent_bits_range(self, e):
        with pytest.raises(ValueError,
                           match=rf"^exponent_bits must be between 2 and 8, not {e}$"):
            BFPFormat(8, 16, exponent_bits=e)

    @pytest.mark.parametrize("e", [8.0, "8", True])
    def test_exponent_bits_type(self, e):
        with pytest.raises(TypeError, match=r"^exponent_bits must be an integer, not .+$"):
            BFPFormat(8, 16, exponent_bits=e)

    @pytest.mark.parametrize("r, expected", [
        ("nearest-even", Rounding.NEAREST_EVEN),
        ("toward-zero", Rounding.TOWARD_ZERO),
        ("stochastic", Rounding.STOCHASTIC),
        (Rounding.STOCHASTIC, Rounding.STOCHASTIC),
    ])
    def test_rounding_accepted(self, r, expected):
        fmt = BFPFormat(8, 16, r)
        assert fmt.rounding is expected

    @pytest.mark.parametrize("r", ["nearest", "rne", "Nearest-Even", ""])
    def test_rounding_value(self, r):
        with pytest.raises(
                ValueError,
                match=(r"^rounding must be one of 'nearest-even', 'toward-zero', "
                       r"'stochastic', not .+$")):
            BFPFormat(8, 16, r)

    @pytest.mark.parametrize("r", [0, None, 1.5])
    def test_rounding_type(self, r):
        with pytest.raises(TypeError, match=r"^rounding must be a Rounding or a string, not .+$"):
            BFPFormat(8, 16, r)

    def test_frozen(self):
        fmt = BFPFormat(8, 16)
        with pytest.raises(AttributeError):
            fmt.mantissa_bits = 4
        assert fmt.mantissa_bits == 8

    def test_replace_validates(self):
        fmt = BFPFormat(8, 16)
        assert fmt.replace(block_size=32) == BFPFormat(8, 32)
        assert fmt.replace(rounding="stochastic").rounding is Rounding.STOCHASTIC
        with pytest.raises(ValueError, match=r"^block_size must be a power of two"):
            fmt.replace(block_size=3)


class TestDerived:
    @pytest.mark.parametrize("w", range(2, 17))
    def test_mantissa_constants(self, w):
        fmt = BFPFormat(w, 8)
        assert fmt.max_mantissa == 2 ** (w - 1) - 1
        assert fmt.fraction_bits == w - 2

    @pytest.mark.parametrize("e", range(2, 9))
    def test_exponent_constants(self, e):
        fmt = BFPFormat(8, 16, exponent_bits=e)
        bias = 2 ** (e - 1) - 1
        assert fmt.exponent_bias == bias
        assert fmt.min_exponent == -bias
        assert fmt.max_exponent == bias
        assert fmt.nan_exponent == bias + 1
        assert fmt.nan_code == 2 ** e - 1
        # code = E + bias for every block, the NaN block included
        assert fmt.nan_exponent + fmt.exponent_bias == fmt.nan_code
        assert fmt.min_exponent + fmt.exponent_bias == 0

    def test_e8_like_e8m0(self):
        assert (BFP8.min_exponent, BFP8.max_exponent, BFP8.nan_code) == (-127, 127, 255)

    @pytest.mark.parametrize("w, n, bits", [(8, 16, 20), (8, 32, 21), (2, 1, 4), (16, 4096, 44),
                                            (4, 2, 9), (12, 64, 30)])
    def test_product_bits(self, w, n, bits):
        fmt = BFPFormat(w, n)
        assert fmt.product_bits == bits
        # the exact dot product bound N * M^2 fits in a signed word of that width
        assert n * fmt.max_mantissa ** 2 <= 2 ** (bits - 1) - 1

    def test_constants(self):
        assert CANONICAL_NAN_BITS == 0x7FC00000
        assert SR_RANDOM_BITS == 16
        assert FloatFormat.FP32.width == 32
        assert FloatFormat.BF16.width == 16
        assert str(FloatFormat.BF16) == "bf16"
        assert str(Rounding.TOWARD_ZERO) == "toward-zero"


class TestPresets:
    def test_default_is_bfp8(self):
        assert DEFAULT_FORMAT == BFP8 == BFPFormat(8, 16)
        assert (BFP8.mantissa_bits, BFP8.block_size) == (8, 16)
        assert BFP8.rounding is Rounding.NEAREST_EVEN
        assert BFP8.exponent_bits == 8

    def test_mxint8(self):
        assert MXINT8 == BFPFormat(8, 32)
        assert PRESETS["mxint8"] is MXINT8
        assert MXINT8.rounding is Rounding.NEAREST_EVEN
        assert MXINT8.exponent_bits == 8

    @pytest.mark.parametrize("name, w", [("bfp2", 2), ("bfp4", 4), ("bfp6", 6), ("bfp8", 8),
                                         ("bfp12", 12), ("bfp16", 16)])
    def test_bfp_presets(self, name, w):
        fmt = PRESETS[name]
        assert fmt == BFPFormat(w, 16)
        assert fmt.name == name

    def test_preset_set(self):
        integer = {"bfp8", "mxint8", "bfp2", "bfp4", "bfp6", "bfp12", "bfp16"}
        minifloat = {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1",
                     "bm8_e2m5", "bm8_e4m3", "bm6_e2m3", "bm6_e3m2"}
        posits = {"posit8_es0", "posit8_es2", "posit16_es1"}
        assert set(PRESETS) == integer | minifloat | posits
        assert {n for n, f in PRESETS.items() if f.is_minifloat} == minifloat
        assert {n for n, f in PRESETS.items() if f.is_posit} == posits
        for fmt in PRESETS.values():
            assert fmt.rounding is Rounding.NEAREST_EVEN
            assert fmt.exponent_bits == 8


class TestResolve:
    @pytest.mark.parametrize("name", ["bfp8", "BFP8", " bfp8 ", "Bfp8"])
    def test_names(self, name):
        assert resolve_format(name) == BFP8

    @pytest.mark.parametrize("name", ["MXINT8", "mxint8", "MxInt8"])
    def test_mxint8_names(self, name):
        assert resolve_format(name) is MXINT8

    def test_format_passthrough(self):
        fmt = BFPFormat(5, 4, "toward-zero", 4)
        assert resolve_format(fmt) is fmt

    def test_unknown_name(self):
        with pytest.raises(ValueError,
                           match=(r"^fmt must be a BFPFormat or one of the presets bfp8, "
                                  r"mxint8, bfp2, bfp4, bfp6, bfp12, bfp16, mxfp8_e4m3, "
                                  r"mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4_e2m1, bm8_e2m5, "
                                  r"bm8_e4m3, bm6_e2m3, bm6_e3m2, posit8_es0, posit8_es2, "
                                  r"posit16_es1 \(optionally with an "
                                  r"accumulator suffix: _fp32kahan, _bf16rne, _bf16sr, "
                                  r"_exact\), not 'bfp9'$")):
            resolve_format("bfp9")

    @pytest.mark.parametrize("bad", [8, None, 1.0, (8, 16)])
    def test_wrong_type(self, bad):
        with pytest.raises(TypeError,
                           match=r"^fmt must be a BFPFormat or a preset name, not .+$"):
            resolve_format(bad)


class TestNameAndDict:
    @pytest.mark.parametrize("fmt, name", [
        (BFPFormat(8, 16), "bfp8"),
        (BFPFormat(8, 32), "mxint8"),
        (BFPFormat(6, 32), "w6b32"),
        (BFPFormat(6, 32, "toward-zero"), "w6b32_tz"),
        (BFPFormat(8, 16, "stochastic"), "w8b16_sr"),
        (BFPFormat(8, 16, exponent_bits=5), "w8b16e5"),
        (BFPFormat(3, 2, "stochastic", 4), "w3b2e4_sr"),
    ])
    def test_name(self, fmt, name):
        assert fmt.name == name

    def test_names_unique(self):
        fmts = [BFPFormat(w, n, r, e) for w in (2, 8, 16) for n in (1, 16, 4096)
                for r in Rounding for e in (2, 8)]
        assert len({f.name for f in fmts}) == len(fmts)

    @pytest.mark.parametrize("fmt", [BFP8, MXINT8, BFPFormat(2, 1), BFPFormat(16, 4096),
                                     BFPFormat(5, 8, "stochastic", 3),
                                     BFPFormat(12, 64, "toward-zero")])
    def test_round_trip(self, fmt):
        d = fmt.to_dict()
        assert d["mantissa_bits"] == fmt.mantissa_bits
        assert d["block_size"] == fmt.block_size
        assert d["rounding"] == fmt.rounding.value
        assert d["exponent_bits"] == fmt.exponent_bits
        assert d["name"] == fmt.name
        again = BFPFormat.from_dict(json.loads(json.dumps(d)))
        assert again == fmt
        assert hash(again) == hash(fmt)

    def test_from_dict_defaults(self):
        assert BFPFormat.from_dict({"mantissa_bits": 8, "block_size": 16}) == BFP8

    def test_from_dict_validates(self):
        with pytest.raises(ValueError, match=r"^block_size must be a power of two"):
            BFPFormat.from_dict({"mantissa_bits": 8, "block_size": 12})


class TestAccumulator:
    """The accumulator field (docs/numerics.md 6): names, suffixed preset names, dicts."""

    @pytest.mark.parametrize("preset", sorted(n for n, f in PRESETS.items() if not f.is_posit))
    @pytest.mark.parametrize("acc", [a for a in Accumulator if a is not Accumulator.FP32])
    def test_suffixed_names_round_trip(self, preset, acc):
        fmt = PRESETS[preset].replace(accumulator=acc)
        assert fmt.name == f"{preset}_{acc.value.replace('-', '')}"
        assert resolve_format(fmt.name) == fmt and resolve_format(fmt.name.upper()) == fmt
        assert split_accumulator(fmt.name) == (preset, acc)
        assert BFPFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt

    def test_default_keeps_the_old_description(self):
        assert "accumulator" not in BFP8.to_dict()
        assert BFP8.accumulator is Accumulator.FP32
        assert BFPFormat(8, 16, accumulator="fp32") == BFP8
        assert split_accumulator("bfp8") == ("bfp8", Accumulator.FP32)
        assert BFPFormat(6, 8, accumulator="exact").name == "w6b8_exact"

    def test_errors(self):
        with pytest.raises(ValueError, match=r"^accumulator must be one of 'fp32', "
                                             r"'fp32-kahan', 'bf16-rne', 'bf16-sr', 'exact', "
                                             r"not 'fp16'"):
            BFPFormat(8, 16, accumulator="fp16")
        with pytest.raises(TypeError, match=r"^accumulator must be a Accumulator or a string"):
            BFPFormat(8, 16, accumulator=3)
        with pytest.raises(ValueError, match=r"optionally with an accumulator suffix: "
                                             r"_fp32kahan, _bf16rne, _bf16sr, _exact\), not "
                                             r"'bfp8_kahan'"):
            resolve_format("bfp8_kahan")
        with pytest.raises(ValueError, match=r"the same accumulator"):
            check_operand_formats(BFP8, BFP8.replace(accumulator="exact"))
