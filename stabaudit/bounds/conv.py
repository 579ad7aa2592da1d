"""Bound rules of convolutions (Conv, ConvTranspose): exact dense or certified circulant upper, power-iteration lower."""

from __future__ import annotations

import math

import numpy as np

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.numerics import (
    CIRCULANT_BUDGET,
    DENSE_BUDGET,
    conv_norm_certified,
    conv_output_size,
    conv_power,
)
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import Conv, ConvTranspose, OpType


def _spatial(shape: tuple[int, ...], ndim: int, what: str) -> tuple[int, ...]:
    if len(shape) != ndim + 2:
        raise ValueError(f"{what} shape {shape} is not [batch, channels, {ndim} spatial dims]")
    return tuple(int(n) for n in shape[2:])


def _result(
    upper_value: float, upper_method: str, notes: tuple[str, ...], lower: float | None, lower_method: str
) -> OpBound:
    if not math.isfinite(upper_value):
        return OpBound(
            upper=Bound(value=upper_value, guarantee=Guarantee.UPPER, method=upper_method),
            notes=(*notes, "no lower bound: the weights are not finite"),
        )
    if lower is not None and lower > upper_value:  # impossible unless a bound is wrong
        raise ArithmeticError(f"certified lower {lower!r} exceeds certified upper {upper_value!r}")
    return OpBound(
        upper=Bound(value=upper_value, guarantee=Guarantee.UPPER, method=upper_method),
        lower=None if lower is None else Bound(value=lower, guarantee=Guarantee.LOWER, method=lower_method),
        notes=notes,
    )


# Power iterations from a warm start (the top singular vector of the worst circulant frequency
# block, mapped to the real input): it starts near the top of the spectrum, so a few steps suffice;
# the lower bound stays sound for any vector (||A|| >= ||A v|| / ||v||), only its tightness varies.
WARM_ITERATIONS = 12


# the dense methods' flops under ``BoundSettings.quick`` (a few tens of milliseconds)
QUICK_DENSE_BUDGET = 1e8


def _budgets(ctx: RuleContext) -> tuple[float, float]:
    """``conv_norm_certified``'s (circulant, dense) flop budgets; under ``BoundSettings.quick``: no
    circulant certificate, the exact dense norm of small layers only, else the cheaper bounds
    (unfolded coverage, tap sum)."""
    return (0.0, QUICK_DENSE_BUDGET) if ctx.settings.quick else (CIRCULANT_BUDGET, DENSE_BUDGET)


def _iterations(ctx: RuleContext, start: np.ndarray | None) -> int:
    return ctx.settings.power_iterations if start is None else min(ctx.settings.power_iterations, WARM_ITERATIONS)


@RULES.register(OpType.CONV)
def bound_conv(node: Node, ctx: RuleContext) -> OpBound:
    """||conv||_2 at the model's input shape, stride/padding/dilation/groups included.

    Upper: ``conv_norm_certified``: the exact explicit matrix for small layers ("dense-svd", which
    gives the lower bound too), else the circulant embedding (the real operator is P C_circ E, so
    ||conv|| <= ||C_circ||), certified per frequency block ("circulant-cholesky": Gram matrices and
    shifted-Cholesky certificates). Lower otherwise: ||A v|| / ||v|| for the power-iteration vector
    v, its float rounding removed (any v gives ||A|| >= ||A v|| / ||v||: a sound lower bound),
    warm-started at the worst frequency block's top singular vector ("power-iteration-warm",
    ``WARM_ITERATIONS`` steps at most).
    """
    match node.op:
        case Conv(
            weight=weight, strides=strides, pads=pads, dilations=dilations, groups=groups, error=error
        ):
            pass
        case _:
            raise TypeError(f"bound_conv got a {type(node.op).__name__}")
    spatial = _spatial(ctx.input_shapes[0], len(strides), "Conv input")
    if ctx.input_shapes[0][1] != np.asarray(weight).shape[1] * groups:
        raise ValueError(f"Conv input {ctx.input_shapes[0]} has not {np.asarray(weight).shape[1] * groups} channels")
    budget, dense_budget = _budgets(ctx)
    cert = conv_norm_certified(weight, strides, pads, dilations, groups, spatial, device=ctx.settings.device,
                               budget=budget, dense_budget=dense_budget)
    lower, lower_method = cert.lower, cert.method
    if lower is None and math.isfinite(cert.upper) and not ctx.settings.quick:
        lower_method = "power-iteration" if cert.start_in is None else "power-iteration-warm"
        lower = conv_power(
            weight, strides, pads, dilations, groups, spatial,
            seed=ctx.settings.seed, iterations=_iterations(ctx, cert.start_in), device=ctx.settings.device,
            start=cert.start_in,
        ).lower
    upper, method = cert.upper, cert.method
    if error > 0.0:  # merged maps: Weyl, | ||A|| - ||conv(W)|| | <= error
        upper = math.nextafter(upper + error, math.inf)
        lower = None if lower is None else max(0.0, lower - error)
        method = f"{method} of the merged maps"
    return _result(upper, method, cert.notes, lower, lower_method)


