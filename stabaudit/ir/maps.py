"""Constant index and weight maps the loaders build their IR nodes from: which input entry each
output entry copies (padding modes, rolls) and the matrices of linear maps along one axis
(cumulative sums, adaptive average pooling, the discrete Fourier transform and the inverse of a
onesided spectrum). Each is stated once here, in the framework's own terms (ONNX Pad modes,
torch's window rule, numpy's FFT conventions), and read by the ONNX and TorchScript translators."""

from __future__ import annotations

import numpy as np


def padding_indices(mode: str, dim: int, before: int, after: int) -> np.ndarray | None:
    """Which entry of an axis of ``dim`` entries each entry of the padded axis copies, for the
    padding modes that copy (ONNX Pad's names: reflect, the mirror image without the edge entry;
    edge, the edge entry; wrap, the axis repeated; torch's reflect, replicate and circular), or
    None when ``dim`` is too short for the pads (reflect needs pads < dim, wrap pads <= dim)."""
    i = np.arange(-before, dim + after)
    if mode == "reflect":
        if dim < 2 or max(before, after) >= dim:
            return None
        i = np.abs(i)
        return np.where(i >= dim, 2 * (dim - 1) - i, i)
    if mode == "edge":
        return np.clip(i, 0, dim - 1) if dim else None
    if mode == "wrap":
        return np.mod(i, dim) if dim and max(before, after) <= dim else None
    raise ValueError(f"padding mode {mode!r}")


def roll_indices(dim: int, shift: int) -> np.ndarray:
    """torch.roll along an axis of ``dim`` entries: output i copies input (i - shift) mod dim."""
    return np.mod(np.arange(dim) - shift, dim) if dim else np.zeros(0, np.int64)


def cumulative_sum_weight(n: int, *, exclusive: bool = False, reverse: bool = False) -> np.ndarray:
    """The [out, in] 0/1 matrix of a cumulative sum over n entries: y_i sums x_j over j <= i
    (j < i when ``exclusive``; j >= i, or j > i, when ``reverse``)."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    included = (j >= i) if reverse else (j <= i)
    if exclusive:
        included &= j != i
    return included.astype(np.float64)


def adaptive_average_weight(n: int, m: int) -> np.ndarray:
    """The [m, n] matrix of torch's adaptive average pooling of n entries to m: output i averages
    the entries floor(i n / m) <= j < ceil((i + 1) n / m) (windows may overlap and differ in size
    when m does not divide n). Pooling over several axes is the product of one such matrix per
    axis (each window is a box, its count the product of its sides)."""
    weight = np.zeros((m, n))
    for i in range(m):
        start, end = (i * n) // m, -((-(i + 1) * n) // m)
        weight[i, start:end] = 1.0 / (end - start)
    return weight


def dft_weight(n: int, length: int, bins: int, parts: int, *, inverse: bool = False) -> np.ndarray:
    """The [bins, 2, n, parts] float64 matrix of the DFT of ``length`` points of a signal of n
    entries (zero-padded to ``length`` or cut to it): output bin k, part (real, imaginary), from
    input entry j, part. The forward transform multiplies by exp(-2 pi i k j / length), the inverse
    by exp(+2 pi i k j / length) / length."""
    k = np.arange(bins)[:, None]
    j = np.arange(min(n, length))[None, :]
    angle = 2.0 * np.pi * ((k * j) % length) / length
    cos, sin = np.cos(angle), np.sin(angle) * (1.0 if inverse else -1.0)  # e^{i angle}: cos + i sin
    weight = np.zeros((bins, 2, n, parts))
    weight[:, 0, : j.shape[1], 0], weight[:, 1, : j.shape[1], 0] = cos, sin  # a real entry x: x cos, x sin
    if parts == 2:  # i y (cos + i sin) = -y sin + i y cos
        weight[:, 0, : j.shape[1], 1], weight[:, 1, : j.shape[1], 1] = -sin, cos
    return weight / length if inverse else weight


def irfft_weight(bins_in: int, length: int) -> np.ndarray:
    """The [length, 1, bins_in, 2] matrix of the inverse of a onesided spectrum (numpy's irfft of
    ``length`` points): x_t = (X_0 + 2 sum_{0<k<length/2} Re(X_k e^{2 pi i k t / length})
    + Re(X_{length/2}) (-1)^t (length even)) / length from the bins k < length // 2 + 1 (missing
    ones 0, extra ones unread); the imaginary parts of X_0 and X_{length/2} are not read."""
    used = min(bins_in, length // 2 + 1)
    k = np.arange(used)[None, :]
    t = np.arange(length)[:, None]
    angle = 2.0 * np.pi * ((k * t) % length) / length
    scale = np.where((k == 0) | (2 * k == length), 1.0, 2.0) / length
    weight = np.zeros((length, 1, bins_in, 2))
    weight[:, 0, :used, 0] = scale * np.cos(angle)
    weight[:, 0, :used, 1] = np.where((k == 0) | (2 * k == length), 0.0, -scale * np.sin(angle))
    return weight
