"""Rules of quantization: rounding to a step is its smooth part (a clip) plus an error of at most half
a step per entry, reported as the jump (OpBound.jump) that the additive term carries to the output."""

from __future__ import annotations

import math

from stabaudit.bounds.base import RULES, Bound, Guarantee, OpBound, RuleContext
from stabaudit.bounds.domain import needs_domain
from stabaudit.ir.graph import Node
from stabaudit.ir.ops import DynamicQuantize, OpType, Quantize, QuantPart

METHOD = "quantization-step"
# The engine rounds x to float32, divides by s in float32 and, for the dequantized value, multiplies
# (q - zp) * s in float32 (then widens exactly): three roundings of relative error <= 2^-24 each
# on magnitudes <= (R + 1) steps; 2^-22 (R + 1) steps covers them with room.
ROUNDING = 2.0**-22


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def entry_error(scale: float, zero_point: float, qmin: int, qmax: int) -> float:
    """An upper bound of |q(x) - clip(x)| for one entry quantized with step ``scale`` (q the engine's
    quantize-dequantize, clip its smooth part): half a step, plus the float rounding of t = x / s and
    of (q - zp) s in float32, each <= 2^-24 s (R + 1) with R = max |q - zp| over the integer range (where
    |t| > R + 1 the rounded t is still beyond the range, float division being monotone, and both
    saturate to the same end)."""
    reach = max(abs(qmin - zero_point), abs(qmax - zero_point)) + 1.0
    return _up(scale * _up(0.5 + ROUNDING * reach))


def dynamic_step_error(span: float) -> float:
    """An upper bound of |q(x) - x| per entry of a dynamic quantization (DynamicQuantizeLinear, then
    DequantizeLinear) of a tensor whose values lie in an interval of length ``span`` (containing 0):
    half its step s = span / 255, plus the float32 rounding of x, of s, of x / s and of (q - zp) s,
    each below 2^-24 of at most 256 steps: s (1/2 + 2^-12) covers them."""
    if not math.isfinite(span):
        return math.inf
    return _up(_up(span / 255.0) * (0.5 + 2.0**-12))


def _infinite(why: str) -> OpBound:
    return OpBound(upper=Bound(value=math.inf, guarantee=Guarantee.UPPER, method="non-finite-parameter"), notes=(why,))


@RULES.register(OpType.QUANTIZE)
def bound_quantize(node: Node, ctx: RuleContext) -> OpBound:
    """q(x) = s (clamp(round(x / s) + zp, qmin, qmax) - zp) per entry (or the integer itself).

    Smooth part: c(x) = s (clamp(x / s + zp, qmin, qmax) - zp) = clip(x, s (qmin - zp), s (qmax - zp)),
    1-Lipschitz (|clip(a) - clip(b)| <= |a - b|) with slope exactly 1 inside the range (qmin < qmax):
    upper = lower = 1. Error e = q - c: zp is an integer, so |e| = s |clamp(round(t) + zp) - clamp(t + zp)|
    <= s |round(t) - t| <= s / 2 with t = x / s (clamp is 1-Lipschitz), everywhere, saturated entries
    included; entry_error adds the float rounding. So ||e(u)||_2 <= sqrt(sum_j err_j^2) = jump. The
    integer output is c / s + zp plus e / s: upper = lower = 1 / min s, error 1/2 per entry.
    """
    match node.op:
        case Quantize(scale=scale, zero_point=zero, qmin=qmin, qmax=qmax, integer=integer, smooth=smooth):
            if not all(math.isfinite(s) and s > 0.0 for s in scale) or not all(map(math.isfinite, zero)):
                return _infinite("a quantization step is not a positive finite number")
            n = math.prod(ctx.output_shape)
            if n == 0 or qmin >= qmax:
                return OpBound(upper=Bound(value=0.0, guarantee=Guarantee.UPPER, method=METHOD),
                               lower=Bound(value=0.0, guarantee=Guarantee.LOWER, method=METHOD))
            per = n // len(scale)  # entries per step (per axis: per index of the axis)
            if integer:
                gain = _up(1.0 / min(scale))
                low = 1.0 / min(scale) * (1 - 2.0**-52)
                errors = [entry_error(1.0, z, qmin, qmax) for z in zero]
            else:
                gain, low = 1.0, 1.0
                errors = [entry_error(s, z, qmin, qmax) for s, z in zip(scale, zero, strict=True)]
            jump = 0.0 if smooth else _up(_up(math.sqrt(math.fsum(per * e * e for e in errors))) * (1 + 2.0**-50))
            return OpBound(
                upper=Bound(value=gain, guarantee=Guarantee.UPPER, method=METHOD),
                lower=Bound(value=low, guarantee=Guarantee.LOWER, method=METHOD),
                jump=jump,
                notes=(f"rounding to steps of {min(scale):.6g}..{max(scale):.6g}: the clip plus an error "
                       f"of at most half a step per entry (<= {jump:.6g} in L2 over the {n} entries)",),
            )
    raise TypeError(f"bound_quantize got a {type(node.op).__name__}")


@RULES.register(OpType.DYNAMIC_QUANTIZE)
def bound_dynamic_quantize(node: Node, ctx: RuleContext) -> OpBound:
    """The dequantized part is x + e with |e_j| <= s / 2 and s = (max(0, max x) - min(0, min x)) / 255
    (docs/operators.md): the identity (upper = lower = 1) with a jump of sqrt(n) s / 2, finite only
    over a bounded range of x, so infinite here. The integer, step and zero point grow with 1 / s or
    jump: Lipschitz only over a domain."""
    match node.op:
        case DynamicQuantize(part=QuantPart.DEQUANTIZED, smooth=smooth):
            return OpBound(
                upper=Bound(value=1.0, guarantee=Guarantee.UPPER, method=METHOD),
                lower=Bound(value=1.0, guarantee=Guarantee.LOWER, method=METHOD),
                jump=0.0 if smooth else math.inf,
                notes=("dynamic quantization: the identity plus an error of at most (max x - min x) / 510 per "
                       "entry, bounded only over a bounded range of x",),
            )
        case DynamicQuantize(part=part):
            return needs_domain(node, ctx, f"the {part.value} of a dynamic quantization depends on the range "
                                           "of its input, not Lipschitz on the whole space")
    raise TypeError(f"bound_dynamic_quantize got a {type(node.op).__name__}")
