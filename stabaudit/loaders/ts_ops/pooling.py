"""Translators of TorchScript's pooling: max/avg pools, adaptive pools, global means."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stabaudit.ir import ops as O
from stabaudit.ir.maps import adaptive_average_weight
from stabaudit.loaders.ts_ops.base import (
    Context,
    Opaque,
    SourceNode,
    Unsupported,
    Var,
    int_list,
    is_float_dtype,
    norm_axis,
    translates,
)
from stabaudit.loaders.ts_ops.linear import linear_along


def _spatial(node: SourceNode, x: Var) -> int:
    n = int(node.kind[-2])  # "..._pool2d" -> 2
    if x.rank != n + 2:
        raise Unsupported(f"rank-{x.rank} input (only batched rank-{n + 2} inputs)")
    return n


def _indices(node: SourceNode) -> list[Any]:
    """The second output (indices) of *_with_indices / adaptive_max_pool: an error only if used."""
    return [Opaque(kind=node.kind, detail="its indices are used")] if len(node.out_shapes) > 1 else []


@translates(
    "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d",
    "aten::max_pool1d_with_indices", "aten::max_pool2d_with_indices", "aten::max_pool3d_with_indices",
)
def max_pool(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    n = int(node.kind.split("max_pool", 1)[1][0])
    if x.rank != n + 2:
        raise Unsupported(f"rank-{x.rank} input")
    kernel = int_list(node.arg("kernel_size"), n, what="kernel_size")
    stride_value = node.arg("stride", [])
    strides = kernel if not stride_value else int_list(stride_value, n, what="stride")
    pads = int_list(node.arg("padding", 0), n, what="padding")
    dilations = int_list(node.arg("dilation", 1), n, what="dilation")
    op = O.MaxPool(
        kernel=kernel, strides=strides, pads=pads + pads, dilations=dilations,
        ceil_mode=bool(node.arg("ceil_mode", False)),
    )
    return [ctx.emit(op, [x]), *_indices(node)]


@translates("aten::avg_pool1d", "aten::avg_pool2d", "aten::avg_pool3d")
def avg_pool(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    n = _spatial(node, x)
    if node.arg("divisor_override") is not None:
        raise Unsupported("divisor_override")
    kernel = int_list(node.arg("kernel_size"), n, what="kernel_size")
    stride_value = node.arg("stride", [])
    strides = kernel if not stride_value else int_list(stride_value, n, what="stride")
    pads = int_list(node.arg("padding", 0), n, what="padding")
    op = O.AvgPool(
        kernel=kernel, strides=strides, pads=pads + pads, dilations=(1,) * n,
        ceil_mode=bool(node.arg("ceil_mode", False)),
        count_include_pad=bool(node.arg("count_include_pad", True)),
    )
    return [ctx.emit(op, [x])]


def _adaptive(ctx: Context, node: SourceNode, *, is_max: bool) -> Sequence[Any]:
    x = node.var(0)
    n = _spatial(node, x)
    out = int_list(node.arg("output_size"), n, what="output_size")
    spatial = x.shape[2:]
    rest = _indices(node) if is_max else []
    if all(o == 1 for o in out):
        op: O.Op = O.GlobalMaxPool() if is_max else O.GlobalAvgPool()
        return [ctx.emit(op, [x]), *rest]
    if any(o <= 0 for o in out):
        raise Unsupported(f"output size {list(out)}")
    if any(s % o for s, o in zip(spatial, out, strict=True)):
        if is_max:
            raise Unsupported(f"output size {list(out)} does not divide input size {list(spatial)}")
        # windows of unequal sizes (and overlapping): one averaging matrix per spatial axis
        y = x
        for k, (s, o) in enumerate(zip(spatial, out, strict=True)):
            if s != o:
                y = linear_along(ctx, y, 2 + k, adaptive_average_weight(s, o), role=f"axis{2 + k}")
        return [y]
    # equal, non-overlapping windows: kernel = stride = in / out
    kernel = tuple(s // o for s, o in zip(spatial, out, strict=True))
    zeros, ones = (0,) * (2 * n), (1,) * n
    if is_max:
        op = O.MaxPool(kernel=kernel, strides=kernel, pads=zeros, dilations=ones)
    else:
        op = O.AvgPool(kernel=kernel, strides=kernel, pads=zeros, dilations=ones)
    return [ctx.emit(op, [x]), *rest]


@translates("aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool3d")
def adaptive_avg_pool(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return _adaptive(ctx, node, is_max=False)


@translates("aten::adaptive_max_pool1d", "aten::adaptive_max_pool2d", "aten::adaptive_max_pool3d")
def adaptive_max_pool(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return _adaptive(ctx, node, is_max=True)


@translates("aten::mean")
def mean(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """x.mean(dim=spatial axes) -> GlobalAvgPool (+ Reshape when keepdim is false); a mean over
    any other dims (none given: all of them) -> ReduceMean."""
    x = node.var(0)
    if not is_float_dtype(node.arg("dtype")):
        raise Unsupported("a non-float dtype")
    dims = node.arg("dim")
    items = [dims] if isinstance(dims, int) else list(dims or [])
    axes = sorted({norm_axis(int(d), x.rank) for d in items}) if items else list(range(x.rank))
    if items and len(axes) != len(items):
        raise Unsupported("repeated dims")
    keepdim = bool(node.arg("keepdim", False))
    if x.rank < 3 or axes != list(range(2, x.rank)):
        if any(x.shape[a] == 0 for a in axes):
            raise Unsupported("a mean over an empty dim")
        return [ctx.emit(O.ReduceMean(axes=tuple(axes), keepdims=keepdim), [x])]
    y = ctx.emit(O.GlobalAvgPool(), [x])
    if keepdim:
        return [y]
    return [ctx.emit(O.Reshape(shape=x.shape[:2]), [y], role="squeeze")]
