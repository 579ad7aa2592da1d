"""Resize as a separable linear map: the float64 matrix of each resized axis.

ONNX Resize (and Upsample) interpolates one axis at a time: output position y of an axis of input
length n and output length m is mapped to a source coordinate x(y) by the coordinate
transformation, and the output is a fixed combination of the inputs at the integer positions
around x(y), positions outside [0, n) taking the value at the nearest edge. So each axis is a
matrix A (m x n) and the operator is the Kronecker product of these matrices (the identity on
the other axes). The matrices are built here once, in float64, following the ONNX specification
(whose executable form is onnx.reference.ops.op_resize); the executor's kernel, the bound rule and
every analysis use the same matrices.

Coefficients. With base = ceil(x) - 1 and ratio = x - base in (0, 1] (ratio = 1 at an integer x),
a kernel of n_taps (even) weights reads the positions base + o for o = 1 - n_taps/2, ...,
n_taps/2, with weight w(o - ratio): nearest is one tap (see ``_nearest``), linear w(d) = 1 - |d|,
cubic the Keys kernel with coefficient a, antialiased kernels w(s d) scaled by s = min(scale, 1)
and normalized to sum 1. exclude_outside zeroes the weights of positions outside [0, n) and
renormalizes; the others are clamped to the edge.
"""

from __future__ import annotations

import math

import numpy as np

from stabaudit.ir.ops import Resize

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                    "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
MODES = ("nearest", "linear", "cubic")


def source_coordinates(mode: str, n: int, m: int, scale: float, roi: tuple[float, float] | None) -> np.ndarray:
    """x(y) for y = 0..m-1 in float64, the expressions of the ONNX specification in its order of
    operations (output_width = scale * n is a float, as there)."""
    y = np.arange(m, dtype=np.float64)
    width = scale * n
    match mode:
        case "align_corners":
            return np.zeros(m) if width == 1 else y * (n - 1) / (width - 1)
        case "asymmetric":
            return y / scale
        case "tf_half_pixel_for_nn":
            return (y + 0.5) / scale
        case "tf_crop_and_resize":
            if roi is None:
                raise ValueError("tf_crop_and_resize needs a roi")
            start, end = roi
            if width == 1:
                x = np.full(m, (end - start) * (n - 1) / 2)
            else:
                x = y * (end - start) * (n - 1) / (width - 1)
            return x + start * (n - 1)
        case "pytorch_half_pixel":
            return np.full(m, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
        case "half_pixel":
            return (y + 0.5) / scale - 0.5
        case "half_pixel_symmetric":
            offset = n / 2 * (1 - m / width)
            return offset + (y + 0.5) / scale - 0.5
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest(mode: str, base: int, ratio: float, scale: float) -> int:
    """The position read by nearest interpolation (before clamping to [0, n))."""
    match mode:
        case "round_prefer_floor":
            return base + (ratio > 0.5)
        case "round_prefer_ceil":
            return base + (ratio >= 0.5)
        case "floor":
            return base + (ratio == 1.0)
        case "ceil":
            return base + 1
        case "simple":  # onnxruntime's rule for Upsample and Resize-10: floor up, ceil down
            return base + 1 if scale < 1 else base + (ratio == 1.0)
    raise ValueError(f"unknown nearest_mode {mode!r}")


def _weights(op: Resize, ratio: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(offsets o, weights) of linear or cubic interpolation at a source coordinate with this ratio."""
    a = op.cubic_a
    s = min(scale, 1.0) if op.antialias else 1.0
    half = 1 if op.mode == "linear" else 2  # the kernel's support is [-half, half]
    start = math.floor(-half / s) + 1
    offsets = np.arange(start, 2 - start, dtype=np.int64)
    d = np.abs((offsets - ratio) * s)
    if op.mode == "linear":
        w = np.clip(1.0 - d, 0.0, 1.0)
    else:
        w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                     np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
    if op.antialias:
        w = w / w.sum()
    return offsets, w


def _axis_matrix(op: Resize, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    n, m, scale = op.in_sizes[k], op.sizes[k], float(op.scales[k])
    roi = op.rois[k] if op.rois else None
    x = source_coordinates(op.coordinate_mode, n, m, scale, roi)
    outside = None
    if op.coordinate_mode == "tf_crop_and_resize":
        outside = (x < 0) | (x > n - 1)
    a = np.zeros((m, n), dtype=np.float64)
    for row, xv in enumerate(x.tolist()):
        if outside is not None and outside[row]:
            continue  # the extrapolation value: a constant, no input
        base = math.ceil(xv) - 1
        ratio = xv - base
        if op.mode == "nearest":
            a[row, min(max(_nearest(op.nearest_mode, base, ratio, scale), 0), n - 1)] = 1.0
            continue
        offsets, w = _weights(op, ratio, scale)
        idx = base + offsets
        if op.exclude_outside:
            w = np.where((idx < 0) | (idx >= n), 0.0, w)
            total = w.sum()
            w = w / (total if total != 0 else 1.0)
        np.add.at(a[row], np.clip(idx, 0, n - 1), w)
    a.setflags(write=False)
    if outside is not None:
        outside.setflags(write=False)
    return a, (outside if outside is not None and outside.any() else None)


def _key(op: Resize) -> tuple:  # type: ignore[type-arg]
    return (op.axes, op.in_sizes, op.sizes, op.scales, op.mode, op.coordinate_mode, op.nearest_mode,
            op.cubic_a, op.exclude_outside, op.antialias, op.rois)


_MATRICES: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}  # type: ignore[type-arg]


def axis_matrix(op: Resize, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(A, outside) of the k-th resized axis: A is the read-only float64 matrix (sizes[k] x
    in_sizes[k]); outside marks the output positions that take the extrapolation value (None
    when there are none). Cached by the op's attributes."""
    key = (_key(op), k)
    found = _MATRICES.get(key)
    if found is None:
        if len(_MATRICES) > 1024:
            _MATRICES.clear()
        found = _MATRICES[key] = _axis_matrix(op, k)
    return found


def validate(op: Resize) -> None:
    """Raise ValueError for attributes this module does not define."""
    if op.mode not in MODES:
        raise ValueError(f"unknown Resize mode {op.mode!r}")
    if op.coordinate_mode not in COORDINATE_MODES:
        raise ValueError(f"unknown coordinate_transformation_mode {op.coordinate_mode!r}")
    if op.mode == "nearest" and op.nearest_mode not in NEAREST_MODES:
        raise ValueError(f"unknown nearest_mode {op.nearest_mode!r}")
    if not len(op.axes) == len(op.in_sizes) == len(op.sizes) == len(op.scales):
        raise ValueError("Resize axes, in_sizes, sizes and scales differ in length")
    if op.rois and len(op.rois) != len(op.axes):
        raise ValueError("Resize rois do not match its axes")
    if any(not (s > 0 and math.isfinite(s)) for s in op.scales):
        raise ValueError(f"Resize scales must be positive and finite, got {list(op.scales)}")
