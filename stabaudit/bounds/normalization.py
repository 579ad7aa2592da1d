"""Bound rule of element-wise affine maps (Affine: folded BatchNorm, Mul/Div/Add by constants)."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import EPS
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Affine, OpType


def broadcast_copy_gain(scale: np.ndarray | None, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[float, bool]:
    """(max over input entries j of sqrt(sum over the output copies c of j of scale_c^2), exact?).

    y = x * scale (+ shift) with numpy broadcasting: each input entry x_j lands in r >= 1 output entries (r > 1
    only where the output is larger than the input) with its own factors scale_c, so
    A^T A = diag_j(sum_c scale_c^2) and ||A||_2 = sqrt(max_j sum_c scale_c^2) exactly. Without
    expansion (r = 1) this is max |scale| over the broadcast shape, computed without rounding.
    """
    s = np.ones(()) if scale is None else np.asarray(scale, dtype=np.float64)
    # the output shape decides: a shift may broadcast the result beyond x * scale
    full = np.broadcast_shapes(tuple(in_shape), s.shape, tuple(out_shape))
    if tuple(out_shape) and full != tuple(out_shape):
        raise ValueError(f"Affine output {out_shape} is not the broadcast of input {in_shape} and scale {s.shape}")
    sb = np.broadcast_to(s, full)
    if sb.size == 0:
        return 0.0, True
    if full == tuple(in_shape):
        return float(np.max(np.abs(sb))), True
    # axes along which the input is repeated: sum the squares over its copies
    lead = len(full) - len(in_shape)
    padded_in = (1,) * lead + tuple(in_shape)
    axes = tuple(i for i, (a, b) in enumerate(zip(padded_in, full, strict=True)) if a == 1 and b != 1)
    sums = np.sum(sb * sb, axis=axes)
    return float(np.sqrt(np.max(sums))), False


@RULES.register(OpType.AFFINE)
def bound_affine(node: Node, ctx: RuleContext) -> OpBound:
    """A diagonal map (the shift is a translation): Lip = max |scale| over the input's shape,
    exact for the stored float64 values (upper = lower; scale None means 1)."""
    match node.op:
        case Affine(scale=scale):
            pass
        case _:
            raise TypeError(f"bound_affine got a {type(node.op).__name__}")
    in_shape = ctx.input_shapes[0]
    if scale is not None and not np.all(np.isfinite(np.asarray(scale, dtype=np.float64))):
        return OpBound(
            upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-scale"),
            notes=("scale contains NaN or Inf",),
        )
    gain, exact = broadcast_copy_gain(scale, in_shape, ctx.output_shape)
    if exact:
        # a maximum of absolute values of float64 numbers is computed without rounding
        upper, lower = gain, gain
    else:
        # a sum of r squares and a sqrt: relative error <= (r + 2) * EPS (Higham Lemma 3.1)
        r = max(1, int(np.prod(ctx.output_shape)) // max(1, int(np.prod(in_shape))))
        upper = gain * (1.0 + (r + 4) * EPS)
        lower = gain * (1.0 - (r + 4) * EPS)
    return OpBound(
        upper=Bound(value=upper, guarantee=Guarantee.UPPER, method="exact-diagonal"),
        lower=Bound(value=lower, guarantee=Guarantee.LOWER, method="exact-diagonal"),
    )
