"""Bound rule of dense layers (Linear): the exact spectral norm of the weight by a float64 SVD."""

from __future__ import annotations

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import spectral_norm_dense
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Linear, OpType


@RULES.register(OpType.LINEAR)
def bound_linear(node: Node, ctx: RuleContext) -> OpBound:
    """y = x W^T + b over the last axis: on the flattened tensor the map is I (x) W (one copy of W
    per leading index), whose norm is ||W||_2 (the norm of a Kronecker product with I); the bias is
    a translation and changes no difference."""
    match node.op:
        case Linear(weight=weight):
            w = np.asarray(weight)
        case _:
            raise TypeError(f"bound_linear got a {type(node.op).__name__}")
    if w.ndim != 2:
        raise ValueError(f"Linear weight must be 2-D [out, in], got shape {w.shape}")
    if ctx.input_shapes and ctx.input_shapes[0] and ctx.input_shapes[0][-1] != w.shape[1]:
        raise ValueError(f"input shape {ctx.input_shapes[0]} does not end in the weight's {w.shape[1]} inputs")
    upper, lower = spectral_norm_dense(w)
    if lower is None:
        return OpBound(
            upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="non-finite-weights"),
            notes=("weights contain NaN or Inf",),
        )
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="svd"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="svd"),
    )
