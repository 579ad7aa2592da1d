"""Translators of Add, Sub, Mul, Div, Neg and Sum (residual sums, affine maps by constants, products
and quotients of variables) and of the element-wise Pow, Sqrt, Reciprocal, Exp, Log and Erf."""

from __future__ import annotations

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.parameters import Term
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    broadcast_var,
    fits,
    register,
)

_MINUS_ONE = np.array(-1.0)


def _affine(node: OnnxNode, ctx: Context, var: str, scale: np.ndarray | None, shift: np.ndarray | None,
            bind: tuple[str, list[Term | None]] | None = None) -> None:
    """Emit y = var * scale + shift, refusing constants that would enlarge the variable's shape;
    ``bind`` = (field, terms) records the training parameter the constant is."""
    shape = ctx.shape(var)
    for constant in (scale, shift):
        if constant is not None and not fits(constant, shape):
            var = _broadcast(node, ctx, var, constant)
            shape = ctx.shape(var)
    y = ctx.emit(node, O.Affine(scale=scale, shift=shift), [var])
    if bind is not None:
        ctx.bind(y, *bind)


def _broadcast(node: OnnxNode, ctx: Context, var: str, constant: np.ndarray) -> str:
    """The variable copied to the broadcast shape of itself and ``constant`` (numpy rules)."""
    shape = ctx.shape(var)
    try:
        target = tuple(np.broadcast_shapes(tuple(shape), constant.shape))
    except ValueError:
        raise Unsupported(f"{node.op_type}(constant of shape {list(constant.shape)} does not broadcast "
                          f"to the input's {list(shape)})") from None
    return broadcast_var(node, ctx, var, target, tag="broadcast")


def _is_bias(ctx: Context, var: str) -> bool:
    """An Add right after a linear map: its constant is that layer's bias (exports of MatMul + Add)."""
    return ctx.producer_op(var) in (O.OpType.LINEAR, O.OpType.CONV, O.OpType.CONV_TRANSPOSE)


@register("Add", "Sub", "Mul", "Div")
def binary(node: OnnxNode, ctx: Context) -> None:
    """Two variables: Add/Sub/Mul IR nodes; one constant c: an Affine map, computed in float64.

    x + c, c + x: shift c; x - c: shift -c; c - x: scale -1, shift c; x * c, c * x: scale c;
    x / c: scale 1/c (rounded once, in float64).
    """
    a, b = node.inputs[0], node.inputs[1]
    ca, cb = ctx.const(a), ctx.const(b)
    op = node.op_type
    if op == "Mul" and _dequantization(node, ctx):
        return
    if ca is None and cb is None:
        ctx.emit(node, {"Add": O.Add(), "Sub": O.Sub(), "Mul": O.Mul(), "Div": O.Div()}[op], [a, b])
        return
    constant_first = ca is not None
    var = b if constant_first else a
    c = np.asarray(ca if constant_first else cb, dtype=np.float64)
    index = 0 if constant_first else 1
    # training parameters by default: the bias of an Add after a linear map; any other constant
    # (normalisation, scales) only when the config's training.parameters lists it
    match op, constant_first:
        case "Add", _:
            role = "bias" if _is_bias(ctx, var) else "shift"
            _affine(node, ctx, var, None, c,
                    ("shift", [ctx.term(node, index, role, default=role == "bias")]))
        case "Sub", False:
            _affine(node, ctx, var, None, -c, ("shift", [ctx.term(node, index, "shift", default=False, coefficient=-1.0)]))
        case "Sub", True:
            _affine(node, ctx, var, _MINUS_ONE, c, ("shift", [ctx.term(node, index, "shift", default=False)]))
        case "Mul", _:
            _affine(node, ctx, var, c, None, ("scale", [ctx.term(node, index, "scale", default=False)]))
        case "Div", False:
            with np.errstate(divide="ignore", over="ignore"):  # 1/0 and 1/subnormal: inf, no bound
                _affine(node, ctx, var, 1.0 / c, None)
        case _:
            raise Unsupported("Div(constant / variable)")
    if op == "Mul" and ctx.resolve(var) in ctx.step_products:
        step, factor = ctx.step_products[ctx.resolve(var)]
        ctx.step_products[ctx.var(node.outputs[0])] = (step, factor * c)


