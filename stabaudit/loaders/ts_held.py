"""Integer inputs of a traced TorchScript module (token ids, attention masks, segment ids): held at
seeded valid values, as the ONNX loader holds them, so that the audit starts where the input
becomes real: the rows an aten::embedding reads by those ids (a start tensor of the IR graph).

A traced archive records each input's dtype (loaders.ts_signature); an input of an integer or bool dtype is held: an
attention mask (its name holds "mask", or a bool tensor) at all ones, ids that index an
aten::embedding table at seeded ids in [0, rows), a length input at the sequence length, any
other at zeros. Values computed from held inputs are tracked while the walk folds them, and an
aten::embedding of a constant float table by such values becomes a start tensor: its value at the
held ids is recorded, and the equivalence check runs the module on the held ids and the engine
from those values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_INTEGER_TYPES = frozenset({"Long", "Int", "Short", "Char", "Byte", "Bool"})
# the ops through which ids keep their meaning on the way to an embedding
_PASS_THROUGH = frozenset({"aten::to", "aten::view", "aten::reshape", "aten::contiguous", "aten::unsqueeze",
                           "aten::squeeze", "aten::flatten", "aten::clone", "aten::detach", "aten::long",
                           "aten::int", "aten::slice", "aten::select", "aten::expand"})


@dataclass(frozen=True, kw_only=True)
class Held:
    """An input held at a value: the tensor fed to the module, and why it has that value."""

    value: Any  # torch.Tensor
    why: str


def _attribute_path(value: Any) -> list[str] | None:
    """The chain of prim::GetAttr names from the graph's self to ``value`` (a module's weight)."""
    names: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = node.inputsAt(0).node()
    if node.kind() != "prim::Param":
        return None
    return names[::-1]


def _embedding_table(module: Any, input_value: Any) -> tuple[int, str] | None:
    """(rows, the table's attribute path) of the first aten::embedding that reads ``input_value``
    (through moves and casts) as its indices; None when none does."""
    seen: set[int] = set()
    todo = [input_value]
    while todo:
        current = todo.pop()
        for use in current.uses():
            node = use.user
            kind = node.kind()
            if kind == "aten::embedding" and use.offset == 1:
                path = _attribute_path(node.inputsAt(0))
                if path is None:
                    continue
                table = module
                try:
                    for name in path:
                        table = getattr(table, name)
                    rows = int(table.shape[0])
                except (AttributeError, IndexError, TypeError, RuntimeError):
                    continue
                return rows, ".".join(path)
            if kind in _PASS_THROUGH and use.offset == 0:
                for out in node.outputs():
                    if out.unique() not in seen:
                        seen.add(out.unique())
                        todo.append(out)
    return None


def held_inputs(module: Any, values: Sequence[Any], names: Sequence[str], shapes: Sequence[tuple[int, ...]],
                dtypes: Sequence[str | None], seed: int = 0) -> dict[int, Held]:
    """The held value of each integer input (by position in ``values``; ``dtypes`` their element
    types as the signature knows them), seeded."""
    import torch

    rng = np.random.default_rng(seed)
    kinds = list(dtypes) + [None] * (len(values) - len(dtypes))
    lengths = [shape[-1] for kind, shape in zip(kinds, shapes, strict=True) if kind in _INTEGER_TYPES and len(shape) >= 2]
    held: dict[int, Held] = {}
    for i, (value, name, shape, kind) in enumerate(zip(values, names, shapes, kinds, strict=True)):
        if kind not in _INTEGER_TYPES:
            continue
        dtype = {"Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8,
                 "Byte": torch.uint8, "Bool": torch.bool}[kind]
        lower = name.lower()
        table = _embedding_table(module, value)
        if kind == "Bool" or "mask" in lower:
            held[i] = Held(value=torch.ones(shape, dtype=dtype), why="all ones (a mask)" if kind != "Bool" else "all true (a mask)")
        elif table is not None:
            rows, path = table
            ids = rng.integers(0, rows, size=shape)
            held[i] = Held(value=torch.from_numpy(ids).to(dtype), why=f"seeded ids in [0, {rows}) (it indexes the rows of {path!r})")
        elif "len" in lower and lengths:
            held[i] = Held(value=torch.full(shape, max(lengths), dtype=dtype), why=f"the sequence length {max(lengths)}")
        else:
            held[i] = Held(value=torch.zeros(shape, dtype=dtype), why="zeros")
    return held
