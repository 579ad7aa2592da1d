"""Translators of torch's interpolation (F.interpolate, nn.Upsample) into ops.Resize.

torch's source coordinate of output index y on an axis of input length n and output length m is
y * r (nearest), (y + 0.5) * r (nearest-exact) or (y + 0.5) * r - 0.5 (linear and cubic), with
r = 1 / scale_factor when the call gives one and n / m otherwise; (n - 1) / (m - 1) with
align_corners. These are ONNX's asymmetric/floor, half_pixel/round_prefer_ceil, half_pixel and
align_corners transformations at the scale 1 / r; neighbours outside the input read the edge in
both, and torch's bicubic uses a = -0.75 as ONNX's default does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stabaudit.ir import ops as O
from stabaudit.loaders.onnx_ops.resize import MAX_AXIS_ENTRIES
from stabaudit.loaders.ts_ops.base import Context, SourceNode, Unsupported, translates

_MODES = {
    "upsample_nearest1d": "nearest", "upsample_nearest2d": "nearest", "upsample_nearest3d": "nearest",
    "_upsample_nearest_exact1d": "nearest_exact", "_upsample_nearest_exact2d": "nearest_exact",
    "_upsample_nearest_exact3d": "nearest_exact",
    "upsample_linear1d": "linear", "upsample_bilinear2d": "linear", "upsample_trilinear3d": "linear",
    "upsample_bicubic2d": "cubic",
}


def _scale_factors(node: SourceNode, spatial: int) -> list[float | None]:
    """The scale factors the call gives (None where it gives none), one per spatial axis."""
    if "scale_factors" in node.arg_names:
        given = node.arg("scale_factors")
        return [None] * spatial if given is None else [float(s) for s in given]
    names = [n for n in node.arg_names if n.startswith("scales")]
    return [None if node.arg(n) is None else float(node.arg(n)) for n in names] or [None] * spatial


@translates(*(f"aten::{name}" for name in _MODES))
def interpolate(ctx: Context, node: SourceNode) -> Sequence[Any]:
    x = node.var(0)
    out = node.out_shape(0)
    spatial = len(out) - 2
    kind = _MODES[node.base if node.base in _MODES else node.kind.split("::", 1)[-1]]
    align = bool(node.arg("align_corners", False)) if kind in ("linear", "cubic") else False
    given = _scale_factors(node, spatial)
    if len(given) != spatial:
        raise Unsupported(f"{len(given)} scale factors for {spatial} spatial axes")
    axes: list[int] = []
    ins: list[int] = []
    sizes: list[int] = []
    scales: list[float] = []
    for i in range(spatial):
        a, n, m = 2 + i, x.shape[2 + i], out[2 + i]
        factor = given[i]
        s = m / n if align or factor is None or not factor > 0 else factor
        if m == n and s == 1.0:
            continue
        if not math.isfinite(s):
            raise Unsupported(f"scale factor {factor}")
        axes.append(a)
        ins.append(n)
        sizes.append(m)
        scales.append(s)
    if not axes:
        return [x]
    if any(m * n > MAX_AXIS_ENTRIES for m, n in zip(sizes, ins, strict=True)):
        raise Unsupported("an axis whose interpolation matrix has more than 2^24 entries")
    match kind:
        case "nearest":
            mode, ctm, nearest = "nearest", "asymmetric", "floor"
        case "nearest_exact":
            mode, ctm, nearest = "nearest", "half_pixel", "round_prefer_ceil"
        case _:
            mode, ctm, nearest = kind, ("align_corners" if align else "half_pixel"), "round_prefer_floor"
    op = O.Resize(axes=tuple(axes), in_sizes=tuple(ins), sizes=tuple(sizes), scales=tuple(scales), mode=mode,
                  coordinate_mode=ctm, nearest_mode=nearest, cubic_a=-0.75)
    return [ctx.emit(op, [x])]
