"""Translators of torch.stft and of the readers of its complex output (view_as_real, real, imag;
abs in activations.py): the transform is linear in the signal, a strided Conv whose kernels are
the window times the DFT's cosines and sines; a complex value is carried as its real and
imaginary parts (ts_ops.base.Complex) and only these readers take it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.ir.maps import dft_weight
from stabaudit.loaders.ts_ops.base import (
    Complex,
    Context,
    SourceNode,
    Unsupported,
    Var,
    const_array,
    translates,
)


@translates("aten::stft")
def stft(ctx: Context, node: SourceNode) -> Sequence[Any]:
    """torch.stft of a real signal [L] or [B, L] (center padding is a separate aten::pad in the
    graph): frames of n_fft every hop_length samples times the window (win_length, centred in
    n_fft; ones without one), their DFT, onesided by default, scaled by 1 / sqrt(n_fft) when
    normalized, as a complex [B, bins, frames]."""
    x = node.var(0)
    if x.rank not in (1, 2):  # a complex signal never arrives: the walker refuses it here
        raise Unsupported(f"a signal of shape {list(x.shape)}")
    n_fft = int(node.arg(1))
    hop = node.arg("hop_length")
    hop = n_fft // 4 if hop is None else int(hop)
    win_length = node.arg("win_length")
    win_length = n_fft if win_length is None else int(win_length)
    window = node.arg("window")
    if isinstance(window, Var):
        raise Unsupported("a window computed from the input")
    w = np.ones(win_length) if window is None else const_array(window, what="window").astype(np.float64).reshape(-1)
    if w.size != win_length or win_length > n_fft or hop <= 0 or n_fft > x.shape[-1]:
        raise Unsupported(f"n_fft {n_fft}, hop_length {hop}, a window of {w.size} for a signal of {x.shape[-1]}")
    if node.arg("return_complex") is False:
        raise Unsupported("return_complex=False")
    onesided = node.arg("onesided")
    onesided = True if onesided is None else bool(onesided)
    full = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    full[start:start + win_length] = w
    bins = n_fft // 2 + 1 if onesided else n_fft
    weight = dft_weight(n_fft, n_fft, bins, 1) * full[None, None, :, None]  # [bins, 2, n, 1]
    if node.arg("normalized"):
        weight = weight / math.sqrt(n_fft)
    kernel = np.ascontiguousarray(weight[..., 0].reshape(2 * bins, 1, n_fft))
    batch = x.shape[0] if x.rank == 2 else 1
    signal = ctx.emit(O.Reshape(shape=(batch, 1, x.shape[-1])), [x], role="channels")
    frames = ctx.emit(O.Conv(weight=kernel, strides=(hop,), pads=(0, 0), dilations=(1,)), [signal], role="frames")
    count = frames.shape[-1]
    split = ctx.emit(O.Reshape(shape=(batch, bins, 2, count)), [frames], role="parts")
    parts = ctx.emit(O.Transpose(perm=(0, 1, 3, 2)), [split], role="last")
    if x.rank == 1:
        parts = ctx.emit(O.Reshape(shape=(bins, count, 2)), [parts], role="unbatched")
    return [Complex(id=parts.id, shape=parts.shape[:-1])]


def _parts(node: SourceNode) -> Var:
    z = node.arg(0)
    if not isinstance(z, Complex):
        raise Unsupported("a real input")
    return Var(id=z.id, shape=(*z.shape, 2))


@translates("aten::view_as_real")
def view_as_real(ctx: Context, node: SourceNode) -> Sequence[Any]:
    return [_parts(node)]


@translates("aten::real", "aten::imag")
def real_imag(ctx: Context, node: SourceNode) -> Sequence[Any]:
    parts = _parts(node)
    index = np.array(0 if node.kind == "aten::real" else 1)
    return [ctx.emit(O.Gather(axis=parts.rank - 1, indices=index), [parts])]
