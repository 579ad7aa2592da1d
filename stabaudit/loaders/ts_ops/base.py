"""Shared vocabulary of the TorchScript translators: values, source nodes, the translator registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from stabaudit.ir import ops as O
from stabaudit.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True, eq=False)
class Var:
    """A tensor computed from the model input: an IR value with its static shape (float)."""

    id: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    def meta(self) -> torch.Tensor:
        import torch

        return torch.empty(self.shape, device="meta")


@dataclass(frozen=True, kw_only=True, eq=False)
class Complex(Var):
    """A complex tensor computed from the model input (torch.stft's output): ``shape`` is its own
    shape, ``id`` the IR value of its real and imaginary parts, of shape [*shape, 2]. Only the
    translators in COMPLEX_READERS take one; any other operator on it is refused."""

    def meta(self) -> torch.Tensor:
        import torch

        return torch.empty(self.shape, dtype=torch.complex64, device="meta")


COMPLEX_READERS = frozenset({"aten::abs", "aten::view_as_real", "aten::real", "aten::imag"})


class _Poison:
    """A value downstream of an operator that could not be translated (not reported twice)."""

    def __repr__(self) -> str:
        return "POISON"


POISON = _Poison()


@dataclass(frozen=True, kw_only=True, eq=False)
class Opaque:
    """An output the IR cannot represent (e.g. pooling indices): an error only where it is used.
    ``label``: a class index (argmax, argmin), which a forward output may hold beside the scores:
    left out of the audit there, as ONNX's ArgMax outputs are."""

    kind: str
    detail: str
    label: bool = False


class Unsupported(Exception):
    """Raised by a translator for an operator (or a variant of it) that has no IR counterpart.

    ``detail`` names the variant, e.g. "variable * variable"; it is shown after the op name.
    """

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, kw_only=True, eq=False)
class SourceNode:
    """One TorchScript node with its inputs resolved (Var, POISON or Python constants)."""

    kind: str  # "aten::conv2d"
    args: tuple[Any, ...]  # in schema order
    arg_names: tuple[str, ...]  # from the schema; positional index names when there is none
    out_shapes: tuple[tuple[int, ...] | None, ...]  # torch's own static output shapes (meta device)

    @property
    def base(self) -> str:
        """The operator name without namespace or in-place suffix: "relu" for "aten::relu_"."""
        name = self.kind.split("::", 1)[-1]
        if name.endswith("_") and not name.endswith("__"):
            name = name[:-1]
        return name

    def arg(self, key: str | int, default: Any = None) -> Any:
        """The argument by schema name or position; ``default`` when absent."""
        if isinstance(key, int):
            return self.args[key] if key < len(self.args) else default
        try:
            return self.args[self.arg_names.index(key)]
        except ValueError:
            return default

    def var(self, key: str | int = 0) -> Var:
        value = self.arg(key)
        if not isinstance(value, Var):
            raise Unsupported(f"argument {key!r} is not a tensor computed from the input")
        return value

    def out_shape(self, index: int = 0) -> tuple[int, ...]:
        shape = self.out_shapes[index] if index < len(self.out_shapes) else None
        if shape is None:
            raise Unsupported("its output shape could not be inferred")
        return shape


class Context(Protocol):
    """What a translator may do: emit IR nodes and leave notes for the user."""

    def emit(self, op: O.Op, inputs: Sequence[Var], *, role: str = "") -> Var: ...

    def note(self, text: str) -> None: ...


Translator = Callable[[Context, SourceNode], Sequence[Any]]
TRANSLATORS: Registry[str, Translator] = Registry("torchscript translators")


def translates(*kinds: str) -> Callable[[Translator], Translator]:
    """Register one translator for several TorchScript kinds (in-place "op_" variants are implied)."""

    def decorate(fn: Translator) -> Translator:
        for kind in kinds:
            TRANSLATORS.add(kind, fn)
        return fn

    return decorate


# ---- helpers shared by the translators ---------------------------------------------------------
def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def const_array(value: Any, *, what: str = "operand") -> np.ndarray:
    """A constant (tensor or number) as a numpy array; its dtype kept for float32/float64
    tensors, float16 and bfloat16 ones upcast to float32 (exact: every half or bfloat16 number
    is a float32 number; numpy has no bfloat16)."""
    import torch

    if isinstance(value, Var) or value is POISON:
        raise Unsupported(f"{what} is not a constant")
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu()
        if not array.is_floating_point():
            array = array.double()
        elif array.dtype in (torch.float16, torch.bfloat16):
            array = array.float()
        return np.array(array.numpy(), copy=True)
    if isinstance(value, bool | int | float):
        return np.asarray(float(value), dtype=np.float64)
    raise Unsupported(f"{what} of type {type(value).__name__} is not a number or tensor")


def is_float_dtype(value: Any) -> bool:
    """None or a float type: float16, bfloat16, float32, float64 (as torch.dtype or TorchScript's
    ScalarType codes 5, 15, 6, 7). A cast between them only changes rounding."""
    import torch

    return value is None or value in (5, 6, 7, 15) or value in (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_float(value: Any, *, what: str = "operand") -> float:
    array = const_array(value, what=what)
    if array.size != 1:
        raise Unsupported(f"{what} is not a scalar")
    return float(array.reshape(()))


def int_list(value: Any, n: int, *, what: str) -> tuple[int, ...]:
    """An int or int list expanded to ``n`` entries (torch accepts [k] for [k, k])."""
    if isinstance(value, int):
        return (value,) * n
    items = tuple(int(v) for v in value)
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise Unsupported(f"{what} has {len(items)} entries for {n} spatial axes")
    return items


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def unary(make: Callable[[], O.Op]) -> Translator:
    """The translator of an element-wise op of the node's first input: ``make()`` on it."""

    def translate(ctx: Context, node: SourceNode) -> Sequence[Any]:
        return [ctx.emit(make(), [node.var(0)])]

    return translate


def channel_shape(vector: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector [C] shaped [C, 1, ...] to broadcast over axis 1 of a rank-``rank`` tensor."""
    if rank <= 2:
        return vector.reshape(-1)
    return vector.reshape((-1,) + (1,) * (rank - 2))
