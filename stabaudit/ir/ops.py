"""Canonical operators of the IR: one frozen dataclass per operator, with resolved attributes.

Loaders translate every source operator into these (attribute defaults and opset quirks are
resolved in the loader, once). Parameters are numpy arrays as stored in the model (float16 and
bfloat16 ones upcast exactly to float32); analyses convert them to float64 themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import numpy as np


class OpType(str, Enum):
    LINEAR = "Linear"
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    AFFINE = "Affine"
    ADD = "Add"
    SUB = "Sub"
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    PRELU = "PRelu"
    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    SOFTPLUS = "Softplus"
    ELU = "Elu"
    GELU = "Gelu"
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    SILU = "Silu"
    MISH = "Mish"
    CLIP = "Clip"
    SOFTMAX = "Softmax"
    MAX_POOL = "MaxPool"
    AVG_POOL = "AveragePool"
    GLOBAL_AVG_POOL = "GlobalAveragePool"
    GLOBAL_MAX_POOL = "GlobalMaxPool"
    RESHAPE = "Reshape"
    TRANSPOSE = "Transpose"
    PAD = "Pad"
    CONCAT = "Concat"
    SLICE = "Slice"
    MUL = "Mul"
    RESIZE = "Resize"
    DIV = "Div"
    MATMUL = "MatMul"
    LAYER_NORM = "LayerNormalization"
    POW = "Pow"
    SQRT = "Sqrt"
    RECIPROCAL = "Reciprocal"
    EXP = "Exp"
    LOG = "Log"
    ERF = "Erf"
    SIN = "Sin"
    COS = "Cos"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MEAN = "ReduceMean"
    REDUCE_L2 = "ReduceL2"
    REDUCE_MAX = "ReduceMax"
    REDUCE_MIN = "ReduceMin"
    REDUCE_LOG_SUM_EXP = "ReduceLogSumExp"
    REDUCE_L1 = "ReduceL1"
    REDUCE_SUM_SQUARE = "ReduceSumSquare"
    MAX = "Max"
    MIN = "Min"
    GATHER = "Gather"
    TILE = "Tile"
    ABS = "Abs"
    QUANTIZE = "Quantize"
    DYNAMIC_QUANTIZE = "DynamicQuantize"
    WHERE = "Where"


def _arr(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    out = np.asarray(a)
    if out.dtype == np.float16 or out.dtype.name == "bfloat16":
        # float16 and bfloat16 (ml_dtypes, not a numpy float kind) held as float32: exact, since
        # every such number is a float32 number, and every analysis then sees a numpy float type
        out = out.astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class Op:
    """Base of every operator; ``type`` is the canonical OpType."""

    type: ClassVar[OpType]
    arity: ClassVar[int] = 1  # number of variable inputs; -1 for variadic

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                object.__setattr__(self, name, _arr(value))

    def parameter_count(self) -> int:
        return int(sum(v.size for v in vars(self).values() if isinstance(v, np.ndarray)))


# ---- linear maps -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Linear(Op):
    """y = x @ weight.T + bias over the last axis; weight is [out, in]."""

    type = OpType.LINEAR
    weight: np.ndarray
    bias: np.ndarray | None = None
    # ||A - W||_2 <= error: the distance from the operator this node stands for (merged adjacent
    # linear maps, ir.passes.merge_linear_maps) to the one of the computed ``weight``; the bound
    # rules widen their bounds by it (Weyl). 0 for a weight read from the model.
    error: float = 0.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Conv(Op):
    """N-d cross-correlation (N = len(strides)); weight [C_out, C_in/groups, k...].

    pads = (begin_0, ..., begin_{N-1}, end_0, ..., end_{N-1}), zero padding.
    """

    type = OpType.CONV
    weight: np.ndarray
    bias: np.ndarray | None = None
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int = 1
    error: float = 0.0  # as for Linear: ||A - conv(weight)||_2 <= error after a merge


@dataclass(frozen=True, kw_only=True, eq=False)
class ConvTranspose(Op):
    """Transposed convolution; weight [C_in, C_out/groups, k...]; pads as for Conv."""

    type = OpType.CONV_TRANSPOSE
    weight: np.ndarray
    bias: np.ndarray | None = None
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int = 1
    output_padding: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Affine(Op):
    """Element-wise y = x * scale + shift, both broadcast to the input's shape (numpy rules).

    Eval-mode BatchNormalization, Mul/Div/Add/Sub by constants and normalisation all land here.
    """

    type = OpType.AFFINE
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Add(Op):
    """Sum of two variable tensors (numpy broadcasting); residual connections."""

    type = OpType.ADD
    arity = 2


@dataclass(frozen=True, kw_only=True, eq=False)
class Sub(Op):
    """Difference of two variable tensors (numpy broadcasting)."""

    type = OpType.SUB
    arity = 2


@dataclass(frozen=True, kw_only=True, eq=False)
class Mul(Op):
    """Entry-wise product of two variable tensors (numpy broadcasting): gates, attention scores,
    x * sigmoid(g(x)). Not Lipschitz on the whole space: bounded only over a bounded domain."""

    type = OpType.MUL
    arity = 2


@dataclass(frozen=True, kw_only=True, eq=False)
class Div(Op):
    """Entry-wise quotient x / y of two variable tensors (numpy broadcasting). Not Lipschitz on
    the whole space (y -> 0): bounded only over a bounded domain that keeps |y| away from 0."""

    type = OpType.DIV
    arity = 2


@dataclass(frozen=True, kw_only=True, eq=False)
class MatMul(Op):
    """Matrix product of two variable tensors, numpy matmul semantics (batched, broadcasting batch
    dims, 1-D operands promoted and the added axis dropped): attention scores Q K^T and weights V.
    Bilinear, so Lipschitz only on a bounded domain."""

    type = OpType.MATMUL
    arity = 2


# ---- element-wise maps that are Lipschitz only on a bounded domain -------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Pow(Op):
    """y = x ** exponent for a constant exponent >= 1 (exponent 1 loads as an alias, 0.5 as Sqrt,
    -1 as Reciprocal). Lipschitz only on a bounded domain when exponent > 1."""

    type = OpType.POW
    exponent: float


@dataclass(frozen=True, kw_only=True, eq=False)
class Sqrt(Op):
    """y = sqrt(x); its slope 1 / (2 sqrt x) is unbounded as x -> 0+."""

    type = OpType.SQRT


@dataclass(frozen=True, kw_only=True, eq=False)
class Reciprocal(Op):
    """y = 1 / x; slope -1 / x^2, unbounded as x -> 0."""

    type = OpType.RECIPROCAL


@dataclass(frozen=True, kw_only=True, eq=False)
class Exp(Op):
    """y = exp(x); slope exp(x), unbounded as x -> +inf."""

    type = OpType.EXP


@dataclass(frozen=True, kw_only=True, eq=False)
class Log(Op):
    """y = log(x); slope 1 / x, unbounded as x -> 0+."""

    type = OpType.LOG



# ---- activations -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Relu(Op):
    type = OpType.RELU


@dataclass(frozen=True, kw_only=True, eq=False)
class LeakyRelu(Op):
    type = OpType.LEAKY_RELU
    alpha: float = 0.01


@dataclass(frozen=True, kw_only=True, eq=False)
class PRelu(Op):
    """y = x if x >= 0 else slope * x; slope broadcast to the input (numpy rules)."""

    type = OpType.PRELU
    slope: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class Sigmoid(Op):
    type = OpType.SIGMOID


@dataclass(frozen=True, kw_only=True, eq=False)
class Tanh(Op):
    type = OpType.TANH


@dataclass(frozen=True, kw_only=True, eq=False)
class Softplus(Op):
    """y = log(1 + exp(beta * x)) / beta; with a ``threshold`` (torch's softplus), y = x itself
    where beta * x > threshold: a branch switch, a jump of log(1 + exp(-threshold)) / beta at
    beta * x = threshold. None: the smooth formula everywhere (ONNX Softplus, onnxruntime)."""

    type = OpType.SOFTPLUS
    beta: float = 1.0
    threshold: float | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Elu(Op):
    type = OpType.ELU
    alpha: float = 1.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Gelu(Op):
    """approximate: "none" (exact, erf) or "tanh"."""

    type = OpType.GELU
    approximate: str = "none"


@dataclass(frozen=True, kw_only=True, eq=False)
class HardSigmoid(Op):
    """y = max(0, min(1, alpha * x + beta))."""

    type = OpType.HARD_SIGMOID
    alpha: float = 0.2
    beta: float = 0.5


@dataclass(frozen=True, kw_only=True, eq=False)
class HardSwish(Op):
    """y = x * max(0, min(1, x / 6 + 1 / 2))."""

    type = OpType.HARD_SWISH


@dataclass(frozen=True, kw_only=True, eq=False)
class Erf(Op):
    """y = erf(x): globally Lipschitz, sup |erf'| = erf'(0) = 2 / sqrt(pi)."""

    type = OpType.ERF


@dataclass(frozen=True, kw_only=True, eq=False)
class Sin(Op):
    """y = sin(x): globally Lipschitz, sup |cos| = 1 (attained at 0)."""

    type = OpType.SIN


@dataclass(frozen=True, kw_only=True, eq=False)
class Cos(Op):
    """y = cos(x): globally Lipschitz, sup |sin| = 1 (attained at pi / 2)."""

    type = OpType.COS


@dataclass(frozen=True, kw_only=True, eq=False)
class Silu(Op):
    type = OpType.SILU


@dataclass(frozen=True, kw_only=True, eq=False)
class Mish(Op):
    """x tanh(softplus(x)) (Misra, 2019): smooth, with slope in [-0.1125, 1.0885]."""

    type = OpType.MISH


@dataclass(frozen=True, kw_only=True, eq=False)
class Clip(Op):
    """y = min(max(x, min), max); None means unbounded on that side (ReLU6, HardTanh)."""

    type = OpType.CLIP
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Abs(Op):
    """y = |x| entry-wise."""

    type = OpType.ABS


@dataclass(frozen=True, kw_only=True, eq=False)
class Softmax(Op):
    """Softmax over ``axis``; ``mask`` (bool, broadcast to the input: numpy rules): the entries it
    leaves out are -inf before the softmax (an attention mask's masked_fill(-inf)), so they output
    exactly 0 and the others are the softmax of the kept entries of their row. Every row keeps at
    least one entry (checked by the loader)."""

    type = OpType.SOFTMAX
    axis: int = -1
    mask: np.ndarray | None = None


def softmax_mask_problem(mask: np.ndarray, shape: tuple[int, ...], axis: int) -> str | None:
    """Why the bool ``mask`` cannot be the mask of a Softmax over ``axis`` of an input of ``shape``
    (it would broadcast the input to a larger shape, or it drops every entry of a row, whose outputs
    are then NaN), or None when it can."""
    try:
        grows = mask.ndim > len(shape) or tuple(np.broadcast_shapes(mask.shape, tuple(shape))) != tuple(shape)
    except ValueError:
        grows = True
    if grows:
        return f"an attention mask of shape {list(mask.shape)} for an input of shape {list(shape)}"
    if not np.broadcast_to(mask, tuple(shape)).any(axis=axis).all():
        return "an attention mask that drops every entry of a row (its outputs are NaN)"
    return None


# ---- normalisation with computed statistics ---------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class LayerNorm(Op):
    """y = (x - mean) / sqrt(var + epsilon) * scale + bias, mean and (biased) var over the axes
    axis..rank-1 of the input (axis >= 0, resolved by the loader); scale and bias broadcast to
    those trailing axes (numpy rules), None for 1 and 0.

    centered=False is RMSNorm: y = x / sqrt(mean(x^2) + epsilon) * scale + bias (no mean taken
    out; the mean of squares in place of the variance)."""

    type = OpType.LAYER_NORM
    axis: int
    epsilon: float
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    centered: bool = True


# ---- pooling -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class MaxPool(Op):
    """pads as for Conv (padding never wins a max)."""

    type = OpType.MAX_POOL
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    ceil_mode: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class AvgPool(Op):
    """pads as for Conv; count_include_pad decides whether padding counts in the divisor."""

    type = OpType.AVG_POOL
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = False


@dataclass(frozen=True, kw_only=True, eq=False)
class GlobalAvgPool(Op):
    """Mean over every axis after the first two (keeps them as size 1)."""

    type = OpType.GLOBAL_AVG_POOL


@dataclass(frozen=True, kw_only=True, eq=False)
class GlobalMaxPool(Op):
    type = OpType.GLOBAL_MAX_POOL


# ---- structure ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Reshape(Op):
    """Reshape to a static shape (Flatten, Squeeze, Unsqueeze, View all become this)."""

    type = OpType.RESHAPE
    shape: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Transpose(Op):
    type = OpType.TRANSPOSE
    perm: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Pad(Op):
    """Constant padding; pads = (begin per axis..., end per axis...) over all axes."""

    type = OpType.PAD
    pads: tuple[int, ...]
    value: float = 0.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Slice(Op):
    """Strided selection on every axis: axis i keeps the indices range(starts[i], ends[i], steps[i])
    of the input, resolved against the static input shape by the loader as ONNX Slice clamps them
    (0 <= start <= dim; an end of -1 only on an axis walked backwards, by a negative step)."""

    type = OpType.SLICE
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    steps: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Resize(Op):
    """Separable interpolation (ONNX Resize/Upsample): on each axis ``axes[k]`` the input length
    ``in_sizes[k]`` becomes ``sizes[k]`` by the float64 matrix ``ir.resize.axis_matrix(op, k)``
    (out x in), built from these attributes as the ONNX specification defines the operator; the
    other axes are unchanged. ``scales[k]`` is the scale of the coordinate transformation
    (``sizes[k] / in_sizes[k]`` when the model gives sizes); ``rois[k]`` the (start, end) of
    tf_crop_and_resize, whose output positions outside the input take ``extrapolation_value``.
    nearest_mode "simple" is the rule of Upsample and Resize-10 (floor when upsampling, ceil when
    downsampling)."""

    type = OpType.RESIZE
    axes: tuple[int, ...]
    in_sizes: tuple[int, ...]
    sizes: tuple[int, ...]
    scales: tuple[float, ...]
    mode: str = "nearest"  # nearest | linear | cubic
    coordinate_mode: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_a: float = -0.75
    exclude_outside: bool = False
    antialias: bool = False
    rois: tuple[tuple[float, float], ...] = ()
    extrapolation_value: float = 0.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Gather(Op):
    """Selection along ``axis`` by constant indices (numpy ``take``): the output replaces that axis
    by ``indices``' shape (a scalar index drops it). Indices are resolved by the loader to
    0 <= i < dim; an index may repeat (the entry is then copied)."""

    type = OpType.GATHER
    axis: int
    indices: np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class Tile(Op):
    """Repetition of the whole tensor ``repeats[i]`` times along axis i (ONNX Tile, numpy tile);
    Expand of size-1 axes lands here after a Reshape."""

    type = OpType.TILE
    repeats: tuple[int, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class Concat(Op):
    type = OpType.CONCAT
    arity = -1
    axis: int = 1


# ---- selection by a condition -------------------------------------------------------------------
# tests of one tensor that are false at every finite entry (ONNX IsNaN, IsInf and its one-sided forms)
NONFINITE_TESTS: frozenset[str] = frozenset({"isnan", "isinf", "isposinf", "isneginf"})
# comparisons t R s of a tensor t with a constant or a second tensor s (ONNX Greater, Less, Equal, ...)
COMPARISONS: frozenset[str] = frozenset({"greater", "greater_equal", "less", "less_equal", "equal"})


@dataclass(frozen=True, kw_only=True, eq=False)
class Where(Op):
    """y = where(c, a, b) entry by entry, numpy broadcasting over c, a and b (ONNX Where).

    The branches a and b are the constants ``when_true`` / ``when_false``, or, where those are
    None, variable inputs, in that order, after the tested input(s). The condition c is:
    - ``test`` "": the constant bool ``mask`` (no tested input);
    - a test of NONFINITE_TESTS of the first variable input t (IsNaN(t), IsInf(t)): false at every
      finite t, so on the finite inputs the audit is about y is the fixed selection of b (of a
      when ``negate``); the kernel keeps the test, so the executor computes what the model does;
    - a comparison of COMPARISONS, t R s with s the constant ``other`` or else the second variable
      input: a data-dependent branch switch, discontinuous where t crosses s.
    ``negate`` negates the computed condition (ONNX Not).
    """

    type = OpType.WHERE
    arity = -1
    mask: np.ndarray | None = None
    test: str = ""
    other: np.ndarray | None = None
    negate: bool = False
    when_true: np.ndarray | None = None
    when_false: np.ndarray | None = None

    @property
    def tested(self) -> int:
        """How many leading variable inputs the condition reads (0, 1 or 2)."""
        if not self.test:
            return 0
        return 2 if self.test in COMPARISONS and self.other is None else 1

    @property
    def switch(self) -> bool:
        """Whether the condition is computed from the data and may change on finite inputs."""
        return self.test in COMPARISONS

    def fixed_condition(self) -> np.ndarray | None:
        """The condition at every finite input (numpy bool, broadcastable), None for a switch."""
        if not self.test:
            return None if self.mask is None else np.asarray(self.mask, dtype=bool) ^ self.negate
        if self.test in NONFINITE_TESTS:
            return np.array(self.negate)
        return None


# ---- reductions and element-wise extrema -------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Reduce(Op):
    """Base of the reductions: each output entry reduces the group of input entries that share its
    indices on the axes not in ``axes`` (normalised, sorted, distinct; empty: groups of one entry,
    the reduction of a single entry). ``keepdims``: the reduced axes stay as size 1."""

    axes: tuple[int, ...]
    keepdims: bool = True


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceSum(Reduce):
    type = OpType.REDUCE_SUM


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceMean(Reduce):
    type = OpType.REDUCE_MEAN


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceL2(Reduce):
    """sqrt(sum of squares) of each group."""

    type = OpType.REDUCE_L2


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceMax(Reduce):
    type = OpType.REDUCE_MAX


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceMin(Reduce):
    type = OpType.REDUCE_MIN


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceLogSumExp(Reduce):
    """log(sum(exp)) of each group."""

    type = OpType.REDUCE_LOG_SUM_EXP


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceL1(Reduce):
    """sum of |x| over each group."""

    type = OpType.REDUCE_L1


@dataclass(frozen=True, kw_only=True, eq=False)
class ReduceSumSquare(Reduce):
    """sum of x^2 over each group: Lipschitz only on a bounded domain."""

    type = OpType.REDUCE_SUM_SQUARE


@dataclass(frozen=True, kw_only=True, eq=False)
class Max(Op):
    """Entry-wise maximum of one or more variable tensors and an optional constant (numpy
    broadcasting over all of them): ReLU written as Max(x, 0) with a tensor constant, maxout."""

    type = OpType.MAX
    arity = -1
    constant: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True, eq=False)
class Min(Op):
    """Entry-wise minimum, as Max."""

    type = OpType.MIN
    arity = -1
    constant: np.ndarray | None = None


# ---- quantization -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, eq=False)
class Quantize(Op):
    """Quantization by a constant step: q = clamp(round(x / scale) + zero_point, qmin, qmax), round half
    to even (ONNX QuantizeLinear), then y = scale * (q - zero_point) (DequantizeLinear: the
    dequantized value, fake quantization) or, with ``integer``, y = q itself (the integer, as a float).

    ``scale`` and ``zero_point`` hold one number (per tensor) or one per index of ``axis`` (per axis);
    they are tuples, not arrays, because they are not trainable parameters. The operator is its
    smooth part clip(x, scale (qmin - zero_point), scale (qmax - zero_point)) (divided by ``scale``
    and shifted by ``zero_point`` when ``integer``) plus a rounding error of at most half a step per
    entry; ``smooth`` computes the smooth part alone (ir.passes.smooth_part).
    """

    type = OpType.QUANTIZE
    scale: tuple[float, ...]
    zero_point: tuple[float, ...]
    qmin: int
    qmax: int
    axis: int | None = None  # per axis: the input axis that scale and zero_point index (non-negative)
    integer: bool = False
    smooth: bool = False

    def steps(self, rank: int) -> tuple[list[float], list[float], tuple[int, ...]]:
        """(scale, zero_point) as lists and the shape that broadcasts them over an input of ``rank``."""
        if self.axis is None:
            return list(self.scale), list(self.zero_point), ()
        shape = tuple(len(self.scale) if i == self.axis else 1 for i in range(rank))
        return list(self.scale), list(self.zero_point), shape


class QuantPart(str, Enum):
    """Which output of ONNX DynamicQuantizeLinear a DynamicQuantize node computes."""

    DEQUANTIZED = "dequantized"  # s (q - zp): the value the integer stands for
    INTEGER = "integer"  # q
    SCALE = "scale"  # s
    ZERO_POINT = "zero_point"  # zp


@dataclass(frozen=True, kw_only=True, eq=False)
class DynamicQuantize(Op):
    """ONNX DynamicQuantizeLinear (uint8), a step computed from the data: over the whole tensor,
    s = (max(0, max x) - min(0, min x)) / 255, zp = clamp(round(-min(0, min x) / s), 0, 255),
    q = clamp(round(x / s) + zp, 0, 255), round half to even; ``part`` picks the output.

    The dequantized part is x plus an error of at most s / 2 per entry (clamping included, see
    docs/operators.md): the identity plus a term bounded only where the range of x is; ``smooth``
    computes the identity (ir.passes.smooth_part).
    """

    type = OpType.DYNAMIC_QUANTIZE
    part: QuantPart = QuantPart.DEQUANTIZED
    smooth: bool = False


REDUCTIONS: frozenset[OpType] = frozenset(
    {
        OpType.REDUCE_SUM, OpType.REDUCE_MEAN, OpType.REDUCE_L2, OpType.REDUCE_MAX, OpType.REDUCE_MIN,
        OpType.REDUCE_LOG_SUM_EXP, OpType.REDUCE_L1, OpType.REDUCE_SUM_SQUARE,
    }
)
ACTIVATIONS: frozenset[OpType] = frozenset(
    {
        OpType.RELU, OpType.LEAKY_RELU, OpType.PRELU, OpType.SIGMOID, OpType.TANH,
        OpType.SOFTPLUS, OpType.ELU, OpType.GELU, OpType.HARD_SIGMOID, OpType.HARD_SWISH,
        OpType.SILU, OpType.MISH, OpType.CLIP, OpType.SOFTMAX, OpType.ERF, OpType.SIN, OpType.COS, OpType.ABS,
    }
)
LINEAR_MAPS: frozenset[OpType] = frozenset({OpType.LINEAR, OpType.CONV, OpType.CONV_TRANSPOSE})
POOLING: frozenset[OpType] = frozenset(
    {OpType.MAX_POOL, OpType.AVG_POOL, OpType.GLOBAL_AVG_POOL, OpType.GLOBAL_MAX_POOL}
)
# Operators that only move, select, copy or embed entries (0/1 linear maps), not reported as layers;
# their bounds still enter every composition (Gather with a repeated index and Tile copy entries: sqrt(copies)).
STRUCTURAL: frozenset[OpType] = frozenset(
    {OpType.RESHAPE, OpType.TRANSPOSE, OpType.PAD, OpType.CONCAT, OpType.SLICE, OpType.GATHER, OpType.TILE}
)

__all__ = [name for name in dir() if not name.startswith("_")] + ["field"]
