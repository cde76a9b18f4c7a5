"""Scaled dot-product attention with HBFP matrix products.

:func:`attention` has the semantics of ``torch.nn.functional.scaled_dot_product_attention``
(its reference implementation in the PyTorch documentation), with the two matrix products as
HBFP GEMMs (forward and backward):

1. ``scores = HBFP(q @ k^T)``, then ``* scale`` in FP32 (``scale`` defaults to
   ``1 / sqrt(E)``, ``E = q.size(-1)``);
2. the mask in FP32: a boolean mask (``True`` = take part) or ``is_causal`` sets the other
   scores to ``-inf``; a float mask is added;
3. ``softmax`` over the last dimension and dropout, in FP32;
4. ``out = HBFP(weights @ v)``.

With ``enable_gqa`` the key and value heads are repeated to the query heads first. Everything
but the two products is FP32 glue, as in HBFP.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention"]


def attention(matmul, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False):
    """Scaled dot-product attention whose two products are ``matmul(a, b)`` (an HBFP matmul).

    Arguments as for ``torch.nn.functional.scaled_dot_product_attention``.
    """
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(f"q, k and v must have at least 2 dimensions, not shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    length, source = q.size(-2), k.size(-2)
    if enable_gqa and q.dim() >= 3 and k.size(-3) != q.size(-3):
        groups = q.size(-3) // k.size(-3)
        k = k.repeat_interleave(groups, dim=-3)
        v = v.repeat_interleave(groups, dim=-3)
    factor = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = matmul(q, k.transpose(-2, -1)) * factor
    if is_causal:
        if attn_mask is not None:
            raise ValueError("attn_mask must be None when is_causal is set")
        keep = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = torch.dropout(weights, dropout_p, train=True)
    return matmul(weights, v)