def _dequantization(node: OnnxNode, ctx: Context) -> bool:
    """An integer product of dynamically quantized values (ctx.rescaled: v / s, s the data's step)
    times s c (ctx.step_products: the step times a constant, the weight's scale): v c, an Affine
    map of v; the step cancels. Whether the node was translated so."""
    a, b = (ctx.resolve(n) for n in node.inputs[:2])
    for first, second in ((a, b), (b, a)):
        rescaled, product = ctx.rescaled.get(first), ctx.step_products.get(second)
        if rescaled is not None and product is not None and rescaled.step == product[0]:
            _affine(node, ctx, rescaled.var, np.asarray(product[1], dtype=np.float64), None)
            return True
    return False


@register("Neg")
def neg(node: OnnxNode, ctx: Context) -> None:
    _affine(node, ctx, node.inputs[0], _MINUS_ONE, None)


@register("Sum")
def sum_(node: OnnxNode, ctx: Context) -> None:
    """Sum of variables (a chain of Add nodes) plus the sum of any constant operands as a shift."""
    variables = [name for name in node.present_inputs if not ctx.is_const(name)]
    constants = [np.asarray(ctx.const(name), dtype=np.float64) for name in node.present_inputs if ctx.is_const(name)]
    shift = sum(constants[1:], constants[0]) if constants else None
    if len(variables) == 1 and shift is None:
        ctx.alias(node, variables[0])
        return
    total = variables[0]
    for i, other in enumerate(variables[1:], start=1):
        last = i == len(variables) - 1 and shift is None
        total = ctx.emit(node, O.Add(), [total, other], tag=None if last else f"sum{i}")
    if shift is not None:
        _affine(node, ctx, total, None, shift)


_UNARY: dict[str, type[O.Op]] = {"Sqrt": O.Sqrt, "Reciprocal": O.Reciprocal, "Exp": O.Exp, "Log": O.Log, "Erf": O.Erf,
                               "Sin": O.Sin, "Cos": O.Cos}


@register(*_UNARY)
def unary(node: OnnxNode, ctx: Context) -> None:
    """sqrt, 1/x, exp, log (bounded only over a domain), erf (Lipschitz, 2/sqrt(pi)), sin and cos
    (Lipschitz, 1)."""
    ctx.emit(node, _UNARY[node.op_type](), [node.inputs[0]])


@register("Pow")
def pow_(node: OnnxNode, ctx: Context) -> None:
    """x ** p with one constant exponent p: 1 is the identity, 0.5 is Sqrt, -1 is Reciprocal, and
    p >= 1 (x^2 of variances, x^3 of tanh GELU) a Pow node; other exponents are refused."""
    if ctx.const(node.inputs[0]) is not None:
        raise Unsupported("Pow(constant ** variable)")
    exponent = ctx.const(node.inputs[1])
    if exponent is None:
        raise Unsupported("Pow(variable ** variable)")
    e = np.asarray(exponent, dtype=np.float64)
    if e.size != 1 or not np.isfinite(e).all():
        raise Unsupported("Pow(exponent not one finite number)")
    p = float(e.reshape(-1)[0])
    if p == 1.0:
        ctx.alias(node, node.inputs[0])
    elif p == 0.5:
        ctx.emit(node, O.Sqrt(), [node.inputs[0]])
    elif p == -1.0:
        ctx.emit(node, O.Reciprocal(), [node.inputs[0]])
    elif p > 1.0:
        ctx.emit(node, O.Pow(exponent=p), [node.inputs[0]])
    else:
        raise Unsupported(f"Pow(exponent {p:g})")
