"""Translators of ONNX's Fourier transforms, STFT and DFT: linear maps of the signal (real, or
complex as [..., 2]) whose matrices are the DFT's cosines and sines, written as a strided Conv
(STFT: one output channel per bin and part, the window folded into the kernel) or a Linear along
the transformed axis (DFT). Their bounds are those of the matrices (certified conv and dense
norms); the magnitude torch's exports take next (ReduceL2 over the last axis) has Lipschitz 1."""

from __future__ import annotations

import numpy as np

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.maps import dft_weight, irfft_weight
from stabaudit.loaders.onnx_ops.common import (
    Context,
    OnnxNode,
    Unsupported,
    normalize_axis,
    register,
)


def _scalar(node: OnnxNode, ctx: Context, index: int, what: str) -> int | None:
    name = node.input(index)
    if name is None:
        return None
    value = ctx.const(name)
    if value is None:
        raise Unsupported(f"{node.op_type}({what} computed from the model's inputs)")
    return int(np.asarray(value).reshape(-1)[0])


def _parts(node: OnnxNode, ctx: Context, x: str) -> int:
    """1 for a real signal ([..., 1]), 2 for a complex one ([..., 2])."""
    parts = ctx.shape(x)[-1]
    if parts not in (1, 2):
        raise ModelLoadError(f"{node.op_type} input's last dim is {parts}, not 1 (real) or 2 (complex)")
    return parts


@register("STFT")
def stft(node: OnnxNode, ctx: Context) -> None:
    """STFT(signal [B, L, 1 or 2], frame_step, window, frame_length), onesided by default:
    out[b, f, k] = sum_n window[n] x[b, f step + n] e^{-2 pi i k n / N} for the
    floor((L - N) / step) + 1 frames, as [B, frames, bins, 2] (bins N // 2 + 1 when onesided).
    A Conv1d over [B, parts, L] with stride ``step`` and kernels window * cos and window * sin."""
    x = node.inputs[0]
    shape = ctx.shape(x)
    if len(shape) != 3:
        raise Unsupported(f"STFT(a signal of rank {len(shape)})")
    parts = _parts(node, ctx, x)
    step = _scalar(node, ctx, 1, "frame_step")
    window = ctx.param(node, 2, "window", optional=True)
    length = _scalar(node, ctx, 3, "frame_length")
    if window is not None:
        window = np.asarray(window, dtype=np.float64).reshape(-1)
        if length is not None and length != window.size:
            raise ModelLoadError(f"STFT window of {window.size} entries for frame_length {length}")
        length = window.size
    if length is None or step is None or length <= 0 or step <= 0 or length > shape[1]:
        raise Unsupported(f"STFT(frame_length {length}, frame_step {step} for a signal of {shape[1]})")
    onesided = bool(int(node.attr("onesided", 1)))
    if onesided and parts == 2:
        raise ModelLoadError("STFT onesided of a complex signal")
    bins = length // 2 + 1 if onesided else length
    weight = dft_weight(length, length, bins, parts)  # [bins, 2, n, parts]
    if window is not None:
        weight = weight * window[None, None, :, None]
    kernel = np.ascontiguousarray(weight.transpose(0, 1, 3, 2).reshape(2 * bins, parts, length))
    signal = ctx.emit(node, O.Transpose(perm=(0, 2, 1)), [x], tag="channels")
    frames = ctx.emit(node, O.Conv(weight=kernel, strides=(step,), pads=(0, 0), dilations=(1,)), [signal], tag="frames")
    by_frame = ctx.emit(node, O.Transpose(perm=(0, 2, 1)), [frames], tag="by_frame")
    ctx.emit(node, O.Reshape(shape=(shape[0], ctx.shape(by_frame)[1], bins, 2)), [by_frame])


@register("DFT")
def dft(node: OnnxNode, ctx: Context) -> None:
    """DFT of a real ([..., 1]) or complex ([..., 2]) signal along ``axis`` (an attribute before
    opset 20, an input after), of dft_length points (zero-padded or cut), forward or inverse
    (1 / length), onesided (a real signal's half spectrum; inverse: a half spectrum back to a real
    signal [..., length, 1]): one Linear over that axis and the parts."""
    x = node.inputs[0]
    shape = ctx.shape(x)
    rank = len(shape)
    parts = _parts(node, ctx, x)
    if node.opset >= 20:
        given = _scalar(node, ctx, 2, "axis")
        axis = -2 if given is None else given
    else:
        axis = int(node.attr("axis", 1))
    axis = normalize_axis(axis, rank)
    if axis == rank - 1:
        raise ModelLoadError("DFT along the last axis (the real and imaginary parts)")
    n = shape[axis]
    inverse, onesided = bool(int(node.attr("inverse", 0))), bool(int(node.attr("onesided", 0)))
    length = _scalar(node, ctx, 1, "dft_length") or (2 * (n - 1) if inverse and onesided else n)
    if onesided and inverse:  # a onesided spectrum back to a real signal
        if parts != 2:
            raise ModelLoadError("DFT inverse onesided of a real input")
        weight4 = irfft_weight(n, length)
    elif onesided and parts == 2:
        raise ModelLoadError("DFT onesided of a complex signal")
    else:
        weight4 = dft_weight(n, length, length // 2 + 1 if onesided else length, parts, inverse=inverse)
    bins, out_parts = weight4.shape[:2]
    weight = weight4.reshape(bins * out_parts, n * parts)
    others = [a for a in range(rank - 1) if a != axis]
    perm = (*others, axis, rank - 1)
    in_place = perm == tuple(range(rank))  # the signal axis already next to the parts
    moved = x if in_place else ctx.emit(node, O.Transpose(perm=perm), [x], tag="signal_last")
    lead = tuple(shape[a] for a in others)
    flat = ctx.emit(node, O.Reshape(shape=(*lead, n * parts)), [moved], tag="flat")
    mixed = ctx.emit(node, O.Linear(weight=np.ascontiguousarray(weight)), [flat], tag="bins")
    split = ctx.emit(node, O.Reshape(shape=(*lead, bins, out_parts)), [mixed], tag=None if in_place else "split")
    if not in_place:
        ctx.emit(node, O.Transpose(perm=tuple(int(p) for p in np.argsort(perm))), [split])
