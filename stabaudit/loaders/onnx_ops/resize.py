"""Translators of Resize (opsets 10 to 19) and Upsample (opsets 7 to 9) into ops.Resize.

The scales, sizes and roi must be constants. Opset differences resolved here: Upsample and
Resize-10 interpolate with the asymmetric transformation (x = y / scale) and onnxruntime's nearest
rule of those versions (nearest_mode "simple"); Resize-11 and later read
coordinate_transformation_mode, nearest_mode, cubic_coeff_a, exclude_outside and
extrapolation_value; Resize-18 and later axes, antialias and keep_aspect_ratio_policy.
"""

from __future__ import annotations

import math

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.resize import COORDINATE_MODES, MODES, NEAREST_MODES
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    int_list,
    normalize_axis,
    register,
)

# The dense float64 matrix of one axis (ir.resize) is at most this many entries (128 MiB).
MAX_AXIS_ENTRIES = 1 << 24


def _floats(value: np.ndarray | None) -> list[float] | None:
    """A constant as floats (float32 values widened exactly); an empty tensor is no value."""
    if value is None or np.asarray(value).size == 0:
        return None
    return [float(v) for v in np.asarray(value).reshape(-1)]


def _text(node: OnnxNode, key: str, default: str) -> str:
    value = node.attr(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


@register("Resize", "Upsample")
def resize(node: OnnxNode, ctx: Context) -> None:
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    mode = _text(node, "mode", "nearest")
    if mode == "bilinear" or mode == "trilinear":  # Upsample-7's older names of linear
        mode = "linear"
    if mode not in MODES:
        raise Unsupported(f"{node.op_type}(mode={mode})")
    legacy = node.op_type == "Upsample" or node.opset < 11
    roi = sizes = None
    if node.op_type == "Upsample" and "scales" in node.attrs:
        scales = _floats(np.asarray(node.attrs["scales"]))
    elif legacy:
        scales = _floats(ctx.param(node, 1, "scales"))
    else:
        roi = _floats(ctx.param(node, 1, "roi", optional=True))
        scales = _floats(ctx.param(node, 2, "scales", optional=True))
        sizes = int_list(ctx.param(node, 3, "sizes", optional=True))
    if legacy:
        coordinate_mode, nearest_mode, cubic_a, exclude, extrapolation = "asymmetric", "simple", -0.75, False, 0.0
    else:
        coordinate_mode = _text(node, "coordinate_transformation_mode", "half_pixel")
        nearest_mode = _text(node, "nearest_mode", "round_prefer_floor")
        cubic_a = float(node.attr("cubic_coeff_a", -0.75))
        exclude = bool(node.attr("exclude_outside", 0))
        extrapolation = float(node.attr("extrapolation_value", 0.0))
    if coordinate_mode not in COORDINATE_MODES:
        raise Unsupported(f"Resize(coordinate_transformation_mode={coordinate_mode})")
    if mode == "nearest" and nearest_mode not in NEAREST_MODES:
        raise Unsupported(f"Resize(nearest_mode={nearest_mode})")
    antialias = bool(node.attr("antialias", 0)) if node.opset >= 18 and not legacy else False
    if antialias and mode == "nearest":
        raise ModelLoadError("Resize with antialias and mode nearest")
    policy = _text(node, "keep_aspect_ratio_policy", "stretch") if node.opset >= 18 and not legacy else "stretch"
    axes_attr = int_list(node.attr("axes", None)) if node.opset >= 18 and not legacy else None
    axes = [normalize_axis(a, rank) for a in axes_attr] if axes_attr else list(range(rank))
    if len(set(axes)) != len(axes):
        raise ModelLoadError(f"Resize axes {axes} repeat an axis")

    # per axis: the scale of the coordinate transformation and the output length, as the spec says
    scale_of = [1.0] * rank
    out = list(shape)
    if sizes is not None and scales is None:
        if len(sizes) != len(axes):
            raise ModelLoadError(f"Resize has {len(sizes)} sizes for {len(axes)} axes")
        ratios = [sizes[i] / shape[a] for i, a in enumerate(axes)]
        if policy == "stretch":
            for i, a in enumerate(axes):
                scale_of[a], out[a] = ratios[i], sizes[i]
        elif policy in ("not_larger", "not_smaller"):
            common = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scale_of[a], out[a] = common, int(common * shape[a] + 0.5)
        else:
            raise ModelLoadError(f"unknown keep_aspect_ratio_policy {policy!r}")
    elif scales is not None:
        if sizes is not None:
            raise ModelLoadError("Resize has both scales and sizes")
        if len(scales) != len(axes):
            raise ModelLoadError(f"Resize has {len(scales)} scales for {len(axes)} axes")
        for i, a in enumerate(axes):
            if not (scales[i] > 0 and math.isfinite(scales[i])):
                raise ModelLoadError(f"Resize scale {scales[i]} is not positive and finite")
            scale_of[a], out[a] = scales[i], int(scales[i] * shape[a])
            if out[a] != int(np.float32(scales[i]) * np.float32(shape[a])):  # onnxruntime's product
                raise Unsupported("Resize(output length differs between float32 and float64)")
    else:
        raise ModelLoadError(f"{node.op_type} needs scales or sizes")
    if any(s == 0 for s in shape) or any(o <= 0 for o in out):
        raise Unsupported("Resize(empty input or output)")

    rois: dict[int, tuple[float, float]] = {}
    if coordinate_mode == "tf_crop_and_resize":
        if roi is None or len(roi) != 2 * len(axes):
            raise ModelLoadError("Resize tf_crop_and_resize needs a roi of 2 values per axis")
        for i, a in enumerate(axes):
            rois[a] = (roi[i], roi[len(axes) + i])
    if coordinate_mode == "align_corners" and any(
            not math.isclose(scale_of[a] * shape[a], out[a], rel_tol=1e-12) for a in axes if out[a] > 1):
        # the spec's reference divides by scale * n, onnxruntime by the output length
        raise Unsupported("Resize(align_corners with a scale that gives no whole output length)")
    keep = []
    for a in range(rank):
        trivial_roi = a not in rois or (math.isclose(rois[a][0], 0.0) and math.isclose(rois[a][1], 1.0))
        if out[a] == shape[a] and math.isclose(scale_of[a], 1.0) and trivial_roi:
            continue  # the spec leaves such an axis as it is
        keep.append(a)
    if any(out[a] * shape[a] > MAX_AXIS_ENTRIES for a in keep):
        raise Unsupported("Resize(an axis whose matrix has more than 2^24 entries)")
    op = O.Resize(
        axes=tuple(keep),
        in_sizes=tuple(shape[a] for a in keep),
        sizes=tuple(out[a] for a in keep),
        scales=tuple(float(scale_of[a]) for a in keep),
        mode=mode,
        coordinate_mode=coordinate_mode,
        nearest_mode=nearest_mode,
        cubic_a=cubic_a,
        exclude_outside=exclude,
        antialias=antialias,
        rois=tuple(rois[a] for a in keep) if coordinate_mode == "tf_crop_and_resize" else (),
        extrapolation_value=extrapolation,
    )
    ctx.emit(node, op, [node.inputs[0]])