@RULES.register(OpType.CONV_TRANSPOSE)
def bound_conv_transpose(node: Node, ctx: RuleContext) -> OpBound:
    """||conv_transpose||_2 through its adjoint.

    The executor's ConvTranspose T (full transposed conv, then crop pads, output_padding appended)
    satisfies T^T = P A, where A is the Conv with the *same* weight array (read as
    [C_out_A = C_in_T, C_in_A/groups = C_out_T/groups, k...]), strides, pads, dilations and groups
    at input size n_out = T's output size, and P keeps A's first n_in outputs per axis (A has
    n_in + floor(output_padding / stride) of them: P = I when output_padding < stride). Hence
    ||T|| = ||T^T|| = ||P A|| <= ||A|| (equality when output_padding < stride): the dense method
    computes ||P A|| exactly, the circulant and fallback bounds of A apply as they are. Without a
    dense lower bound, the lower bound is power iteration on T itself.
    """
    match node.op:
        case ConvTranspose(
            weight=weight, strides=strides, pads=pads, dilations=dilations, groups=groups, output_padding=opad
        ):
            pass
        case _:
            raise TypeError(f"bound_conv_transpose got a {type(node.op).__name__}")
    d = len(strides)
    spatial_in = _spatial(ctx.input_shapes[0], d, "ConvTranspose input")
    spatial_out = _spatial(ctx.output_shape, d, "ConvTranspose output")
    w = np.asarray(weight)
    for i in range(d):
        expected = (spatial_in[i] - 1) * strides[i] + dilations[i] * (w.shape[2 + i] - 1) + 1 - pads[i] - pads[i + d] + opad[i]
        if expected != spatial_out[i]:
            raise ValueError(f"ConvTranspose output size {spatial_out} does not match its attributes (axis {i}: {expected})")
        n_adj = conv_output_size(spatial_out[i], w.shape[2 + i], strides[i], pads[i], pads[i + d], dilations[i])
        if n_adj < spatial_in[i]:  # cannot happen for output_padding >= 0; guards the adjoint identity
            raise ValueError("ConvTranspose adjoint has fewer outputs than the ConvTranspose has inputs")
    # keep_outputs=spatial_in: the operator is exactly P A = T^T (dense-svd is then exact for T)
    budget, dense_budget = _budgets(ctx)
    cert = conv_norm_certified(
        weight, strides, pads, dilations, groups, spatial_out, keep_outputs=spatial_in, device=ctx.settings.device,
        budget=budget, dense_budget=dense_budget,
    )
    lower, lower_method = cert.lower, cert.method
    if lower is None and math.isfinite(cert.upper) and not ctx.settings.quick:
        # T's input space is A's output space: A's left singular vector starts T's iteration
        lower_method = "power-iteration" if cert.start_out is None else "power-iteration-warm"
        lower = conv_power(
            weight, strides, pads, dilations, groups, spatial_in,
            seed=ctx.settings.seed, iterations=_iterations(ctx, cert.start_out), device=ctx.settings.device,
            transpose=True, output_padding=opad, start=cert.start_out,
        ).lower
    return _result(cert.upper, cert.method, cert.notes, lower, lower_method)
