"""The numpy golden model: the executable form of docs/numerics.md.

Every other implementation (RTL, PyTorch emulation, device) is checked against these
functions bit for bit.
"""

from hbfp_hw.golden.arith import (
    CANONICAL_NAN,
    accumulate,
    bits_to_f32,
    canonicalize_nan,
    check_operand_formats,
    dot,
    f32_to_bits,
    fp32_add,
    int_dot,
    product_exponent,
    round_int_to_float32,
    to_float32,
)
from hbfp_hw.golden.prng import lane_seeds, lane_states, random_bits, xorshift32
from hbfp_hw.golden.products import float32_blas_exact, gemm, gemm_quantized
from hbfp_hw.golden.quantizer import BFPTensor, quantize, to_bf16

__all__ = [
    "BFPTensor",
    "quantize",
    "to_bf16",
    "dot",
    "gemm",
    "gemm_quantized",
    "float32_blas_exact",
    "int_dot",
    "product_exponent",
    "check_operand_formats",
    "round_int_to_float32",
    "to_float32",
    "fp32_add",
    "accumulate",
    "canonicalize_nan",
    "f32_to_bits",
    "bits_to_f32",
    "CANONICAL_NAN",
    "xorshift32",
    "lane_seeds",
    "lane_states",
    "random_bits",
]
